"""
Each request's session and repository on its record, as the client said them
(addons/rules/attribution.py): the session from the client's own header, the repository from
Codex's turn metadata, in a request's header or, in a WebSocket session, in each
`response.create` message's client metadata. The access log, the audit trail and
`aibridge-proxy usage --by session|repo` read them.
"""

from __future__ import annotations

import json

from mitmproxy import http

from addons.core.record import existing_record
from addons.rules.attribution import TURN_METADATA
from addons.rules.attribution import repo_from_message
from addons.rules.attribution import repo_from_turn_metadata
from addons.rules.attribution import session_from


class Attribution:
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        entry = existing_record(flow)
        info = entry.route if entry is not None else None
        if info is None:
            return
        headers = flow.request.headers
        info.session = session_from(headers.fields)
        if metadata := headers.get(TURN_METADATA):
            info.repo = repo_from_turn_metadata(metadata)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        entry = existing_record(flow)
        info = entry.route if entry is not None else None
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        if info is None or info.repo is not None or not message.from_client:
            return
        if TURN_METADATA.encode() not in message.content:
            return  # (most messages: no parse)
        try:
            info.repo = repo_from_message(json.loads(message.content))
        except (ValueError, RecursionError):
            return
