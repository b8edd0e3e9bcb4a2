"""
A size limit on one request body that mitmproxy buffers, set per flow: mitmproxy has only the
global `body_size_limit`, which also refuses bodies it would stream (it checks a
Content-Length before any hook runs). A routing rule that needs the model of a body sent
without a Content-Length (chunked, or HTTP/2) has it read whole; past the limit the client
gets 413, as with body_size_limit, and the buffer is dropped.
"""

from __future__ import annotations

from mitmproxy import flow as mitm_flow
from mitmproxy import http
from mitmproxy.proxy.layers.http import ErrorCode
from mitmproxy.proxy.layers.http import HttpErrorHook
from mitmproxy.proxy.layers.http import HttpStream
from mitmproxy.proxy.layers.http import RequestData
from mitmproxy.proxy.layers.http import ResponseProtocolError
from mitmproxy.proxy.layers.http import SendHttp

_METADATA_KEY = "aibridge.buffered_body_limit"


def limit_buffered_body(flow: http.HTTPFlow, max_bytes: int) -> None:
    """Refuse `flow`'s request body with 413 once more than `max_bytes` of it are buffered."""
    flow.metadata[_METADATA_KEY] = max_bytes


def buffered_body_limit(flow: http.HTTPFlow) -> int:
    """The limit another concern set on this body (0: none yet)."""
    return int(flow.metadata.get(_METADATA_KEY) or 0)


class BufferedBodyLimit:
    """Wraps `HttpStream.state_consume_request_body`."""

    def __init__(self) -> None:
        self._original = None

    def install(self) -> None:
        if self._original is not None:
            return
        original = self._original = HttpStream.state_consume_request_body

        def state_consume_request_body(stream, event):
            yield from original(stream, event)
            limit = stream.flow.metadata.get(_METADATA_KEY) if stream.flow else None
            if (
                limit is None
                or not isinstance(event, RequestData)
                or len(stream.request_body_buf) <= limit
            ):
                return
            message = f"the request body is larger than {limit} bytes"
            stream.request_body_buf.clear()
            stream.flow.error = mitm_flow.Error(message)
            yield HttpErrorHook(stream.flow)
            yield SendHttp(
                ResponseProtocolError(stream.stream_id, message, ErrorCode.REQUEST_TOO_LARGE),
                stream.context.client,
            )
            stream.client_state = stream.state_errored
            stream.flow.live = False

        HttpStream.state_consume_request_body = state_consume_request_body

    def uninstall(self) -> None:
        if self._original is not None:
            HttpStream.state_consume_request_body = self._original
            self._original = None
