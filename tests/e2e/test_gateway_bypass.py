"""The gateway is never bypassed on a routed host: a routed CONNECT whose TLS handshake names
another host is refused (it was tunnelled raw to the provider), and so is a tunnel to any
address whose handshake names a routed host. A local TLS origin stands in for the provider
(`localhost` is routed here), so a raw pass-through would show as a completed handshake."""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.support import ALICE
from tests.support import LOOPBACK_INTERNET
from tests.support import proxy_basic


def handshake_through(proxy_port: int, target: str, sni: str, origin_ca: str) -> str:
    """CONNECT, then a TLS handshake trusting only the origin's CA: 'origin' if it completed
    (the bytes went to the origin untouched), else the error."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as s:
        s.sendall(
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
            f"Proxy-Authorization: {proxy_basic(ALICE)}\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        ctx = ssl.create_default_context(cadata=origin_ca)
        ctx.check_hostname = False
        try:
            with ctx.wrap_socket(s, server_hostname=sni):
                return "origin"
        except (ssl.SSLError, OSError) as e:
            return type(e).__name__


@pytest.fixture
def bypass_proxy(make_proxy, origin):
    return make_proxy("--provider", "localhost=openai", *LOOPBACK_INTERNET)


def test_routed_connect_with_another_sni_is_refused(bypass_proxy, origin):
    ca = origin.ca.cert_pem().decode()
    result = handshake_through(bypass_proxy.port, f"localhost:{origin.port}", "example.org", ca)
    assert result != "origin"
    bypass_proxy.wait_for_line(lambda r: "differs from CONNECT host" in r.get("msg", ""))


def test_tunnel_whose_handshake_names_a_routed_host_is_refused(bypass_proxy, origin):
    ca = origin.ca.cert_pem().decode()
    result = handshake_through(bypass_proxy.port, f"127.0.0.1:{origin.port}", "localhost", ca)
    assert result != "origin"
    bypass_proxy.wait_for_line(lambda r: "asks for intercepted host localhost" in r.get("msg", ""))


def test_tunnels_naming_other_hosts_still_pass_untouched(bypass_proxy, origin):
    ca = origin.ca.cert_pem().decode()
    target = f"127.0.0.1:{origin.port}"
    assert handshake_through(bypass_proxy.port, target, "other.test", ca) == "origin"
