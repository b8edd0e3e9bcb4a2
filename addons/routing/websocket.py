"""
WebSocket upgrades on routed hosts (Codex tries `wss://api.openai.com/v1/responses` first).

The upgrade is rewritten and authenticated like any request, and mitmproxy relays the frames
both ways once the gateway answers 101. When the gateway has no WebSocket route (404, 405, 501
and the like) the client gets `426 Upgrade Required` — Codex falls back to HTTPS at once on
426, but retries for seconds on anything else — and the route is remembered for a while, so the
next upgrade gets its 426 without a round trip. Authentication failures pass through unchanged.
Once open, messages are relayed, not recorded, and one message is capped in size.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http

from addons.core.record import existing_record
from addons.core.record import record
from addons.core.record import route_info
from addons.core.responses import plain_response
from addons.engine.websocket_cap import WebSocketMessageCap
from addons.rules.request_target import is_websocket_upgrade

logger = logging.getLogger(__name__)

NO_WEBSOCKET_ROUTE = frozenset({400, 404, 405, 426, 501})
MAX_REMEMBERED = 1024


def refused_upgrade() -> http.Response:
    return plain_response(
        426, "the gateway has no WebSocket route here; use HTTPS", {"Upgrade": "websocket"}
    )


class WebSocketFallback:
    def __init__(self, message_cap: WebSocketMessageCap) -> None:
        self.message_cap = message_cap
        self._no_websocket: OrderedDict[str, float] = OrderedDict()  # gateway route -> until

    def load(self, loader):
        loader.add_option(
            "aibridge_websocket_negative_ttl",
            int,
            600,
            "Seconds to remember that a gateway route refused a WebSocket upgrade.",
        )
        loader.add_option(
            "aibridge_websocket_max_message",
            int,
            16 * 1024 * 1024,
            "Largest WebSocket message, in bytes (fragments counted together); a bigger one "
            "closes the connection with 1009.",
        )

    def configure(self, updated):
        if "aibridge_websocket_max_message" in updated:
            if ctx.options.aibridge_websocket_max_message < 1024:
                raise exceptions.OptionsError("aibridge_websocket_max_message must be >= 1024")
            self.message_cap.max_bytes = ctx.options.aibridge_websocket_max_message

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """mitmproxy keeps every message of a flow for the life of the connection; we relay,
        we do not record. Only the current one stays (later addons may look at it)."""
        assert flow.websocket is not None
        del flow.websocket.messages[:-1]

    def _key(self, flow: http.HTTPFlow) -> str | None:
        info = route_info(flow)
        if info is None or info.provider is None:
            return None
        return info.upstream_url.split("?", 1)[0]

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not is_websocket_upgrade(flow.request.headers):
            return
        key = self._key(flow)
        if key is None:
            return
        until = self._no_websocket.get(key)
        if until is not None and until > time.monotonic():
            flow.request.stream = False  # a response set here must not race a streamed request
            flow.response = refused_upgrade()

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if (
            response is None
            or not is_websocket_upgrade(flow.request.headers)
            or response.status_code == 101
        ):
            return
        key = self._key(flow)
        if key is None or response.status_code not in NO_WEBSOCKET_ROUTE:
            return  # 401/403 and server errors reach the client unchanged
        self._no_websocket[key] = time.monotonic() + ctx.options.aibridge_websocket_negative_ttl
        self._no_websocket.move_to_end(key)
        while len(self._no_websocket) > MAX_REMEMBERED:
            self._no_websocket.popitem(last=False)
        logger.info(
            "gateway refused a WebSocket upgrade (%s) for %s: answering 426",
            response.status_code,
            key,
        )
        response.stream = False  # buffer the gateway's small error body; `response` replaces it
        record(flow).websocket_refused = True

    def response(self, flow: http.HTTPFlow) -> None:
        if (entry := existing_record(flow)) is not None and entry.websocket_refused:
            entry.websocket_refused = False
            flow.response = refused_upgrade()
