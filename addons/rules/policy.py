"""
Routing rules: who may use what, and where it goes. Pure logic, parsed once from the
configuration and swapped whole on reload.

An ordered list of rules; the first whose every condition matches decides. The admin's
top-level rules come first, then those of the active profile (so no profile can lift a deny),
then the provider table as before. Conditions are lists of glob patterns; a pattern with a
leading `!` excludes. Actions: `route` (a gateway, a provider, optionally a replacement model),
`origin` (the original host, unchanged) and `deny` (a status and a message).
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from functools import cached_property
from typing import Any

from addons.rules.gateway_target import GatewayTarget
from addons.rules.gateway_target import TargetError
from addons.rules.gateway_target import parse_base_url
from addons.rules.gateway_target import resolve_target

POLICY_KEYS = ("gateways", "groups", "rules", "profiles", "default_profile")
CONDITIONS = ("host", "path", "method", "workspace", "user", "group", "client", "model",
              "mcp_server", "mcp_tool")  # fmt: skip
MCP_CONDITIONS = ("mcp_server", "mcp_tool")  # a tools/call's: only deny rules take them
NO_WORKSPACE = ("", "coder")
DLP_ACTIONS = (
    "block",
    "mask",
    "flag",
    "off",
)  # a rule's `dlp:` (prompt_dlp.py)  # proxy user names that mean "no workspace"


class PolicyError(ValueError):
    """A broken rule; the message names the rule and the key."""


@dataclass(frozen=True)
class Patterns:
    """One condition: matches when some included pattern matches (or none is given) and no
    excluded one does."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: Any, where: str, kind: str) -> Patterns:
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
            raise PolicyError(f"{where}: must be a pattern or a list of patterns")
        include = tuple(p for p in items if not p.startswith("!"))
        exclude = tuple(p[1:] for p in items if p.startswith("!"))
        if kind == "client":
            for p in include + exclude:
                try:
                    ipaddress.ip_network(p, strict=False)
                except ValueError:
                    raise PolicyError(f"{where}: {p!r} is not a CIDR range") from None
        return cls(include, exclude)

    def matches(self, values: Iterable[str], kind: str) -> bool:
        values = list(values)
        hit = lambda p: any(_match(p, v, kind) for v in values)  # noqa: E731
        if self.include and not any(hit(p) for p in self.include):
            return False
        return not any(hit(p) for p in self.exclude)


def _match(pattern: str, value: str, kind: str) -> bool:
    if kind == "client":
        try:
            return ipaddress.ip_address(value) in ipaddress.ip_network(pattern, strict=False)
        except ValueError:
            return False
    if kind == "path":  # a prefix, or a glob when it has wildcards
        return fnmatch.fnmatchcase(value, pattern) if "*" in pattern else value.startswith(pattern)
    return fnmatch.fnmatchcase(value.lower(), pattern.lower())


@dataclass(frozen=True)
class Route:
    provider: str
    gateways: tuple[str, ...] = ()  # in failover order; empty: the default gateway
    model: str | None = None  # replacement for the request's model


@dataclass(frozen=True)
class Origin:
    """Send to the original host, unchanged."""


@dataclass(frozen=True)
class Deny:
    status: int
    message: str


Action = Route | Origin | Deny


@dataclass(frozen=True)
class Rule:
    name: str
    conditions: Mapping[str, Patterns]
    action: Action
    dlp: str | None = None  # the prompt scan's action for what this rule decides (or off)

    @property
    def is_mcp(self) -> bool:
        """Decides MCP tool calls (addons/rules/mcp.py), never whole requests."""
        return any(k in self.conditions for k in MCP_CONDITIONS)

    @property
    def needs_model(self) -> bool:
        """The body's model must be read to match this rule, or to apply it."""
        return "model" in self.conditions or (
            isinstance(self.action, Route) and self.action.model is not None
        )


