"""Chaining to a company egress proxy: tunnels go through it with its credentials, routed
requests still go straight to the gateway."""

from __future__ import annotations

import base64
import ssl

import httpx
import pytest

from tests.support import ALICE
from tests.support import LOOPBACK_INTERNET
from tests.support import UpstreamTestProxy
from tests.support import private_tls_server
from tests.support import proxy_basic
from tests.support import raw_request


@pytest.fixture
def upstream():
    u = UpstreamTestProxy().start()
    yield u
    u.stop()


def tunnel_get(p, origin, origin_ca) -> httpx.Response:
    with httpx.Client(
        proxy=p.url(ALICE),
        verify=ssl.create_default_context(cafile=str(origin_ca)),
        trust_env=False,
    ) as c:
        return c.get(f"https://localhost:{origin.port}/through")


def basic(userinfo: str) -> str:
    return "Basic " + base64.b64encode(userinfo.encode()).decode()


def test_tunnels_go_through_the_upstream_with_its_credentials(
    make_proxy, upstream, origin, gateway, tmp_path
):
    p = make_proxy(
        "--upstream-proxy", f"http://corp:s3cr%40t@127.0.0.1:{upstream.port}", *LOOPBACK_INTERNET
    )
    r = tunnel_get(p, origin, origin.write_ca(tmp_path / "o.pem"))
    assert r.text == "origin saw GET /through HTTP/1.1 body=0"
    assert upstream.connects == [(f"CONNECT localhost:{origin.port}", basic("corp:s3cr@t"))]
    # routed traffic does not touch the upstream proxy
    ctx = ssl.create_default_context(cafile=str(p.ca_path))
    with httpx.Client(proxy=p.url(ALICE), verify=ctx, trust_env=False) as c:
        assert c.get("https://api.openai.com/v1/models").status_code == 200
    assert gateway.last().path == "/api/v2/aibridge/openai/v1/models"
    assert gateway.last().header("Proxy-Authorization") is None
    assert len(upstream.connects) == 1
    assert "s3cr" not in p.output


@pytest.mark.parametrize(
    "userinfo, expected", [("user@", "user:"), (":token@", ":token"), ("", None)]
)
def test_credential_forms(make_proxy, upstream, origin, tmp_path, userinfo, expected):
    p = make_proxy(
        "--upstream-proxy", f"http://{userinfo}127.0.0.1:{upstream.port}", *LOOPBACK_INTERNET
    )
    tunnel_get(p, origin, origin.write_ca(tmp_path / "o.pem"))
    assert upstream.connects[-1][1] == (basic(expected) if expected else None)


def test_private_destinations_are_checked_before_the_upstream(make_proxy, upstream):
    p = make_proxy("--upstream-proxy", f"http://127.0.0.1:{upstream.port}")
    req = f"CONNECT 10.1.2.3:443 HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {proxy_basic(ALICE)}\r\n\r\n"
    assert raw_request(p.port, req.encode()).startswith(b"HTTP/1.1 403 ")
    assert upstream.connects == []


def test_https_upstream_with_its_own_ca(make_proxy, origin, tmp_path):
    ctx, ca_file = private_tls_server(tmp_path, "upstream")
    upstream = UpstreamTestProxy(ssl_context=ctx).start()
    try:
        p = make_proxy(
            "--upstream-proxy",
            f"https://u:p@localhost:{upstream.port}",
            "--upstream-proxy-ca",
            str(ca_file),
            *LOOPBACK_INTERNET,
        )
        r = tunnel_get(p, origin, origin.write_ca(tmp_path / "o.pem"))
        assert r.text == "origin saw GET /through HTTP/1.1 body=0"
        assert upstream.connects[-1] == (f"CONNECT localhost:{origin.port}", basic("u:p"))
    finally:
        upstream.stop()


def test_bad_upstream_urls_are_config_errors():
    from tests.support import assert_one_line_error
    from tests.support import cli

    r = cli(
        "serve", "--gateway", "http://127.0.0.1:1", "--upstream-proxy", "socks5://u:hunter2@x:1"
    )
    assert_one_line_error(
        r, "upstream_proxy: 'socks5://***@x:1'", "must start with http:// or https://"
    )
    assert "hunter2" not in r.stderr
    r = cli("serve", "--gateway", "http://127.0.0.1:1", "--upstream-proxy", "http://:@x:1")
    assert_one_line_error(r, "both user name and password empty")


class EchoingUpstream:
    """An upstream proxy that refuses everything with a 407 page echoing what it was sent
    (as some do), the company's Proxy-Authorization included."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                data += chunk
            body = b"<h1>Proxy Authentication Required</h1><pre>" + data + b"</pre>"
            conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                         b'Proxy-Authenticate: Basic realm="corp"\r\n'
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip

    def stop(self) -> None:
        self.sock.close()


def test_the_upstreams_407_to_plain_http_never_reaches_the_developer(make_proxy):
    """Plain http:// goes to the upstream with the company's credentials added; its 407 page
    echoed them back to the developer. Now: our 502, naming the setting."""
    echoing = EchoingUpstream()
    try:
        p = make_proxy("--upstream-proxy", f"http://corp:s3cr3t-corp@127.0.0.1:{echoing.port}",
                       *LOOPBACK_INTERNET)  # fmt: skip
        answer = raw_request(
            p.port,
            f"GET http://localhost:{echoing.port}/page HTTP/1.1\r\nHost: localhost\r\n"
            f"Proxy-Authorization: {proxy_basic(ALICE)}\r\n\r\n".encode(),
        )
    finally:
        echoing.stop()
    assert answer.startswith(b"HTTP/1.1 502"), answer[:200]
    assert b"upstream_proxy" in answer
    secret = base64.b64encode(b"corp:s3cr3t-corp")
    assert b"s3cr3t" not in answer and secret not in answer and b"<pre>" not in answer
