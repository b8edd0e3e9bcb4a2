"""
What a request says about itself, put on its record as it passes (a routed request runs this
on every request: one addon, its headers walked once for the session and once for the rest):

- the client's own session key and, from Codex's turn metadata, its repository (in a header,
  or in each `response.create` of a WebSocket session): addons/rules/attribution.py;
- Copilot's `X-Initiator` (a person, or an agent's follow-up) and, from its answers, the
  user's quota snapshots (addons/rules/copilot_quota.py), kept per user for the page and the
  metrics;
- the model the body asks for where no rule read the body: its first bytes are kept as they
  stream by and read key by key once it is over (rules/model_field.model_in_prefix). Only for
  the record (the access line, the span): decisions read the whole body.
"""

from __future__ import annotations

import collections
import json

from mitmproxy import http

from addons.core.events import COPILOT_QUOTA
from addons.core.events import EventBus
from addons.core.record import PREFIX_BYTES
from addons.core.record import existing_record
from addons.rules.attribution import TURN_METADATA
from addons.rules.attribution import repo_from_message
from addons.rules.attribution import repo_from_turn_metadata
from addons.rules.attribution import session_from
from addons.rules.copilot_quota import QuotaSnapshot
from addons.rules.copilot_quota import initiator_of
from addons.rules.copilot_quota import quota_snapshots
from addons.rules.model_field import model_in_prefix

USERS = 10_000  # users whose latest Copilot snapshots are kept (the longest unseen forgotten)
_TURN_METADATA = TURN_METADATA.encode()
_WANTED = {b"content-type", b"content-encoding", b"x-initiator", _TURN_METADATA}
_COPILOT_HOSTS = (".githubcopilot.com",)


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


class RequestContext:
    def __init__(self, quotas: CopilotQuotas | None = None, events: EventBus | None = None):
        self.quotas = quotas or CopilotQuotas()
        self.events = events or EventBus()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        entry = existing_record(flow)
        info = entry.route if entry is not None else None
        if info is None:
            return
        fields = flow.request.headers.fields
        info.session = session_from(fields)
        seen = {key: value for name, value in fields if (key := name.lower()) in _WANTED}
        if metadata := seen.get(_TURN_METADATA):
            info.repo = repo_from_turn_metadata(metadata)
        if initiator := seen.get(b"x-initiator"):
            info.initiator = initiator_of(initiator.decode("latin-1"))
        if (
            flow.response is None
            and flow.request.method in ("POST", "PUT")
            and not (entry.facts is not None and entry.facts.model_known)
            and b"json" in seen.get(b"content-type", b"").lower()
            and seen.get(b"content-encoding", b"identity").lower() == b"identity"
        ):
            info.request_prefix = bytearray()  # filled as the body streams (RouteInfo.count_in)

    def request(self, flow: http.HTTPFlow) -> None:
        entry = existing_record(flow)
        info = entry.route if entry is not None else None
        if info is None or info.request_prefix is None:
            return
        prefix, info.request_prefix = info.request_prefix, None
        if not prefix and flow.request.raw_content:  # held whole: no tap saw it
            prefix = bytearray(flow.request.raw_content[:PREFIX_BYTES])
        info.request_model = model_in_prefix(bytes(prefix))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        entry = existing_record(flow)
        info = entry.route if entry is not None else None
        if info is None or flow.response is None or flow.response.status_code >= 400:
            return
        if not info.original_host.endswith(_COPILOT_HOSTS):
            return  # only Copilot's answers carry its meter (the request now names the gateway)
        snapshots = quota_snapshots(flow.response.headers.fields)
        if not snapshots:
            return
        info.copilot_quotas = snapshots
        if entry.identity is not None and entry.identity.user:
            self.quotas.record(entry.identity.user, snapshots)
            self.events.emit(COPILOT_QUOTA, entry.identity.user, snapshots)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        entry = existing_record(flow)
        info = entry.route if entry is not None else None
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        if info is None or info.repo is not None or not message.from_client:
            return
        if _TURN_METADATA not in message.content:
            return  # (most messages: no parse)
        try:
            info.repo = repo_from_message(json.loads(message.content))
        except (ValueError, RecursionError):
            return
