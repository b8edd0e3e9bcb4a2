"""
Settings: defaults < YAML file < environment < flags, parsed and validated once into one frozen
`Settings` object.

This is the only module that reads the environment. Every error names the key, the value and
where it came from, so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from addons.rules.ai_catalog import CatalogError
from addons.rules.ai_catalog import ObservedHosts
from addons.rules.ai_catalog import expand
from addons.rules.gateway_target import GatewayTarget
from addons.rules.gateway_target import TargetError
from addons.rules.gateway_target import parse_base_url
from addons.rules.gateway_target import resolve_target
from addons.rules.policy import POLICY_KEYS
from addons.rules.policy import Policy
from addons.rules.policy import PolicyError
from addons.rules.policy import parse_policy
from addons.rules.providers import PRESETS
from addons.rules.providers import ProviderSpecError
from addons.rules.providers import ProviderTable
from addons.rules.providers import constraint_hosts
from addons.rules.providers import make_route
from addons.rules.proxy_authorization import is_header_name
from addons.rules.upstream_proxy import UpstreamProxy
from addons.rules.upstream_proxy import kerberos_available
from addons.rules.upstream_proxy import parse_upstream_proxy

ENV_PREFIX = "AIBRIDGE_PROXY_"


class SettingsError(Exception):
    """A bad setting. str() is the one line the CLI prints."""


@dataclass(frozen=True)
class Source:
    """Where a value came from, for error messages."""

    kind: str  # default | file | env | flag
    name: str  # the file path, variable or flag

    def __str__(self) -> str:
        return {
            "default": "built-in default",
            "file": f"config file {self.name}",
            "env": f"environment variable {self.name}",
            "flag": f"flag {self.name}",
        }[self.kind]


# -- value parsers: raw value -> typed value, ValueError with a short reason -------------------


def _str(value: Any) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError("must be a string")
    return str(value).strip()


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    s = _str(value)
    return s or None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _number(minimum: float, integer: bool = False) -> Callable[[Any], float]:
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


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        s = _str(value).lower()
        if s not in choices:
            raise ValueError("must be one of " + ", ".join(choices))
        return s

    return parse


def _opt_path(value: Any) -> Path | None:
    s = _opt_str(value)
    return Path(s).expanduser() if s else None


def _path(value: Any) -> Path:
    p = _opt_path(value)
    if p is None:
        raise ValueError("must not be empty")
    return p


def parse_listen(value: Any) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces)."""
    s = _str(value)
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


def _opt_listen(value: Any) -> tuple[str, int] | None:
    s = _opt_str(value)
    return None if s is None or s.lower() in ("off", "none", "false") else parse_listen(s)


_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def _opt_proxy_address(value: Any) -> str | None:
    """host:port as clients reach the proxy (it goes into /proxy.pac): a DNS name or an IP."""
    s = _opt_str(value)
    if s is None:
        return None
    host, port = parse_listen(s)
    if not host:
        raise ValueError("must name the host clients use, e.g. proxy.example.com:8888")
    if ":" not in host and not _HOST_NAME.match(host):
        raise ValueError("must be a DNS name or an IP address with a port")
    return s


def _opt_url(value: Any) -> str | None:
    s = _opt_str(value)
    if s is None:
        return None
    try:
        parse_base_url(s, "URL")
    except TargetError as e:
        raise ValueError(str(e).replace("URL ", "", 1)) from None
    return s.rstrip("/")


