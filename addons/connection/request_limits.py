"""
Hostile input: limits on what a client may send before we act on it.

- A header block may not exceed `aibridge_max_header_bytes` (431); how long it may take to
  arrive is connection_deadlines.py's.
  mitmproxy buffers header bytes without limit (a FIXME in its HTTP/1 server), so the limit on
  bytes still in flight is `addons/engine/header_limit.py`, configured from here.
- Header names and values holding NUL, CR or LF are refused with 400: they would otherwise be
  forwarded, and are a classic request-smuggling and header-injection vector. So are methods
  that are not tokens and targets with spaces or controls (HTTP/2 lets `:method` and `:path`
  hold them; an HTTP/1.1 request line upstream cannot).
"""

from __future__ import annotations

import itertools
import logging
import re

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http

from addons.core.record import RejectReason
from addons.core.record import reject
from addons.core.responses import plain_response
from addons.engine.header_limit import HeaderSizeLimit
from addons.rules.request_target import is_method
from addons.rules.request_target import is_request_target

logger = logging.getLogger(__name__)

_BAD_HEADER_BYTE = re.compile(rb"[\x00\r\n]")


def header_block_size(headers: http.Headers) -> int:
    return sum(len(k) + len(v) + 4 for k, v in headers.fields)


def has_bad_header_bytes(headers: http.Headers) -> bool:
    # one search over the names and values run together: none of these bytes can appear at a seam
    return (
        _BAD_HEADER_BYTE.search(b"".join(itertools.chain.from_iterable(headers.fields))) is not None
    )


class RequestLimits:
    def __init__(self, header_limit: HeaderSizeLimit) -> None:
        self.header_limit = header_limit

    def load(self, loader):
        loader.add_option(
            "aibridge_max_header_bytes",
            int,
            65536,
            "Largest request header block accepted (bigger: 431).",
        )

    def configure(self, updated):
        if "aibridge_max_header_bytes" in updated:
            if ctx.options.aibridge_max_header_bytes < 1024:
                raise exceptions.OptionsError("aibridge_max_header_bytes must be at least 1024")
            self.header_limit.max_bytes = ctx.options.aibridge_max_header_bytes

    # -- header checks ---------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._check(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._check(flow)

    def _check(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        if header_block_size(flow.request.headers) > self.header_limit.max_bytes:
            reject(flow, RejectReason.HEADERS_TOO_LARGE)
            flow.response = plain_response(431, "request headers too large")
        elif has_bad_header_bytes(flow.request.headers):
            reject(flow, RejectReason.MALFORMED_HEADER)
            flow.response = plain_response(400, "header holds NUL, CR or LF")
        elif not is_method(flow.request.method):
            reject(flow, RejectReason.MALFORMED_METHOD)
            flow.response = plain_response(400, "the method is not a token")
        elif flow.request.method != "CONNECT" and not is_request_target(flow.request.path):
            # HTTP/2 lets :path hold what an HTTP/1.1 request line cannot
            reject(flow, RejectReason.MALFORMED_TARGET)
            flow.response = plain_response(400, "the request target holds spaces or controls")
