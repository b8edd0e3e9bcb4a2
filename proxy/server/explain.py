"""
`aibridge-proxy explain`: what the proxy would do with one request, from the live configuration,
without sending anything: which rule decides (or the provider table), in which profile, and
the exact URL it would go to, or the answer a deny gives.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from addons.rules.limits import applicable
from addons.rules.limits import parse_limits
from addons.rules.model_field import model_in_path
from addons.rules.plan import decide
from addons.rules.plan import plan
from addons.rules.policy import NEEDS_MODEL
from addons.rules.policy import Facts
from addons.rules.provider_errors import api_family
from addons.rules.provider_errors import error_body
from addons.rules.providers import copilot_completion_hosts
from addons.rules.request_target import decoded_path
from addons.rules.request_target import is_request_target
from addons.rules.request_target import path_problem
from proxy.server.settings import Settings

WORKSPACE_NOTE = (
    "note:     workspace conditions are advisory: a client names its own workspace in the "
    "proxy URL (any token holder may claim any name); govern by user or group"
)


class ExplainError(ValueError):
    """A URL `explain` cannot take (the message is one line for the user)."""


def _checked(url: str) -> tuple[str, int, str, str]:
    """host, port, path and query of an https:// URL, or ExplainError saying what is wrong."""
    try:
        parts = urlsplit(url)
    except ValueError:  # brackets that are not an IPv6 address, and the like
        raise ExplainError(f"explain: {_shown(url)} is not a URL like https://host/path") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ExplainError(f"explain: {_shown(url)} is not a URL like https://host/path")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ExplainError(f"explain: the port of {_shown(url)} is not a port (1-65535)") from None
    return parts.hostname.lower(), port, parts.path, parts.query


