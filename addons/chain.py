"""
The addon chain: one concern per addon, in the order a request meets them, grouped in folders
by concern (each folder's __init__.py says what it may import).

    CONNECT       connection/deadlines (headers, handshake, idle) -> connection/request_limits
                  (header size and bytes) -> connection/listener_tls (TLS to the proxy)
                  -> auth/token_auth (Proxy-Authorization -> token -> user, workspace)
                  -> selfservice/answers (aibridge-proxy.internal and the setup check: answered
                     here, never forwarded)
                  -> egress/egress_policy (ports, ranges, host policy and catalog entries)
    TLS or not    egress/intercept (routed or observed: decrypt with our leaf; else a raw tunnel)
    request       routing/rules (route, origin or deny; reads the model if needed)
                  -> govern/prompt_guard (holds a body to scan it for credentials: block, mask
                     or flag; the routing rule's `dlp:` or the global action)
                  -> govern/mcp_guard (a governed MCP server's JSON-RPC: denied tools
                     refused, tool lists filtered as they stream, each call on record)
                  -> govern/limits (requests, tokens and open requests per user, workspace,
                     group, client or all: 429 before anything is sent)
                  -> routing/gateway (applies rules/plan.py's decision: rewrite to
                     <target>/<provider><path>, stream the body; observed and origin requests
                     are sent on unchanged)
                  -> connection/http2_clients, egress/upstream_proxy (Basic, NTLM, Negotiate),
                     routing/websocket -> observe/dump
    answer        observe/token_usage (read as it streams) -> govern/limits' ledger (tokens
                  counted, leases released) -> routing/upstream_errors (502/504
                  in our words) -> observe/access_log, observe/telemetry (OTLP spans),
                  observe/metrics, observe/recent_requests

Addons share a request's state through its record (core/record.py: identity, decision, route,
usage, the RejectReason of a refusal), written by the concern that knows and read by the
others; events one concern reports and another counts go over the bus wired below.

Hook order, once for both runtimes. mitmproxy calls each hook on every addon in the order they
were added, built-ins included:
- `aibridge-proxy serve` (proxy/server/app.py) builds a slim master: Core, Proxyserver,
  NextLayer, TlsConfig, then this chain, and dispatches hooks from a table of the addons that
  have each one (engine/hook_table.py; same order, same error rules). So NextLayer has already
  answered `next_layer` when InterceptPolicy sees it, and TlsConfig has run `tls_clienthello`
  before us.
- stock `mitmdump -s addons/mitmdump_entry.py` adds scripts through ScriptLoader, which sits
  after ProxyAuth and Proxyserver but before NextLayer and TlsConfig in mitmproxy's default
  list (and 25 other built-ins are around). There InterceptPolicy answers `next_layer` first.
InterceptPolicy is written for either order: it finds the CONNECT's stream in the layer stack
wherever NextLayer left it (engine/layer_stack.py). One difference it cannot undo: in mitmdump,
TlsConfig's `tls_clienthello` runs after ours and sets `establish_server_tls_first` from
`connection_strategy`, so there `connection_strategy=lazy` is required for routed hosts never
to be dialled (our master runs eager, for tunnels, and InterceptPolicy has the last word).
Between our own addons the order below holds in both runtimes.
"""

from __future__ import annotations

from addons.auth.token_auth import TokenAuth
from addons.connection.connection_caps import ConnectionCaps
from addons.connection.deadlines import ConnectionDeadlines
from addons.connection.http2_clients import Http2Clients
from addons.connection.listener_tls import ListenerTLS
from addons.connection.request_limits import RequestLimits
from addons.core.events import COPILOT_QUOTA
from addons.core.events import DLP_VERDICT
from addons.core.events import GATEWAY_CONNECTION
from addons.core.events import GATEWAY_FAILOVER
from addons.core.events import HTTP2_FLOOD
from addons.core.events import LIMIT_ALERT
from addons.core.events import LIMIT_AUDITED
from addons.core.events import LIMIT_REFUSED
from addons.core.events import LIMIT_STORE_ERROR
from addons.core.events import LIMIT_USAGE
from addons.core.events import MCP_CALL
from addons.core.events import MCP_TOOL_CHANGED
from addons.core.events import TELEMETRY_DROPPED
from addons.core.events import TOKEN_CHECKED
from addons.core.events import EventBus
from addons.egress.egress_policy import EgressPolicy
from addons.egress.intercept import InterceptPolicy
from addons.egress.upstream_proxy import UpstreamCredentials
from addons.engine import EnginePatches
from addons.govern.limits import LimitGuard
from addons.govern.limits import LimitLedger
from addons.govern.limits import Limits
from addons.govern.mcp_guard import McpGuard
from addons.govern.prompt_guard import PromptGuard
from addons.observe.access_log import AccessLog
from addons.observe.cost import RequestCost
from addons.observe.dump import ApiDump
from addons.observe.metrics import Metrics
from addons.observe.recent_requests import RecentRequests
from addons.observe.request_context import CopilotQuotas
from addons.observe.request_context import RequestContext
from addons.observe.telemetry import Telemetry
from addons.observe.token_usage import TokenUsage
from addons.routing.gateway import GatewayRouter
from addons.routing.gateway_health import GatewayHealth
from addons.routing.gateway_pooling import GatewayPooling
from addons.routing.gateway_trust import GatewayTrust
from addons.routing.rules import ChoiceStore
from addons.routing.rules import RoutingRules
from addons.routing.snapshot import Routing
from addons.routing.upstream_errors import UpstreamErrors
from addons.routing.websocket import WebSocketFallback
from addons.selfservice.answers import SelfService