@dataclass(frozen=True)
class Facts:
    """What a request is, for matching. `model` None: not read (yet) or not present."""

    host: str
    path: str
    method: str
    workspace: str | None = None
    user: str | None = None
    groups: frozenset[str] = frozenset()
    client: str | None = None
    model: str | None = None
    model_known: bool = False
    mcp_server: str | None = None  # an MCP tool call's server entry (addons/rules/mcp.py)
    mcp_tool: str | None = None  # and its tool

    def values(self, kind: str) -> tuple[str, ...]:
        if kind == "group":
            return tuple(sorted(self.groups))
        value = getattr(self, kind)
        return () if value is None else (value,)


@dataclass(frozen=True)
class Decision:
    rule: Rule
    profile: str | None  # the profile the rule came from (None: the admin's rules)


NEEDS_MODEL = "needs-model"  # decide() needs the request's model to go on


@dataclass(frozen=True)
class RoutingPolicy:
    gateways: Mapping[str, GatewayTarget] = field(default_factory=dict)
    default_gateway: str | None = None
    # the Coder deployment of each gateway given by `url` (where tokens are checked)
    deployments: Mapping[str, GatewayTarget] = field(default_factory=dict)
    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)  # group -> users
    rules: tuple[Rule, ...] = ()
    profiles: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)
    default_profile: str | None = None

    @property
    def empty(self) -> bool:
        return not self.rules and not self.profiles

    @cached_property
    def has_dlp_rules(self) -> bool:
        """Some rule sets the prompt scan's action (it may then apply without a global one)."""
        return any(rule.dlp is not None for rule in self._every_rule)

    @cached_property
    def _every_rule(self) -> tuple[Rule, ...]:
        return self.rules + tuple(r for rules in self.profiles.values() for r in rules)

    @cached_property
    def has_model_rules(self) -> bool:
        """Some rule reads or replaces the model (WebSocket messages are then checked)."""
        return any(rule.needs_model for rule in self._every_rule)

    def groups_of(self, user: str | None) -> frozenset[str]:
        if not user:
            return frozenset()
        return frozenset(g for g, users in self.groups.items() if user.lower() in users)

    def profile_in_force(self, chosen: str | None) -> str | None:
        """A workspace's chosen profile while it exists, else the default."""
        return chosen if chosen in self.profiles else self.default_profile

    def gateway(self, name: str | None) -> GatewayTarget | None:
        return self.gateways.get(name or self.default_gateway or "")

    def decide(self, facts: Facts, profile: str | None) -> Decision | str | None:
        """The first rule that matches: a Decision; NEEDS_MODEL when going on needs the
        request's model and `facts` does not have it yet; None when no rule matches (the
        provider table decides, as without rules)."""
        for rule, source in self._chain(profile):
            if rule.is_mcp:
                continue  # tool calls are decided one by one (mcp_denial)
            others = {k: v for k, v in rule.conditions.items() if k != "model"}
            if not all(p.matches(facts.values(k), k) for k, p in others.items()):
                continue
            if rule.needs_model and not facts.model_known:
                return NEEDS_MODEL
            if "model" in rule.conditions and not rule.conditions["model"].matches(
                facts.values("model"), "model"
            ):
                continue
            return Decision(rule, source)
        return None

    def _chain(self, profile: str | None) -> list[tuple[Rule, str | None]]:
        """The rules in the order they decide, each with the profile it came from: the
        admin's first (no profile can lift their deny), then the profile's."""
        chain = [(r, None) for r in self.rules]
        if profile is not None:
            chain += [(r, profile) for r in self.profiles.get(profile, ())]
        return chain

    def mcp_denial(self, facts: Facts, profile: str | None) -> Decision | None:
        """The first MCP rule (a deny with mcp_server or mcp_tool) that refuses this tool call;
        a chosen profile's rules after the admin's, as for requests."""
        for rule, source in self._chain(profile):
            if rule.is_mcp and all(p.matches(facts.values(k), k)
                                   for k, p in rule.conditions.items()):  # fmt: skip
                return Decision(rule, source)
        return None


