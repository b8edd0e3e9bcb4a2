"""The addon chain in-process: mitmproxy's `taddons` context with our addons loaded and
configured as `serve` configures them, and flows made with `tflow`."""

from __future__ import annotations

from contextlib import contextmanager

from mitmproxy import http
from mitmproxy.proxy.layers import http as http_layer
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


class FullChain:
    """Every addon of the product's chain (addons/chain.py), driven through mitmproxy's own
    hook dispatch, so each hook reaches the addons in the chain's real order, as in `serve`."""

    def __init__(self, tctx):
        self.tctx = tctx
        self.addons = {type(a).__name__: a for a in tctx.master.addons.chain}

    async def hook(self, hook) -> None:
        await self.tctx.master.addons.handle_lifecycle(hook)

    async def connect(self, host: str, token: str | None = "tok-alice", user="coder"):
        """A CONNECT, answered or accepted as mitmproxy would go on with it."""
        flow = connect_flow(host, token=token, user=user)
        await self.hook(http_layer.HttpConnectHook(flow))
        if flow.response is None or 200 <= flow.response.status_code < 300:
            await self.hook(http_layer.HttpConnectedHook(flow))
        else:
            await self.hook(http_layer.HttpConnectErrorHook(flow))
        return flow

    async def send(self, connect: http.HTTPFlow, without=(), **request) -> http.HTTPFlow:
        """A request in `connect`'s tunnel: its headers, then (unless answered, or streamed
        on) its whole body, as mitmproxy calls the hooks."""
        flow = request_in_tunnel(connect, **request)
        for name in without:  # e.g. a body sent without a Content-Length
            flow.request.headers.pop(name, None)
        await self.hook(http_layer.HttpRequestHeadersHook(flow))
        if flow.response is None:
            await self.hook(http_layer.HttpRequestHook(flow))
        return flow

    async def answer(
        self, flow: http.HTTPFlow, status=200, body=b"", headers=(), chunks=None
    ) -> None:
        """The upstream's answer (or our own, already set), through the response hooks; a
        streamed body goes through the stream function chunk by chunk, then b"" at its end,
        as mitmproxy calls it."""
        if flow.response is None:
            flow.response = http.Response.make(status, b"", list(headers))
            await self.hook(http_layer.HttpResponseHeadersHook(flow))
            parts = [body] if chunks is None else list(chunks)
            if callable(flow.response.stream):
                sent = [flow.response.stream(part) for part in [*parts, b""]]
                flow.response.content = b"".join(s if isinstance(s, bytes) else b"".join(s)
                                                 for s in sent)  # fmt: skip
            else:
                flow.response.content = b"".join(parts)
        await self.hook(http_layer.HttpResponseHook(flow))


@contextmanager
def full_chain(**options):
    """The product's whole chain in a taddons context, configured with `options`."""
    from addons.chain import make_addons
    from addons.engine import EnginePatches

    with loaded(*make_addons(EnginePatches()), **options) as tctx:
        yield FullChain(tctx)