def _shown(text: str) -> str:
    """Text from the command line, safe on a terminal: control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def explain(settings: Settings, url: str, **request: str | None) -> list[str]:
    """What the proxy would do with a request to `url` (method, user, workspace, model, client,
    profile), line by line, as the router decides it. ExplainError for a URL it cannot take."""
    _checked(url)
    lines = [_shown(line) for line in _decide(settings, url, **request)]
    policy = settings.policy
    every = policy.rules + tuple(r for rules in policy.profiles.values() for r in rules)
    if any("workspace" in rule.conditions for rule in every):
        lines.append(WORKSPACE_NOTE)
    return lines


def _decide(
    settings: Settings,
    url: str,
    method: str | None = "POST",
    user: str | None = None,
    workspace: str | None = None,
    model: str | None = None,
    client: str | None = None,
    profile: str | None = None,
) -> list[str]:
    method = method or "POST"
    host, port, raw_path, query = _checked(url)
    path = raw_path + (f"?{query}" if query else "")
    table, policy = settings.provider_table, settings.policy
    route = table.lookup(host)
    problem = path_problem(raw_path)
    if not is_request_target(path):
        problem = "the request target holds spaces, control or non-ASCII characters"
    if problem is not None and (route is not None or settings.mcp_servers.on_host(host)):
        return [f"answer:   400 {problem} (the proxy refuses such a path on {host})"]
    # what the host is: routed, observed, a governed MCP server's (any of them decrypted), or
    # tunnelled; the rules then decide on every decrypted request, as in the proxy
    server = settings.mcp_servers.lookup(host, port, decoded_path(raw_path))
    seen = settings.observed_hosts.lookup(host) if route is None else None
    head: list[str] = []  # a host that is not routed: what it is, first
    tail: list[str] = []  # a routed one: its MCP entry, last
    if server is not None:
        what = (f"{host}: MCP server {server.name}; decrypted, its tools governed "
                f"(deny_tools: {', '.join(server.deny_tools) or 'none'}; on_tool_change: "
                f"{server.on_tool_change})")  # fmt: skip
        (head if route is None else tail).append(
            what + (", sent on unchanged" if route is None else ", then routed as above")
        )
    elif seen is not None:
        why = (
            "copilot_completions: observe; the gateway does not serve /v1/engines/*"
            if host in copilot_completion_hosts()
            else f"observe: {seen.entry or seen.pattern}"
        )
        head.append(f"{host}: observed ({why}); decrypted, recorded (who, tool, tokens) and "
                    "sent to the original host unchanged")  # fmt: skip
    elif route is None and settings.mcp_servers.on_host(host):
        head.append(f"{host}: a governed MCP server's host, outside its entries' paths; "
                    "decrypted and sent on unchanged")  # fmt: skip
    elif route is None:
        return [f"{host}: not routed; tunnelled untouched (never decrypted)"]
    model = model or model_in_path(path)
    facts = Facts(host, decoded_path(path or "/"), method.upper(), workspace, user, policy.groups_of(user),
                  client, model, model_known=True)  # fmt: skip
    # the proxy's own decision: the profile in force, the rule, and what the rule does
    active, decision = decide(facts, policy, profile)
    assert decision != NEEDS_MODEL  # the model is known here (None: the request has none)
    routed = table.route(host, path or "/") if route is not None else None  # as in the router
    planned = plan(decision, routed.provider if routed else None, policy)
    if profile and profile != active:
        in_force = f"{active} (default)" if active else "none"
        lines = [f"profile:  {in_force}; {profile!r} is not a profile, so the default applies"]
    else:
        lines = [f"profile:  {active or 'none'}" + (" (default)" if not profile else "")]
    scan = _dlp_lines(settings, planned.decision) + _limit_lines(settings, facts)
    if planned.decision is None:
        if route is None:  # observed or an MCP server's: no rule, as the host line says
            return [*head, *scan]
        if planned.provider is None:
            return ["rule:     none (provider table)", *scan,
                    f"upstream: {url} (outside {host}'s paths)", *tail]  # fmt: skip
        lines.insert(0, "rule:     none (provider table)")
    else:
        name = planned.decision.rule.name
        source = f"profile {decision.profile}" if decision.profile else "the admin's rules"
        lines.insert(0, f"rule:     {name} ({source})")
    if planned.deny is not None:
        family = api_family(route.provider if route is not None else None, host)
        body = error_body(family, planned.deny.status, planned.deny_message)
        return [*head, *lines, f"answer:   {planned.deny.status} {body.decode()}"]
    if planned.provider is None:
        return [*head, *lines, *scan, f"upstream: {url} (the original host, unchanged)", *tail]
    target, provider = settings.routing_target or policy.gateway(None), planned.provider
    if names := planned.gateways:
        target = policy.gateway(names[0])
        order = " then ".join(n for n in names if n)
        if order:
            lines.append(
                f"gateway:  {order}" + (" (failover in this order)" if len(names) > 1 else "")
            )
    new_model = planned.model
    if target is None:
        return [*head, *lines, "answer:   502 no gateway is configured"]
    lines.append(f"provider: {provider}")
    if new_model:
        lines.append(f"model:    {model or '(none)'} -> {new_model}")
    return [*head, *lines, *scan, f"upstream: {target.url_for(provider, path or '/')}", *tail]


def _limit_lines(settings: Settings, facts: Facts) -> list[str]:
    """The limits this request counts against (what is left is counted by the running proxy)."""
    found = applicable(parse_limits(settings.limits), facts)
    lines = [f"limit:    {limit.name} ({limit.describe()})" for limit in found]
    if any(limit.by == "workspace" for limit in found):
        lines.append(
            "note:     a limit by workspace rests on the client's claim: a new workspace name "
            "gets a fresh budget; use by: user or by: group for budgets"
        )
    return lines


def _dlp_lines(settings: Settings, decision) -> list[str]:
    """The prompt scan's action for this request, where DLP is configured at all."""
    rule_action = decision.rule.dlp if decision is not None else None
    if rule_action is None and settings.dlp_action == "off":
        return []
    if rule_action is not None:
        return [f"dlp:      {rule_action} (the rule's dlp:)"]
    return [f"dlp:      {settings.dlp_action} (dlp.action)"]
