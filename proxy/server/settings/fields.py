"""The table of settings: each declared once, with its YAML key, environment variable and
flag (derived from the key), its parser, default and help, and the engine option it feeds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from addons.rules.genai import CONTENT_POLICIES
from addons.rules.providers import COPILOT_COMPLETIONS
from addons.rules.providers import PRESETS
from proxy.server.settings.base import ENV_PREFIX
from proxy.server.settings.parsers import parse_bool
from proxy.server.settings.parsers import parse_choice
from proxy.server.settings.parsers import parse_dlp_patterns
from proxy.server.settings.parsers import parse_header_map
from proxy.server.settings.parsers import parse_host_items
from proxy.server.settings.parsers import parse_limit_list
from proxy.server.settings.parsers import parse_listen
from proxy.server.settings.parsers import parse_mcp_list
from proxy.server.settings.parsers import parse_number
from proxy.server.settings.parsers import parse_observed
from proxy.server.settings.parsers import parse_opt_listen
from proxy.server.settings.parsers import parse_opt_path
from proxy.server.settings.parsers import parse_opt_proxy_address
from proxy.server.settings.parsers import parse_opt_str
from proxy.server.settings.parsers import parse_opt_upstream
from proxy.server.settings.parsers import parse_opt_url
from proxy.server.settings.parsers import parse_presets
from proxy.server.settings.parsers import parse_price_list
from proxy.server.settings.parsers import parse_providers
from proxy.server.settings.parsers import parse_str
from proxy.server.settings.parsers import parse_str_list
from proxy.server.settings.parsers import parse_structured


@dataclass(frozen=True)
class Field:
    key: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    aliases: tuple[str, ...] = ()  # other environment variable names (Coder's)
    merge: bool = False  # mapping merged across sources rather than replaced
    option: str | None = None  # the mitmproxy option this setting feeds (engine_options)
    flag_name: str | None = None  # a flag not spelt like the key

    @property
    def attr(self) -> str:
        return self.key.replace(".", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.attr.upper()

    @property
    def flag(self) -> str:
        return self.flag_name or "--" + self.key.replace(".", "-").replace("_", "-")


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
        parse_opt_url,
        None,
        "Base URL of the Coder deployment (https://coder.example.com).",
        option="aibridge_gateway",
    ),
    Field(
        "target",
        parse_opt_url,
        None,
        "Full URL routed requests go to, instead of <gateway>/api/v2/aibridge.",
        tuple(p + "TARGET" for p in _CODER),
        option="aibridge_target",
    ),
    Field(
        "providers",
        parse_providers,
        None,
        "Routed hosts to add, replace (host: provider or {provider, paths}) or remove (host: null).",
        merge=True,
        flag_name="--provider",  # one host=name[@/path,...] per flag, repeatable (host=- removes)
    ),
    Field("default_providers", parse_bool, True, "Start from the built-in provider table."),
    Field(
        "gateways",
        parse_structured(dict),
        None,
        "Named gateways, the first the default: name: {url: ...} or {target: ..., ca_file: ...}.",
    ),
    Field("groups", parse_structured(dict), None, "Groups of users: group: [user, ...]."),
    Field(
        "rules",
        parse_structured(list),
        None,
        "Routing rules, first match decides: {name, match: {...}, route|origin|deny: {...}}.",
    ),
    Field(
        "profiles", parse_structured(dict), None, "Named sets of rules a workspace can switch to."
    ),
    Field(
        "default_profile", parse_opt_str, None, "The profile a workspace uses until it picks one."
    ),
    Field(
        "profile_store",
        parse_opt_str,
        None,
        "Where profile choices are kept: redis://host:6379/0 for several replicas "
        "(default: <state_dir>/profiles.json).",
    ),
    Field(
        "health.interval",
        parse_number(0),
        10.0,
        "Seconds between health checks of each named gateway (0: none).",
        option="aibridge_health_interval",
    ),
    Field(
        "health.path",
        parse_str,
        "/api/v2/buildinfo",
        "Path checked on each gateway's origin; a 5xx or no answer marks it down.",
        option="aibridge_health_path",
    ),
    Field(
        "model_body_limit",
        parse_number(1024, True),
        16 * 1024 * 1024,
        "Largest request body read to find the model when a rule needs it (bigger: 413).",
        option="aibridge_rules_max_body",
    ),
    Field(
        "provider_presets",
        parse_presets,
        (),
        "Opt-in route sets by name: " + ", ".join(PRESETS) + ".",
    ),
    Field(
        "copilot_completions",
        parse_choice(*COPILOT_COMPLETIONS),
        "observe",
        "Copilot's inline completions (proxy.<plan>.githubcopilot.com): observe (decrypted, "
        "recorded, sent on unchanged; the gateway does not serve them), route (to the gateway) "
        "or tunnel (never decrypted).",
    ),
    Field("state_dir", parse_opt_path, None, "Where the generated CA and engine files live."),
    Field(
        "ca.cert_file",
        parse_opt_path,
        None,
        "CA certificate (PEM; may be followed by its chain). Default: <state_dir>/ca.pem.",
        tuple(p + "CERT_FILE" for p in _CODER),
    ),
    Field(
        "ca.key_file",
        parse_opt_path,
        None,
        "CA private key (PEM, mode 0600). Default: <state_dir>/ca-key.pem.",
        tuple(p + "KEY_FILE" for p in _CODER),
    ),
    Field("gateway_ca_file", parse_opt_path, None, "Extra CA (PEM) trusted for the gateway."),
    Field(
        "origin_ca_file", parse_opt_path, None, "Extra CA (PEM) trusted for pass-through origins."
    ),
    Field(
        "gateway_timeout",
        parse_number(0.001),
        300.0,
        "Seconds to wait for gateway response headers.",
        option="aibridge_gateway_timeout",
    ),
    Field(
        "gateway_pool.max_connections",
        parse_number(0, integer=True),
        8,
        "Connections each worker keeps to each gateway, shared by every client (HTTP/2 "
        "streams multiplex over them); 0: each client connection dials the gateway itself.",
        option="aibridge_gateway_pool_max_connections",
    ),
    Field(
        "gateway_pool.idle_timeout",
        parse_number(0.001),
        90.0,
        "Seconds an idle pooled gateway connection stays open (beyond gateway_pool.warm).",
        option="aibridge_gateway_pool_idle_timeout",
    ),
    Field(
        "gateway_pool.warm",
        parse_number(0, integer=True),
        1,
        "Pooled connections opened to each gateway at start-up and kept open while idle.",
        option="aibridge_gateway_pool_warm",
    ),
    Field(
        "header_timeout",
        parse_number(0.001),
        10.0,
        "Seconds a client may take to send request headers.",
        option="aibridge_header_timeout",
    ),
    Field(
        "idle_timeout",
        parse_number(0.001),
        300.0,
        "Seconds a client connection may sit between requests before it is closed.",
        option="aibridge_idle_timeout",
    ),
    Field(
        "first_request_timeout",
        parse_number(0.001),
        30.0,
        "Seconds an intercepted tunnel may wait for its first request once its TLS handshake "
        "is done.",
        option="aibridge_first_request_timeout",
    ),
    Field(
        "connections.max_per_user",
        parse_number(1, True),
        256,
        "Client connections one user may hold at once (429 above; never more than half of "
        "connections.max_total).",
        option="aibridge_max_connections_per_user",
    ),
    Field(
        "connections.max_per_address",
        parse_number(1, True),
        1024,
        "Client connections one address may hold at once (429 above).",
        option="aibridge_max_connections_per_address",
    ),
    Field(
        "connections.max_total",
        parse_number(0, True),
        0,
        "Client connections in all (503 above); 0: what the open-file limit allows.",
        option="aibridge_max_connections",
    ),
    Field(
        "max_header_bytes",
        parse_number(1024, True),
        65536,
        "Largest request header block (431 above).",
        option="aibridge_max_header_bytes",
    ),
    Field(
        "headers.token",
        parse_str,
        "X-Coder-AI-Governance-Token",
        "Header that carries the Coder token when the client uses its own key.",
        option="aibridge_token_header",
    ),
    Field(
        "headers.request_id",
        parse_str,
        "X-Coder-AI-Governance-Request-Id",
        "Header with a fresh id for each routed request.",
        option="aibridge_request_id_header",
    ),
    Field(
        "auth.mode",
        parse_choice("validate", "presence"),
        "validate",
        "validate or presence.",
        option="aibridge_auth_mode",
    ),
    Field(
        "auth.url",
        parse_opt_url,
        None,
        "Token check URL (default <gateway>/api/v2/users/me).",
        option="aibridge_auth_url",
    ),
    Field(
        "auth.header",
        parse_str,
        "Coder-Session-Token",
        "Header carrying the token to auth.url.",
        option="aibridge_auth_header",
    ),
    Field(
        "auth.fail_open",
        parse_bool,
        False,
        "Accept tokens when validation is unavailable.",
        option="aibridge_auth_fail_open",
    ),
    Field(
        "auth.cache_ttl",
        parse_number(0, True),
        300,
        "Seconds a valid token is cached.",
        option="aibridge_auth_cache_ttl",
    ),
    Field(
        "auth.negative_ttl",
        parse_number(0, True),
        30,
        "Seconds an invalid token is cached.",
        option="aibridge_auth_negative_ttl",
    ),
    Field(
        "auth.cache_size",
        parse_number(1, True),
        10000,
        "Most tokens cached at once.",
        option="aibridge_auth_cache_size",
    ),
    Field(
        "auth.max_failures",
        parse_number(0, True),
        10,
        "Failures per client before 429 (0: off).",
        option="aibridge_auth_max_failures",
    ),
    Field(
        "auth.lockout",
        parse_number(1, True),
        60,
        "Failure window and lockout, seconds.",
        option="aibridge_auth_lockout",
    ),
    Field(
        "auth.anonymous_tunnels",
        parse_bool,
        False,
        "Allow tunnels to non-routed hosts without credentials (makes an open relay).",
        option="aibridge_anonymous_tunnels",
    ),
    Field(
        "tls_cert_file",
        parse_opt_path,
        None,
        "Certificate (PEM + chain) for TLS between clients and the proxy (HTTPS_PROXY=https://).",
        tuple(p + "TLS_CERT_FILE" for p in _CODER),
        option="aibridge_tls_cert_file",
    ),
    Field(
        "tls_key_file",
        parse_opt_path,
        None,
        "Private key for tls_cert_file.",
        tuple(p + "TLS_KEY_FILE" for p in _CODER),
        option="aibridge_tls_key_file",
    ),
    Field(
        "upstream_proxy",
        parse_opt_upstream,
        None,
        "Company egress proxy for tunnels and pass-through: http(s)://[user:pass@]host:port.",
        tuple(p + "UPSTREAM" for p in _CODER),
    ),
    Field(
        "upstream_proxy_auth",
        parse_choice("basic", "ntlm", "negotiate"),
        "basic",
        "How to authenticate to upstream_proxy: basic, ntlm or negotiate (Kerberos with the "
        "credential cache or keytab, else NTLM inside Negotiate).",
        option="aibridge_upstream_auth_scheme",
    ),
    Field(
        "upstream_proxy_spn",
        parse_opt_str,
        None,
        "Kerberos service of the upstream proxy (default HTTP@<its host>).",
        option="aibridge_upstream_spn",
    ),
    Field(
        "upstream_proxy_ca",
        parse_opt_path,
        None,
        "Extra CA (PEM) trusted for an https:// upstream proxy.",
        tuple(p + "UPSTREAM_CA" for p in _CODER),
    ),
    Field(
        "allowed_ports",
        parse_str_list,
        ("443", "80"),
        "Ports clients may CONNECT to.",
        option="aibridge_allowed_ports",
    ),
    Field(
        "allowed_private_cidrs",
        parse_str_list,
        (),
        "Non-public ranges the proxy may still reach for clients (CIDR list).",
        tuple(p + "ALLOWED_PRIVATE_CIDRS" for p in _CODER),
        option="aibridge_allowed_private_cidrs",
    ),
    Field(
        "observe",
        parse_observed,
        (),
        "Hosts to decrypt only to see and account for (who, tool, model, tokens), then forward "
        "unchanged: AI host catalog entries (cursor, windsurf, ...) or host names and *.suffix.",
    ),
    Field(
        "mcp",
        parse_mcp_list,
        None,
        "Governed remote MCP servers: [{name, url, allow_tools, deny_tools}]; their hosts are "
        "decrypted, denied tools refused and every call logged.",
    ),
    Field(
        "egress.deny_hosts",
        parse_host_items,
        (),
        "Host patterns or catalog entries clients may never reach (403 before any TLS), "
        "e.g. *.cursor.sh or cursor.",
        option="aibridge_deny_hosts",
    ),
    Field(
        "egress.allow_hosts",
        parse_host_items,
        (),
        "If set, the only host patterns (or catalog entries) clients may reach besides the "
        "routed and observed hosts.",
        option="aibridge_allow_hosts",
    ),
    Field(
        "admin.listen",
        parse_opt_listen,
        "127.0.0.1:8889",
        "Admin listener (health, metrics, CA, PAC); 'off' disables.",
    ),
    Field(
        "admin.allowed_hosts",
        parse_str_list,
        (),
        "Host names the admin listener answers besides IP addresses, localhost, this machine's "
        "name and admin.proxy_address (e.g. a Kubernetes service name Prometheus scrapes); any "
        "other Host header gets 421, so a DNS-rebinding page cannot read it.",
    ),
    Field(
        "admin.proxy_address",
        parse_opt_proxy_address,
        None,
        "host:port clients use for the proxy, written into /proxy.pac and the developer page.",
        option="aibridge_proxy_address",
    ),
    Field(
        "workers",
        parse_number(0, True),
        1,
        "Worker processes sharing the listening port (0: one per CPU core).",
    ),
    Field(
        "grace_period",
        parse_number(0),
        30.0,
        "Seconds to let open requests and streams finish on stop.",
    ),
    Field(
        "shutdown_delay",
        parse_number(0),
        0.0,
        "Seconds to keep accepting, with /readyz failing, before draining: lets a load balancer "
        "take this replica out first.",
    ),
    Field(
        "metrics.user_labels",
        parse_bool,
        False,
        "Count routed requests per user name too.",
        option="aibridge_metrics_user_labels",
    ),
    Field(
        "dump_dir",
        parse_opt_path,
        None,
        "Write each routed request and response here, secrets redacted.",
        tuple(p + "DUMP_DIR" for p in _CODER),
        option="aibridge_dump_dir",
    ),
    Field(
        "websocket.max_message",
        parse_number(1024, True),
        16 * 1024 * 1024,
        "Largest WebSocket message in bytes (fragments together); bigger closes with 1009.",
        option="aibridge_websocket_max_message",
    ),
    Field(
        "websocket.negative_ttl",
        parse_number(0, True),
        600,
        "Seconds to remember that a gateway route refused a WebSocket upgrade (426 meanwhile).",
        option="aibridge_websocket_negative_ttl",
    ),
    Field(
        "limits",
        parse_limit_list,
        None,
        "Limits and budgets: [{name, match, requests|tokens|concurrent: N, per, by}].",
    ),
    Field(
        "prices",
        parse_price_list,
        None,
        "What requests cost, over the price database: [{match: provider/model, input, output, "
        "cache_read (US$ per million tokens) | per_request}], the first match wins.",
    ),
    Field(
        "limits_store",
        parse_opt_str,
        None,
        "Where limits are counted: redis://host:6379/0, shared by every replica (default: "
        "memory, exact for one replica with one worker).",
        option="aibridge_limits_store",
    ),
    Field(
        "limits_on_store_error",
        parse_choice("allow", "refuse"),
        "allow",
        "When limits_store cannot be reached: allow (limits are about cost; an outage must not "
        "stop everyone's work) or refuse (503).",
        option="aibridge_limits_on_store_error",
    ),
    Field(
        "dlp.action",
        parse_choice("off", "block", "mask", "flag"),
        "off",
        "Prompt DLP for every decrypted request: block, mask or flag credentials (routing "
        "rules may say their own `dlp:`).",
        option="aibridge_dlp_action",
    ),
    Field(
        "dlp.on_error",
        parse_choice("auto", "block", "pass"),
        "auto",
        "A body the scan cannot finish (detector error, timeout, over dlp.max_bytes): block or "
        "pass; auto: pass under flag, block under block and mask.",
        option="aibridge_dlp_on_error",
    ),
    Field(
        "dlp.unreadable",
        parse_choice("pass", "block"),
        "pass",
        "A body that is not text (an observed tool's protobuf): pass (recorded as unscanned) "
        "or block.",
        option="aibridge_dlp_unreadable",
    ),
    Field(
        "dlp.max_bytes",
        parse_number(1024, True),
        4 * 1024 * 1024,
        "Largest request body scanned, decoded (bigger: dlp.on_error).",
        option="aibridge_dlp_max_bytes",
    ),
    Field(
        "dlp.timeout",
        parse_number(0.001),
        2.0,
        "Seconds one body's scan may take (longer: dlp.on_error).",
        option="aibridge_dlp_timeout",
    ),
    Field(
        "dlp.patterns",
        parse_dlp_patterns,
        None,
        "Your own kinds of credential: [{name, regex}] (group 1, if any, is the credential).",
    ),
    Field(
        "dlp.allow",
        parse_str_list,
        (),
        "Values never reported, e.g. a team's test keys.",
        option="aibridge_dlp_allow",
    ),
    Field(
        "telemetry.otlp_endpoint",
        parse_opt_url,
        None,
        "OTLP/HTTP collector for the audit trail's spans (http://collector:4318); off when unset.",
        ("OTEL_EXPORTER_OTLP_ENDPOINT",),
        option="aibridge_telemetry_endpoint",
    ),
    Field(
        "telemetry.headers",
        parse_header_map,
        None,
        "Headers for the collector (a mapping, or k=v,k2=v2); never logged.",
        ("OTEL_EXPORTER_OTLP_HEADERS",),
    ),
    Field(
        "telemetry.content",
        parse_choice(*CONTENT_POLICIES),
        "none",
        "Prompts and answers in spans: none, hash (keyed digests), redact (as the prompt scan "
        "masked them; needs dlp.action) or full.",
        option="aibridge_telemetry_content",
    ),
    Field(
        "telemetry.service_name",
        parse_str,
        "aibridge-proxy",
        "service.name of the spans' resource.",
        ("OTEL_SERVICE_NAME",),
        option="aibridge_telemetry_service_name",
    ),
    Field("log.level", parse_choice("debug", "info", "warning", "error"), "info", "Log level."),
    Field("log.format", parse_choice("json", "text"), "json", "json or text."),
    Field(
        "log.access_file",
        parse_opt_path,
        None,
        "Also append every access line, as JSON, to this file (reopened when logrotate moves "
        "it); `aibridge-proxy usage` reads it.",
    ),
)

FIELDS_BY_KEY = {f.key: f for f in FIELDS}