# -- parsing -----------------------------------------------------------------------------------


def parse_policy(
    gateways: Mapping[str, Any] | None,
    groups: Mapping[str, Any] | None,
    rules: list | None,
    profiles: Mapping[str, Any] | None,
    default_profile: str | None,
    fallback_gateway: GatewayTarget | None = None,
) -> RoutingPolicy:
    """Build the RoutingPolicy from the configuration's values; PolicyError names what is wrong.
    `fallback_gateway` is the one `gateway:`/`target:` give, used when `gateways` is empty."""
    targets = _parse_gateways(gateways or {})
    deployments = {
        name: parse_base_url(spec["url"] if isinstance(spec, Mapping) else spec, "url")
        for name, spec in (gateways or {}).items()
        if isinstance(spec, str) or "url" in spec
    }
    default = next(iter(targets), None)
    if not targets and fallback_gateway is not None:
        targets, default = {"default": fallback_gateway}, "default"
    group_table = _parse_groups(groups or {})
    top = _parse_rules(rules or [], "rules", targets)
    profile_table: dict[str, tuple[Rule, ...]] = {}
    for name, entries in (profiles or {}).items():
        if not isinstance(name, str) or not name:
            raise PolicyError(f"profiles: {name!r} is not a profile name")
        profile_table[name] = _parse_rules(entries or [], f"profiles.{name}", targets)
    if default_profile is not None and default_profile not in profile_table:
        raise PolicyError(
            f"default_profile: {default_profile!r} is not one of profiles "
            f"({', '.join(profile_table) or 'none defined'})"
        )
    return RoutingPolicy(
        targets, default, deployments, group_table, top, profile_table, default_profile
    )


def _parse_gateways(raw: Mapping[str, Any]) -> dict[str, GatewayTarget]:
    if not isinstance(raw, Mapping):
        raise PolicyError("gateways: must map names to {url: ...} or {target: ...}")
    out = {}
    for name, spec in raw.items():
        where = f"gateways.{name}"
        if isinstance(spec, str):
            spec = {"url": spec}
        if not isinstance(spec, Mapping) or set(spec) - {"url", "target", "ca_file"}:
            raise PolicyError(f"{where}: must be {{url: ...}} or {{target: ...}} (and ca_file)")
        if ("url" in spec) == ("target" in spec):
            raise PolicyError(f"{where}: set exactly one of url and target")
        try:
            target = resolve_target(spec.get("url"), spec.get("target"))
        except TargetError as e:
            raise PolicyError(f"{where}: {e}") from None
        assert target is not None
        out[str(name)] = target
    return out


def gateway_ca_files(raw: Mapping[str, Any] | None) -> list[str]:
    """The extra CA files the gateways name (trusted for the gateway leg)."""
    return [
        spec["ca_file"]
        for spec in (raw or {}).values()
        if isinstance(spec, Mapping) and spec.get("ca_file")
    ]


