"""
Turning a CONNECT tunnel into raw bytes after mitmproxy's own NextLayer addon has already
stacked TLS layers for it: we find the HttpLayer/HttpStream pair that handled the CONNECT in
`context.layers`, cut what follows, and put a TCP relay in its place. Before that, the tunnel's
first bytes are read with mitmproxy's ClientHello parser, to see which name they ask for.
"""

from __future__ import annotations

from mitmproxy.proxy import layer
from mitmproxy.proxy import layers
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.layers.http import HttpStream
from mitmproxy.proxy.layers.tls import parse_client_hello

NEEDS_MORE_DATA = object()


def client_hello_sni(data: bytes):
    """The SNI of the TLS ClientHello at the start of a tunnel's first bytes: a name, None
    (not TLS, or no SNI), or NEEDS_MORE_DATA while the ClientHello is incomplete."""
    if not data:
        return NEEDS_MORE_DATA
    if data[0] != 0x16:  # not a TLS handshake record
        return None
    try:
        hello = parse_client_hello(data)
    except ValueError:
        return None
    return NEEDS_MORE_DATA if hello is None else hello.sni


def connect_stream_index(context) -> int | None:
    """Index of the HttpStream that handled a CONNECT, when mitmproxy asks what runs inside
    that tunnel; None for any other next-layer question.

    mitmproxy's own NextLayer addon runs first and may already have pushed its choice (TLS
    layers) onto `context.layers`, so we look for the HttpLayer/HttpStream pair rather than at
    the end of the stack.
    """
    if context.server.address is None:
        return None
    stack = context.layers
    for i in range(len(stack) - 1):
        http_layer, stream = stack[i], stack[i + 1]
        if (
            isinstance(http_layer, layers.HttpLayer)
            and http_layer.mode in (HTTPMode.regular, HTTPMode.upstream)
            and isinstance(stream, HttpStream)
        ):
            return i + 1
    return None


def relay_raw_bytes(nextlayer: layer.NextLayer, stream_index: int) -> None:
    """Undo whatever was stacked above the CONNECT's stream, then relay the tunnel's bytes."""
    context = nextlayer.context
    del context.layers[stream_index + 1 :]
    nextlayer.layer = layers.TCPLayer(context, ignore=True)
