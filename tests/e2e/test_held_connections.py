"""Nobody holds a connection open for free: closed after a refusal, a header deadline for
every request (not only the first), one for the TLS handshake inside a tunnel, and an idle
timeout between requests; while streams, WebSockets and relaying tunnels are never cut."""

from __future__ import annotations

import json
import socket
import ssl
import time

import pytest

from tests.support import ALICE
from tests.support import LOOPBACK_INTERNET
from tests.support import proxy_basic
from tests.support import proxy_client

AUTH = proxy_basic(ALICE)


def closed_within(s: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until the peer closes; (closed in time, what arrived)."""
    s.settimeout(0.2)
    got, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def answer(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            (
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            b"0",
        )
    )
    while len(body) < length:
        body += s.recv(65536)
    return head


@pytest.fixture
def strict(make_proxy):
    return make_proxy("--header-timeout", "1", "--idle-timeout", "1", *LOOPBACK_INTERNET)


@pytest.mark.parametrize("auth", [None, "Basic " + "x" * 20])
def test_a_refused_connect_closes_the_connection(strict, auth):
    with socket.create_connection(("127.0.0.1", strict.port)) as s:
        head = "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n"
        s.sendall((head + (f"Proxy-Authorization: {auth}\r\n" if auth else "") + "\r\n").encode())
        closed, got = closed_within(s, 3)
    assert got.startswith(b"HTTP/1.1 407") and closed


def test_every_request_on_a_connection_has_a_header_deadline(strict, gateway):
    request = f"GET http://api.openai.com/v1/models HTTP/1.1\r\nHost: api.openai.com\r\nProxy-Authorization: {AUTH}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", strict.port)) as s:
        s.sendall(request.encode())
        assert answer(s).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        for byte in request[:40]:  # the second request drips in, a byte every 0.2 s
            try:
                s.sendall(byte.encode())
            except OSError:
                break
            time.sleep(0.2)
        closed, got = closed_within(s, 3)
    assert closed and time.monotonic() - started < 6
    assert got.startswith(b"HTTP/1.1 408")


def test_an_idle_connection_is_closed_between_requests(strict, gateway):
    request = f"GET http://api.openai.com/v1/models HTTP/1.1\r\nHost: api.openai.com\r\nProxy-Authorization: {AUTH}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", strict.port)) as s:
        s.sendall(request.encode())
        assert answer(s).startswith(b"HTTP/1.1 200")
        closed, got = closed_within(s, 3)
    assert closed and got == b""


def test_a_tunnel_that_never_starts_its_handshake_is_closed(strict):
    with socket.create_connection(("127.0.0.1", strict.port)) as s:
        s.sendall(
            f"CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {AUTH}\r\n\r\n".encode()
        )
        assert answer(s).startswith(b"HTTP/1.1 200")
        closed, _ = closed_within(s, 3)
    assert closed


def test_streams_and_relaying_tunnels_outlive_the_idle_timeout(strict, gateway, origin):
    with proxy_client(strict) as c:  # 6 events over 3 s, idle timeout 1 s
        with c.stream("GET", "https://api.openai.com/_diag/sse?events=6&interval=0.5") as r:
            events = [
                json.loads(line[6:])["i"] for line in r.iter_lines() if line.startswith("data: ")
            ]
    assert events == list(range(6))
    with socket.create_connection(("127.0.0.1", strict.port)) as raw:
        raw.sendall(
            f"CONNECT localhost:{origin.port} HTTP/1.1\r\nProxy-Authorization: {AUTH}\r\n\r\n".encode()
        )
        assert answer(raw).startswith(b"HTTP/1.1 200")
        ctx = ssl.create_default_context(cadata=origin.ca.cert_pem().decode())
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            time.sleep(2.5)  # quiet for longer than both timeouts
            s.sendall(b"GET /still HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")


def _open_tunnel(port: int, token: str) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        f"CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {proxy_basic(token)}"
        "\r\n\r\n".encode()
    )
    s.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data and (chunk := s.recv(65536)):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), b"0"))  # fmt: skip
    while len(body) < length and (chunk := s.recv(65536)):
        body += chunk
    return s, head + b"\r\n\r\n" + body


def test_one_user_cannot_hold_every_connection(make_proxy, gateway):
    """Held tunnels cost descriptors: past their cap a user gets 429 naming it, others go on."""
    from tests.support import BOB
    from tests.support import metric

    p = make_proxy("--connections-max-per-user", "3", *LOOPBACK_INTERNET)
    held = [_open_tunnel(p.port, ALICE) for _ in range(3)]
    assert all(head.startswith(b"HTTP/1.1 200") for _, head in held)
    extra, head = _open_tunnel(p.port, ALICE)
    assert head.startswith(b"HTTP/1.1 429") and b"connections.max_per_user" in head
    assert closed_within(extra, 3)[0]  # and the refused connection is closed
    bob, head = _open_tunnel(p.port, BOB)
    assert head.startswith(b"HTTP/1.1 200")  # another user is not affected
    held.pop()[0].close()
    time.sleep(0.3)
    again, head = _open_tunnel(p.port, ALICE)
    assert head.startswith(b"HTTP/1.1 200")  # a closed one frees its place
    for s in [again, bob, extra, *(s for s, _ in held)]:
        s.close()
    text = p.admin("/metrics").text
    assert metric(text, "aibridge_proxy_connects_total", outcome="rejected",
                  reason="connection_cap") == 1  # fmt: skip


def test_an_intercepted_tunnel_without_a_request_is_closed_sooner(make_proxy):
    p = make_proxy("--first-request-timeout", "1", *LOOPBACK_INTERNET)
    s, head = _open_tunnel(p.port, ALICE)
    assert head.startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context(cafile=str(p.ca_path))
    tls = ctx.wrap_socket(s, server_hostname="api.openai.com")
    started = time.monotonic()
    closed, _ = closed_within(tls, 5)
    assert closed and time.monotonic() - started < 4  # not the 300 s idle timeout
    tls.close()