def _presets(value: Any) -> tuple[str, ...]:
    names = _str_list(value)
    for name in names:
        if name not in PRESETS:
            raise ValueError(f"has an unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return names


def _opt_upstream(value: Any) -> UpstreamProxy | None:
    s = _opt_str(value)
    return parse_upstream_proxy(s) if s else None


def _structured(kind: type) -> Callable[[Any], Any]:
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


def _str_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(x for x in re.split(r"[\s,]+", value) if x)
    if isinstance(value, list | tuple):
        return tuple(_str(x) for x in value)
    raise ValueError("must be a list")


def _host_items(value: Any) -> tuple[str, ...]:
    """Host patterns and AI host catalog entries (a word without a dot names an entry)."""
    items = _str_list(value)
    try:
        expand(items)
    except CatalogError as e:
        raise ValueError(str(e)) from None
    return tuple(i.strip().lower() for i in items)


def _observed(value: Any) -> tuple[str, ...]:
    items = _host_items(value)
    try:
        ObservedHosts(items)
    except CatalogError as e:
        raise ValueError(str(e).removeprefix("observe: ")) from None
    return items


# Provider overrides: host -> (provider, paths) or None for "remove".
ProviderOverrides = dict[str, tuple[str, tuple[str, ...]] | None]


def _providers(value: Any) -> ProviderOverrides:
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


@dataclass(frozen=True)
class Field:
    key: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    aliases: tuple[str, ...] = ()  # other environment variable names (Coder's)
    merge: bool = False  # mapping merged across sources rather than replaced
    option: str | None = None  # the mitmproxy option this setting feeds (engine_options)

    @property
    def attr(self) -> str:
        return self.key.replace(".", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.attr.upper()

    @property
    def flag(self) -> str:
        return "--" + self.key.replace(".", "-").replace("_", "-")


_CODER = ("CODER_AIBRIDGE_PROXY_", "CODER_AI_GATEWAY_PROXY_")

FIELDS: tuple[Field, ...] = (
    Field(
        "listen",
        parse_listen,
        "127.0.0.1:8888",
        "Address the proxy listens on (host:port).",
        tuple(p + "LISTEN_ADDR" for p in _CODER),
    ),
    Field(
        "gateway",
        _opt_url,
        None,
        "Base URL of the Coder deployment (https://coder.example.com).",
        option="aibridge_gateway",
    ),
    Field(
        "target",
        _opt_url,
        None,
        "Full URL routed requests go to, instead of <gateway>/api/v2/aibridge.",
        tuple(p + "TARGET" for p in _CODER),
        option="aibridge_target",
    ),
    Field(
        "providers",
        _providers,
        None,
        "Routed hosts to add, replace (host: provider or {provider, paths}) or remove (host: null).",
        merge=True,
    ),
    Field("default_providers", _bool, True, "Start from the built-in provider table."),
    Field(
        "gateways",
        _structured(dict),
        None,
        "Named gateways, the first the default: name: {url: ...} or {target: ..., ca_file: ...}.",
    ),
    Field("groups", _structured(dict), None, "Groups of users: group: [user, ...]."),
    Field(
        "rules",
        _structured(list),
        None,
        "Routing rules, first match decides: {name, match: {...}, route|origin|deny: {...}}.",
    ),
    Field("profiles", _structured(dict), None, "Named sets of rules a workspace can switch to."),
    Field("default_profile", _opt_str, None, "The profile a workspace uses until it picks one."),
    Field(
        "profile_store",
        _opt_str,
        None,
        "Where profile choices are kept: redis://host:6379/0 for several replicas "
        "(default: <state_dir>/profiles.json).",
    ),
    Field(
        "health.interval",
        _number(0),
        10.0,
        "Seconds between health checks of each named gateway (0: none).",
        option="aibridge_health_interval",
    ),
    Field(
        "health.path",
        _str,
        "/api/v2/buildinfo",
        "Path checked on each gateway's origin; a 5xx or no answer marks it down.",
        option="aibridge_health_path",
    ),
    Field(
        "model_body_limit",
        _number(1024, True),
        16 * 1024 * 1024,
        "Largest request body read to find the model when a rule needs it (bigger: 413).",
        option="aibridge_rules_max_body",
    ),
    Field(
        "provider_presets",
        _presets,
        (),
        "Opt-in route sets by name: " + ", ".join(PRESETS) + ".",
    ),
    Field("state_dir", _opt_path, None, "Where the generated CA and engine files live."),
    Field(
        "ca.cert_file",
        _opt_path,
        None,
        "CA certificate (PEM; may be followed by its chain). Default: <state_dir>/ca.pem.",
        tuple(p + "CERT_FILE" for p in _CODER),
    ),
    Field(
        "ca.key_file",
        _opt_path,
        None,
        "CA private key (PEM, mode 0600). Default: <state_dir>/ca-key.pem.",
        tuple(p + "KEY_FILE" for p in _CODER),
    ),
    Field("gateway_ca_file", _opt_path, None, "Extra CA (PEM) trusted for the gateway."),
    Field("origin_ca_file", _opt_path, None, "Extra CA (PEM) trusted for pass-through origins."),
    Field(
        "gateway_timeout",
        _number(0.001),
        300.0,
        "Seconds to wait for gateway response headers.",
        option="aibridge_gateway_timeout",
    ),
    Field(
        "header_timeout",
        _number(0.001),
        10.0,
        "Seconds a client may take to send request headers.",
        option="aibridge_header_timeout",
    ),
    Field(
        "idle_timeout",
        _number(0.001),
        300.0,
        "Seconds a client connection may sit between requests before it is closed.",
        option="aibridge_idle_timeout",
    ),
    Field(
        "max_header_bytes",
        _number(1024, True),
        65536,
        "Largest request header block (431 above).",
        option="aibridge_max_header_bytes",
    ),
    Field(
        "headers.token",
        _str,
        "X-Coder-AI-Governance-Token",
        "Header that carries the Coder token when the client uses its own key.",
        option="aibridge_token_header",
    ),
    Field(
        "headers.request_id",
        _str,
        "X-Coder-AI-Governance-Request-Id",
        "Header with a fresh id for each routed request.",
        option="aibridge_request_id_header",
    ),
    Field(
        "auth.mode",
        _choice("validate", "presence"),
        "validate",
        "validate or presence.",
        option="aibridge_auth_mode",
    ),
    Field(
        "auth.url",
        _opt_url,
        None,
        "Token check URL (default <gateway>/api/v2/users/me).",
        option="aibridge_auth_url",
    ),
    Field(
        "auth.header",
        _str,
        "Coder-Session-Token",
        "Header carrying the token to auth.url.",
        option="aibridge_auth_header",
    ),
    Field(
        "auth.fail_open",
        _bool,
        False,
        "Accept tokens when validation is unavailable.",
        option="aibridge_auth_fail_open",
    ),
    Field(
        "auth.cache_ttl",
        _number(0, True),
        300,
        "Seconds a valid token is cached.",
        option="aibridge_auth_cache_ttl",
    ),
    Field(
        "auth.negative_ttl",
        _number(0, True),
        30,
        "Seconds an invalid token is cached.",
        option="aibridge_auth_negative_ttl",
    ),
    Field(
        "auth.cache_size",
        _number(1, True),
        10000,
        "Most tokens cached at once.",
        option="aibridge_auth_cache_size",
    ),
    Field(
        "auth.max_failures",
        _number(0, True),
        10,
        "Failures per client before 429 (0: off).",
        option="aibridge_auth_max_failures",
    ),
    Field(
        "auth.lockout",
        _number(1, True),
        60,
        "Failure window and lockout, seconds.",
        option="aibridge_auth_lockout",
    ),
    Field(
        "auth.anonymous_tunnels",
        _bool,
        False,
        "Allow tunnels to non-routed hosts without credentials (makes an open relay).",
        option="aibridge_anonymous_tunnels",
    ),
    Field(
        "tls_cert_file",
        _opt_path,
        None,
        "Certificate (PEM + chain) for TLS between clients and the proxy (HTTPS_PROXY=https://).",
        tuple(p + "TLS_CERT_FILE" for p in _CODER),
        option="aibridge_tls_cert_file",
    ),
    Field(
        "tls_key_file",
        _opt_path,
        None,
        "Private key for tls_cert_file.",
        tuple(p + "TLS_KEY_FILE" for p in _CODER),
        option="aibridge_tls_key_file",
    ),
    Field(
        "upstream_proxy",
        _opt_upstream,
        None,
        "Company egress proxy for tunnels and pass-through: http(s)://[user:pass@]host:port.",
        tuple(p + "UPSTREAM" for p in _CODER),
    ),
    Field(
        "upstream_proxy_auth",
        _choice("basic", "ntlm", "negotiate"),
        "basic",
        "How to authenticate to upstream_proxy: basic, ntlm or negotiate (Kerberos with the "
        "credential cache or keytab, else NTLM inside Negotiate).",
        option="aibridge_upstream_auth_scheme",
    ),
    Field(
        "upstream_proxy_spn",
        _opt_str,
        None,
        "Kerberos service of the upstream proxy (default HTTP@<its host>).",
        option="aibridge_upstream_spn",
    ),
    Field(
        "upstream_proxy_ca",
        _opt_path,
        None,
        "Extra CA (PEM) trusted for an https:// upstream proxy.",
        tuple(p + "UPSTREAM_CA" for p in _CODER),
    ),
    Field(
        "allowed_ports",
        _str_list,
        ("443", "80"),
        "Ports clients may CONNECT to.",
        option="aibridge_allowed_ports",
    ),
    Field(
        "allowed_private_cidrs",
        _str_list,
        (),
        "Non-public ranges the proxy may still reach for clients (CIDR list).",
        tuple(p + "ALLOWED_PRIVATE_CIDRS" for p in _CODER),
        option="aibridge_allowed_private_cidrs",
    ),
    Field(
        "observe",
        _observed,
        (),
        "Hosts to decrypt only to see and account for (who, tool, model, tokens), then forward "
        "unchanged: AI host catalog entries (cursor, windsurf, ...) or host names and *.suffix.",
        option="aibridge_observe",
    ),
    Field(
        "egress.deny_hosts",
        _host_items,
        (),
        "Host patterns or catalog entries clients may never reach (403 before any TLS), "
        "e.g. *.cursor.sh or cursor.",
        option="aibridge_deny_hosts",
    ),
    Field(
        "egress.allow_hosts",
        _host_items,
        (),
        "If set, the only host patterns (or catalog entries) clients may reach besides the "
        "routed and observed hosts.",
        option="aibridge_allow_hosts",
    ),
    Field(
        "admin.listen",
        _opt_listen,
        "127.0.0.1:8889",
        "Admin listener (health, metrics, CA, PAC); 'off' disables.",
    ),
    Field(
        "admin.proxy_address",
        _opt_proxy_address,
        None,
        "host:port clients use for the proxy, written into /proxy.pac and the developer page.",
        option="aibridge_proxy_address",
    ),
    Field(
        "workers",
        _number(0, True),
        1,
        "Worker processes sharing the listening port (0: one per CPU core).",
    ),
    Field(
        "grace_period", _number(0), 30.0, "Seconds to let open requests and streams finish on stop."
    ),
    Field(
        "shutdown_delay",
        _number(0),
        0.0,
        "Seconds to keep accepting, with /readyz failing, before draining: lets a load balancer "
        "take this replica out first.",
    ),
    Field(
        "metrics.user_labels",
        _bool,
        False,
        "Count routed requests per user name too.",
        option="aibridge_metrics_user_labels",
    ),
    Field(
        "dump_dir",
        _opt_path,
        None,
        "Write each routed request and response here, secrets redacted.",
        tuple(p + "DUMP_DIR" for p in _CODER),
        option="aibridge_dump_dir",
    ),
    Field(
        "websocket.max_message",
        _number(1024, True),
        16 * 1024 * 1024,
        "Largest WebSocket message in bytes (fragments together); bigger closes with 1009.",
        option="aibridge_websocket_max_message",
    ),
    Field(
        "websocket.negative_ttl",
        _number(0, True),
        600,
        "Seconds to remember that a gateway route refused a WebSocket upgrade (426 meanwhile).",
        option="aibridge_websocket_negative_ttl",
    ),
    Field("log.level", _choice("debug", "info", "warning", "error"), "info", "Log level."),
    Field("log.format", _choice("json", "text"), "json", "json or text."),
    Field(
        "log.access_file",
        _opt_path,
        None,
        "Also append every access line, as JSON, to this file (reopened when logrotate moves "
        "it); `aibridge-proxy usage` reads it.",
    ),
)

FIELDS_BY_KEY = {f.key: f for f in FIELDS}


@dataclass(frozen=True)
class Settings:
    listen: tuple[str, int]
    gateway: str | None
    target: str | None
    providers: ProviderOverrides
    default_providers: bool
    provider_presets: tuple[str, ...]
    gateways: dict | None
    groups: dict | None
    rules: list | None
    profiles: dict | None
    default_profile: str | None
    model_body_limit: int
    health_interval: float
    profile_store: str | None
    health_path: str
    state_dir: Path | None
    ca_cert_file: Path | None
    ca_key_file: Path | None
    gateway_ca_file: Path | None
    origin_ca_file: Path | None
    gateway_timeout: float
    header_timeout: float
    idle_timeout: float
    max_header_bytes: int
    headers_token: str
    headers_request_id: str
    auth_mode: str
    auth_url: str | None
    auth_header: str
    auth_fail_open: bool
    auth_cache_ttl: int
    auth_negative_ttl: int
    auth_cache_size: int
    auth_max_failures: int
    auth_lockout: int
    auth_anonymous_tunnels: bool
    tls_cert_file: Path | None
    tls_key_file: Path | None
    upstream_proxy: UpstreamProxy | None
    upstream_proxy_auth: str
    upstream_proxy_spn: str | None
    upstream_proxy_ca: Path | None
    allowed_ports: tuple[str, ...]
    allowed_private_cidrs: tuple[str, ...]
    observe: tuple[str, ...]
    egress_deny_hosts: tuple[str, ...]
    egress_allow_hosts: tuple[str, ...]
    admin_listen: tuple[str, int] | None
    admin_proxy_address: str | None
    workers: int
    grace_period: float
    shutdown_delay: float
    metrics_user_labels: bool
    dump_dir: Path | None
    websocket_negative_ttl: int
    websocket_max_message: int
    log_level: str
    log_format: str
    log_access_file: Path | None
    config_file: Path | None = None
    # Set by systemd, not by the operator: where to send sd_notify messages.
    notify_socket: str | None = None
    watchdog_usec: int | None = None

    # -- derived values, computed once per Settings --------------------------------------------

    @cached_property
    def provider_table(self) -> ProviderTable:
        return build_provider_table(self.providers, self.default_providers, self.provider_presets)

    @cached_property
    def ca_hosts(self) -> tuple[list[str], list[str]]:
        """What the CA's name constraints permit for the routed and observed hosts, and the
        patterns they cannot cover (see addons/rules/providers.py `constraint_hosts`)."""
        return constraint_hosts(self.provider_table.hosts() + self.observed_hosts.patterns)

    @cached_property
    def observed_hosts(self) -> ObservedHosts:
        return ObservedHosts(self.observe)

    @cached_property
    def policy_config(self) -> dict:
        """The routing rules' part of the configuration, as the Routing addon takes it."""
        return {k: getattr(self, k) for k in POLICY_KEYS}

    @cached_property
    def policy(self) -> Policy:
        return parse_policy(**self.policy_config, fallback_gateway=self.routing_target)

    @cached_property
    def routing_target(self) -> GatewayTarget | None:
        return resolve_target(self.gateway, self.target)

    @property
    def state_path(self) -> Path:
        assert self.state_dir is not None
        return self.state_dir

    @property
    def ca_cert_path(self) -> Path:
        return self.ca_cert_file or self.state_path / "ca.pem"

    @property
    def client_bundle_path(self) -> Path:
        return self.state_path / "ca-bundle.pem"

    @property
    def ca_key_path(self) -> Path:
        return self.ca_key_file or self.state_path / "ca-key.pem"


def build_provider_table(
    overrides: ProviderOverrides, use_defaults: bool = True, presets: tuple[str, ...] = ()
) -> ProviderTable:
    """defaults, then presets, then the operator's own entries (which win)."""
    merged: dict[str, tuple[str, tuple[str, ...]] | None] = {}
    if use_defaults:
        merged.update({r.host: (r.provider, r.paths) for r in ProviderTable.defaults().routes})
    for name in presets:
        merged.update({h: (p, paths) for h, p, paths in PRESETS[name]})
    merged.update(overrides)
    return ProviderTable(
        tuple(make_route(h, spec[0], spec[1]) for h, spec in merged.items() if spec is not None)
    )


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested YAML mappings -> dotted keys, except for values of mapping-typed fields."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if v is None and any(f.startswith(key + ".") for f in FIELDS_BY_KEY):
            continue  # a section whose keys are all commented out
        if isinstance(v, Mapping) and key not in FIELDS_BY_KEY:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _unknown(key: str, source: Source) -> SettingsError:
    hint = difflib.get_close_matches(key, FIELDS_BY_KEY, n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    return SettingsError(f"unknown setting {key!r} in {source}{extra}")


def read_config_file(path: Path) -> dict[str, Any]:
    source = Source("file", str(path))
    try:
        text = path.read_text()
    except OSError as e:
        raise SettingsError(f"cannot read {source}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SettingsError(f"{source}{where} is not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise SettingsError(f"{source} must hold a mapping of settings")
    flat = _flatten(data)
    for key in flat:
        if key not in FIELDS_BY_KEY:
            raise _unknown(key, source)
    return flat


def default_state_dir(environ: Mapping[str, str]) -> Path:
    if d := environ.get("STATE_DIRECTORY"):  # set by systemd's StateDirectory=
        return Path(d.split(":")[0])
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "/tmp")) / ".local/state")
    return Path(base) / "aibridge-proxy"


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    require_gateway: bool = False,
) -> Settings:
    """Merge all sources, validate every value, and return the frozen Settings.

    `flags` maps field keys (dotted) to values already given on the command line (None = not
    given). The config file comes from `config_file`, else AIBRIDGE_PROXY_CONFIG.
    """
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    for key in flags:
        if key not in FIELDS_BY_KEY:
            raise SettingsError(f"unknown setting {key!r}")

    config_path = config_file or environ.get(ENV_PREFIX + "CONFIG") or None
    file_values = read_config_file(Path(config_path)) if config_path else {}

    known_env = {f.env for f in FIELDS} | {ENV_PREFIX + "CONFIG"}
    for name in environ:
        if name.startswith(ENV_PREFIX) and name not in known_env:
            raise _unknown(name[len(ENV_PREFIX) :].lower(), Source("env", name))

    values: dict[str, Any] = {}
    for f in FIELDS:
        layers: list[tuple[Any, Source]] = [(f.default, Source("default", f.key))]
        if f.key in file_values:
            layers.append((file_values[f.key], Source("file", str(config_path))))
        for name in (*f.aliases, f.env):  # our own name wins over Coder's
            if name in environ:
                layers.append((environ[name], Source("env", name)))
        if f.key in flags:
            layers.append((flags[f.key], Source("flag", f.flag)))
        if f.merge:
            merged: dict = {}
            for raw, source in layers:
                merged.update(_parse(f, raw, source))
            values[f.attr] = merged
        else:
            raw, source = layers[-1]
            values[f.attr] = _parse(f, raw, source)
            values.setdefault("_sources", {})[f.key] = (raw, source)

    sources: dict[str, tuple[Any, Source]] = values.pop("_sources")
    if values["state_dir"] is None:
        values["state_dir"] = default_state_dir(environ)
    watchdog = environ.get("WATCHDOG_USEC", "")
    settings = Settings(
        **values,
        config_file=Path(config_path) if config_path else None,
        notify_socket=environ.get("NOTIFY_SOCKET") or None,
        watchdog_usec=int(watchdog) if watchdog.isdigit() else None,
    )
    _check_combinations(settings, sources, require_gateway)
    return settings


