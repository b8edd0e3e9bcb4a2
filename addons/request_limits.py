"""
Hostile input: limits on what a client may send before we act on it.

- Request headers must arrive within `aibridge_header_timeout` seconds of connecting
  (slowloris), and a header block may not exceed `aibridge_max_header_bytes` (431).
  mitmproxy buffers header bytes without limit (a FIXME in its HTTP/1 server), so the limit on
  bytes still in flight is `addons/engine/header_limit.py`, configured from here.
- Header names and values holding NUL, CR or LF are refused with 400: they would otherwise be
  forwarded, and are a classic request-smuggling and header-injection vector. So are methods
  that are not tokens and targets with spaces or controls (HTTP/2 lets `:method` and `:path`
  hold them; an HTTP/1.1 request line upstream cannot).
"""

from __future__ import annotations

import asyncio
import logging
import weakref

from mitmproxy import connection
from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http
from mitmproxy.net.http import http1

from addons.engine.connections import connection_handler
from addons.engine.header_limit import HeaderSizeLimit
from addons.responses import plain_response
from addons.rules.request_target import is_method
from addons.rules.request_target import is_request_target

logger = logging.getLogger(__name__)

_BAD_HEADER_BYTES = (b"\x00", b"\r", b"\n")


def header_block_size(headers: http.Headers) -> int:
    return sum(len(k) + len(v) + 4 for k, v in headers.fields)


def has_bad_header_bytes(headers: http.Headers) -> bool:
    return any(b in k or b in v for k, v in headers.fields for b in _BAD_HEADER_BYTES)


class RequestLimits:
    def __init__(self, header_limit: HeaderSizeLimit) -> None:
        self.header_limit = header_limit
        self._deadlines: weakref.WeakKeyDictionary[connection.Client, asyncio.TimerHandle] = (
            weakref.WeakKeyDictionary()
        )

    def load(self, loader):
        loader.add_option(
            "aibridge_header_timeout",
            float,
            10.0,
            "Seconds a new client connection may take to send its first request headers.",
        )
        loader.add_option(
            "aibridge_max_header_bytes",
            int,
            65536,
            "Largest request header block accepted (bigger: 431).",
        )

    def configure(self, updated):
        if "aibridge_header_timeout" in updated and ctx.options.aibridge_header_timeout <= 0:
            raise exceptions.OptionsError("aibridge_header_timeout must be positive")
        if "aibridge_max_header_bytes" in updated:
            if ctx.options.aibridge_max_header_bytes < 1024:
                raise exceptions.OptionsError("aibridge_max_header_bytes must be at least 1024")
            self.header_limit.max_bytes = ctx.options.aibridge_max_header_bytes

    # -- slowloris -----------------------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        loop = asyncio.get_running_loop()
        self._deadlines[client] = loop.call_later(
            ctx.options.aibridge_header_timeout, self._expire, client
        )

    def client_disconnected(self, client: connection.Client) -> None:
        self._headers_arrived(client)

    def _headers_arrived(self, client: connection.Client) -> None:
        if timer := self._deadlines.pop(client, None):
            timer.cancel()

    def _expire(self, client: connection.Client) -> None:
        self._deadlines.pop(client, None)
        handler = connection_handler(client)
        if handler is None:
            return
        logger.info("closing %s: no request headers within the timeout", client.peername)
        io = handler.transports.get(client)
        if io is not None and io.writer is not None and not client.tls:
            response = plain_response(
                408, "request headers not received in time", {"Connection": "close"}
            )
            io.writer.write(http1.assemble_response(response))
        handler.close_connection(client)

    # -- header checks ---------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._check(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._check(flow)

    def _check(self, flow: http.HTTPFlow) -> None:
        self._headers_arrived(flow.client_conn)
        if flow.response is not None:
            return
        if header_block_size(flow.request.headers) > self.header_limit.max_bytes:
            flow.metadata["aibridge.reject_reason"] = "headers_too_large"
            flow.response = plain_response(431, "request headers too large")
        elif has_bad_header_bytes(flow.request.headers):
            flow.metadata["aibridge.reject_reason"] = "malformed_header"
            flow.response = plain_response(400, "header holds NUL, CR or LF")
        elif not is_method(flow.request.method):
            flow.metadata["aibridge.reject_reason"] = "malformed_method"
            flow.response = plain_response(400, "the method is not a token")
        elif flow.request.method != "CONNECT" and not is_request_target(flow.request.path):
            # HTTP/2 lets :path hold what an HTTP/1.1 request line cannot
            flow.metadata["aibridge.reject_reason"] = "malformed_target"
            flow.response = plain_response(400, "the request target holds spaces or controls")
