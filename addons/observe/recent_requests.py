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

from addons.core.record import existing_record
from addons.observe.access_log import tool_name
from addons.rules.failure_hints import failure_hint

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
    def __init__(self, per_user: int = PER_USER, users: int = USERS):
        self.per_user = per_user
        self.users = users
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
        queue = self._by_user.get(identity.user)
        if queue is None:
            queue = self._by_user[identity.user] = collections.deque(maxlen=self.per_user)
            while len(self._by_user) > self.users:
                self._by_user.popitem(last=False)
        else:
            self._by_user.move_to_end(identity.user)
        queue.append(entry)
