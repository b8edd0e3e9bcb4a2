"""
Intercept or tunnel: decrypt only the hosts we route; every other CONNECT becomes raw bytes.

The decision is taken on the CONNECT target before the client's first TLS byte is read, so a
tunnelled client talks to the real server and sees the real server's certificate.
"""

from __future__ import annotations

import logging

from mitmproxy import tls
from mitmproxy.proxy import layer
from mitmproxy.proxy import layers
from mitmproxy.proxy.layers.http import HTTPMode

from addons.routing import Routing

logger = logging.getLogger(__name__)


def _is_connect_tunnel(context) -> bool:
    """True when mitmproxy asks what runs inside a just-accepted CONNECT tunnel."""
    if not context.layers or context.server.address is None:
        return False
    last = context.layers[-1]
    return isinstance(last, layers.HttpLayer) and last.mode in (
        HTTPMode.regular,
        HTTPMode.upstream,
    )


class InterceptPolicy:
    """Routed hosts get mitmproxy's TLS interception; all others get a raw TCP tunnel."""

    def __init__(self, routing: Routing, observer=None):
        self.routing = routing
        self.observer = observer

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        context = nextlayer.context
        if not _is_connect_tunnel(context):
            return
        host = context.server.address[0]
        if self.routing.current.table.lookup(host) is not None:
            if self.observer is not None:
                self.observer.connect_outcome("intercepted")
            return  # mitmproxy's own NextLayer peeks at the bytes and sets up TLS interception
        nextlayer.layer = layers.TCPLayer(context, ignore=True)
        if self.observer is not None:
            self.observer.connect_outcome("tunnelled")

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        server = data.context.server.address
        if server is None:
            return  # the handshake with the proxy itself (TLS listener)
        sni = data.client_hello.sni
        table = self.routing.current.table
        if sni and table.lookup(sni) is None:
            # CONNECT named a routed host but the TLS handshake asks for another name: we do
            # not mint certificates for names we do not route, so pass the bytes through.
            logger.info("SNI %s differs from routed CONNECT host %s: tunnelling", sni, server[0])
            data.ignore_connection = True
