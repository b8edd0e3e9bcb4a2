"""
How long a client connection may take at each stage, so that nobody holds one open for free:

- request headers: within `aibridge_header_timeout` seconds of the first byte of each request
  (not only the first request of a connection), else `408` and close (slowloris);
- the TLS handshake inside an intercepted tunnel, and the first bytes of a raw tunnel (which
  decide what it is), within the same timeout after the CONNECT is answered;
- between requests, with nothing in flight (no response streaming, no WebSocket open), at most
  `aibridge_idle_timeout` seconds, then the connection is closed quietly;
- an intercepted tunnel that has not sent its first request yet, at most
  `aibridge_first_request_timeout` seconds (held-open tunnels cost descriptors for nothing).

A raw tunnel, once relaying, has no deadline: its bytes are the client's business.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass

from mitmproxy import connection
from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http
from mitmproxy import tls
from mitmproxy.net.http import http1

from addons.core.responses import plain_response
from addons.engine.connections import connection_handler
from addons.engine.header_limit import HeaderSizeLimit

logger = logging.getLogger(__name__)


@dataclass
class _Deadline:
    stage: str  # headers | handshake | first | idle
    timer: asyncio.TimerHandle


class ConnectionDeadlines:
    def __init__(self, header_limit: HeaderSizeLimit) -> None:
        header_limit.on_request_start = self._request_started
        self._deadlines: weakref.WeakKeyDictionary[connection.Client, _Deadline] = (
            weakref.WeakKeyDictionary()
        )
        self._in_flight: weakref.WeakKeyDictionary[connection.Client, int] = (
            weakref.WeakKeyDictionary()
        )

    def load(self, loader):
        loader.add_option(
            "aibridge_header_timeout",
            float,
            10.0,
            "Seconds a client may take to send a request's headers (from its first byte), or to "
            "finish the TLS handshake inside a tunnel.",
        )
        loader.add_option(
            "aibridge_idle_timeout",
            float,
            300.0,
            "Seconds a client connection may sit between requests with nothing in flight "
            "before it is closed.",
        )

        loader.add_option(
            "aibridge_first_request_timeout",
            float,
            30.0,
            "Seconds an intercepted tunnel may wait, once its TLS handshake is done, before its "
            "first request.",
        )

    def configure(self, updated):
        for name in (
            "aibridge_header_timeout",
            "aibridge_idle_timeout",
            "aibridge_first_request_timeout",
        ):
            if name in updated and getattr(ctx.options, name) <= 0:
                raise exceptions.OptionsError(f"{name} must be positive")

    # -- stages ------------------------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        self._arm(client, "headers")

    def _request_started(self, client: connection.Client) -> None:
        """The first bytes of a request head arrived (HTTP/1): its headers are now due."""
        current = self._deadlines.get(client)
        if current is None or current.stage in ("idle", "first"):
            self._arm(client, "headers")

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._disarm(flow.client_conn)

    def http_connected(self, flow: http.HTTPFlow) -> None:
        # the handshake (intercepted) or the first bytes (tunnel) are due now
        self._arm(flow.client_conn, "handshake")

    def tls_established_client(self, data: tls.TlsData) -> None:
        if self._stage(data.conn) == "handshake":
            self._arm(data.conn, "first")  # its first request is due, sooner than a later one

    def tunnel_relaying(self, client: connection.Client) -> None:
        """Called by InterceptPolicy once a raw tunnel relays: no deadline from now on."""
        self._disarm(client)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        client = flow.client_conn
        self._disarm(client)
        self._in_flight[client] = self._in_flight.get(client, 0) + 1

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:  # an upgraded connection is in flight until websocket_end
            self._finished(flow.client_conn)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow.client_conn)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._finished(flow.client_conn)

    def client_disconnected(self, client: connection.Client) -> None:
        self._disarm(client)
        self._in_flight.pop(client, None)

    def _finished(self, client: connection.Client) -> None:
        left = max(self._in_flight.get(client, 1) - 1, 0)
        self._in_flight[client] = left
        if left == 0 and client.connected:
            self._arm(client, "idle")

    # -- timers ------------------------------------------------------------------------------

    def _stage(self, client: connection.Client) -> str | None:
        current = self._deadlines.get(client)
        return current.stage if current else None

    def _arm(self, client: connection.Client, stage: str) -> None:
        self._disarm(client)
        if stage == "idle":
            seconds = ctx.options.aibridge_idle_timeout
        elif stage == "first":
            seconds = min(
                ctx.options.aibridge_first_request_timeout, ctx.options.aibridge_idle_timeout
            )
        else:
            seconds = ctx.options.aibridge_header_timeout
        timer = asyncio.get_running_loop().call_later(seconds, self._expire, client, stage)
        self._deadlines[client] = _Deadline(stage, timer)

    def _disarm(self, client: connection.Client) -> None:
        if (current := self._deadlines.pop(client, None)) is not None:
            current.timer.cancel()

    def _expire(self, client: connection.Client, stage: str) -> None:
        self._deadlines.pop(client, None)
        handler = connection_handler(client)
        if handler is None:
            return
        if stage == "idle":
            logger.debug("closing %s: idle between requests", client.peername)
        elif stage == "first":
            logger.info("closing %s: no request in its tunnel in time", client.peername)
        else:
            logger.info("closing %s: no request headers or handshake in time", client.peername)
            io = handler.transports.get(client)
            if stage == "headers" and io is not None and io.writer is not None and not client.tls:
                response = plain_response(
                    408, "request headers not received in time", {"Connection": "close"}
                )
                io.writer.write(http1.assemble_response(response))
        handler.close_connection(client)
