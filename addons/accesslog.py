"""
One structured line per request, written when the request is over (answered or failed).

The fields are plain values; the program's log formatter turns them into JSON or text. No
header values are logged, so no token can end up here.
"""

from __future__ import annotations

import logging
import time

from mitmproxy import http

from addons.auth import TokenAuth
from addons.gateway import route_info

logger = logging.getLogger("aibridge.access")


def access_fields(flow: http.HTTPFlow, auth: TokenAuth | None) -> dict | None:
    info = route_info(flow)
    if info is None:
        return None
    identity = auth.identity(flow) if auth else None
    now = time.monotonic()
    peer = flow.client_conn.peername
    return {
        "connect_id": identity.connect_id if identity else None,
        "request_id": info.request_id,
        "client": f"{peer[0]}:{peer[1]}" if peer else None,
        "user": identity.user if identity else None,
        "provider": info.provider,
        "routed": info.provider is not None,
        "method": flow.request.method,
        "host": info.original_host,
        "path": info.original_path.split("?", 1)[0],
        "upstream": info.upstream_url.split("?", 1)[0],
        "status": flow.response.status_code if flow.response else None,
        "error": flow.error.msg if flow.error else None,
        "bytes_in": info.bytes_in,
        "bytes_out": info.bytes_out,
        "duration_ms": round((now - info.started) * 1000, 2),
        "ttfb_ms": round((info.first_byte - info.started) * 1000, 2) if info.first_byte else None,
        "workspace": identity.workspace if identity else None,
        "rule": info.rule,
        "profile": info.profile,
        "gateway": info.gateway,
        "model": info.model,
        "model_sent": info.model_sent,
    }


class AccessLog:
    """Emits `aibridge.access` records; the program decides the format and destination."""

    def __init__(self, auth: TokenAuth | None = None):
        self.auth = auth

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        """A refused CONNECT (auth, port, destination, egress policy) gets its line too."""
        if not logger.isEnabledFor(logging.INFO):
            return
        identity = self.auth.identity(flow) if self.auth else None
        peer = flow.client_conn.peername
        fields = {
            "client": f"{peer[0]}:{peer[1]}" if peer else None,
            "user": identity.user if identity else None,
            "workspace": identity.workspace if identity else None,
            "method": "CONNECT",
            "host": flow.request.host,
            "port": flow.request.port,
            "status": flow.response.status_code if flow.response else None,
            "reason": flow.metadata.get("aibridge.reject_reason"),
        }
        logger.info("connect refused", extra={"fields": fields})

    def response(self, flow: http.HTTPFlow) -> None:
        self._emit(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._emit(flow)

    def _emit(self, flow: http.HTTPFlow) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        fields = access_fields(flow, self.auth)
        if fields is None:
            return
        logger.info("request", extra={"fields": fields})
