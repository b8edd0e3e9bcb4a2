"""
Rewrite: send each routed request to `<target>/<provider><original path>?<query>`, then stream
the answer back.

All rewriting happens in `requestheaders`: with request streaming on, mitmproxy opens the
upstream connection right after that hook, so a rewrite any later would reach the original
provider host instead of the gateway.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from dataclasses import field

from mitmproxy import connection
from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http

from addons.auth import TokenAuth
from addons.gateway_health import GatewayHealth
from addons.policy import PendingModel
from addons.policy import decision_for
from addons.responses import challenge_response
from addons.responses import plain_response
from addons.responses import provider_error_response
from addons.routing import Routing
from addons.rules.model_field import model_span
from addons.rules.model_field import replace_model
from addons.rules.policy import Decision
from addons.rules.policy import Deny
from addons.rules.policy import Origin
from addons.rules.proxy_authorization import is_header_name
from addons.rules.request_ids import RequestIds
from addons.rules.request_target import has_dot_segments
from addons.rules.routed_headers import routed_header_fields
from addons.rules.token_usage import Usage
from addons.rules.token_usage import UsageReader

logger = logging.getLogger(__name__)

DEFAULT_TOKEN_HEADER = "X-Coder-AI-Governance-Token"
DEFAULT_REQUEST_ID_HEADER = "X-Coder-AI-Governance-Request-Id"


@dataclass
class RouteInfo:
    """What we did with one request; read by the access log, metrics and error pages."""

    provider: str | None  # None: passed through to the original host
    original_host: str
    original_path: str
    upstream_url: str
    request_id: str
    started: float
    first_byte: float | None = None
    timed_out: bool = False
    bytes_in: int = 0  # request body bytes from the client
    bytes_out: int = 0  # response body bytes to the client
    awaiting_body: bool = False  # its rule needs the model: routed in the `request` hook
    rule: str | None = None  # the routing rule that decided, if one did
    action: str | None = None  # what it decided: route, origin or deny
    profile: str | None = None  # the profile that rule came from
    gateway: str | None = None  # the named gateway it went to
    model: str | None = None  # the model the client asked for, where a rule replaced it
    model_sent: str | None = None  # the model sent instead
    observed: str | None = None  # an observed host: its catalog entry, else the host pattern
    usage_reader: UsageReader | None = None  # token_usage.py, while the response streams
    usage: Usage | None = None  # what the response reported, once it is over
    # Other addons may watch the bodies as they stream by (the dump does).
    request_taps: list = field(default_factory=list)
    response_taps: list = field(default_factory=list)

    def count_in(self, chunk: bytes) -> bytes:
        self.bytes_in += len(chunk)
        for tap in self.request_taps:
            tap(chunk)
        return chunk

    def count_out(self, chunk: bytes) -> bytes:
        self.bytes_out += len(chunk)
        for tap in self.response_taps:
            tap(chunk)
        return chunk


# Kept beside the flow rather than in flow.metadata, which mitmproxy serialises when flows are
# saved (`mitmdump -w`) and which must therefore hold plain data only.
_ROUTES: weakref.WeakKeyDictionary[http.HTTPFlow, RouteInfo] = weakref.WeakKeyDictionary()


_REQUEST_IDS = RequestIds()


def route_info(flow: http.HTTPFlow) -> RouteInfo | None:
    return _ROUTES.get(flow)


def carries_token(request: http.Request, token: str) -> bool:
    """True if the client already sends the Coder token as its provider key."""
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip() == token:
        return True
    return request.headers.get("x-api-key", "").strip() == token


class GatewayRouter:
    """Rewrites routed requests to the gateway and turns on streaming both ways."""

    def __init__(self, routing: Routing, auth: TokenAuth, health: GatewayHealth):
        self.routing = routing
        self.auth = auth
        self.health = health

    def load(self, loader):
        loader.add_option(
            "aibridge_token_header",
            str,
            DEFAULT_TOKEN_HEADER,
            "Header that carries the Coder token to the gateway when the client's own "
            "Authorization or x-api-key holds a different key (e.g. Copilot's GitHub token).",
        )
        loader.add_option(
            "aibridge_request_id_header",
            str,
            DEFAULT_REQUEST_ID_HEADER,
            "Header with a fresh request id added to every routed request.",
        )
        loader.add_option(
            "aibridge_gateway_timeout",
            float,
            300.0,
            "Seconds to wait for the gateway's response headers before answering 504. A "
            "response that has started is never cut by this timer.",
        )

    def configure(self, updated):
        for name in ("aibridge_token_header", "aibridge_request_id_header"):
            if name in updated:
                value = getattr(ctx.options, name)
                if not is_header_name(value):
                    raise exceptions.OptionsError(f"{name} {value!r} is not a valid header name")
        if "aibridge_gateway_timeout" in updated and ctx.options.aibridge_gateway_timeout <= 0:
            raise exceptions.OptionsError("aibridge_gateway_timeout must be a positive number")

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.metadata.get("aibridge.self_service"):
            return  # answered, or answered by the proxy itself (self_service.py)
        try:
            await self._route(flow)
        except Exception:  # fail closed: never let a half-rewritten request out
            logger.exception("could not route %s", flow.request.pretty_url)
            flow.response = plain_response(500, "the proxy could not route this request")

    async def request(self, flow: http.HTTPFlow) -> None:
        """A request whose rule needed the model was read whole; decided now (RoutingRules)."""
        info = route_info(flow)
        if info is None or not info.awaiting_body or flow.response is not None:
            return
        info.awaiting_body = False
        try:
            await self._apply(flow, info, streaming=False)
        except Exception:  # fail closed, as in requestheaders
            logger.exception("could not route %s", flow.request.pretty_url)
            flow.response = plain_response(500, "the proxy could not route this request")

    async def _route(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        snapshot = self.routing.current
        route = snapshot.table.route(request.host, request.path)
        observed = snapshot.observed.lookup(request.host) if route is None else None
        info = RouteInfo(
            provider=route.provider if route else None,
            original_host=request.host,
            original_path=request.path,
            upstream_url=request.url,  # until rewritten below
            request_id=_REQUEST_IDS.new(),
            started=time.monotonic(),
            observed=(observed.entry or observed.pattern) if observed else None,
        )
        _ROUTES[flow] = info
        flow.metadata["aibridge.request_id"] = info.request_id
        if isinstance(decision_for(flow), PendingModel):
            info.awaiting_body = True  # RoutingRules reads the model first
            return
        await self._apply(flow, info, streaming=True)

    async def _apply(self, flow: http.HTTPFlow, info: RouteInfo, streaming: bool) -> None:
        """Send the request where its rule (or else the provider table) says."""
        snapshot = self.routing.current
        request = flow.request
        decision = decision_for(flow)
        provider, target, model = info.provider, snapshot.target, None
        if isinstance(decision, Decision):
            action = decision.rule.action
            info.rule, info.profile = decision.rule.name, decision.profile
            info.action = type(action).__name__.lower()
            if isinstance(action, Deny):
                flow.metadata["aibridge.reject_reason"] = "rule_denied"
                flow.response = provider_error_response(
                    provider, info.original_host, action.status,
                    f"{action.message} (rule {decision.rule.name})",
                )  # fmt: skip
                return
            if isinstance(action, Origin):
                provider = None
            else:
                provider, model = action.provider, action.model
                names = action.gateways or (snapshot.policy.default_gateway or "",)
                if len(names) > 1:  # failover: the first that takes a connection now
                    if (chosen := await self.health.choose(names)) is None:
                        flow.response = plain_response(
                            502, f"no gateway of {', '.join(names)} can be reached"
                        )
                        return
                    info.gateway, target = chosen
                else:
                    info.gateway, target = names[0] or None, snapshot.policy.gateway(names[0])
        info.provider = provider
        if provider is None:  # to the original host, unchanged
            self._count_body(flow, info, streaming)
            return

        # Answer before turning on request streaming: mitmproxy refuses a response set in
        # requestheaders once the request is streamed.
        identity = self.auth.identity(flow)
        if identity is None or identity.token is None:
            flow.response = challenge_response("routed requests need a Coder token")
            return
        if target is None:
            flow.response = plain_response(502, "no gateway is configured (aibridge_gateway)")
            return
        if has_dot_segments(request.path):
            flow.metadata["aibridge.reject_reason"] = "dot_segments"
            flow.response = plain_response(400, "the path holds . or .. segments")
            return
        token_header = ctx.options.aibridge_token_header
        sent = request.headers.get(token_header)
        if sent is not None and sent.strip() != identity.token:
            # the gateway bills whoever this header names: only the authenticated user
            flow.metadata["aibridge.reject_reason"] = "governance_token_mismatch"
            flow.response = plain_response(
                400, f"{token_header} does not match the token in the proxy credentials"
            )
            return

        new_path = target.path_for(provider, request.path)
        if flow.server_conn.via is not None:
            # A fresh server connection spec without `via`: routed requests go straight to the
            # gateway even when tunnels leave through an upstream proxy.
            flow.server_conn = connection.Server(address=(target.host, target.port))
        request.scheme = target.scheme
        # Host and port straight into the request's data: each setter would rewrite the Host
        # header (and an h2 :authority) on its own; both are written once, below.
        request.data.host, request.data.port = target.host, target.port
        request.path = new_path
        added = {ctx.options.aibridge_request_id_header: info.request_id}
        if sent is None and not carries_token(request, identity.token):
            added[token_header] = identity.token
        request.headers.fields = routed_header_fields(
            request.headers.fields, target.authority, added
        )
        if request.data.authority:
            request.authority = target.authority
        if model is not None and not streaming:
            info.model, _ = model_span(request.raw_content or b"")
            request.content = replace_model(request.raw_content or b"", model)
            info.model_sent = model
        info.upstream_url = target.origin + new_path
        self._count_body(flow, info, streaming)

    @staticmethod
    def _count_body(flow: http.HTTPFlow, info: RouteInfo, streaming: bool) -> None:
        if streaming:
            flow.request.stream = info.count_in
        else:
            info.count_in(flow.request.raw_content or b"")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # Stream every response: SSE events must not wait for the end of the stream, and a
        # large download must not sit in memory.
        assert flow.response is not None
        info = route_info(flow)
        if info is None:
            flow.response.stream = True
            return
        info.first_byte = time.monotonic()
        flow.response.stream = info.count_out