def _parse_groups(raw: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    if not isinstance(raw, Mapping):
        raise PolicyError("groups: must map group names to lists of user names")
    out = {}
    for name, users in raw.items():
        if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
            raise PolicyError(f"groups.{name}: must be a list of user names")
        out[str(name)] = frozenset(u.lower() for u in users)
    return out


def _parse_rules(raw: Any, where: str, gateways: Mapping[str, GatewayTarget]) -> tuple[Rule, ...]:
    if not isinstance(raw, list):
        raise PolicyError(f"{where}: must be a list of rules")
    rules, names = [], set()
    for i, entry in enumerate(raw):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        label = f"{where}[{i}]" + (f" ({name})" if name else "")
        if not isinstance(entry, Mapping):
            raise PolicyError(f"{label}: must be a mapping with match and an action")
        if not isinstance(name, str) or not name:
            raise PolicyError(f"{label}: needs a name (it appears in logs and answers)")
        if name in names:
            raise PolicyError(f"{label}: the name is used twice")
        names.add(name)
        unknown = set(entry) - {"name", "match", "route", "origin", "deny", "dlp"}
        if unknown:
            raise PolicyError(f"{label}: unknown key {sorted(unknown)[0]!r}")
        conditions = parse_conditions(entry.get("match"), label)
        dlp = entry.get("dlp")
        if dlp is not None and dlp not in DLP_ACTIONS:
            raise PolicyError(f"{label}: dlp must be one of {', '.join(DLP_ACTIONS)}")
        action = _parse_action(entry, label, gateways)
        if any(k in conditions for k in MCP_CONDITIONS):
            if not isinstance(action, Deny):
                raise PolicyError(f"{label}: a rule with mcp_server or mcp_tool must deny")
            if "model" in conditions:
                raise PolicyError(f"{label}: a rule cannot match both a model and an MCP tool")
        rules.append(Rule(name, conditions, action, dlp))
    return tuple(rules)


def parse_conditions(match: Any, label: str) -> dict[str, Patterns]:
    """A rule's (or a limit's) `match:`, each condition checked; errors name `label`."""
    match = match or {}
    if not isinstance(match, Mapping):
        raise PolicyError(f"{label}: match must be a mapping of conditions")
    conditions = {}
    for key, value in match.items():
        if key not in CONDITIONS:
            raise PolicyError(
                f"{label}: match.{key} is not a condition (one of {', '.join(CONDITIONS)})"
            )
        conditions[key] = Patterns.parse(value, f"{label}: match.{key}", key)
    return conditions


def _parse_action(entry: Mapping, label: str, gateways: Mapping[str, GatewayTarget]) -> Action:
    actions = [k for k in ("route", "origin", "deny") if k in entry]
    if len(actions) != 1:
        raise PolicyError(f"{label}: needs exactly one of route, origin, deny")
    kind = actions[0]
    spec = entry[kind]
    if kind == "origin":
        if spec not in (True, None, {}):
            raise PolicyError(f"{label}: origin takes no settings (origin: true)")
        return Origin()
    if not isinstance(spec, Mapping):
        raise PolicyError(f"{label}: {kind} must be a mapping")
    if kind == "deny":
        if set(spec) - {"status", "message"}:
            raise PolicyError(f"{label}: deny takes status and message")
        status = spec.get("status", 403)
        if not isinstance(status, int) or not 400 <= status <= 499:
            raise PolicyError(f"{label}: deny.status must be a 4xx status")
        message = spec.get("message") or f"denied by the rule {entry['name']}"
        if not isinstance(message, str):
            raise PolicyError(f"{label}: deny.message must be text")
        return Deny(status, message)
    if set(spec) - {"gateway", "provider", "model"}:
        raise PolicyError(f"{label}: route takes gateway, provider and model")
    provider = spec.get("provider")
    if not isinstance(provider, str) or not provider:
        raise PolicyError(f"{label}: route.provider is required")
    named = spec.get("gateway")
    names = [] if named is None else [named] if isinstance(named, str) else named
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise PolicyError(f"{label}: route.gateway must be a gateway name or a list of them")
    for gateway in names:
        if gateway not in gateways:
            raise PolicyError(
                f"{label}: route.gateway {gateway!r} is not one of gateways "
                f"({', '.join(gateways) or 'none defined'})"
            )
    model = spec.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise PolicyError(f"{label}: route.model must be a model name")
    return Route(provider, tuple(names), model)


def workspace_of(proxy_user: str) -> str | None:
    """The workspace a proxy user name names (`HTTPS_PROXY=http://<workspace>:<token>@...`)."""
    return None if proxy_user.strip().lower() in NO_WORKSPACE else proxy_user.strip()
