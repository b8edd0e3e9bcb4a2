"""The addon chain in-process: mitmproxy's `taddons` context with our addons loaded and
configured as `serve` configures them, and flows made with `tflow`."""

from __future__ import annotations

from contextlib import contextmanager

from mitmproxy import http
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from addons.rules.proxy_authorization import basic_credentials

GATEWAY = "https://coder.example.com"


@contextmanager
def loaded(*addons, **options):
    """A taddons context holding `addons`, with `options` (and a gateway) set on it."""
    with taddons.context(*addons) as tctx:
        tctx.options.update(aibridge_gateway=GATEWAY, **options)
        yield tctx


def connect_flow(host: str, token: str | None = "tok-alice", user: str = "coder", port=443):
    """A CONNECT from a fresh client, with Proxy-Authorization when `token` is given."""
    req = http.Request.make("CONNECT", f"http://{host}:{port}/")
    req.authority, req.host, req.port, req.path = f"{host}:{port}", host, port, ""
    if token is not None:
        req.headers["Proxy-Authorization"] = basic_credentials(user, token)
    return tflow.tflow(req=req)


def request_in_tunnel(
    connect: http.HTTPFlow, method="POST", path="/v1/chat/completions", headers=(), content=b"{}"
) -> http.HTTPFlow:
    """A request inside the tunnel `connect` opened (same client connection)."""
    host, port = connect.request.host, connect.request.port
    req = http.Request.make(method, f"https://{host}:{port}{path}", content, list(headers))
    return tflow.tflow(client_conn=connect.client_conn, req=req)
