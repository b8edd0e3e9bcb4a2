"""Value parsers: a raw value (YAML, environment or flag) -> a typed value, or ValueError with
a short reason that the loader turns into one line naming the key, value and source."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml

from addons.rules.ai_catalog import CatalogError
from addons.rules.ai_catalog import ObservedHosts
from addons.rules.ai_catalog import expand
from addons.rules.gateway_target import TargetError
from addons.rules.gateway_target import parse_base_url
from addons.rules.limits import parse_limits
from addons.rules.mcp import parse_mcp_servers
from addons.rules.policy import PolicyError
from addons.rules.prices import parse_prices
from addons.rules.prompt_dlp import parse_patterns
from addons.rules.providers import PRESETS
from addons.rules.providers import ProviderSpecError
from addons.rules.providers import make_route
from addons.rules.upstream_proxy import UpstreamProxy
from addons.rules.upstream_proxy import parse_upstream_proxy

# -- value parsers: raw value -> typed value, ValueError with a short reason -------------------


def parse_str(value: Any) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError("must be a string")
    return str(value).strip()


def parse_opt_str(value: Any) -> str | None:
    if value is None:
        return None
    s = parse_str(value)
    return s or None


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def parse_number(minimum: float, integer: bool = False) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError("must be a number")
        try:
            n = int(str(value)) if integer else float(value)
        except (TypeError, ValueError):
            raise ValueError("must be a whole number" if integer else "must be a number") from None
        if n < minimum:
            raise ValueError(f"must be at least {minimum:g}")
        return n

    return parse


def parse_choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        s = parse_str(value).lower()
        if s not in choices:
            raise ValueError("must be one of " + ", ".join(choices))
        return s

    return parse


def parse_opt_path(value: Any) -> Path | None:
    s = parse_opt_str(value)
    return Path(s).expanduser() if s else None


def parse_path(value: Any) -> Path:
    p = parse_opt_path(value)
    if p is None:
        raise ValueError("must not be empty")
    return p


def parse_listen(value: Any) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces)."""
    s = parse_str(value)
    m = re.fullmatch(r"(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]*)):(\d{1,5})", s)
    if not m:
        raise ValueError("must be host:port, [ipv6]:port or :port")
    host = m.group(1) or m.group(2) or ""
    port = int(m.group(3))
    if port > 65535:
        raise ValueError("port must be at most 65535")
    if m.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("has an invalid IPv6 address") from None
    return host, port


def parse_opt_listen(value: Any) -> tuple[str, int] | None:
    s = parse_opt_str(value)
    return None if s is None or s.lower() in ("off", "none", "false") else parse_listen(s)


_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def parse_opt_proxy_address(value: Any) -> str | None:
    """host:port as clients reach the proxy (it goes into /proxy.pac): a DNS name or an IP."""
    s = parse_opt_str(value)
    if s is None:
        return None
    host, port = parse_listen(s)
    if not host:
        raise ValueError("must name the host clients use, e.g. proxy.example.com:8888")
    if ":" not in host and not _HOST_NAME.match(host):
        raise ValueError("must be a DNS name or an IP address with a port")
    return s


def parse_opt_url(value: Any) -> str | None:
    s = parse_opt_str(value)
    if s is None:
        return None
    try:
        parse_base_url(s, "URL")
    except TargetError as e:
        raise ValueError(str(e).replace("URL ", "", 1)) from None
    return s.rstrip("/")


