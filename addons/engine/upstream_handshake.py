"""
Connection-based proxy authentication (NTLM, Negotiate) on the CONNECT mitmproxy sends to an
upstream proxy. mitmproxy sends one CONNECT and fails on anything but 2xx; NTLM and Negotiate
need a second CONNECT on the same connection, answering the 407's challenge.

When a responder is set (by `UpstreamCredentials`), `HttpUpstreamProxy.receive_handshake_data`
is replaced by a reader that skips a 407's body, asks the responder for the next CONNECT and
sends it, until the upstream answers 2xx or refuses for good.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field

from mitmproxy import connection
from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers.http import _upstream_proxy
from mitmproxy.utils import human

MAX_HEAD = 64 * 1024
MAX_407_BODY = 64 * 1024  # a 407's page is small; a bigger one held the CONNECT for its length
MAX_SECONDS = 10.0  # the whole sign-in, from its first answer: a trickling 407 body ends here
MAX_ROUNDS = 4  # NTLM needs two CONNECTs, Kerberos one or two; more is a loop

# Given the tunnel connection and a 407's headers: the next CONNECT's bytes, or None to stop.
Responder = Callable[[connection.Server, http.Headers], bytes | None]


@dataclass
class _Handshake:
    buffer: bytearray = field(default_factory=bytearray)
    skip: int = 0  # body bytes of a 407 still to drop
    rounds: int = 0
    started: float = field(default_factory=lambda: time.monotonic())


class UpstreamAuthHandshake:
    def __init__(self) -> None:
        self.responder: Responder | None = None
        self._original = None
        self._handshakes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def install(self) -> None:
        if self._original is not None:
            return
        original = self._original = _upstream_proxy.HttpUpstreamProxy.receive_handshake_data
        patch = self

        def receive_handshake_data(layer, data):
            if not layer.send_connect or patch.responder is None:
                return (yield from original(layer, data))
            return (yield from patch._receive(layer, data))

        _upstream_proxy.HttpUpstreamProxy.receive_handshake_data = receive_handshake_data

    def uninstall(self) -> None:
        if self._original is not None:
            _upstream_proxy.HttpUpstreamProxy.receive_handshake_data = self._original
            self._original = None

    def _receive(self, layer, data: bytes):
        state = self._handshakes.setdefault(layer, _Handshake())
        state.buffer += data
        proxy = human.format_address(layer.tunnel_connection.address)
        if time.monotonic() - state.started > MAX_SECONDS:
            return False, f"Upstream proxy {proxy} took longer than {MAX_SECONDS:g} s to sign in"
        while True:
            if state.skip:
                dropped = min(state.skip, len(state.buffer))
                del state.buffer[:dropped]
                state.skip -= dropped
                if state.skip:
                    return False, None
            end = state.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(state.buffer) > MAX_HEAD:
                    return False, f"Upstream proxy {proxy} sent an endless response head"
                return False, None
            head = bytes(state.buffer[: end + 4])
            del state.buffer[: end + 4]
            try:
                response = http1.read_response_head(head.split(b"\r\n")[:-2])
            except ValueError as e:
                return False, f"Error connecting to {proxy}: {e}"
            if 200 <= response.status_code < 300:
                self._handshakes.pop(layer, None)
                if state.buffer:
                    yield from layer.receive_data(bytes(state.buffer))
                return True, None
            refusal = (
                f"Upstream proxy {proxy} refused HTTP CONNECT request: "
                f"{response.status_code} {response.reason}"
            )
            if response.status_code != 407 or state.rounds >= MAX_ROUNDS:
                return False, refusal
            if response.headers.get("connection", "").lower() == "close":
                return False, refusal + " (and closed the connection the handshake needs)"
            length = response.headers.get("content-length", "0")
            if not length.isdigit():
                return False, refusal + " (a 407 body without Content-Length)"
            if int(length) > MAX_407_BODY:
                return False, refusal + f" (a 407 body larger than {MAX_407_BODY} bytes)"
            assert self.responder is not None
            next_connect = self.responder(layer.tunnel_connection, response.headers)
            if next_connect is None:
                return False, refusal
            state.rounds += 1
            state.skip = int(length)
            yield commands.SendData(layer.tunnel_connection, next_connect)