def _shown(raw: Any) -> Any:
    """A value as it may appear in an error: credentials in URLs hidden, long text cut."""
    if not isinstance(raw, str):
        return raw
    raw = re.sub(r"//[^/@\s]*@", "//***@", raw)
    return raw if len(raw) < 200 else raw[:200] + "..."


def _parse(f: Field, raw: Any, source: Source) -> Any:
    try:
        return f.parse(raw)
    except ValueError as e:
        raise SettingsError(f"{f.key}: {_shown(raw)!r} from {source} {e}") from None


def _check_combinations(
    s: Settings, sources: Mapping[str, tuple[Any, Source]], require_gateway: bool
) -> None:
    def fail(key: str, problem: str) -> SettingsError:
        raw, source = sources[key]
        return SettingsError(f"{key}: {_shown(raw)!r} from {source} {problem}")

    try:
        target = s.routing_target
    except TargetError as e:
        raise SettingsError(str(e)) from None
    try:
        policy = s.policy
    except PolicyError as e:
        source = next(
            (src for key in POLICY_KEYS if (src := sources[key][1]).kind != "default"), None
        )
        raise SettingsError(f"{e} (in {source})" if source else str(e)) from None
    if require_gateway and target is None and not policy.gateways:
        raise SettingsError(
            "gateway: not set; pass --gateway https://coder.example.com "
            "(or AIBRIDGE_PROXY_GATEWAY, or gateway: in the config file)"
        )
    if (
        require_gateway
        and s.auth_mode == "validate"
        and not (s.gateway or s.auth_url or policy.deployments)
    ):
        raise SettingsError(
            "auth.mode: 'validate' needs gateway (or a gateways entry with url) or auth.url "
            "to check tokens against; set one, or use auth.mode: presence"
        )
    if s.upstream_proxy_auth != "basic":
        upstream = s.upstream_proxy
        if upstream is None:
            raise fail("upstream_proxy_auth", "needs upstream_proxy")
        if upstream.credentials is None and s.upstream_proxy_auth == "ntlm":
            raise fail(
                "upstream_proxy_auth",
                "needs a user name and password in upstream_proxy "
                "(http://DOMAIN%5Cuser:password@host:port)",
            )
        if upstream.credentials is None and not kerberos_available():
            raise fail(
                "upstream_proxy_auth",
                "without a password signs in with Kerberos (the credential cache or keytab), "
                "which needs the gssapi package: pip install 'aibridge-proxy[kerberos]'",
            )
    if (s.tls_cert_file is None) != (s.tls_key_file is None):
        key = "tls_cert_file" if s.tls_cert_file is not None else "tls_key_file"
        raise fail(key, "is set alone; set both tls_cert_file and tls_key_file, or neither")
    for key in ("tls_cert_file", "tls_key_file"):
        p = getattr(s, key)
        if p is not None and not p.is_file():
            raise fail(key, "does not name a readable file")
    if (s.ca_cert_file is None) != (s.ca_key_file is None):
        key = "ca.cert_file" if s.ca_cert_file is not None else "ca.key_file"
        raise fail(key, "is set alone; set both ca.cert_file and ca.key_file, or neither")
    for key in ("headers.token", "headers.request_id", "auth.header"):
        raw, _ = sources[key]
        if not is_header_name(str(raw).strip()):
            raise fail(key, "is not a valid header name")
    from addons.rules.destinations import parse_cidrs
    from addons.rules.destinations import parse_ports

    for key, parse in (("allowed_ports", parse_ports), ("allowed_private_cidrs", parse_cidrs)):
        try:
            parse(getattr(s, key))
        except ValueError as e:
            raise fail(key, str(e)) from None
    for key in ("gateway_ca_file", "origin_ca_file", "upstream_proxy_ca"):
        p = getattr(s, key)
        if p is not None and not p.is_file():
            raise fail(key, "does not name a readable file")
