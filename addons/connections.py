"""
The one mitmproxy internal several addons need: the handler that owns a live client
connection (to close its sockets or adjust its limits). Kept here so an engine upgrade that
moves it breaks one function, which the end-to-end tests exercise.
"""

from __future__ import annotations

from mitmproxy import connection
from mitmproxy import ctx


def connection_handler(client: connection.Client):
    """mitmproxy's ConnectionHandler for `client`, or None once it is gone."""
    server = ctx.master.addons.get("proxyserver")
    return server.connections.get(client.id) if server else None
