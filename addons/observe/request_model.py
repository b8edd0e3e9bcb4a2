"""
The model each request asked for, on its record, without holding its body: where no rule read
the body (rules that need the model hold it; everything else streams), the first bytes of a
JSON body are kept as they pass and read for the top-level `model` once the body is over. Only
for the record (the access line, the span): decisions read the whole body (rules/model_field).
"""

from __future__ import annotations

import weakref

from mitmproxy import http

from addons.core.record import existing_record
from addons.rules.model_field import model_in_prefix

PREFIX_BYTES = 64 * 1024  # clients put `model` first or near it


class RequestModel:
    def __init__(self) -> None:
        self._prefixes: weakref.WeakKeyDictionary[http.HTTPFlow, bytearray] = (
            weakref.WeakKeyDictionary()
        )

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        entry = existing_record(flow)
        info = entry.route if entry is not None else None
        request = flow.request
        if info is None or flow.response is not None or request.method not in ("POST", "PUT"):
            return
        if entry.facts is not None and entry.facts.model_known:
            return  # a rule read it already (or the path says it: Gemini)
        if "json" not in request.headers.get("content-type", "").lower():
            return
        if request.headers.get("content-encoding", "identity").lower() != "identity":
            return  # not worth decoding for the record
        prefix = self._prefixes[flow] = bytearray()

        def keep(chunk: bytes, prefix=prefix) -> None:
            if len(prefix) < PREFIX_BYTES:
                prefix += chunk[: PREFIX_BYTES - len(prefix)]

        info.request_taps.append(keep)

    def request(self, flow: http.HTTPFlow) -> None:
        prefix = self._prefixes.pop(flow, None)
        entry = existing_record(flow)
        if prefix is None or entry is None or entry.route is None:
            return
        if not prefix and flow.request.raw_content:  # held whole: no tap saw it
            prefix = bytearray(flow.request.raw_content[:PREFIX_BYTES])
        entry.route.request_model = model_in_prefix(bytes(prefix))
