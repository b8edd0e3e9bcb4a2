"""
The handler that owns a live client connection: to close its sockets (timeouts) or adjust its
limits (the h2 upstream-connection cap).
"""

from __future__ import annotations

import asyncio
import collections

from mitmproxy import connection
from mitmproxy import ctx


def connection_handler(client: connection.Client):
    """mitmproxy's ConnectionHandler for `client`, or None once it is gone."""
    server = ctx.master.addons.get("proxyserver")
    return server.connections.get(client.id) if server else None


def lift_upstream_connection_cap(client: connection.Client, limit: int) -> bool:
    """mitmproxy allows 5 concurrent upstream connections per client connection and
    destination (a semaphore per address, mitmproxy#8322); h2 -> h1 needs one per stream."""
    handler = connection_handler(client)
    if handler is None or not hasattr(handler, "max_conns"):
        return False
    handler.max_conns = collections.defaultdict(lambda: asyncio.Semaphore(limit))
    return True


def close_client(client: connection.Client) -> None:
    """Close a client's connection from within a hook (a refused tunnel or handshake)."""
    if (handler := connection_handler(client)) is not None:
        handler.close_connection(client)
