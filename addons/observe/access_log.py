"""
One structured line per request, written when the request is over (answered or failed).

The fields are plain values; the program's log formatter turns them into JSON or text. No
header value but the User-Agent is logged, so no token can end up here.
"""

from __future__ import annotations

import logging
import time

from mitmproxy import http

from addons.core.record import RejectReason
from addons.core.record import RouteInfo
from addons.core.record import existing_record
from addons.rules.ai_catalog import load_catalog
from addons.rules.attribution import shown_session
from addons.rules.genai import recorded_model
from addons.rules.user_agents import tool_of

logger = logging.getLogger("aibridge.access")


def access_fields(flow: http.HTTPFlow) -> dict | None:
    entry = existing_record(flow)
    info = entry.route if entry is not None else None
    if info is None:
        return None
    identity = entry.identity
    now = time.monotonic()
    peer = flow.client_conn.peername
    usage = info.usage
    user_agent = flow.request.headers.get("user-agent")
    fields = {
        "connect_id": identity.connect_id if identity else None,
        "request_id": info.request_id,
        "client": f"{peer[0]}:{peer[1]}" if peer else None,
        "user": identity.user if identity else None,
        "provider": info.provider,
        "routed": info.provider is not None,
        "method": flow.request.method,
        "host": info.original_host,
        "path": info.original_path.split("?", 1)[0],
        # a request the proxy refused itself never reached an upstream
        "upstream": info.upstream_url.split("?", 1)[0] if entry.reject is None else None,
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
        "model": recorded_model(
            info.model or (usage.model if usage else None) or info.request_model
        ),
        "model_sent": info.model_sent,
        "outcome": outcome(entry.reject, info),
        "reason": entry.reject,  # the proxy's own refusal, if it refused
        "limit": entry.limit,  # the limit that refused it
        "observed": info.observed,
        "tool": tool_name(info, user_agent),
        "user_agent": user_agent[:200] if user_agent else None,
    }
    if usage is not None:  # absent, not zero, when the response did not say
        fields.update(usage.token_fields())
        if usage.estimated:
            fields["tokens_estimated"] = True  # the stream reported none: characters / 4
    if info.session is not None:
        fields["session"] = shown_session(info.session)
    if info.repo is not None:
        fields["repo"] = info.repo
    if info.initiator is not None:
        fields["initiator"] = info.initiator  # a person, or an agent's follow-up (Copilot)
    if (cost := info.cost) is not None:
        fields["cost_usd"] = cost.usd  # None: unpriced, never 0
        fields["price_source"] = cost.source
    if entry.dlp is not None:  # kinds and places, never a value
        fields["dlp"] = dlp_field(entry.dlp)
    return fields


def dlp_field(verdict) -> str:
    """`block:github-pat@messages[3],aws-access-token@system`, or `pass:unscanned`."""
    found = ",".join(f"{f.kind}@{f.where}" for f in verdict.findings)
    return f"{verdict.action}:{found or 'unscanned'}"


def outcome(reason: RejectReason | None, info: RouteInfo) -> str:
    """routed, observed, origin (a routed host's path sent on unchanged) or denied."""
    if reason is not None and reason.is_denial:
        return "denied"
    if info.provider is not None:
        return "routed"
    return "observed" if info.observed is not None else "origin"


def tool_name(info: RouteInfo, user_agent: str | None) -> str | None:
    """The catalog entry an observed host belongs to names the tool; else the User-Agent."""
    if info.observed is not None and (entry := load_catalog().entries.get(info.observed)):
        return entry.name
    return tool_of(user_agent)


class AccessLog:
    """Emits `aibridge.access` records; the program decides the format and destination."""

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        """A refused CONNECT (auth, port, destination, egress policy) gets its line too."""
        if not logger.isEnabledFor(logging.INFO):
            return
        entry = existing_record(flow)
        identity = entry.identity if entry else None
        reason = entry.reject if entry else None
        peer = flow.client_conn.peername
        fields = {
            "client": f"{peer[0]}:{peer[1]}" if peer else None,
            "user": identity.user if identity else None,
            "workspace": identity.workspace if identity else None,
            "method": "CONNECT",
            "host": flow.request.host,
            "port": flow.request.port,
            "status": flow.response.status_code if flow.response else None,
            "reason": reason,
            "outcome": "denied" if reason is not None and reason.is_denial else None,
            "tool": self._catalog_tool(flow.request.host),
        }
        logger.info("connect refused", extra={"fields": fields})

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        """A WebSocket session's own line when it ends: what only its messages said (Codex
        names its repository in each response.create), and how long it lasted."""
        entry = existing_record(flow)
        info = entry.route if entry is not None else None
        if info is None or flow.websocket is None or not logger.isEnabledFor(logging.INFO):
            return
        identity = entry.identity
        fields = {
            "request_id": info.request_id,
            "user": identity.user if identity else None,
            "host": info.original_host,
            "path": info.original_path.split("?", 1)[0],
            "session": shown_session(info.session),
            "repo": info.repo,
            "close_code": flow.websocket.close_code,
            "duration_ms": round((time.monotonic() - info.started) * 1000, 2),
        }
        logger.info("websocket session", extra={"fields": fields})

    @staticmethod
    def _catalog_tool(host: str) -> str | None:
        entry = load_catalog().owner(host)
        return entry.name if entry else None

    def mcp_call(self, call) -> None:
        """One line per JSON-RPC request to a governed MCP server (govern/mcp_guard.py's
        McpCall): who, which server and tool, how it ended; a digest of the arguments only."""
        if not logger.isEnabledFor(logging.INFO):
            return
        fields = {
            "request_id": call.request_id,
            "client": call.client,
            "user": call.user,
            "workspace": call.workspace,
            "mcp_server": call.server,
            "mcp_method": call.method,
            "mcp_tool": call.tool,
            "outcome": call.outcome,
            "mcp_error": call.error_code,
            "rule": call.rule,
            "duration_ms": call.duration_ms,
            "args_digest": call.args_digest,
            "tool": tool_of(call.user_agent),
        }
        logger.info("mcp call", extra={"fields": fields})

    def response(self, flow: http.HTTPFlow) -> None:
        self._emit(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._emit(flow)

    def _emit(self, flow: http.HTTPFlow) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        fields = access_fields(flow)
        if fields is None:
            return
        logger.info("request", extra={"fields": fields})
