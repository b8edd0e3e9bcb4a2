"""
One trust store per upstream leg: the gateway is verified against the gateway's CAs
(`gateway_ca_file`, gateways' `ca_file`) and origins against theirs (`origin_ca_file`, and the
upstream proxy's); mitmproxy has one bundle for every server it dials, so a certificate signed
only by the company's gateway CA was accepted for a vendor's host, and the other way round.

The option, `aibridge_gateway_trusted_ca`, is declared by Routing with the other gateway
options (so the token check, configured before this addon, can read it).
mitmproxy's TlsConfig builds each server connection on the origin bundle
(`ssl_verify_upstream_trusted_ca`); for a gateway's address this addon, which runs after it,
moves the connection onto a context holding the gateway bundle. The connection keeps
everything else TlsConfig set on it (SNI, ALPN, host name check, versions).
"""

from __future__ import annotations

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import tls
from OpenSSL import SSL

from addons.routing.snapshot import Routing


class GatewayTrust:
    def __init__(self, routing: Routing) -> None:
        self.routing = routing
        self.context: SSL.Context | None = None

    def configure(self, updated):
        if "aibridge_gateway_trusted_ca" not in updated:
            return
        path = ctx.options.aibridge_gateway_trusted_ca
        if not path:
            self.context = None
            return
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        try:
            context.load_verify_locations(path)
        except SSL.Error:
            raise exceptions.OptionsError(
                f"aibridge_gateway_trusted_ca: {path} is not a readable PEM bundle"
            ) from None
        self.context = context

    def tls_start_server(self, tls_start: tls.TlsData) -> None:
        if self.context is None or tls_start.ssl_conn is None:
            return
        address = tls_start.context.server.address
        if address is not None and self.routing.current.is_gateway(*address):
            tls_start.ssl_conn.set_context(self.context)
