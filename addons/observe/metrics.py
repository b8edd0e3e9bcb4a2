"""
Prometheus metrics, derived from the hooks every flow passes through.

No label ever holds a token; user names appear only in a separate series, and only when
`aibridge_metrics_user_labels` is on. In-flight requests are counted per flow and released
exactly once, whichever way the flow ends (response, error, or the client vanishing).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from dataclasses import field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version
from typing import Any

from mitmproxy import connection
from mitmproxy import ctx
from mitmproxy import http
from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram
from prometheus_client import disable_created_metrics

from addons.core.record import FlowRecord
from addons.core.record import RouteInfo
from addons.core.record import existing_record
from addons.core.record import route_info
from addons.routing.snapshot import Routing
from addons.rules.limits import LimitUsage
from addons.rules.prompt_dlp import Verdict
from addons.rules.user_agents import tool_of

PREFIX = "aibridge_proxy_"

disable_created_metrics()  # one series per counter, not two
ORIGIN = "origin"  # provider label for requests passed through to the original host

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TUNNEL_BUCKETS = (0.1, 1, 10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


MODEL_LABEL_VALUES = 100  # distinct model label values kept; the rest count as OTHER
TOOL_LABEL_VALUES = 50  # distinct tool label values kept (cost); the rest count as OTHER
MCP_TOOL_LABEL_VALUES = 50  # tool names a server chose (not the admin): kept, then OTHER
OTHER = "other"


class CappedLabel:
    """A label whose values come from outside (a response's model): the first `limit`
    distinct values are kept, every later one becomes OTHER, so clients and vendors cannot
    grow /metrics without bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return OTHER
        self.seen.add(value)
        return value


@dataclass
class _ProviderSeries:
    inflight: Any
    duration: Any
    ttfb: Any
    bytes_in: Any
    bytes_out: Any
    codes: dict[str, Any] = field(default_factory=dict)


class Metrics:
    def __init__(self, routing: Routing, registry: CollectorRegistry | None = None):
        self.routing = routing
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connects = Counter(
            PREFIX + "connects", "CONNECT requests by outcome.", ["outcome", "reason"], registry=r
        )
        self.auth_failures = Counter(
            PREFIX + "auth_failures",
            "Failed proxy authentications by reason.",
            ["reason"],
            registry=r,
        )
        self.requests = Counter(
            PREFIX + "requests",
            "Finished requests by provider and status code.",
            ["provider", "code"],
            registry=r,
        )
        self.user_requests = Counter(
            PREFIX + "user_requests",
            "Routed requests by user (only with user labels on).",
            ["user", "provider"],
            registry=r,
        )
        self.duration = Histogram(
            PREFIX + "request_duration_seconds",
            "From request headers to the end of the response.",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            PREFIX + "time_to_first_byte_seconds",
            "From request headers to response headers.",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.bytes_in = Counter(
            PREFIX + "request_bytes", "Request body bytes from clients.", ["provider"], registry=r
        )
        self.bytes_out = Counter(
            PREFIX + "response_bytes", "Response body bytes to clients.", ["provider"], registry=r
        )
        self.inflight = Gauge(
            PREFIX + "inflight_requests",
            "Requests in progress.",
            ["provider"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.tunnel_duration = Histogram(
            PREFIX + "tunnel_duration_seconds",
            "Lifetime of tunnels to non-routed hosts.",
            buckets=TUNNEL_BUCKETS,
            registry=r,
        )
        self.ca_expiry = Gauge(
            PREFIX + "ca_expiry_timestamp_seconds",
            "CA certificate notAfter (Unix time).",
            registry=r,
            multiprocess_mode="max",
        )
        self.reloads = Counter(
            PREFIX + "config_reloads", "Configuration reloads by result.", ["result"], registry=r
        )
        # Gauges say how to combine worker processes (see proxy/server/workers.py).
        self.last_reload = Gauge(
            PREFIX + "config_last_reload_success_timestamp_seconds",
            "Time of the last successful reload.",
            registry=r,
            multiprocess_mode="max",
        )
        self.info = Gauge(
            PREFIX + "build_info",
            "Always 1; labels describe the build.",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.info.labels(version=_version()).set(1)
        self.cache_hits = Counter(
            PREFIX + "token_cache_hits", "Token checks answered from the cache.", registry=r
        )
        self.cache_misses = Counter(
            PREFIX + "token_cache_misses", "Token checks that asked the gateway.", registry=r
        )
        self.gateway_requests = Counter(
            PREFIX + "gateway_requests",
            "Routed requests by named gateway (routing rules).",
            ["gateway"],
            registry=r,
        )
        self.gateway_failovers = Counter(
            PREFIX + "gateway_failovers",
            "Times a named gateway was found down and skipped.",
            ["gateway"],
            registry=r,
        )
        self.gateway_connections_opened = Counter(
            PREFIX + "gateway_connections_opened",
            "Connections the worker pools opened to each gateway, by protocol (h2, http/1.1).",
            ["gateway", "protocol"],
            registry=r,
        )
        self.gateway_connections = Gauge(
            PREFIX + "gateway_connections",
            "Pooled connections open to each gateway, shared by every client.",
            ["gateway", "protocol"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.limit_refusals = Counter(
            PREFIX + "limit_refusals",
            "Requests refused by a limit, by the limit's name.",
            ["limit"],
            registry=r,
        )
        self.limit_audit_refusals = Counter(
            PREFIX + "limit_audit_refusals",
            "Requests a limit in audit mode would have refused (and let through), by limit.",
            ["limit"],
            registry=r,
        )
        self.copilot_remaining = Gauge(
            PREFIX + "copilot_quota_remaining",
            "What is left of each user's Copilot quota, as Copilot's last answer said (only "
            "with user labels on).",
            ["user", "quota"],
            registry=r,
        )
        self.copilot_entitlement = Gauge(
            PREFIX + "copilot_quota_entitlement",
            "Each user's Copilot quota entitlement (-1: unlimited; only with user labels on).",
            ["user", "quota"],
            registry=r,
        )
        self.limit_alerts = Counter(
            PREFIX + "limit_alerts",
            "Budgets that crossed one of their alert shares, once per subject and window.",
            ["limit", "share"],
            registry=r,
        )
        self.user_limit_refusals = Counter(
            PREFIX + "user_limit_refusals",
            "Requests refused by a limit, per user (only with user labels on).",
            ["user", "limit"],
            registry=r,
        )
        self.limit_store_errors = Counter(
            PREFIX + "limit_store_errors",
            "Limit checks the shared store could not answer, by what was done (allow, refuse).",
            ["action"],
            registry=r,
        )
        # sampled from the limits store every few seconds (addons/govern/limits.py); with a
        # shared store every worker reads the same numbers, hence the max across workers
        self.limit_used = Gauge(
            PREFIX + "limit_used",
            "What a limit's subjects have used in its current window (requests or tokens) or "
            "hold now (open requests), summed over them.",
            ["limit"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.limit_exhausted = Gauge(
            PREFIX + "limit_exhausted_subjects",
            "Subjects (users, workspaces, groups...) that have used all of a limit now.",
            ["limit"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.user_limit_used = Gauge(
            PREFIX + "user_limit_used",
            "A user's use of a per-user limit now (only with user labels on).",
            ["user", "limit"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.user_limit_left = Gauge(
            PREFIX + "user_limit_left",
            "What a user has left of a per-user limit now (only with user labels on).",
            ["user", "limit"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self._limit_series: set[str] = set()  # limits the gauges have a series for
        self._user_limit_series: set[tuple[str, str]] = set()
        self.mcp_tool_changes = Counter(
            PREFIX + "mcp_tool_changes",
            "Tool definitions a governed MCP server changed after they were approved (pinned), "
            "by server entry; `aibridge-proxy mcp accept` approves them.",
            ["server"],
            registry=r,
        )
        self.mcp_calls = Counter(
            PREFIX + "mcp_calls",
            "Tool calls to governed MCP servers, by server entry, tool (the tools the entry "
            "names, then a bounded set, then 'other') and outcome (ok, error, denied, no_answer).",
            ["server", "tool", "outcome"],
            registry=r,
        )
        self._mcp_tool_label = CappedLabel(MCP_TOOL_LABEL_VALUES)
        self.spans_dropped = Counter(
            PREFIX + "telemetry_dropped",
            "Spans not exported: the queue was full or the collector could not take them.",
            registry=r,
        )
        self.dlp_findings = Counter(
            PREFIX + "dlp_findings",
            "Credentials found in requests by the prompt scan, by kind and what was done "
            "(block, mask, flag).",
            ["kind", "action"],
            registry=r,
        )
        self.dlp_unscanned = Counter(
            PREFIX + "dlp_unscanned",
            "Request bodies the prompt scan could not read or finish, by what was done "
            "(block or pass).",
            ["action"],
            registry=r,
        )
        self.http2_floods = Counter(
            PREFIX + "http2_floods",
            "HTTP/2 client connections closed with GOAWAY for a flood, by what they flooded.",
            ["what"],
            registry=r,
        )
        self.rule_decisions = Counter(
            PREFIX + "rule_decisions",
            "Requests decided by a routing rule, by rule and action.",
            ["rule", "action"],
            registry=r,
        )
        self.tokens = Counter(
            PREFIX + "tokens",
            "Tokens the responses reported, by provider (or observed tool), model and kind.",
            ["provider", "model", "kind"],
            registry=r,
        )
        self.cost = Counter(
            PREFIX + "cost_usd",
            "What the requests cost in US dollars (prices: over the price database), by "
            "provider (or observed tool), model and tool.",
            ["provider", "model", "tool"],
            registry=r,
        )
        self.unpriced = Counter(
            PREFIX + "unpriced_requests",
            "Requests whose model has no price (neither prices: nor the database): counted "
            "here, never as $0.",
            ["provider", "model"],
            registry=r,
        )
        self.user_cost = Counter(
            PREFIX + "user_cost_usd",
            "What each user's requests cost in US dollars (only with user labels on).",
            ["user", "provider"],
            registry=r,
        )
        self.user_tokens = Counter(
            PREFIX + "user_tokens",
            "Tokens per user (only with user labels on).",
            ["user", "provider", "model", "kind"],
            registry=r,
        )
        self._by_provider: dict[str, _ProviderSeries] = {}
        self._token_series: dict[tuple, Any] = {}  # (family, [user,] provider, model, kind)
        self._model_label = CappedLabel(MODEL_LABEL_VALUES)
        self._tool_label = CappedLabel(TOOL_LABEL_VALUES)  # a User-Agent's product: bounded
        self._inflight: dict[str, str] = {}  # flow id -> provider label
        self._client_flows: weakref.WeakKeyDictionary[connection.Client, set[str]] = (
            weakref.WeakKeyDictionary()
        )
        self._tunnels: weakref.WeakKeyDictionary[connection.Client, float] = (
            weakref.WeakKeyDictionary()
        )
        for result in ("success", "failure"):
            self.reloads.labels(result=result)

    def load(self, loader):
        loader.add_option(
            "aibridge_metrics_user_labels",
            bool,
            False,
            "Also count routed requests per user name (a label per user: mind the cardinality).",
        )

    # -- events (chain.py subscribes these) ---------------------------------------------------

    def token_checked(self, cached: bool) -> None:
        (self.cache_hits if cached else self.cache_misses).inc()

    def gateway_failover(self, name: str) -> None:
        self.gateway_failovers.labels(gateway=name).inc()

    def gateway_connection(self, gateway: str, protocol: str, opened: bool) -> None:
        if opened:
            self.gateway_connections_opened.labels(gateway=gateway, protocol=protocol).inc()
            self.gateway_connections.labels(gateway=gateway, protocol=protocol).inc()
        else:
            self.gateway_connections.labels(gateway=gateway, protocol=protocol).dec()

    def limit_refused(self, name: str, user: str | None) -> None:
        self.limit_refusals.labels(limit=name).inc()  # names come from the configuration
        if user and ctx.options.aibridge_metrics_user_labels:
            self.user_limit_refusals.labels(user=user, limit=name).inc()

    def copilot_quota(self, user: str, snapshots) -> None:
        if not ctx.options.aibridge_metrics_user_labels:
            return
        for snapshot in snapshots:
            if snapshot.remaining is not None:
                self.copilot_remaining.labels(user=user, quota=snapshot.quota).set(
                    snapshot.remaining
                )
            if snapshot.entitlement is not None:
                self.copilot_entitlement.labels(user=user, quota=snapshot.quota).set(
                    snapshot.entitlement
                )

    def limit_audited(self, name: str, _user: str | None) -> None:
        self.limit_audit_refusals.labels(limit=name).inc()

    def limit_alert(self, name: str, share: float) -> None:
        self.limit_alerts.labels(limit=name, share=f"{share:g}").inc()

    def limit_store_error(self, action: str) -> None:
        self.limit_store_errors.labels(action=action).inc()

    def limit_usage(self, uses: list[LimitUsage]) -> None:
        """A fresh sample of every limit's use: the gauges say it, series that went away go."""
        used: dict[str, int] = {}
        exhausted: dict[str, int] = {}
        for use in uses:
            name = use.limit.name
            used[name] = used.get(name, 0) + use.used
            exhausted[name] = exhausted.get(name, 0) + (use.used >= use.limit.amount)
        self._limit_series |= used.keys()
        for name in self._limit_series:  # a limit nobody uses now shows 0
            self.limit_used.labels(limit=name).set(used.get(name, 0))
            self.limit_exhausted.labels(limit=name).set(exhausted.get(name, 0))
        users: set[tuple[str, str]] = set()
        if ctx.options.aibridge_metrics_user_labels:
            for use in uses:
                if use.limit.by == "user":
                    labels = (use.subject, use.limit.name)
                    users.add(labels)
                    self.user_limit_used.labels(*labels).set(use.used)
                    self.user_limit_left.labels(*labels).set(max(0, use.limit.amount - use.used))
        for labels in self._user_limit_series - users:  # a window ended: its users are gone
            self.user_limit_used.remove(*labels)
            self.user_limit_left.remove(*labels)
        self._user_limit_series = users

    def mcp_call(self, call) -> None:
        if call.tool is None:
            return  # initialize, tools/list, ping...: on record in the log, not counted here
        tool = call.tool if call.known_tool else self._mcp_tool_label(call.tool)
        self.mcp_calls.labels(server=call.server, tool=tool, outcome=call.outcome).inc()

    def mcp_tool_changed(self, server: str, _tool: str) -> None:
        self.mcp_tool_changes.labels(server=server).inc()

    def telemetry_dropped(self, count: int) -> None:
        self.spans_dropped.inc(count)

    def dlp_verdict(self, verdict: Verdict) -> None:
        for finding in verdict.findings:
            # kinds come from the catalogue and the admin's patterns: a bounded set
            self.dlp_findings.labels(kind=finding.kind, action=verdict.action).inc()
        if verdict.unscanned is not None:
            self.dlp_unscanned.labels(action=verdict.action).inc()

    def http2_flood(self, client: connection.Client, what: str) -> None:
        self.http2_floods.labels(what=what.removeprefix("too many ")).inc()

    # -- CONNECTs ----------------------------------------------------------------------------

    def http_connected(self, flow: http.HTTPFlow) -> None:
        snapshot = self.routing.current
        if snapshot.table.lookup(flow.request.host) is not None:
            self.connects.labels(outcome="intercepted", reason="").inc()
        elif snapshot.observed.lookup(flow.request.host) is not None:
            self.connects.labels(outcome="observed", reason="").inc()
        else:
            self.connects.labels(outcome="tunnelled", reason="").inc()
            self._tunnels[flow.client_conn] = time.monotonic()

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        entry = existing_record(flow)
        reason = (entry.reject if entry else None) or f"status_{flow.response.status_code}"
        self.connects.labels(outcome="rejected", reason=reason).inc()
        self._count_auth_failure(entry)

    def client_disconnected(self, client: connection.Client) -> None:
        if (started := self._tunnels.pop(client, None)) is not None:
            self.tunnel_duration.observe(time.monotonic() - started)
        for flow_id in self._client_flows.pop(client, ()):
            self._release(flow_id)

    # -- requests ----------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        info = route_info(flow)
        if info is None:
            return
        provider = info.provider or ORIGIN
        self._inflight[flow.id] = provider
        self._client_flows.setdefault(flow.client_conn, set()).add(flow.id)
        self._series(provider).inflight.inc()

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        self._release(flow.id)
        if flows := self._client_flows.get(flow.client_conn):
            flows.discard(flow.id)
        entry = existing_record(flow)
        self._count_auth_failure(entry)
        info = entry.route if entry is not None else None
        if info is None:
            return
        provider = info.provider or ORIGIN
        code = str(flow.response.status_code) if flow.response is not None else "error"
        series = self._series(provider)
        counter = series.codes.get(code)
        if counter is None:
            counter = series.codes[code] = self.requests.labels(provider=provider, code=code)
        counter.inc()
        now = time.monotonic()
        series.duration.observe(now - info.started)
        if info.first_byte is not None:
            series.ttfb.observe(info.first_byte - info.started)
        series.bytes_in.inc(info.bytes_in)
        series.bytes_out.inc(info.bytes_out)
        if info.gateway is not None:
            self.gateway_requests.labels(gateway=info.gateway).inc()
        if info.rule is not None:
            self.rule_decisions.labels(rule=info.rule, action=info.action or "").inc()
        user = None
        if ctx.options.aibridge_metrics_user_labels:
            identity = entry.identity
            user = identity.user if identity is not None else None
        if user and info.provider is not None:
            self.user_requests.labels(user=user, provider=provider).inc()
        if info.usage is not None:
            self._count_tokens(info.provider or info.observed or ORIGIN, info, user)
        if info.cost is not None:
            self._count_cost(info.provider or info.observed or ORIGIN, info, flow, user)

    def _count_cost(self, provider: str, info: RouteInfo, flow, user: str | None) -> None:
        assert info.cost is not None and info.usage is not None
        model = self._model_label((info.usage.model or info.model_sent or "")[:64])
        if info.cost.usd is None:
            self._token_counter(self.unpriced, provider=provider, model=model).inc()
            return
        tool = self._tool_label(tool_of(flow.request.headers.get("user-agent")) or "unknown")
        self._token_counter(self.cost, provider=provider, model=model, tool=tool).inc(info.cost.usd)
        if user:
            self._token_counter(self.user_cost, user=user, provider=provider).inc(info.cost.usd)

    def _count_tokens(self, provider: str, info: RouteInfo, user: str | None) -> None:
        assert info.usage is not None
        # the model answered, else the one sent: never the client's own words (a rewrite rule
        # turns any name a client sends into one model), and at most MODEL_LABEL_VALUES of them
        model = self._model_label((info.usage.model or info.model_sent or "")[:64])
        for kind, count in info.usage.token_fields().items():
            kind = kind.removesuffix("_tokens")
            self._token_counter(self.tokens, provider=provider, model=model, kind=kind).inc(count)
            if user:
                self._token_counter(
                    self.user_tokens, user=user, provider=provider, model=model, kind=kind
                ).inc(count)

    def _token_counter(self, family: Counter, **labels: str):
        """A token counter's child, looked up once: a label lookup costs on every request."""
        key = (family, *labels.values())
        child = self._token_series.get(key)
        if child is None:
            child = self._token_series[key] = family.labels(**labels)
        return child

    def _series(self, provider: str) -> _ProviderSeries:
        """The per-provider children, looked up once (label lookups cost on every request)."""
        series = self._by_provider.get(provider)
        if series is None:
            series = self._by_provider[provider] = _ProviderSeries(
                inflight=self.inflight.labels(provider=provider),
                duration=self.duration.labels(provider=provider),
                ttfb=self.ttfb.labels(provider=provider),
                bytes_in=self.bytes_in.labels(provider=provider),
                bytes_out=self.bytes_out.labels(provider=provider),
            )
        return series

    def _release(self, flow_id: str) -> None:
        if (provider := self._inflight.pop(flow_id, None)) is not None:
            self._series(provider).inflight.dec()

    def _count_auth_failure(self, entry: FlowRecord | None) -> None:
        if entry is not None and entry.auth_failure:
            entry.auth_failure = False  # counted once, at the CONNECT or the request
            self.auth_failures.labels(reason=entry.reject or "unknown").inc()

    # -- set by the program ------------------------------------------------------------------

    def reload_result(self, ok: bool) -> None:
        self.reloads.labels(result="success" if ok else "failure").inc()
        if ok:
            self.last_reload.set(time.time())


def _version() -> str:
    try:
        return version("aibridge-proxy")
    except PackageNotFoundError:
        return "unknown"
