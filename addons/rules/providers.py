"""
The provider table: which hosts we decrypt, and which provider name each request is routed to.

Everything here is pure (no mitmproxy imports) so it can be property-tested and shared with the
settings loader, the PAC file and the CA name constraints.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from urllib.parse import unquote

# Built-in routes: host -> provider. Every path on these hosts goes to the gateway, as with
# Coder's own proxy (the gateway passes through what it does not govern), except where a path
# scope is given: then other paths go to the original host.
DEFAULT_PROVIDERS: Mapping[str, str] = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "api.githubcopilot.com": "copilot",
    "api.individual.githubcopilot.com": "copilot",
    "api.business.githubcopilot.com": "copilot-business",
    "api.enterprise.githubcopilot.com": "copilot-enterprise",
}
DEFAULT_PATHS: Mapping[str, tuple[str, ...]] = {
    # Codex with ChatGPT sign-in: only its model API; the rest of chatgpt.com is the web app
    "chatgpt.com": ("/backend-api/codex/",),
}
DEFAULT_PATH_PROVIDERS: Mapping[str, str] = {"chatgpt.com": "chatgpt"}

# Opt-in routes, enabled by name (`provider_presets`); each entry can still be changed or
# removed through `providers`.
# What happens to Copilot's inline completions (`copilot_completions`): the gateway (coder/
# aibridge's Copilot provider) bridges /chat/completions and /responses only, not
# /v1/engines/*/completions, so by default they are observed rather than routed.
COPILOT_COMPLETIONS = ("observe", "route", "tunnel")

PRESETS: Mapping[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    "copilot-completions": (
        # inline completions (FIM) and next-edit suggestions: latency-critical, so opt-in
        ("proxy.individual.githubcopilot.com", "copilot", ()),
        ("proxy.business.githubcopilot.com", "copilot-business", ()),
        ("proxy.enterprise.githubcopilot.com", "copilot-enterprise", ()),
        ("copilot-proxy.githubusercontent.com", "copilot", ()),
    ),
    "gemini": (("generativelanguage.googleapis.com", "gemini", ()),),
    "xai": (("api.x.ai", "xai", ()),),
    "deepseek": (("api.deepseek.com", "deepseek", ()),),
    "openrouter": (("openrouter.ai", "openrouter", ("/api/",)),),
    "mistral": (("api.mistral.ai", "mistral", ()),),
    "azure-openai": (("*.openai.azure.com", "azure", ()),),
    "bedrock": (("bedrock-runtime.*.amazonaws.com", "bedrock", ()),),
}

# The regions where Amazon Bedrock's runtime API is served (AWS's Bedrock endpoints and
# quotas page, "Amazon Bedrock Runtime APIs"; checked 2026-12). The CA's name constraints list
# these concrete hosts for the bedrock preset: a subtree for `bedrock-runtime.*.amazonaws.com`
# could only be all of amazonaws.com (S3 included). Add a missing region as a `providers:` entry.
BEDROCK_RUNTIME_REGIONS = (
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "us-gov-east-1", "us-gov-west-1",
    "ca-central-1", "ca-west-1", "sa-east-1", "mx-central-1",
    "eu-central-1", "eu-central-2", "eu-north-1", "eu-south-1", "eu-south-2",
    "eu-west-1", "eu-west-2", "eu-west-3",
    "ap-east-2", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-south-1",
    "ap-south-2", "ap-southeast-1", "ap-southeast-2", "ap-southeast-3", "ap-southeast-4",
    "ap-southeast-5", "ap-southeast-7", "me-central-1", "me-south-1", "il-central-1",
)  # fmt: skip

# Host patterns whose `*` is not the leftmost label, spelt out as the concrete names the CA
# may sign for.
CONCRETE_HOSTS: Mapping[str, tuple[str, ...]] = {
    "bedrock-runtime.*.amazonaws.com": tuple(
        f"bedrock-runtime.{region}.amazonaws.com" for region in BEDROCK_RUNTIME_REGIONS
    ),
}


def has_inner_wildcard(pattern: str) -> bool:
    """`*` anywhere but as the leftmost label: no name-constraint subtree matches it exactly."""
    return "*" in pattern.split(".")[1:]


def constraint_hosts(patterns: Iterable[str]) -> tuple[list[str], list[str]]:
    """The hosts the CA's name constraints should permit for these routed patterns, and the
    patterns they cannot cover (an inner wildcard with no known concrete names)."""
    hosts, uncoverable = [], []
    for pattern in patterns:
        if not has_inner_wildcard(pattern):
            hosts.append(pattern)
        elif pattern in CONCRETE_HOSTS:
            hosts.extend(CONCRETE_HOSTS[pattern])
        else:
            uncoverable.append(pattern)
    return hosts, uncoverable


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class ProviderSpecError(ValueError):
    """A provider entry that cannot be used; the message says what is wrong."""


def normalize_host(host: str) -> str:
    """Lower-case, strip one trailing dot and IPv6 brackets: the form every lookup uses."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.endswith("."):
        host = host[:-1]
    return host


