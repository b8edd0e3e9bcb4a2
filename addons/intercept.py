"""
Intercept or tunnel: decrypt only the hosts we route; every other CONNECT becomes raw bytes.

The decision is taken on the CONNECT target before the client's first TLS byte is read, so a
tunnelled client talks to the real server and sees the real server's certificate.
"""

from __future__ import annotations

import logging
import time

from mitmproxy import http
from mitmproxy import tls
from mitmproxy.proxy import layer

from addons.engine.layer_stack import connect_stream_index
from addons.engine.layer_stack import relay_raw_bytes
from addons.routing import Routing

logger = logging.getLogger(__name__)


def connection_established(http_version: str) -> http.Response:
    """The 200 mitmproxy itself sends for a CONNECT (no headers: some clients insist)."""
    now = time.time()
    return http.Response(
        http_version, 200, b"Connection established", http.Headers(), b"", None, now, now
    )


class InterceptPolicy:
    """Routed hosts get mitmproxy's TLS interception; all others get a raw TCP tunnel.

    The engine runs with `connection_strategy=eager`, so a tunnel's destination is dialled
    before the CONNECT is answered (a refused or failed dial becomes 403/502 on the CONNECT).
    Routed CONNECTs are answered here, before the engine would dial: the provider host is
    never contacted.
    """

    def __init__(self, routing: Routing):
        self.routing = routing

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        if self.routing.current.table.lookup(flow.request.host) is not None:
            flow.response = connection_established(flow.request.http_version)

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        context = nextlayer.context
        stream_index = connect_stream_index(context)
        if stream_index is None:
            return
        host = context.server.address[0]
        if self.routing.current.table.lookup(host) is not None:
            return  # mitmproxy's own NextLayer peeks at the bytes and sets up TLS interception
        relay_raw_bytes(nextlayer, stream_index)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        server = data.context.server.address
        if server is None:
            return  # the handshake with the proxy itself (TLS listener)
        sni = data.client_hello.sni
        table = self.routing.current.table
        if table.lookup(server[0]) is None:
            # The table changed since this tunnel's CONNECT: do not decrypt it any more.
            data.ignore_connection = True
            return
        # routed: never reach for the provider's certificate before answering the client
        data.establish_server_tls_first = False
        if sni and table.lookup(sni) is None:
            # CONNECT named a routed host but the TLS handshake asks for another name: we do
            # not mint certificates for names we do not route, so pass the bytes through.
            logger.info("SNI %s differs from routed CONNECT host %s: tunnelling", sni, server[0])
            data.ignore_connection = True
