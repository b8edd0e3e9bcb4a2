"""
A size cap on one WebSocket message, and closing a session with a code of our choosing.

mitmproxy reassembles a fragmented message in `WebsocketConnection.frame_buf` until its last
fragment, without a bound: a client can make the proxy hold any amount of memory without a byte
being forwarded. We wrap the connection's event stream (wsproto's `events()`, which mitmproxy's
subclass inherits): once the message being assembled would exceed `max_bytes`, the stream yields
a close with 1009 (message too big) instead, which mitmproxy's layer sends to both peers before
closing both connections. The same stream yields a close that an addon asked for with `close()`
(no hook can close with a code): a routing rule that denies a model closes with 1008.
"""

from __future__ import annotations

import logging
import weakref

import wsproto.events
from mitmproxy.proxy.layers.websocket import WebsocketConnection

logger = logging.getLogger("addons.routing.websocket")

MESSAGE_TOO_BIG = 1009


class WebSocketMessageCap:
    def __init__(self, max_bytes: int = 16 * 1024 * 1024):
        self.max_bytes = max_bytes
        self._installed = False
        self._closing: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def close(self, conn, code: int, reason: str) -> None:
        """Close the session `conn` (the sender's connection) takes part in, right after the
        message being handled, with `code` to both peers."""
        self._closing[conn] = (code, reason)

    def install(self) -> None:
        if self._installed:
            return
        cap = self
        inherited = wsproto.Connection.events

        def events(ws):
            for event in inherited(ws):
                if isinstance(event, wsproto.events.Message):
                    data = event.data.encode() if isinstance(event.data, str) else event.data
                    if sum(map(len, ws.frame_buf)) + len(data) > cap.max_bytes:
                        logger.warning(
                            "WebSocket message from %s over %d bytes: closing with 1009",
                            ws.conn.peername,
                            cap.max_bytes,
                        )
                        ws.frame_buf = [b""]
                        yield wsproto.events.CloseConnection(MESSAGE_TOO_BIG, "message too big")
                        return
                yield event
                if (close := cap._closing.pop(ws.conn, None)) is not None:
                    yield wsproto.events.CloseConnection(*close)
                    return

        WebsocketConnection.events = events
        self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            del WebsocketConnection.events
            self._installed = False
