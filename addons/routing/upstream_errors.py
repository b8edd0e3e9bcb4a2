"""
Upstream failures, answered our way: `502` naming the gateway when it cannot be reached, `504`
when it does not answer in time, always short plain text without internal detail.

mitmproxy renders its own HTML error page (with socket errors and addresses) and cannot abort a
request that waits for response headers: `addons/engine/error_rendering.py` puts `render` in
its place, and closing the upstream socket aborts a request that timed out.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

from mitmproxy import ctx
from mitmproxy import http

from addons.core.dial_refusals import parse_refusal
from addons.core.record import route_info
from addons.core.responses import plain_response
from addons.engine.connections import connection_handler
from addons.engine.error_rendering import ProtocolErrorRendering
from addons.engine.gateway_leg import PooledGatewayLeg

logger = logging.getLogger(__name__)


def classify(error: str) -> str:
    """A short, detail-free reason for an upstream failure message from the engine."""
    e = error.lower()
    if "reset the stream" in e:  # the gateway answered TLS and HTTP/2, and refused one stream
        if "refused_stream" in e:
            return "the gateway refused the request's stream without processing it (REFUSED_STREAM)"
        return "the gateway reset the request's stream"
    if "stopped answering" in e or "did not take the request body" in e:
        return error  # our own words, from the gateway pool
    if "certificate" in e or "tls" in e or "ssl" in e:
        return "TLS handshake failed (is the certificate trusted? see gateway_ca_file)"
    if "name or service not known" in e or "nodename nor servname" in e or "getaddrinfo" in e:
        return "host name does not resolve"
    if "refused" in e or "connect call failed" in e:
        return "connection refused"
    if "timed out" in e or "timeout" in e:
        return "connection timed out"
    if "unreachable" in e:
        return "network unreachable"
    if "closed" in e or "disconnect" in e or "reset" in e:
        return "connection closed before a response"
    return "connection failed"


class UpstreamErrors:
    """Owns the gateway response timeout and the wording of upstream failures."""

    def __init__(self, rendering: ProtocolErrorRendering, legs: PooledGatewayLeg) -> None:
        rendering.renderer = self.render
        self.legs = legs
        self._timers: weakref.WeakKeyDictionary[http.HTTPFlow, asyncio.TimerHandle] = (
            weakref.WeakKeyDictionary()
        )

    def render(self, flow: http.HTTPFlow) -> http.Response | None:
        info = route_info(flow)
        if info is None:
            return None
        if info.timed_out:
            return plain_response(
                504,
                f"the gateway {_origin(info.upstream_url)} did not answer within "
                f"{ctx.options.aibridge_gateway_timeout}s",
            )
        message = flow.error.msg if flow.error else ""
        if refusal := parse_refusal(message):
            return plain_response(*refusal)
        cause = classify(message)
        if info.provider is not None:
            return plain_response(
                502, f"cannot reach the gateway {_origin(info.upstream_url)}: {cause}"
            )
        return plain_response(502, f"cannot reach {info.original_host}: {cause}")

    # The timer runs from the end of the request body to the response headers.
    def request(self, flow: http.HTTPFlow) -> None:
        info = route_info(flow)
        if info is None or info.provider is None or flow.response is not None:
            return
        loop = asyncio.get_running_loop()
        self._timers[flow] = loop.call_later(
            ctx.options.aibridge_gateway_timeout, self._expire, flow
        )

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)
        info = route_info(flow)
        if info is not None and info.first_byte is not None:
            message = flow.error.msg if flow.error else ""
            if "client disconnected" in message.lower():
                logger.info("client went away mid-response (request %s)", info.request_id)
                return
            logger.warning(
                "response from %s ended early after %d bytes: %s (request %s)",
                _origin(info.upstream_url),
                info.bytes_out,
                flow.error.msg if flow.error else "unknown error",
                info.request_id,
            )

    def response(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)

    def _cancel(self, flow: http.HTTPFlow) -> None:
        if timer := self._timers.pop(flow, None):
            timer.cancel()

    def _expire(self, flow: http.HTTPFlow) -> None:
        self._timers.pop(flow, None)
        info = route_info(flow)
        if info is None or flow.response is not None or not flow.live:
            return
        info.timed_out = True
        logger.warning(
            "gateway %s gave no response headers within %ss (request %s)",
            _origin(info.upstream_url),
            ctx.options.aibridge_gateway_timeout,
            info.request_id,
        )
        # Failing the request upstream (its pooled stream, or its own socket) makes mitmproxy
        # fail it; `render` turns that failure into our 504.
        if self.legs.abort(flow, "the gateway did not answer in time"):
            return
        handler = connection_handler(flow.client_conn)
        if handler is not None and flow.server_conn in handler.transports:
            handler.close_connection(flow.server_conn)


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"