def parse_presets(value: Any) -> tuple[str, ...]:
    names = parse_str_list(value)
    for name in names:
        if name not in PRESETS:
            raise ValueError(f"has an unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return names


def parse_opt_upstream(value: Any) -> UpstreamProxy | None:
    s = parse_opt_str(value)
    return parse_upstream_proxy(s) if s else None


def parse_structured(kind: type) -> Callable[[Any], Any]:
    """A mapping or list as written in YAML; from a flag or the environment, as YAML text.
    Its contents are checked with the rest of the routing rules (addons/rules/policy.py)."""

    def parse(value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ValueError("is not valid YAML") from None
        if value is None:
            return None
        if not isinstance(value, kind):
            raise ValueError(f"must be a {'mapping' if kind is dict else 'list'}")
        return value

    return parse


def checked_list(check: Callable[[Any], Any]) -> Callable[[Any], list | None]:
    """A list of entries checked now by `check` (parse_limits, parse_mcp_servers): a broken
    entry names itself and the key, as a rule does."""

    def parse(value: Any) -> list | None:
        value = parse_structured(list)(value)
        try:
            check(value)
        except PolicyError as e:
            raise ValueError(f"is refused: {e}") from None
        return value

    return parse


parse_limit_list = checked_list(parse_limits)
parse_mcp_list = checked_list(parse_mcp_servers)
parse_price_list = checked_list(parse_prices)


def parse_header_map(value: Any) -> dict[str, str] | None:
    """Headers for a collector: a mapping, or OTEL_EXPORTER_OTLP_HEADERS' `k=v,k2=v2`."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and not value.lstrip().startswith("{"):
        pairs = [p.partition("=") for p in value.split(",") if p.strip()]
        if not all(sep and k.strip() for k, sep, _ in pairs):
            raise ValueError("must be a mapping, or name=value pairs separated by commas")
        return {k.strip(): unquote(v.strip()) for k, _, v in pairs}
    found = parse_structured(dict)(value)
    if found is None or not all(isinstance(v, str | int) for v in found.values()):
        raise ValueError("must map header names to values")
    return {str(k): str(v) for k, v in found.items()}


def parse_dlp_patterns(value: Any) -> list | None:
    """The admin's own DLP kinds, checked now (each regex compiles, each name is unique)."""
    value = parse_structured(list)(value)
    parse_patterns(value)  # DlpConfigError is a ValueError naming the entry
    return value


def parse_str_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(x for x in re.split(r"[\s,]+", value) if x)
    if isinstance(value, list | tuple):
        return tuple(parse_str(x) for x in value)
    raise ValueError("must be a list")


def parse_host_items(value: Any) -> tuple[str, ...]:
    """Host patterns and AI host catalog entries (a word without a dot names an entry)."""
    items = parse_str_list(value)
    try:
        expand(items)
    except CatalogError as e:
        raise ValueError(str(e)) from None
    return tuple(i.strip().lower() for i in items)


def parse_observed(value: Any) -> tuple[str, ...]:
    items = parse_host_items(value)
    try:
        ObservedHosts(items)
    except CatalogError as e:
        raise ValueError(str(e).removeprefix("observe: ")) from None
    return items


# Provider overrides: host -> (provider, paths) or None for "remove".
ProviderOverrides = dict[str, tuple[str, tuple[str, ...]] | None]


def parse_providers(value: Any) -> ProviderOverrides:
    """YAML mapping `host: provider | {provider, paths} | null`, or the flat form
    `host=provider[@/p1,/p2]` entries separated by spaces or `;` (`host=-` removes)."""
    out: ProviderOverrides = {}
    if value is None:
        return out
    if isinstance(value, str):
        items: list[tuple[Any, Any]] = []
        for entry in (e for e in re.split(r"[\s;]+", value) if e):
            host, sep, rest = entry.partition("=")
            if not sep:
                raise ValueError(f"entry {entry!r} must look like host=provider[@/path,...]")
            if rest in ("", "-"):
                items.append((host, None))
            else:
                name, _, paths = rest.partition("@")
                items.append(
                    (host, {"provider": name, "paths": [p for p in paths.split(",") if p]})
                )
    elif isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list):
        items = [(e.get("host") if isinstance(e, Mapping) else None, e) for e in value]
    else:
        raise ValueError("must be a mapping of host to provider")
    for host, spec in items:
        if not isinstance(host, str):
            raise ValueError(f"entry {spec!r} has no host")
        if spec is None or spec is False:
            out[host.strip().lower()] = None
            continue
        if isinstance(spec, str):
            name, paths = spec, []
        elif isinstance(spec, Mapping):
            unknown = set(spec) - {"provider", "paths", "host"}
            if unknown:
                raise ValueError(f"entry for {host}: unknown key {sorted(unknown)[0]!r}")
            name, paths = spec.get("provider"), spec.get("paths") or []
            if not isinstance(name, str):
                raise ValueError(f"entry for {host} needs provider: <name>")
            if isinstance(paths, str):
                paths = [paths]
        else:
            raise ValueError(f"entry for {host} must be a provider name or a mapping")
        try:
            route = make_route(host, name, paths)
        except ProviderSpecError as e:
            raise ValueError(str(e)) from None
        out[route.host] = (route.provider, route.paths)
    return out
