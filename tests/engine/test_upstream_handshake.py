"""The NTLM/Negotiate CONNECT reader in-process: a 407 whose body is huge, or a sign-in that
trickles on, ends the CONNECT at once instead of holding it."""

from __future__ import annotations

from types import SimpleNamespace

from addons.engine import upstream_handshake
from addons.engine.upstream_handshake import UpstreamAuthHandshake


def _run(patch, layer, data: bytes):
    gen = patch._receive(layer, data)
    commands = []
    try:
        while True:
            commands.append(next(gen))
    except StopIteration as done:
        return done.value, commands


class _Layer:
    """What the reader uses of mitmproxy's HttpUpstreamProxy layer."""

    def __init__(self) -> None:
        self.tunnel_connection = SimpleNamespace(address=("127.0.0.1", 3128))


def _layer():
    return _Layer()


def _challenge(length: int) -> bytes:
    return (b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            b"Proxy-Authenticate: NTLM TlRMTVNTUAACAAAA\r\n"
            b"Content-Length: %d\r\n\r\n" % length)  # fmt: skip


def test_a_small_407_body_is_skipped_and_the_next_connect_sent():
    patch = UpstreamAuthHandshake()
    patch.responder = lambda conn, headers: b"CONNECT x:443 HTTP/1.1\r\n\r\n"
    (ok, error), commands = _run(patch, _layer(), _challenge(10) + b"0123456789")
    assert (ok, error) == (False, None) and len(commands) == 1  # waiting for the 2xx


def test_a_huge_407_body_ends_the_connect_at_once():
    patch = UpstreamAuthHandshake()
    patch.responder = lambda conn, headers: b"CONNECT x:443 HTTP/1.1\r\n\r\n"
    (ok, error), commands = _run(patch, _layer(), _challenge(10**9))
    assert not ok and "larger than" in error and commands == []


def test_a_sign_in_that_trickles_on_ends_after_its_deadline(monkeypatch):
    patch = UpstreamAuthHandshake()
    patch.responder = lambda conn, headers: b"CONNECT x:443 HTTP/1.1\r\n\r\n"
    layer = _layer()
    now = [1000.0]
    monkeypatch.setattr(upstream_handshake.time, "monotonic", lambda: now[0])
    _run(patch, layer, _challenge(60_000) + b"x")
    now[0] += upstream_handshake.MAX_SECONDS + 1
    (ok, error), _ = _run(patch, layer, b"x")
    assert not ok and "took longer than" in error
