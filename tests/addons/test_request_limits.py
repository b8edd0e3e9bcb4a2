"""RequestLimits in-process: what an HTTP/2 client can put in :method and :path, or in header
bytes, never reaches an HTTP/1.1 request line upstream."""

from __future__ import annotations

import pytest
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from addons.connection.request_limits import RequestLimits
from addons.core.record import reject_reason
from addons.engine.header_limit import HeaderSizeLimit


@pytest.mark.parametrize(
    "method, path, reason",
    [
        ("GET /admin HTTP/1.1\r\nX:", "/v1/models", "malformed_method"),
        ("GET X", "/v1/models", "malformed_method"),
        ("GET", "/v1/models HTTP/1.1\r\nHost: evil", "malformed_target"),
        ("GET", "/v1/mo dels", "malformed_target"),
        ("POST", "/v1/\x00", "malformed_target"),
    ],
)
def test_h2_pseudo_headers_that_no_request_line_can_hold_are_refused(method, path, reason):
    limits = RequestLimits(HeaderSizeLimit())
    with taddons.context(limits):
        flow = tflow.tflow()
        flow.request.http_version = "HTTP/2.0"
        flow.request.method, flow.request.path = method, path
        limits.requestheaders(flow)
    assert flow.response.status_code == 400
    assert reject_reason(flow) == reason


def test_ordinary_requests_pass():
    limits = RequestLimits(HeaderSizeLimit())
    with taddons.context(limits):
        flow = tflow.tflow()
        flow.request.path = "/v1/chat/completions?a=%20b"
        limits.requestheaders(flow)
    assert flow.response is None


@pytest.mark.parametrize(
    "option, value, message",
    [("aibridge_max_connections_per_user", 0, "at least 1"),
     ("aibridge_max_connections_per_address", 0, "at least 1"),
     ("aibridge_max_connections", -1, "at least 0")],
)  # fmt: skip
def test_connection_caps_refuse_values_that_are_not_caps(option, value, message):
    from mitmproxy import exceptions
    from mitmproxy.test import taddons

    from addons.connection.connection_caps import ConnectionCaps

    with taddons.context(ConnectionCaps()) as tctx:
        with pytest.raises(exceptions.OptionsError, match=f"{option} must be {message}"):
            tctx.options.update(**{option: value})
