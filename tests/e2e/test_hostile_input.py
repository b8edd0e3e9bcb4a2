"""Hostile input against the real proxy: each case gets a precise status, and the proxy keeps
serving other clients afterwards."""

from __future__ import annotations

import socket
import ssl
import time

import httpx
import pytest

from tests.support import ALICE
from tests.support import proxy_basic
from tests.support import raw_request

AUTH = f"Proxy-Authorization: {proxy_basic(ALICE)}\r\n"


def status(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1]) if resp.startswith(b"HTTP/1.1 ") else 0


CASES = {
    "CONNECT without port": (f"CONNECT api.openai.com HTTP/1.1\r\n{AUTH}\r\n", 400),
    "CONNECT port 0": (f"CONNECT api.openai.com:0 HTTP/1.1\r\n{AUTH}\r\n", 400),
    "CONNECT port 99999": (f"CONNECT api.openai.com:99999 HTTP/1.1\r\n{AUTH}\r\n", 400),
    "unbalanced IPv6 [": (f"CONNECT [::1:443 HTTP/1.1\r\n{AUTH}\r\n", 400),
    "unbalanced IPv6 ]": (f"CONNECT ::1]:443 HTTP/1.1\r\n{AUTH}\r\n", 400),
    "NUL in header value": (
        f"GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\nX-A: a\x00b\r\n{AUTH}\r\n",
        400,
    ),
    "CR in header value": (
        f"GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\nX-A: a\rb\r\n{AUTH}\r\n",
        400,
    ),
    "NUL in CONNECT header": (
        f"CONNECT api.openai.com:443 HTTP/1.1\r\nX-A: \x00\r\n{AUTH}\r\n",
        400,
    ),
    "CL and TE together": (
        f"POST http://example.org/ HTTP/1.1\r\nHost: example.org\r\nContent-Length: 5\r\n"
        f"Transfer-Encoding: chunked\r\n{AUTH}\r\n0\r\n\r\n",
        400,
    ),
    "two Content-Lengths": (
        f"POST http://example.org/ HTTP/1.1\r\nHost: example.org\r\nContent-Length: 5\r\n"
        f"Content-Length: 6\r\n{AUTH}\r\nhello",
        400,
    ),
    "oversized header block": (
        f"GET http://example.org/ HTTP/1.1\r\nX-Big: {'a' * 200_000}\r\n{AUTH}\r\n",
        431,
    ),
    "64 KB Proxy-Authorization": (
        f"CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: Basic {'A' * 65536}\r\n\r\n",
        431,
    ),
    "bad base64 credentials": (
        "CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: Basic %%%\r\n\r\n",
        407,
    ),
    "not a request": ("HELLO\r\n\r\n", 400),
}


@pytest.mark.parametrize("name", list(CASES))
def test_precise_status_and_still_serving(proxy, gateway, name):
    data, expected = CASES[name]
    resp = raw_request(proxy.port, data.encode("latin-1"))
    assert status(resp) == expected, resp[:200]
    assert b"Traceback" not in resp and b"mitmproxy" not in resp
    assert not gateway.records
    _still_serving(proxy)


def test_non_utf8_credentials(proxy):
    resp = raw_request(
        proxy.port,
        b"CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: Basic \xff\xfe==\r\n\r\n",
    )
    assert status(resp) == 407
    _still_serving(proxy)


def test_endless_header_line_is_cut_off(proxy):
    """A header that never ends is refused once it passes the limit, without waiting for it."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"GET http://example.org/ HTTP/1.1\r\nX-Endless: ")
        resp = b""
        try:
            for _ in range(100):
                s.sendall(b"a" * 16384)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            resp = s.recv(4096)
        except ConnectionResetError:
            pass
    assert resp.startswith(b"HTTP/1.1 431 ") or resp == b""
    _still_serving(proxy)


def test_slowloris_is_closed(make_proxy):
    p = make_proxy("--header-timeout", "1")
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"CONNECT api.openai.com:443 HTTP/1.1\r\n")
        started = time.monotonic()
        s.sendall(b"X-Slow: 1\r\n")
        resp = s.recv(4096)
        elapsed = time.monotonic() - started
        assert resp.startswith(b"HTTP/1.1 408 ")
        assert s.recv(4096) == b""  # closed
    assert 0.5 < elapsed < 5
    _still_serving(p)


def test_client_disconnects_mid_upload_and_mid_stream(proxy, gateway):
    ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
    # mid-upload: announce 10 MB, send 1 MB, vanish
    raw = socket.create_connection(("127.0.0.1", proxy.port))
    raw.sendall(f"CONNECT api.openai.com:443 HTTP/1.1\r\n{AUTH}\r\n".encode())
    assert raw.recv(4096).startswith(b"HTTP/1.1 200")
    tls = ctx.wrap_socket(raw, server_hostname="api.openai.com")
    tls.sendall(
        b"POST /_diag/upload HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 10485760\r\n\r\n"
    )
    tls.sendall(b"x" * 1048576)
    tls.close()
    # mid-stream: read two events, then vanish
    with httpx.Client(proxy=proxy.url(ALICE), verify=ctx, trust_env=False) as c:
        with c.stream("GET", "https://api.openai.com/_diag/sse?events=50&interval=0.05") as r:
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("data: ")
                if seen == 2:
                    break
    _still_serving(proxy)


def _still_serving(p) -> None:
    ctx = ssl.create_default_context(cafile=str(p.ca_path))
    with httpx.Client(proxy=p.url(ALICE), verify=ctx, trust_env=False, timeout=10) as c:
        assert c.get("https://api.openai.com/v1/models").status_code == 200
