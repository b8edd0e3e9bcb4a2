"""
Each user's last requests, in memory, for the developer page: what, when, how it went, and
for failures why and what to do. Bounded (50 per user, 10,000 users, oldest user dropped
first) and per worker process; no bodies, headers or tokens are kept.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass

from mitmproxy import http
from mitmproxy import tls

from addons.core.record import existing_record
from addons.observe.access_log import tool_name
from addons.rules.failure_hints import failure_hint
from addons.rules.user_agents import tool_of

PER_USER = 50
USERS = 10_000


@dataclass(frozen=True)
class RecentRequest:
    time: float
    tool: str | None
    provider: str | None
    host: str
    model: str | None
    status: int | None
    duration_ms: float
    input_tokens: int | None
    output_tokens: int | None
    problem: str | None
    fix: str | None
    workspace: str | None
    outcome: str | None = None  # an MCP call's (ok, error -32601, denied), shown as its status


_DLP_DONE = {"block": "blocked", "mask": "masked", "flag": "flagged", "pass": "sent unscanned"}
_DLP_FIX = {
    "block": "remove it, or use a placeholder",
    "mask": "the model never saw it; remove it from your files or history",
    "flag": "your administrator sees this; rotate the credential",
}
_DLP_UNSCANNED_FIX = "send a smaller request, or ask your administrator"


def dlp_hint(verdict) -> tuple[str, str]:
    """ "blocked: a GitHub token in messages[3]", and what to do about it."""
    problem = f"{_DLP_DONE.get(verdict.action, verdict.action)}: {verdict.message}"
    if not verdict.findings:
        return problem, _DLP_UNSCANNED_FIX
    return problem, _DLP_FIX.get(verdict.action, _DLP_FIX["flag"])  # sent, as under flag


class RecentRequests:
    def __init__(self, per_user: int = PER_USER, users: int = USERS, who=None):
        self.per_user = per_user
        self.users = users
        self.who = who  # client connection -> its tunnel's identity (auth's), for TLS failures
        self._by_user: collections.OrderedDict[str, collections.deque[RecentRequest]] = (
            collections.OrderedDict()
        )

    def of(self, user: str) -> list[RecentRequest]:
        """Newest first."""
        return list(reversed(self._by_user.get(user, ())))

    def response(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def mcp_call(self, call) -> None:
        """An MCP tool call (govern/mcp_guard.py's McpCall) is a row of its own."""
        if not call.user:
            return
        problem = fix = None
        if call.outcome == "denied":
            problem, fix = f"denied: {call.message}", "ask your administrator"
        elif call.outcome == "no_answer":
            problem, fix = "the MCP server never answered", "try again, or check the server"
        outcome = f"error {call.error_code}" if call.outcome == "error" else call.outcome
        self._add(call.user, RecentRequest(
            time=time.time(), tool=tool_of(call.user_agent), provider=f"MCP {call.server}",
            host=call.server, model=call.tool or call.method, status=None,
            duration_ms=call.duration_ms, input_tokens=None, output_tokens=None,
            problem=problem, fix=fix, workspace=call.workspace, outcome=outcome,
        ))  # fmt: skip

    def tls_failed_client(self, data: tls.TlsData) -> None:
        """A tool that did not trust our certificate sends nothing the proxy could show, and the
        editor only says so in its own log (Copilot's completions come back empty): the
        developer's page shows the refused handshake, with the fix."""
        client = data.conn
        identity = self.who(client) if self.who is not None else None
        if identity is None or not identity.user or not client.sni:
            return
        why = str(client.error or "the handshake failed")[:160]
        self._add(identity.user, RecentRequest(
            time=time.time(), tool=None, provider=None, host=client.sni, model=None,
            status=None, duration_ms=0.0, input_tokens=None, output_tokens=None,
            problem=f"the tool refused the proxy's certificate for {client.sni} ({why})",
            fix="trust the proxy's CA: `aibridge-proxy trust` for IDEs, or the CA variables "
                "from `aibridge-proxy env` for CLIs",
            workspace=identity.workspace, outcome="TLS refused",
        ))  # fmt: skip

    def _record(self, flow: http.HTTPFlow) -> None:
        entry = existing_record(flow)
        info = entry.route if entry is not None else None
        identity = entry.identity if entry is not None else None
        if info is None or identity is None or not identity.user:
            return
        status = flow.response.status_code if flow.response is not None else None
        if entry.dlp is not None:  # what the prompt scan did says more than the status
            hint = dlp_hint(entry.dlp)
        else:
            hint = failure_hint(
                status,
                entry.reject.hint if entry.reject is not None else None,
                info.provider is not None,
                flow.error.msg if flow.error else None,
            )
        usage = info.usage
        entry = RecentRequest(
            time=time.time(),
            tool=tool_name(info, flow.request.headers.get("user-agent")),
            provider=info.provider,
            host=info.original_host,
            model=info.model or (usage.model if usage else None),
            status=status,
            duration_ms=round((time.monotonic() - info.started) * 1000, 1),
            input_tokens=usage.input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            problem=hint[0] if hint else None,
            fix=hint[1] if hint else None,
            workspace=identity.workspace,
        )
        self._add(identity.user, entry)

    def _add(self, user: str, entry: RecentRequest) -> None:
        queue = self._by_user.get(user)
        if queue is None:
            queue = self._by_user[user] = collections.deque(maxlen=self.per_user)
            while len(self._by_user) > self.users:
                self._by_user.popitem(last=False)
        else:
            self._by_user.move_to_end(user)
        queue.append(entry)
