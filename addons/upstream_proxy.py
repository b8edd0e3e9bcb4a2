"""
Upstream proxy chaining: tunnels and pass-through traffic leave through the company's egress
proxy, while routed requests still go straight to the gateway.

The engine runs in mitmproxy's upstream mode (`mode=upstream:http(s)://host:port`), which
sends every server connection through that proxy; `GatewayRouter` takes routed requests back
out of it. This addon supplies the credentials; parsing the setting is in
addons/rules/upstream_proxy.py.
"""

from __future__ import annotations

import base64

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http
from mitmproxy.proxy import mode_specs


def upstream_address(modes) -> tuple[str, int] | None:
    """The upstream proxy's address if the engine runs in upstream mode."""
    for spec in modes:
        try:
            mode = mode_specs.ProxyMode.parse(spec)
        except ValueError:
            continue
        if isinstance(mode, mode_specs.UpstreamMode):
            return mode.address
    return None


class UpstreamCredentials:
    """Adds `Proxy-Authorization` for the upstream proxy to what we send through it."""

    def __init__(self) -> None:
        self.header: str | None = None

    def load(self, loader):
        loader.add_option(
            "aibridge_upstream_auth",
            str | None,
            None,
            "user:password for the upstream proxy (mode upstream:...). Either part may be empty.",
        )

    def configure(self, updated):
        if "aibridge_upstream_auth" not in updated:
            return
        creds = ctx.options.aibridge_upstream_auth
        if creds is None:
            self.header = None
        elif ":" not in creds or creds == ":":
            raise exceptions.OptionsError("aibridge_upstream_auth must look like user:password")
        else:
            self.header = "Basic " + base64.b64encode(creds.encode()).decode()

    def http_connect_upstream(self, flow: http.HTTPFlow) -> None:
        if self.header:
            flow.request.headers["Proxy-Authorization"] = self.header

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # Plain-HTTP pass-through in upstream mode is sent as an absolute-form request to the
        # upstream proxy. Routed requests never carry it: GatewayRouter, which runs before us,
        # has already pointed them at the gateway directly (no `via`).
        if (
            self.header
            and flow.server_conn.via is not None
            and flow.request.scheme == "http"
            and isinstance(flow.client_conn.proxy_mode, mode_specs.UpstreamMode)
        ):
            flow.request.headers["Proxy-Authorization"] = self.header
