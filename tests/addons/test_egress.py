"""EgressPolicy in-process: refusals carried through the engine's error text, and dials pinned
to the address that passed the check."""

from __future__ import annotations

import asyncio

from mitmproxy import http
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from addons.core.dial_refusals import Blocked
from addons.core.dial_refusals import parse_refusal
from addons.core.dial_refusals import refusal_marker
from addons.egress.egress_policy import EgressPolicy
from addons.routing.snapshot import Routing


def test_refusal_marker_round_trip():
    marker = refusal_marker(Blocked(403, "destination is not allowed", "detail"))
    engine_message = f"Cannot connect to x:443: Connection killed: {marker} If you plan to redirect"
    assert parse_refusal(engine_message) == (403, "destination is not allowed")
    assert parse_refusal("Connection killed: " + marker) == (403, "destination is not allowed")
    assert parse_refusal("[Errno 111] Connect call failed") is None


class FakeServer:
    def __init__(self, address):
        self.address = address
        self.via = None
        self.error = None


class FakeData:
    def __init__(self, address):
        self.server = FakeServer(address)


async def test_dial_is_pinned_to_the_checked_address(monkeypatch):
    """A name resolving to a private and a public address is dialled on the public one, by IP:
    the engine never resolves it again (no DNS rebinding window)."""
    routing = Routing()
    policy = EgressPolicy(routing)
    with taddons.context(routing, policy):
        await _dial_checks(policy, monkeypatch)


async def _dial_checks(policy, monkeypatch):

    async def fake_getaddrinfo(host, port, **kw):
        return [(2, 1, 6, "", ("10.0.0.5", port)), (2, 1, 6, "", ("93.184.216.34", port))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_getaddrinfo)
    data = FakeData(("mixed.example", 443))
    await policy.server_connect(data)
    assert data.server.address == ("93.184.216.34", 443) and data.server.error is None

    async def private_only(host, port, **kw):
        return [(2, 1, 6, "", ("169.254.169.254", port))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", private_only)
    data = FakeData(("rebind.example", 80))
    await policy.server_connect(data)
    assert parse_refusal(data.server.error) == (403, "destination is not allowed")
    assert data.server.address == ("rebind.example", 80)


async def test_allowed_ports_hold_for_plain_requests_and_every_dial():
    routing = Routing()
    policy = EgressPolicy(routing)
    with taddons.context(routing, policy):
        flow = tflow.tflow(req=http.Request.make("GET", "http://example.org:2525/"))
        await policy.requestheaders(flow)
        assert flow.response.status_code == 403
        assert flow.response.get_text() == "403 Forbidden: port 2525 is not allowed\n"
        data = FakeData(("93.184.216.34", 2525))  # however the dial came about
        await policy.server_connect(data)
        assert parse_refusal(data.server.error) == (403, "port 2525 is not allowed")
        allowed = tflow.tflow(req=http.Request.make("GET", "http://example.org/"))
        await policy.requestheaders(allowed)
        assert allowed.response is None
