"""
Upstream failures, answered our way: `502` naming the gateway when it cannot be reached, `504`
when it does not answer in time, always short plain text without internal detail.

mitmproxy renders its own HTML error page (with socket errors and addresses) and cannot abort a
request that waits for response headers. This module is the one place that reaches into its
internals to change both; `tests/unit/test_error_pages.py` pins the behaviour so an engine
upgrade that breaks it fails loudly.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable

from mitmproxy import ctx
from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers.http import _http1

from addons.connections import connection_handler
from addons.egress import parse_refusal
from addons.gateway import route_info
from addons.responses import plain_response

logger = logging.getLogger(__name__)

Renderer = Callable[[http.HTTPFlow], http.Response | None]

_renderer: Renderer | None = None
_original_handle_protocol_error = http_layer.HttpStream.handle_protocol_error


def _plain_error(status: int, message: str = "") -> bytes:
    """mitmproxy's low-level error page (malformed requests), as plain text without detail."""
    text = {400: "malformed request", 413: "request too large"}.get(status, "request failed")
    return http1.assemble_response(plain_response(status, text, {"Connection": "close"}))


def _handle_protocol_error(self, event):
    """Run mitmproxy's handler, but replace the error it sends the client by our response."""
    gen = _original_handle_protocol_error(self, event)
    try:
        command = next(gen)
        while True:
            if (
                _renderer is not None
                and isinstance(command, http_layer.SendHttp)
                and isinstance(command.event, http_layer.ResponseProtocolError)
                and command.connection == self.context.client
                and self.flow.response is None
                and (response := _renderer(self.flow)) is not None
            ):
                self.flow.response = response
                sid = self.stream_id
                yield http_layer.SendHttp(
                    http_layer.ResponseHeaders(sid, response, False), self.context.client
                )
                yield http_layer.SendHttp(
                    http_layer.ResponseData(sid, response.raw_content or b""), self.context.client
                )
                yield http_layer.SendHttp(http_layer.ResponseEndOfMessage(sid), self.context.client)
                command = gen.send(None)
                continue
            result = yield command
            command = gen.send(result)
    except StopIteration as stop:
        return stop.value


def install(renderer: Renderer) -> None:
    """Point mitmproxy's error path at `renderer` (idempotent; the last caller wins)."""
    global _renderer
    _renderer = renderer
    http_layer.HttpStream.handle_protocol_error = _handle_protocol_error
    _http1.make_error_response = _plain_error


def classify(error: str) -> str:
    """A short, detail-free reason for an upstream failure message from the engine."""
    e = error.lower()
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

    def __init__(self) -> None:
        self._timers: weakref.WeakKeyDictionary[http.HTTPFlow, asyncio.TimerHandle] = (
            weakref.WeakKeyDictionary()
        )

    def load(self, loader):
        install(self.render)

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
        # Closing the upstream socket makes mitmproxy fail the request; `render` turns that
        # failure into our 504.
        handler = connection_handler(flow.client_conn)
        if handler is not None and flow.server_conn in handler.transports:
            handler.close_connection(flow.server_conn)


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"
