"""
Events one concern reports and another counts (a token check answered from the cache, a
gateway found down), so that neither imports the other: producers call `emit`, and chain.py
subscribes the consumers. One bus per chain, so two chains in one process never mix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

TOKEN_CHECKED = "token_checked"  # (cached: bool)
GATEWAY_FAILOVER = "gateway_failover"  # (gateway name: str)
HTTP2_FLOOD = "http2_flood"  # (client connection, what: str): closed with GOAWAY
LIMIT_REFUSED = "limit_refused"  # (limit name: str, user: str | None)
LIMIT_AUDITED = "limit_audited"  # (limit name: str, user: str | None): would have refused
COPILOT_QUOTA = "copilot_quota"  # (user: str, copilot_quota.QuotaSnapshot list): the latest
LIMIT_ALERT = "limit_alert"  # (limit name: str, share: float): a budget crossed an alert share
LIMIT_STORE_ERROR = "limit_store_error"  # (what was done: allow or refuse)
LIMIT_USAGE = "limit_usage"  # (limits.LimitUsage list): every limit's use now, sampled
MCP_CALL = "mcp_call"  # (mcp_guard.McpCall): a JSON-RPC request to an MCP server, answered
MCP_TOOL_CHANGED = "mcp_tool_changed"  # (server entry: str, tool: str): its definition changed
TELEMETRY_DROPPED = "telemetry_dropped"  # (spans: int): not exported (queue full, collector down)
GATEWAY_CONNECTION = "gateway_connection"  # (gateway origin, protocol, opened: bool): pooled
DLP_VERDICT = "dlp_verdict"  # (prompt_dlp.Verdict): a request or message had findings or no scan


class EventBus:
    def __init__(self) -> None:
        self._subscribers: dict[str, list[Callable[..., None]]] = {}

    def subscribe(self, event: str, handler: Callable[..., None]) -> None:
        self._subscribers.setdefault(event, []).append(handler)

    def emit(self, event: str, *args: Any) -> None:
        for handler in self._subscribers.get(event, ()):
            try:
                handler(*args)
            except Exception:  # a counter must never break a request
                logger.exception("event handler for %s failed", event)
