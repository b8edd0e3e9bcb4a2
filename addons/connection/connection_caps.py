"""
Connection caps: one user, one address or everyone together may hold only so many client
connections (held tunnels cost two descriptors each, and past the open-file limit every other
user's requests failed with EMFILE). Over a cap, the next CONNECT or plain request is answered
`429` naming the setting (`503` when the proxy as a whole is full) and the connection closes;
the refusal is counted like any other (`connects_total{reason="connection_cap"}`).

A user (an address, for connections that name none) whose connections were closed three
times within a minute for flooding HTTP/2 (addons/engine/h2_abuse.py) gets `429` on new connections until that minute is over.
"""

from __future__ import annotations

import hashlib
import logging
import resource
import weakref

from mitmproxy import connection
from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http

from addons.core.record import RejectReason
from addons.core.record import record
from addons.core.record import reject
from addons.core.responses import refusal_response
from addons.rules.connection_counts import Caps
from addons.rules.connection_counts import ConnectionCounts
from addons.rules.connection_counts import total_for
from addons.rules.token_validation import FailureLimiter

logger = logging.getLogger(__name__)


def open_files_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class ConnectionCaps:
    def __init__(self) -> None:
        self.counts = ConnectionCounts(Caps(256, 1024, total_for(open_files_limit())))
        # connections closed for an HTTP/2 flood: three within a minute bar the holder
        self.strikes = FailureLimiter(max_failures=3, window=60.0, max_clients=10_000)
        # each client connection: (its address, the user it was claimed for, if any)
        self._clients: weakref.WeakKeyDictionary[connection.Client, list] = (
            weakref.WeakKeyDictionary()
        )

    def load(self, loader):
        loader.add_option(
            "aibridge_max_connections_per_user",
            int,
            256,
            "Client connections one user may hold at once (429 above); never more than half "
            "of all the proxy can hold.",
        )
        loader.add_option(
            "aibridge_max_connections_per_address",
            int,
            1024,
            "Client connections one address may hold at once (429 above).",
        )
        loader.add_option(
            "aibridge_max_connections",
            int,
            0,
            "Client connections in all (503 above); 0: what the open-file limit allows, "
            "two descriptors each and a reserve kept aside.",
        )

    def configure(self, updated):
        names = {
            "aibridge_max_connections_per_user",
            "aibridge_max_connections_per_address",
            "aibridge_max_connections",
        }
        if not names & set(updated):
            return
        for name in sorted(names):
            least = 0 if name == "aibridge_max_connections" else 1
            if getattr(ctx.options, name) < least:
                raise exceptions.OptionsError(f"{name} must be at least {least}")
        total = ctx.options.aibridge_max_connections or total_for(open_files_limit())
        self.counts.caps = Caps(
            ctx.options.aibridge_max_connections_per_user,
            ctx.options.aibridge_max_connections_per_address,
            total,
        )

    def client_connected(self, client: connection.Client) -> None:
        address = client.peername[0] if client.peername else "?"
        self._clients[client] = [address, None]
        self.counts.opened(address)

    def client_disconnected(self, client: connection.Client) -> None:
        if (held := self._clients.pop(client, None)) is not None:
            self.counts.closed(held[0], held[1])

    def flooded(self, client: connection.Client, what: str) -> None:
        """A connection was closed for flooding HTTP/2: a strike for its user (for its address
        only when it named none: many developers may share one address behind a NAT)."""
        held = self._clients.get(client)
        if held is not None:
            self.strikes.record_failure(held[1] or held[0])

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._check(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._check(flow)

    def _check(self, flow: http.HTTPFlow) -> None:
        held = self._clients.get(flow.client_conn)
        if flow.response is not None or held is None or held[1] is not None:
            return  # answered already, or this connection was let in before
        user = _holder(record(flow).identity)
        refusal = self._barred(held[0], user) or self.counts.refusal(held[0], user)
        if refusal is not None:
            status, why = refusal
            logger.warning("refused a connection: %s", why)
            reject(flow, RejectReason.CONNECTION_CAP)
            flow.response = refusal_response(status, why)
            return
        if user is not None:
            held[1] = user
            self.counts.claim(user)

    def _barred(self, address: str, user: str | None) -> tuple[int, str] | None:
        key = user or address
        if not self.strikes.is_blocked(key):
            return None
        return 429, (
            f"{key}'s connections were closed {self.strikes.max_failures} times within "
            f"{self.strikes.window:g} s for flooding HTTP/2: wait a minute"
        )


def _holder(identity) -> str | None:
    """Whom a connection counts against: the user, or (presence mode) the token's digest."""
    if identity is None or identity.token is None:
        return None
    if identity.user:
        return identity.user
    return "a token " + hashlib.sha256(identity.token.encode()).hexdigest()[:12]
