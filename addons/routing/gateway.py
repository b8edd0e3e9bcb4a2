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

from mitmproxy import connection
from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http

from addons.core.record import PendingModel
from addons.core.record import RejectReason
from addons.core.record import RouteInfo
from addons.core.record import RuleRefusal
from addons.core.record import record
from addons.core.record import route_info
from addons.core.responses import challenge_response
from addons.core.responses import plain_response
from addons.core.responses import provider_error_response
from addons.routing.gateway_health import GatewayHealth
from addons.routing.snapshot import Routing
from addons.rules.model_field import model_span
from addons.rules.model_field import replace_model
from addons.rules.plan import plan
from addons.rules.policy import Decision
from addons.rules.proxy_authorization import is_header_name
from addons.rules.request_ids import RequestIds
from addons.rules.request_target import ambiguous_path
from addons.rules.request_target import has_dot_segments
from addons.rules.routed_headers import routed_header_fields

logger = logging.getLogger(__name__)

DEFAULT_TOKEN_HEADER = "X-Coder-AI-Governance-Token"
DEFAULT_REQUEST_ID_HEADER = "X-Coder-AI-Governance-Request-Id"


_REQUEST_IDS = RequestIds()


def carries_token(request: http.Request, token: str) -> bool:
    """True if the client already sends the Coder token as its provider key."""
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip() == token:
        return True
    return request.headers.get("x-api-key", "").strip() == token


class GatewayRouter:
    """Rewrites routed requests to the gateway and turns on streaming both ways."""

    def __init__(self, routing: Routing, health: GatewayHealth):
        self.routing = routing
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
        if flow.response is not None or record(flow).self_service:
            return  # answered, or answered by the proxy itself (selfservice/answers.py)
        try:
            await self._route(flow)
        except Exception:  # fail closed: never let a half-rewritten request out
            logger.exception("could not route %s", flow.request.pretty_url)
            flow.response = plain_response(500, "the proxy could not route this request")

    async def request(self, flow: http.HTTPFlow) -> None:
        """A request whose rule needed the model was read whole; decided now (RoutingRules).
        A body another concern held (the prompt scan) is counted now, as it is sent."""
        info = route_info(flow)
        if info is None or flow.response is not None:
            return
        if not info.awaiting_body:
            if record(flow).body_held:
                self._count_body(flow, info, streaming=False)
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
        entry = record(flow)
        entry.route = info
        flow.metadata["aibridge.request_id"] = info.request_id
        if isinstance(entry.decision, PendingModel):
            info.awaiting_body = True  # RoutingRules reads the model first
            return
        await self._apply(flow, info, streaming=True)

    async def _apply(self, flow: http.HTTPFlow, info: RouteInfo, streaming: bool) -> None:
        """Send the request where its rule (or else the provider table) says."""
        snapshot = self.routing.current
        request = flow.request
        entry = record(flow)
        if isinstance(refusal := entry.decision, RuleRefusal):
            entry.reject = refusal.reason
            flow.response = provider_error_response(
                info.provider, info.original_host, refusal.status, refusal.message,
                refusal.code, refusal.headers,
            )  # fmt: skip
            return
        if isinstance(entry.decision, PendingModel) and not streaming:
            # the rules were to decide on the body and did not (they failed): fail closed
            flow.response = plain_response(500, "the proxy could not apply its routing rules")
            return
        decision = entry.decision if isinstance(entry.decision, Decision) else None
        planned = plan(decision, info.provider, snapshot.policy)
        provider, target, model = planned.provider, snapshot.target, planned.model
        if decision is not None:
            info.rule, info.profile = decision.rule.name, decision.profile
            info.action = type(decision.rule.action).__name__.lower()
        if planned.deny is not None:
            entry.reject = RejectReason.RULE_DENIED
            flow.response = provider_error_response(
                provider, info.original_host, planned.deny.status, planned.deny_message
            )
            return
        names = planned.gateways
        if len(names) > 1:  # failover: the first that takes a connection now
            if (chosen := await self.health.choose(names)) is None:
                flow.response = plain_response(
                    502, f"no gateway of {', '.join(names)} can be reached"
                )
                return
            info.gateway, target = chosen
        elif names:
            info.gateway, target = names[0] or None, snapshot.policy.gateway(names[0])
        info.provider = provider
        if provider is None:  # to the original host, unchanged
            self._count_body(flow, info, streaming)
            return

        # Answer before turning on request streaming: mitmproxy refuses a response set in
        # requestheaders once the request is streamed.
        identity = entry.identity
        if identity is None or identity.token is None:
            flow.response = challenge_response("routed requests need a Coder token")
            return
        if target is None:
            flow.response = plain_response(502, "no gateway is configured (aibridge_gateway)")
            return
        if has_dot_segments(request.path):
            entry.reject = RejectReason.DOT_SEGMENTS
            flow.response = plain_response(400, "the path holds . or .. segments")
            return
        if problem := ambiguous_path(request.path):
            entry.reject = RejectReason.AMBIGUOUS_PATH
            flow.response = plain_response(400, problem)
            return
        token_header = ctx.options.aibridge_token_header
        sent = request.headers.get(token_header)
        if sent is not None and sent.strip() != identity.token:
            # the gateway bills whoever this header names: only the authenticated user
            entry.reject = RejectReason.GOVERNANCE_TOKEN_MISMATCH
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
        entry = record(flow)
        if not streaming:
            info.count_in(flow.request.raw_content or b"", entry.shown_body)
        elif not entry.body_held:
            flow.request.stream = info.count_in
        # else: held whole until `request`, and counted there

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
