"""Host policy for every CONNECT and plain request: `egress.deny_hosts` refuses before any TLS
(or dial), `egress.allow_hosts` allows only what it lists (routed hosts stay reachable); the
refusal is one plain line naming the setting, in the access log and in connects_total."""

from __future__ import annotations

from tests.support import ALICE
from tests.support import LOOPBACK_INTERNET
from tests.support import connect_through
from tests.support import metric
from tests.support import proxy_basic
from tests.support import raw_request


def test_a_denied_host_is_refused_before_any_tls(make_proxy):
    p = make_proxy("--egress-deny-hosts", "*.cursor.sh,windsurf.example", *LOOPBACK_INTERNET)
    status, answer = connect_through(p.port, "api2.cursor.sh:443", proxy_basic(ALICE))
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert status == 403  # not 502: the name (which does not resolve here) was never dialled
    assert body == (
        b"403 Forbidden: api2.cursor.sh is denied by the proxy's egress policy "
        b"(egress.deny_hosts)\n"
    )
    plain = raw_request(
        p.port,
        f"GET http://windsurf.example/ HTTP/1.1\r\nProxy-Authorization: {proxy_basic(ALICE)}\r\n\r\n".encode(),
    )
    assert plain.startswith(b"HTTP/1.1 403") and b"egress.deny_hosts" in plain
    line = p.wait_for_line(lambda r: r.get("msg") == "connect refused")
    assert (line["host"], line["status"], line["reason"], line["user"]) == (
        "api2.cursor.sh",
        403,
        "denied_host",
        "alice",
    )
    text = p.admin("/metrics").text
    assert (
        metric(text, "aibridge_proxy_connects_total", outcome="rejected", reason="denied_host") == 1
    )


def test_allow_only_mode(make_proxy, gateway, origin):
    p = make_proxy("--egress-allow-hosts", "localhost", *LOOPBACK_INTERNET)
    assert connect_through(p.port, f"localhost:{origin.port}", proxy_basic(ALICE))[0] == 200
    assert connect_through(p.port, "api.openai.com:443", proxy_basic(ALICE))[0] == 200  # routed
    status, answer = connect_through(p.port, "example.org:443", proxy_basic(ALICE))
    assert status == 403 and b"egress.allow_hosts" in answer


def _tunnel_with_sni(proxy_port: int, target: str, sni: str | None) -> bytes:
    """CONNECT `target`, then send a TLS ClientHello asking for `sni` (None: no SNI): what
    comes back before the tunnel closes (b"" when the proxy closed it)."""
    import socket
    import ssl

    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as s:
        head = f"CONNECT {target} HTTP/1.1\r\nProxy-Authorization: {proxy_basic(ALICE)}\r\n\r\n"
        s.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := s.recv(4096)):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        s.sendall(outgoing.read())
        try:
            return s.recv(4096)
        except (ConnectionResetError, TimeoutError):
            return b""


def test_the_host_policy_applies_to_the_tls_handshakes_name(make_proxy, origin):
    """A CDN serves many names on one address: CONNECT an allowed name, ask for a denied one."""
    p = make_proxy("--egress-deny-hosts", "denied.example", *LOOPBACK_INTERNET)
    target = f"localhost:{origin.port}"
    assert _tunnel_with_sni(p.port, target, "localhost")  # the origin's ServerHello
    assert _tunnel_with_sni(p.port, target, "denied.example") == b""
    p.wait_for_line(lambda r: "refused on its TLS handshake" in r.get("msg", ""))
    assert _tunnel_with_sni(p.port, target, None) == b""  # a policy needs a name to check


def test_a_deny_entry_in_punycode_matches_the_name_mitmproxy_decodes(make_proxy):
    p = make_proxy("--egress-deny-hosts", "xn--bcher-kva.example", *LOOPBACK_INTERNET)
    status, answer = connect_through(p.port, "xn--bcher-kva.example:443", proxy_basic(ALICE))
    assert status == 403 and b"egress.deny_hosts" in answer


def test_ip_literals_are_refused_when_a_host_policy_is_set(make_proxy, origin):
    """Any spelling of an address a resolver takes (2130706434 is 127.0.0.2; 127.0.0.1 is the
    local gateway's host, always reachable)."""
    p = make_proxy("--egress-deny-hosts", "denied.example", *LOOPBACK_INTERNET)
    for host in ("127.0.0.2", "2130706434", "0x7f000002", "127.2", "[::1]"):
        status, answer = connect_through(p.port, f"{host}:{origin.port}", proxy_basic(ALICE))
        assert status == 403 and b"connect by host name" in answer, host
    plain = raw_request(
        p.port,
        f"GET http://127.0.0.2:{origin.port}/ HTTP/1.1\r\n"
        f"Proxy-Authorization: {proxy_basic(ALICE)}\r\n\r\n".encode(),
    )
    assert plain.startswith(b"HTTP/1.1 403") and b"connect by host name" in plain
    free = make_proxy(*LOOPBACK_INTERNET)  # without a host policy, addresses are destinations
    assert connect_through(free.port, f"127.0.0.1:{origin.port}", proxy_basic(ALICE))[0] == 200
