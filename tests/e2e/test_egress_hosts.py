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
