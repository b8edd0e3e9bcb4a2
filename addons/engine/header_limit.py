"""
A size limit on request header blocks, which mitmproxy's HTTP/1 server lacks: it buffers
header bytes without bound until the blank line (a FIXME in `Http1Server.read_headers`).
Over the limit the client gets `431` and the connection closes. The same reader tells when a
request head starts, which no hook does (for the per-request header timeout).
"""

from __future__ import annotations

import logging

from mitmproxy.net.http import http1
from mitmproxy.proxy import commands
from mitmproxy.proxy import events
from mitmproxy.proxy.layers.http import _http1

from addons.core.responses import plain_response

logger = logging.getLogger("addons.connection.request_limits")


class HeaderSizeLimit:
    """Wraps `Http1Server.read_headers`; `max_bytes` is set by the RequestLimits addon."""

    def __init__(self, max_bytes: int = 65536):
        self.max_bytes = max_bytes
        # told when the first bytes of a request head arrive (ConnectionDeadlines)
        self.on_request_start = lambda client: None
        self._original = None

    def install(self) -> None:
        if self._original is not None:
            return
        original = self._original = _http1.Http1Server.read_headers
        limit = self

        def read_headers(server, event):
            if isinstance(event, events.DataReceived) and len(server.buf) == len(event.data):
                limit.on_request_start(server.conn)  # nothing buffered before: a new head
            yield from original(server, event)
            if (
                isinstance(event, events.DataReceived)
                and server.state == server.read_headers
                and len(server.buf) > limit.max_bytes
            ):
                logger.info("request headers from %s exceed the limit", server.conn.peername)
                response = plain_response(431, "request headers too large", {"Connection": "close"})
                yield commands.SendData(server.conn, http1.assemble_response(response))
                yield commands.CloseConnection(server.conn)
                server.state = server.done

        _http1.Http1Server.read_headers = read_headers

    def uninstall(self) -> None:
        if self._original is not None:
            _http1.Http1Server.read_headers = self._original
            self._original = None
