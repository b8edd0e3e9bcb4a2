"""
`aibridge-proxy explain`: what the proxy would do with one request, from the live configuration,
without sending anything: which rule decides (or the provider table), in which profile, and
the exact URL it would go to, or the answer a deny gives.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from addons.rules.model_field import model_in_path
from addons.rules.policy import NEEDS_MODEL
from addons.rules.policy import Decision
from addons.rules.policy import Deny
from addons.rules.policy import Facts
from addons.rules.policy import Origin
from addons.rules.provider_errors import api_family
from addons.rules.provider_errors import error_body
from proxy.server.settings import Settings


def explain(
    settings: Settings,
    url: str,
    method: str = "POST",
    user: str | None = None,
    workspace: str | None = None,
    model: str | None = None,
    client: str | None = None,
    profile: str | None = None,
) -> list[str]:
    parts = urlsplit(url)
    host, path = (
        (parts.hostname or "").lower(),
        parts.path + (f"?{parts.query}" if parts.query else ""),
    )
    table, policy = settings.provider_table, settings.policy
    route = table.lookup(host)
    if route is None:
        return [f"{host}: not routed; tunnelled untouched (never decrypted)"]
    active = profile or policy.default_profile
    model = model or model_in_path(path)
    facts = Facts(host, path or "/", method.upper(), workspace, user, policy.groups_of(user),
                  client, model, model_known=True)  # fmt: skip
    decision = policy.decide(facts, active)
    lines = [f"profile:  {active or 'none'}" + (" (default)" if not profile else "")]
    assert decision != NEEDS_MODEL  # the model is known here (None: the request has none)
    target, provider, new_model = (
        settings.routing_target or policy.gateway(None),
        route.provider,
        None,
    )
    if isinstance(decision, Decision):
        action = decision.rule.action
        source = f"profile {decision.profile}" if decision.profile else "the admin's rules"
        lines.insert(0, f"rule:     {decision.rule.name} ({source})")
        if isinstance(action, Deny):
            body = error_body(api_family(route.provider, host), action.status,
                              f"{action.message} (rule {decision.rule.name})")  # fmt: skip
            return [*lines, f"answer:   {action.status} {body.decode()}"]
        if isinstance(action, Origin):
            return [*lines, f"upstream: {url} (the original host, unchanged)"]
        names = action.gateways or (policy.default_gateway,)
        target, provider, new_model = policy.gateway(names[0]), action.provider, action.model
        order = " then ".join(n for n in names if n)
        lines.append(f"gateway:  {order}" + (" (failover in this order)" if len(names) > 1 else ""))
    elif not route.covers_path(path or "/"):
        return ["rule:     none (provider table)", f"upstream: {url} (outside {host}'s paths)"]
    else:
        lines.insert(0, "rule:     none (provider table)")
    if target is None:
        return [*lines, "answer:   502 no gateway is configured"]
    lines.append(f"provider: {provider}")
    if new_model:
        lines.append(f"model:    {model or '(none)'} -> {new_model}")
    return [*lines, f"upstream: {target.url_for(provider, path or '/')}"]
