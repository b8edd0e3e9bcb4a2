"""
Token usage of routed and observed responses, read as they stream to the client: each chunk
passes through the reader on its way and is never held back for more (an SSE event is parsed
only when it can carry a model or usage; a JSON body is read at its end). The access log and
the metrics take the result from the request's record (RouteInfo.usage) when the response is over.
"""

from __future__ import annotations

from dataclasses import replace

from mitmproxy import http

from addons.core.record import route_info
from addons.rules.token_usage import CHARS_PER_TOKEN
from addons.rules.token_usage import UsageReader


class TokenUsage:
    """Attaches a usage reader to every response we route or observe."""

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        info = route_info(flow)
        if info is None or flow.response is None:
            return
        headers = flow.response.headers
        reader = UsageReader(headers.get("content-type", ""), headers.get("content-encoding", ""))
        if reader.active:
            info.usage_reader = reader
            info.response_taps.append(reader.feed)

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)  # a stream cut short may still have said what it used so far

    @staticmethod
    def _finish(flow: http.HTTPFlow) -> None:
        info = route_info(flow)
        if info is None or info.usage_reader is None:
            return
        usage = info.usage_reader.finish()
        info.usage_reader = None
        if usage is not None and usage.estimated and usage.input_tokens is None:
            # the prompt's size, as the answer's: an estimate (high: JSON's own bytes count)
            usage = replace(usage, input_tokens=-(-info.bytes_in // CHARS_PER_TOKEN))
        info.usage = usage
