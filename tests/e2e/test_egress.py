"""Egress policy on the real proxy: allowed ports, non-public destinations refused on the
address actually dialled, exemptions, the gateway always reachable, 502 without detail."""

from __future__ import annotations

import pytest

from tests.support import ALICE
from tests.support import connect_through
from tests.support import free_port
from tests.support import proxy_basic
from tests.support import raw_request


def connect(port: int, target: str) -> tuple[int, str]:
    """(status, body) of an authenticated CONNECT."""
    status, answer = connect_through(port, target, proxy_basic(ALICE))
    return status, answer.partition(b"\r\n\r\n")[2].decode()


@pytest.fixture
def strict_proxy(make_proxy, origin):
    """Default egress rules, but the origin's (random) port allowed so the port rule is not
    what refuses it."""
    return make_proxy("--allowed-ports", f"443,80,{origin.port}")


NON_PUBLIC = [
    "127.0.0.1:443",
    "localhost:443",
    "[::1]:443",
    "169.254.169.254:80",
    "10.1.2.3:443",
    "172.16.0.1:443",
    "192.168.1.1:443",
    "100.64.0.1:443",
    "[fd00::1]:443",
    "[fe80::1]:443",
    "[64:ff9b::a00:1]:443",
    "[::ffff:127.0.0.1]:443",
    "0.0.0.0:443",
    "224.0.0.1:443",
    "[2002:7f00:1::]:443",
]


def test_non_public_destinations_are_refused(strict_proxy):
    for target in NON_PUBLIC:
        status, body = connect(strict_proxy.port, target)
        assert (status, body) == (403, "403 Forbidden: destination is not allowed\n"), target


def test_refused_before_any_connection(strict_proxy, origin):
    status, _ = connect(strict_proxy.port, f"localhost:{origin.port}")
    assert status == 403
    assert origin.connections == 0


def test_ports_outside_the_list_are_refused(make_proxy):
    p = make_proxy()
    for port in (22, 25, 8080, 8443):
        status, body = connect(p.port, f"example.org:{port}")
        assert (status, body) == (403, f"403 Forbidden: CONNECT to port {port} is not allowed\n")


def test_exempted_range_is_reachable(make_proxy, origin):
    p = make_proxy("--allowed-ports", str(origin.port), "--allowed-private-cidrs", "127.0.0.0/8")
    status, _ = connect(p.port, f"localhost:{origin.port}")
    assert status == 200  # answered after the destination was dialled (eager)


def test_gateway_host_and_port_always_allowed(make_proxy, gateway):
    p = make_proxy("--allowed-ports", f"443,{gateway.gateway.port}")
    status, _ = connect(p.port, f"127.0.0.1:{gateway.gateway.port}")
    assert status == 200
    # but not another port on the same (private) host
    other = free_port()
    p2 = make_proxy("--allowed-ports", f"443,{other}")
    assert connect(p2.port, f"127.0.0.1:{other}")[0] == 403


def test_dial_failures_are_502_without_detail(make_proxy):
    closed = free_port()
    p = make_proxy("--allowed-ports", f"443,{closed}", "--allowed-private-cidrs", "127.0.0.0/8")
    status, body = connect(p.port, f"127.0.0.1:{closed}")
    assert (status, body) == (502, "502 Bad Gateway: cannot connect to the destination\n")
    status, body = connect(p.port, "no-such-host.invalid:443")
    assert (status, body) == (502, "502 Bad Gateway: cannot resolve the destination\n")


def test_plain_http_requests_follow_the_same_rules(strict_proxy, gateway):
    auth = proxy_basic(ALICE)
    req = f"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nProxy-Authorization: {auth}\r\n\r\n"
    head, _, body_bytes = raw_request(strict_proxy.port, req.encode()).partition(b"\r\n\r\n")
    status, body = int(head.split(b" ", 2)[1]), body_bytes.decode()
    assert (status, body) == (403, "403 Forbidden: destination is not allowed\n")
