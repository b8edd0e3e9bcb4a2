"""
TLS on the proxy listener: clients use `HTTPS_PROXY=https://...`, so the Coder token in
`Proxy-Authorization` never crosses the network in clear.

mitmproxy already recognises a client that starts with a TLS handshake; this addon makes it
present the operator's certificate (instead of one minted by our CA), insists on TLS 1.2 or
newer, and refuses plaintext clients once a certificate is configured.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http
from mitmproxy import tls
from mitmproxy.proxy.layers import modes
from OpenSSL import SSL

from addons.core.record import RejectReason
from addons.core.record import reject
from addons.core.responses import plain_response

logger = logging.getLogger(__name__)

# Some clients take an https:// proxy URL and still speak plain HTTP to the proxy (GitHub
# Copilot's language server, the engine of the JetBrains, Neovim, Xcode and Visual Studio
# plugins): the answer says what it did and what to use instead.
PLAINTEXT_ANSWER = (
    "this proxy listener requires TLS, and this client sent its request in plain text: it "
    "cannot speak TLS to a proxy (GitHub Copilot's language server ignores https:// in the "
    "proxy URL). Give it an http:// proxy URL on a listener without tls_cert_file."
)


def listener_context(cert_file: str, key_file: str) -> SSL.Context:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    try:
        context.use_certificate_chain_file(cert_file)
        context.use_privatekey_file(key_file)
        context.check_privatekey()
    except SSL.Error as e:
        raise ValueError(f"cannot use {cert_file} / {key_file}: {e}") from None

    def select_alpn(conn, offers):
        # CONNECT over HTTP/2 is not supported by the engine: the proxy hop is HTTP/1.1.
        return b"http/1.1" if b"http/1.1" in offers else SSL.NO_OVERLAPPING_PROTOCOLS

    context.set_alpn_select_callback(select_alpn)
    return context


def _is_proxy_handshake(data: tls.TlsData) -> bool:
    """The client's handshake with the proxy itself: no CONNECT target exists yet."""
    layers = data.context.layers
    return (
        bool(layers)
        and isinstance(layers[0], modes.HttpProxy)
        and data.context.server.address is None
    )


class ListenerTLS:
    def __init__(self) -> None:
        self.context: SSL.Context | None = None

    def load(self, loader):
        loader.add_option(
            "aibridge_tls_cert_file",
            str | None,
            None,
            "Certificate (PEM, with its chain) the proxy presents to clients that connect with "
            "TLS. Set together with aibridge_tls_key_file; then plaintext clients are refused.",
        )
        loader.add_option(
            "aibridge_tls_key_file", str | None, None, "Private key for aibridge_tls_cert_file."
        )

    def configure(self, updated):
        if not {"aibridge_tls_cert_file", "aibridge_tls_key_file"} & set(updated):
            return
        cert, key = ctx.options.aibridge_tls_cert_file, ctx.options.aibridge_tls_key_file
        if bool(cert) != bool(key):
            raise exceptions.OptionsError(
                "aibridge_tls_cert_file and aibridge_tls_key_file must be set together"
            )
        try:
            self.context = listener_context(cert, key) if cert and key else None
        except ValueError as e:
            raise exceptions.OptionsError(str(e)) from None

    def tls_start_client(self, data: tls.TlsData) -> None:
        if self.context is None or not _is_proxy_handshake(data):
            return
        # Replace the connection mitmproxy prepared (a certificate from our CA for the
        # listener's address) with one presenting the operator's certificate.
        conn = SSL.Connection(self.context)
        conn.set_app_data(data.ssl_conn.get_app_data() if data.ssl_conn else None)
        conn.set_accept_state()
        data.ssl_conn = conn

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._require_tls(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # Inside an intercepted tunnel the client connection is TLS by construction; a
        # plaintext client can only reach this point with a plain proxied request.
        self._require_tls(flow)

    def _require_tls(self, flow: http.HTTPFlow) -> None:
        if self.context is None or flow.response is not None or flow.client_conn.tls_established:
            return
        reject(flow, RejectReason.PLAINTEXT_CLIENT)
        agent = flow.request.headers.get("user-agent", "")
        logger.info("a client spoke plain HTTP to the TLS listener (%s): this client cannot speak "
                    "TLS to a proxy; give it an http:// proxy URL on a plain listener",
                    agent[:80] or "no User-Agent")  # fmt: skip
        flow.response = plain_response(403, PLAINTEXT_ANSWER)
