"""
Copilot's meter, per user: the quota snapshots its answers carry (addons/rules/copilot_quota.py)
kept as each user's latest, for the developer page and the metrics, and each request's
initiator (a person, or an agent's follow-up) on its record, for the log, the audit trail and
`aibridge-proxy usage --by initiator`.
"""

from __future__ import annotations

import collections

from mitmproxy import http

from addons.core.events import COPILOT_QUOTA
from addons.core.events import EventBus
from addons.core.record import existing_record
from addons.core.record import route_info
from addons.rules.copilot_quota import QuotaSnapshot
from addons.rules.copilot_quota import initiator_of
from addons.rules.copilot_quota import quota_snapshots

USERS = 10_000  # users whose latest snapshots are kept (the longest unseen forgotten first)


class CopilotQuotas:
    """Each user's latest snapshot of each Copilot quota, in this worker's memory."""

    def __init__(self) -> None:
        self._by_user: collections.OrderedDict[str, dict[str, QuotaSnapshot]] = (
            collections.OrderedDict()
        )

    def record(self, user: str, snapshots: list[QuotaSnapshot]) -> None:
        mine = self._by_user.setdefault(user, {})
        self._by_user.move_to_end(user)
        for snapshot in snapshots:
            mine[snapshot.quota] = snapshot
        while len(self._by_user) > USERS:
            self._by_user.popitem(last=False)

    def of(self, user: str) -> list[QuotaSnapshot]:
        return sorted(self._by_user.get(user, {}).values(), key=lambda s: s.quota)

    def everyone(self) -> dict[str, list[QuotaSnapshot]]:
        return {user: self.of(user) for user in self._by_user}


class CopilotMeter:
    """Reads the quota headers of every answer and the initiator of every request."""

    def __init__(self, quotas: CopilotQuotas, events: EventBus | None = None) -> None:
        self.quotas = quotas
        self.events = events or EventBus()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        info = route_info(flow)
        if info is not None:
            info.initiator = initiator_of(flow.request.headers.get("x-initiator"))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        entry = existing_record(flow)
        info = entry.route if entry is not None else None
        if info is None or flow.response is None or flow.response.status_code >= 400:
            return
        snapshots = quota_snapshots(flow.response.headers.fields)
        if not snapshots:
            return
        info.copilot_quotas = snapshots
        if entry.identity is not None and entry.identity.user:
            self.quotas.record(entry.identity.user, snapshots)
            self.events.emit(COPILOT_QUOTA, entry.identity.user, snapshots)
