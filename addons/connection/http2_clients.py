"""
HTTP/2 from clients, made correct in front of an HTTP/1.1 gateway.

mitmproxy translates h2 client streams into HTTP/1.1 upstream requests, with two gaps:
- a request body sent without `content-length` goes upstream with no framing at all and is
  lost; we ask for chunked transfer-encoding, which the HTTP/1.1 client then writes;
- at most 5 upstream connections per client connection and destination (a hard-coded
  semaphore, mitmproxy#8322), so the 6th concurrent stream on one h2 connection waits; and
  h2 -> h1 never reuses upstream connections, so each stream needs its own. We lift the limit
  for each client connection as it arrives, to the streams its client may open at once (the
  `max_concurrent_streams` mitmproxy advertises), no more.
Upstream connections to the gateway are pinned to HTTP/1.1 so the framing above is valid.
Floods (rapid reset, control frames) are cut off in the engine (addons/engine/h2_abuse.py);
this addon says so in the log and reports it (HTTP2_FLOOD) for the connection caps and metrics.
"""

from __future__ import annotations

import logging

from mitmproxy import connection
from mitmproxy import http
from mitmproxy.proxy import server_hooks

from addons.core.events import HTTP2_FLOOD
from addons.core.events import EventBus
from addons.engine.connections import lift_upstream_connection_cap
from addons.engine.h2_abuse import Http2FloodGuard

logger = logging.getLogger(__name__)

UPSTREAM_CONNECTIONS_PER_CLIENT = 100  # h2's default MAX_CONCURRENT_STREAMS, as advertised
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "CONNECT", "TRACE"})


class Http2Clients:
    def __init__(
        self, flood_guard: Http2FloodGuard | None = None, events: EventBus | None = None
    ) -> None:
        self.events = events or EventBus()
        if flood_guard is not None:
            flood_guard.on_flood = self._flood

    def _flood(self, client: connection.Client, what: str) -> None:
        peer = client.peername[0] if client.peername else "?"
        logger.warning("closed an HTTP/2 connection from %s (GOAWAY): %s", peer, what)
        self.events.emit(HTTP2_FLOOD, client, what)

    def client_connected(self, client: connection.Client) -> None:
        lift_upstream_connection_cap(client, UPSTREAM_CONNECTIONS_PER_CLIENT)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        if (
            flow.response is None
            and request.is_http2
            and request.method not in _BODYLESS
            and "content-length" not in request.headers
        ):
            request.headers["transfer-encoding"] = "chunked"

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if not data.server.alpn_offers:
            data.server.alpn_offers = (b"http/1.1",)