def validate_host_pattern(pattern: str) -> str:
    """Return the normalised pattern, or raise ProviderSpecError.

    A pattern is a DNS name whose labels may each be `*` (exactly one label), e.g.
    `*.openai.azure.com` or `bedrock-runtime.*.amazonaws.com`. IP addresses are refused:
    the CA never signs them.
    """
    host = normalize_host(pattern)
    if not host:
        raise ProviderSpecError("empty host")
    labels = host.split(".")
    if "*" in labels and len(labels) < 3:
        raise ProviderSpecError(f"host {pattern!r}: a wildcard needs at least two fixed labels")
    if all(label.isdigit() for label in labels) or ":" in host:
        raise ProviderSpecError(f"host {pattern!r} is an IP address; only DNS names can be routed")
    for label in labels:
        if label == "*":
            continue
        if not _LABEL.match(label):
            raise ProviderSpecError(f"host {pattern!r} has an invalid label {label!r}")
    if labels[-1] == "*" or (len(labels) > 1 and labels[-2] == "*"):
        raise ProviderSpecError(f"host {pattern!r}: a wildcard cannot stand for the top two labels")
    return host


def validate_provider_name(name: str) -> str:
    if not _PROVIDER_NAME.match(name or ""):
        raise ProviderSpecError(
            f"provider name {name!r} must be lower-case letters, digits, '.', '_' or '-'"
        )
    return name


def validate_path_prefix(prefix: str) -> str:
    if not prefix.startswith("/") or any(c in prefix for c in "?#\r\n\t "):
        raise ProviderSpecError(f"path prefix {prefix!r} must start with '/' and hold no query")
    return prefix


@dataclass(frozen=True)
class ProviderRoute:
    """One entry: requests on `host` (and, if given, under one of `paths`) go to `provider`."""

    host: str
    provider: str
    paths: tuple[str, ...] = ()

    @property
    def is_wildcard(self) -> bool:
        return "*" in self.host

    def covers_path(self, path: str) -> bool:
        """True if a request for `path` (raw, may carry a query) is routed to the gateway: the
        path as the gateway decodes it, so `/v1/%63hat` is as routed as `/v1/chat`."""
        if not self.paths:
            return True
        path = unquote(path.split("?", 1)[0])
        return any(path.startswith(p) for p in self.paths)

    def to_spec(self) -> str:
        spec = f"{self.host}={self.provider}"
        if self.paths:
            spec += "@" + ",".join(self.paths)
        return spec


def parse_route_spec(spec: str) -> ProviderRoute:
    """Parse `host=provider[@/prefix1,/prefix2]`, the flat form used by options and env vars."""
    host, sep, rest = spec.strip().partition("=")
    if not sep:
        raise ProviderSpecError(f"provider entry {spec!r} must look like host=provider[@/path,...]")
    provider, _, paths = rest.partition("@")
    return make_route(host, provider, [p for p in paths.split(",") if p] if paths else ())


def make_route(host: str, provider: str, paths: Iterable[str] = ()) -> ProviderRoute:
    return ProviderRoute(
        host=validate_host_pattern(host),
        provider=validate_provider_name(provider.strip()),
        paths=tuple(validate_path_prefix(p.strip()) for p in paths),
    )


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(
        "^"
        + r"\.".join("[^.]+" if lbl == "*" else re.escape(lbl) for lbl in pattern.split("."))
        + "$"
    )


@dataclass(frozen=True)
class ProviderTable:
    """An immutable host -> route lookup. Exact hosts win over wildcards; among wildcards, the
    one with more literal labels wins (then the earlier entry)."""

    routes: tuple[ProviderRoute, ...]
    _exact: Mapping[str, ProviderRoute] = field(init=False, repr=False, compare=False)
    _wildcards: tuple[tuple[re.Pattern[str], ProviderRoute], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        exact: dict[str, ProviderRoute] = {}
        wild: list[tuple[int, int, re.Pattern[str], ProviderRoute]] = []
        for i, route in enumerate(self.routes):
            if route.is_wildcard:
                literal = sum(1 for lbl in route.host.split(".") if lbl != "*")
                wild.append((-literal, i, _wildcard_regex(route.host), route))
            else:
                exact.setdefault(route.host, route)
        wild.sort(key=lambda t: (t[0], t[1]))
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_wildcards", tuple((rx, r) for _, _, rx, r in wild))

    @classmethod
    def from_specs(cls, specs: Iterable[str]) -> ProviderTable:
        return cls(tuple(parse_route_spec(s) for s in specs if s.strip()))

    @classmethod
    def defaults(cls) -> ProviderTable:
        routes = [make_route(h, p) for h, p in DEFAULT_PROVIDERS.items()]
        routes += [
            make_route(h, DEFAULT_PATH_PROVIDERS[h], paths) for h, paths in DEFAULT_PATHS.items()
        ]
        return cls(tuple(routes))

    def lookup(self, host: str) -> ProviderRoute | None:
        """The route for a host, whatever the path; None means: not ours, tunnel it."""
        host = normalize_host(host)
        if route := self._exact.get(host):
            return route
        for rx, route in self._wildcards:
            if rx.match(host):
                return route
        return None

    def route(self, host: str, path: str) -> ProviderRoute | None:
        """The route for one request, or None if it should go to the original host."""
        route = self.lookup(host)
        if route is not None and route.covers_path(path):
            return route
        return None

    def to_specs(self) -> list[str]:
        return [r.to_spec() for r in self.routes]

    def hosts(self) -> list[str]:
        return [r.host for r in self.routes]


def gateway_path(target_path: str, provider: str, original_path: str) -> str:
    """`<target path>/<provider><original path and query>`, keeping the client's encoding.

    `original_path` is the request target as the client sent it (origin-form), so percent
    escapes, double slashes and the query survive untouched.
    """
    if not original_path.startswith("/"):
        original_path = "/" + original_path
    return f"{target_path.rstrip('/')}/{provider}{original_path}"


def copilot_completion_hosts() -> tuple[str, ...]:
    """The hosts Copilot's inline completions go to (the `copilot-completions` preset's)."""
    return tuple(host for host, _, _ in PRESETS["copilot-completions"])
