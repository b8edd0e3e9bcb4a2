"""
Intercept or tunnel: decrypt only the hosts we route or observe; every other CONNECT becomes
raw bytes.

The decision is taken on the CONNECT target before the client's first TLS byte is read, so a
tunnelled client talks to the real server and sees the real server's certificate.
"""

from __future__ import annotations

import logging
import time

from mitmproxy import http
from mitmproxy import tls
from mitmproxy.proxy import layer

from addons.connection.deadlines import ConnectionDeadlines
from addons.egress.egress_policy import EgressPolicy
from addons.engine.connections import close_client
from addons.engine.layer_stack import NEEDS_MORE_DATA
from addons.engine.layer_stack import client_hello_sni
from addons.engine.layer_stack import connect_stream_index
from addons.engine.layer_stack import relay_raw_bytes
from addons.routing.snapshot import Routing

logger = logging.getLogger(__name__)


def connection_established(http_version: str) -> http.Response:
    """The 200 mitmproxy itself sends for a CONNECT (no headers: some clients insist)."""
    now = time.time()
    return http.Response(
        http_version, 200, b"Connection established", http.Headers(), b"", None, now, now
    )


class InterceptPolicy:
    """Routed and observed hosts get mitmproxy's TLS interception; all others get a raw TCP
    tunnel, unless its TLS handshake names an intercepted host. An intercepted CONNECT whose
    handshake names a host we do not intercept is refused: the gateway (or the observation) is
    never bypassed.

    The engine runs with `connection_strategy=eager`, so a tunnel's destination is dialled
    before the CONNECT is answered (a refused or failed dial becomes 403/502 on the CONNECT).
    Intercepted CONNECTs are answered here, before the engine would dial: a provider host is
    never contacted, and an observed origin is dialled per request (egress-checked then).
    """

    def __init__(
        self, routing: Routing, deadlines: ConnectionDeadlines, egress: EgressPolicy | None = None
    ):
        self.routing = routing
        self.deadlines = deadlines
        self.egress = egress

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        if self.routing.current.intercepts(flow.request.host):
            flow.response = connection_established(flow.request.http_version)

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        context = nextlayer.context
        stream_index = connect_stream_index(context)
        if stream_index is None:
            return
        host = context.server.address[0]
        snapshot = self.routing.current
        if snapshot.intercepts(host):
            return  # mitmproxy's own NextLayer peeks at the bytes and sets up TLS interception
        # A tunnel is decided on its first bytes: a TLS handshake that names a routed host
        # (a CONNECT to a provider's IP address with the provider's SNI) would reach the
        # provider around the gateway. Clients speak first in TLS and HTTP; a server that
        # greets first (data from the server, none from the client) is relayed at once.
        first_bytes = nextlayer.data_client()
        sni = client_hello_sni(first_bytes)
        if sni is NEEDS_MORE_DATA and not nextlayer.data_server():
            return  # asked again when more bytes arrive
        if isinstance(sni, str) and snapshot.intercepts(sni):
            logger.warning(
                "tunnel to %s asks for intercepted host %s in its TLS handshake: refused", host, sni
            )
            close_client(context.client)
            return
        if self.egress is not None and sni is not NEEDS_MORE_DATA:
            if why := self.egress.tunnel_refusal(host, first_bytes, sni):
                logger.warning("tunnel to %s refused on its TLS handshake: %s", host, why)
                close_client(context.client)
                return
        relay_raw_bytes(nextlayer, stream_index)
        self.deadlines.tunnel_relaying(context.client)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        server = data.context.server.address
        if server is None:
            return  # the handshake with the proxy itself (TLS listener)
        sni = data.client_hello.sni
        snapshot = self.routing.current
        if not snapshot.intercepts(server[0]):
            # The table changed since this tunnel's CONNECT: do not decrypt it any more.
            data.ignore_connection = True
            return
        # never reach for the provider's certificate before answering the client (and an
        # observed origin's certificate may name hosts our CA's constraints exclude)
        data.establish_server_tls_first = False
        if sni and not snapshot.intercepts(sni):
            # CONNECT named a routed host but the TLS handshake asks for another name. Passing
            # the bytes through would reach the provider around the gateway; we do not mint
            # certificates for names we do not route either. Refused.
            logger.warning("SNI %s differs from CONNECT host %s: refused", sni, server[0])
            close_client(data.context.client)