def make_addons(patches: EnginePatches) -> list:
    """The chain, wired together; `patches` must be installed by the caller.

    Addons share a request's state through its record (core/record.py) and report events on
    one bus, which is wired here: no addon holds another's callbacks."""
    events = EventBus()
    routing = Routing()
    auth = TokenAuth(routing, events)
    deadlines = ConnectionDeadlines(patches.header_limit)
    choices = ChoiceStore()  # the store itself comes with the options
    health = GatewayHealth(routing, events)
    recent = RecentRequests(who=auth.identity_of)
    quotas = CopilotQuotas()  # Copilot's meter per user: the meter writes, the page reads
    egress = EgressPolicy(routing)  # InterceptPolicy checks tunnels' SNI against its hosts
    metrics = Metrics(routing)
    events.subscribe(TOKEN_CHECKED, metrics.token_checked)
    events.subscribe(GATEWAY_FAILOVER, metrics.gateway_failover)
    events.subscribe(GATEWAY_CONNECTION, metrics.gateway_connection)
    caps = ConnectionCaps()
    events.subscribe(HTTP2_FLOOD, caps.flooded)
    events.subscribe(HTTP2_FLOOD, metrics.http2_flood)
    events.subscribe(DLP_VERDICT, metrics.dlp_verdict)
    events.subscribe(LIMIT_REFUSED, metrics.limit_refused)
    events.subscribe(LIMIT_AUDITED, metrics.limit_audited)
    events.subscribe(LIMIT_ALERT, metrics.limit_alert)
    events.subscribe(COPILOT_QUOTA, metrics.copilot_quota)
    events.subscribe(LIMIT_STORE_ERROR, metrics.limit_store_error)
    events.subscribe(LIMIT_USAGE, metrics.limit_usage)
    limits = Limits(events)  # the guard checks and takes, the ledger counts and releases
    access_log = AccessLog()
    events.subscribe(MCP_CALL, access_log.mcp_call)
    events.subscribe(MCP_CALL, metrics.mcp_call)
    events.subscribe(MCP_CALL, recent.mcp_call)
    telemetry = Telemetry(events)
    events.subscribe(MCP_CALL, telemetry.mcp_call)
    events.subscribe(MCP_TOOL_CHANGED, metrics.mcp_tool_changed)
    events.subscribe(MCP_TOOL_CHANGED, telemetry.mcp_tool_changed)
    events.subscribe(TELEMETRY_DROPPED, metrics.telemetry_dropped)
    return [
        routing,
        deadlines,
        RequestLimits(patches.header_limit),
        ListenerTLS(),
        auth,
        caps,  # after auth: it counts connections against the user they name
        SelfService(routing, choices, recent, limits, quotas),
        egress,
        InterceptPolicy(routing, deadlines, egress),
        RoutingRules(routing, choices, patches.websocket_cap),
        # between the rules (it reads their decision) and the router (which must not stream a
        # body it holds)
        PromptGuard(routing, events, patches.websocket_cap),
        # reads MCP messages (held, like the scan's) and refuses denied tools; before the
        # limits, so a refused call is not counted
        McpGuard(routing, events),
        LimitGuard(limits, patches.websocket_cap),  # after the scan: what it blocks is not counted
        GatewayRouter(routing, health),
        RequestContext(quotas, events),  # after the router: it writes the route's record
        GatewayTrust(routing),
        GatewayPooling(routing, patches.gateway_leg, events),
        health,
        Http2Clients(patches.h2_flood, events),
        UpstreamCredentials(patches.upstream_handshake),
        WebSocketFallback(patches.websocket_cap),
        ApiDump(),
        TokenUsage(),
        RequestCost(),  # after token usage: it prices what the response reported
        LimitLedger(limits),  # after token usage: it counts what the response reported
        UpstreamErrors(patches.error_rendering, patches.gateway_leg),
        access_log,
        telemetry,  # after the router (its span starts with the route) and token usage
        metrics,
        recent,
    ]
