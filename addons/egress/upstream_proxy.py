"""
Upstream proxy chaining: tunnels and pass-through traffic leave through the company's egress
proxy, while routed requests still go straight to the gateway.

The engine runs in mitmproxy's upstream mode (`mode=upstream:http(s)://host:port`), which
sends every server connection through that proxy; `GatewayRouter` takes routed requests back
out of it. This addon supplies the credentials (Basic, NTLM or Negotiate); parsing the setting
is in addons/rules/upstream_proxy.py.
"""

from __future__ import annotations

import base64
import logging
import weakref

from mitmproxy import connection
from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy import mode_specs

from addons.core.responses import plain_response
from addons.core.responses import refusal_response
from addons.engine.upstream_handshake import UpstreamAuthHandshake
from addons.rules.upstream_proxy import kerberos_available

logger = logging.getLogger(__name__)


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


SCHEMES = ("basic", "ntlm", "negotiate")


class UpstreamCredentials:
    """Adds `Proxy-Authorization` for the upstream proxy to what we send through it: Basic on
    every CONNECT, or an NTLM / Negotiate handshake per connection (pyspnego computes the
    tokens; engine/upstream_handshake.py sends the second CONNECT the 407 asks for)."""

    def __init__(self, handshake: UpstreamAuthHandshake | None = None) -> None:
        self.handshake = handshake
        self.header: str | None = None  # Basic
        self.scheme = "basic"
        self.credentials: tuple[str | None, str | None] = (None, None)
        self.upstream: tuple[str, int] | None = None
        # per tunnel connection: the security context and the CONNECT it answers
        self._contexts: weakref.WeakKeyDictionary[connection.Server, tuple] = (
            weakref.WeakKeyDictionary()
        )

    def load(self, loader):
        loader.add_option(
            "aibridge_upstream_auth",
            str | None,
            None,
            "user:password for the upstream proxy (mode upstream:...). Either part may be empty.",
        )
        loader.add_option(
            "aibridge_upstream_auth_scheme",
            str,
            "basic",
            "How to authenticate to the upstream proxy: basic, ntlm or negotiate (Kerberos with "
            "the credential cache or keytab, else NTLM inside Negotiate).",
        )
        loader.add_option(
            "aibridge_upstream_spn",
            str | None,
            None,
            "Kerberos service of the upstream proxy (default HTTP@<its host>).",
        )

    def configure(self, updated):
        options = {"aibridge_upstream_auth", "aibridge_upstream_auth_scheme", "mode"}
        if not options & set(updated):
            return
        creds = ctx.options.aibridge_upstream_auth
        scheme = ctx.options.aibridge_upstream_auth_scheme
        if scheme not in SCHEMES:
            raise exceptions.OptionsError(
                f"aibridge_upstream_auth_scheme must be one of {', '.join(SCHEMES)}"
            )
        if creds is not None and (":" not in creds or creds == ":"):
            raise exceptions.OptionsError("aibridge_upstream_auth must look like user:password")
        if scheme == "ntlm" and creds is None:
            raise exceptions.OptionsError(
                "NTLM to the upstream proxy needs a user name and password in upstream_proxy "
                "(http://DOMAIN%5Cuser:password@host:port)"
            )
        if scheme == "negotiate" and creds is None and not kerberos_available():
            raise exceptions.OptionsError(
                "Negotiate without a password uses Kerberos (the credential cache or keytab), "
                "which needs the gssapi package: pip install 'aibridge-proxy[kerberos]'"
            )
        self.scheme = scheme
        self.upstream = upstream_address(ctx.options.mode)
        self.header = None
        self.credentials = (None, None)
        if creds is not None:
            user, _, password = creds.partition(":")
            self.credentials = (user or None, password or None)
            if scheme == "basic":
                self.header = "Basic " + base64.b64encode(creds.encode()).decode()
        if self.handshake is not None:
            self.handshake.responder = None if scheme == "basic" else self._next_connect

    def http_connect_upstream(self, flow: http.HTTPFlow) -> None:
        if self.header:
            flow.request.headers["Proxy-Authorization"] = self.header
        elif self.scheme != "basic" and self.upstream is not None:
            try:
                security = self._security_context()
                token = security.step()
            except Exception as e:  # pyspnego's errors name what is missing, never a secret
                logger.warning("cannot start %s with the upstream proxy: %s", self.scheme, e)
                return  # the upstream's 407 then fails this connection
            self._contexts[flow.server_conn] = (security, flow.request)
            flow.request.headers["Proxy-Authorization"] = self._header(token)

    def _security_context(self):
        import spnego  # only where an NTLM or Negotiate upstream is configured

        user, password = self.credentials
        assert self.upstream is not None
        service, _, host = (ctx.options.aibridge_upstream_spn or "").partition("@")
        # Negotiate signs in with Kerberos where it can: with no password (the credential
        # cache or keytab) or a principal (user@REALM) and its password. A DOMAIN\\user account,
        # or no gssapi, gets what Windows sends without a KDC: raw NTLM in the Negotiate header
        # (an SPNEGO wrapper around NTLM is refused by many proxies' Negotiate helpers).
        kerberos = (
            self.scheme == "negotiate" and kerberos_available() and (user is None or "@" in user)
        )
        return spnego.client(
            user,
            password,
            hostname=host or self.upstream[0],
            service=service or "HTTP",
            protocol="negotiate" if kerberos else "ntlm",
        )

    def _header(self, token: bytes) -> str:
        name = "NTLM" if self.scheme == "ntlm" else "Negotiate"
        return f"{name} {base64.b64encode(token).decode()}"

    def _next_connect(self, tunnel: connection.Server, headers: http.Headers) -> bytes | None:
        """The CONNECT answering a 407's challenge on the same connection, or None."""
        entry = self._contexts.get(tunnel)
        if entry is None:
            return None
        security, request = entry
        name = "ntlm" if self.scheme == "ntlm" else "negotiate"
        for offer in headers.get_all("Proxy-Authenticate"):
            scheme, _, value = offer.strip().partition(" ")
            if scheme.lower() != name or not value.strip():
                continue
            try:
                token = security.step(base64.b64decode(value.strip()))
            except Exception as e:
                logger.warning("the upstream proxy's %s challenge failed: %s", self.scheme, e)
                return None
            if not token:
                return None
            request.headers["Proxy-Authorization"] = self._header(token)
            return http1.assemble_request(request)
        return None  # a 407 with no challenge of ours: the credentials were refused

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """A 407 from the upstream proxy to a plain http:// request is about the company's
        credentials, which this proxy added: never relayed (its page may echo them); the
        developer gets our 502 naming the setting, and the upstream's body is dropped."""
        response = flow.response
        if (
            response is None
            or response.status_code != 407
            or flow.server_conn.via is None
            or flow.request.scheme != "http"
        ):
            return
        logger.warning("the upstream proxy refused the proxy's credentials (407)")
        ours = refusal_response(
            502,
            "the company's upstream proxy refused this proxy's own sign-in: check upstream_proxy "
            "and upstream_proxy_auth (ask your administrator)",
        )
        text = ours.content or b""
        sent = False

        def once(chunk: bytes) -> bytes:  # our text in place of the upstream's, whatever it is
            nonlocal sent
            if sent:
                return b""
            sent = True
            return text

        ours.stream = once
        flow.response = ours

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # Plain-HTTP pass-through in upstream mode is sent as an absolute-form request to the
        # upstream proxy. Routed requests never carry it: GatewayRouter, which runs before us,
        # has already pointed them at the gateway directly (no `via`).
        if (
            flow.response is None
            and flow.server_conn.via is not None
            and flow.request.scheme == "http"
            and isinstance(flow.client_conn.proxy_mode, mode_specs.UpstreamMode)
        ):
            if self.header:
                flow.request.headers["Proxy-Authorization"] = self.header
            elif self.scheme != "basic":
                flow.response = plain_response(
                    502,
                    f"plain http:// cannot pass the upstream proxy's {self.scheme.upper()} "
                    "sign-in (it authenticates tunnels); use https://",
                )
