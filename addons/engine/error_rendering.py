"""
Upstream failures in our words: mitmproxy answers a failed request with its own HTML page
(socket errors, addresses); and malformed requests with its own low-level page. Both are
replaced here: the first by the renderer the UpstreamErrors addon supplies, the second by
short plain text without detail.
"""

from __future__ import annotations

from collections.abc import Callable

from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers.http import _http1

from addons.core.responses import plain_response

Renderer = Callable[[http.HTTPFlow], http.Response | None]


def plain_error_page(status: int, message: str = "") -> bytes:
    """mitmproxy's low-level error page (malformed requests), as plain text without detail."""
    text = {400: "malformed request", 413: "request too large"}.get(status, "request failed")
    return http1.assemble_response(plain_response(status, text, {"Connection": "close"}))


class ProtocolErrorRendering:
    """Wraps `HttpStream.handle_protocol_error` and replaces `_http1.make_error_response`."""

    def __init__(self) -> None:
        self.renderer: Renderer | None = None
        self._originals: tuple | None = None

    def install(self) -> None:
        if self._originals is not None:
            return
        original = http_layer.HttpStream.handle_protocol_error
        self._originals = (original, _http1.make_error_response)
        rendering = self

        def handle_protocol_error(stream, event):
            """Run mitmproxy's handler, but replace the error it sends the client."""
            gen = original(stream, event)
            try:
                command = next(gen)
                while True:
                    if (
                        rendering.renderer is not None
                        and isinstance(command, http_layer.SendHttp)
                        and isinstance(command.event, http_layer.ResponseProtocolError)
                        and command.connection == stream.context.client
                        and stream.flow.response is None
                        and (response := rendering.renderer(stream.flow)) is not None
                    ):
                        yield from rendering._send(stream, response)
                        command = gen.send(None)
                        continue
                    result = yield command
                    command = gen.send(result)
            except StopIteration as stop:
                return stop.value

        http_layer.HttpStream.handle_protocol_error = handle_protocol_error
        _http1.make_error_response = plain_error_page

    @staticmethod
    def _send(stream, response: http.Response):
        stream.flow.response = response
        sid, client = stream.stream_id, stream.context.client
        yield http_layer.SendHttp(http_layer.ResponseHeaders(sid, response, False), client)
        yield http_layer.SendHttp(http_layer.ResponseData(sid, response.raw_content or b""), client)
        yield http_layer.SendHttp(http_layer.ResponseEndOfMessage(sid), client)

    def uninstall(self) -> None:
        if self._originals is not None:
            http_layer.HttpStream.handle_protocol_error, _http1.make_error_response = (
                self._originals
            )
            self._originals = None
