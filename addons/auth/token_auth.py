"""
Proxy authentication: every CONNECT and every plain proxied request must carry a Coder token.

The decision is made in `http_connect`, before any TLS is spoken, so clients that only send
credentials after a challenge (Copilot in VS Code) get their `407` in time. A connection that
passed is remembered, and every request inside its tunnel inherits the identity.

mitmproxy swallows exceptions raised in hooks and carries on: every path here that cannot
reach a verdict answers with an error status itself (fail closed).
"""

from __future__ import annotations

import logging
import uuid
import weakref
from dataclasses import dataclass
from dataclasses import field

from mitmproxy import connection
from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http

from addons.auth.gateway_validator import GatewayTokenValidator
from addons.core.background import in_background
from addons.core.events import TOKEN_CHECKED
from addons.core.events import EventBus
from addons.core.gateway_tls import gateway_cafile
from addons.core.gateway_tls import verifying_context
from addons.core.record import RejectReason
from addons.core.record import record
from addons.core.responses import challenge_response
from addons.core.responses import refusal_response
from addons.routing.snapshot import Routing
from addons.rules.policy import workspace_of
from addons.rules.proxy_authorization import ProxyAuthError
from addons.rules.proxy_authorization import is_header_name
from addons.rules.proxy_authorization import parse_proxy_authorization
from addons.rules.token_validation import FailureLimiter
from addons.rules.token_validation import TokenCache
from addons.rules.token_validation import ValidationUnavailable

logger = logging.getLogger(__name__)

USERS_ME_PATH = "/api/v2/users/me"


@dataclass(frozen=True)
class Identity:
    """Who is behind a connection. The token is kept out of repr() so it cannot leak into logs."""

    connect_id: str
    token: str | None = field(repr=False)
    user: str | None = None
    workspace: str | None = None  # the proxy user name, unless empty or "coder"

    @property
    def anonymous(self) -> bool:
        return self.token is None


class AuthRejected(Exception):
    def __init__(self, status: int, reason: RejectReason | str, message: str):
        super().__init__(message)
        self.status = status
        self.reason = RejectReason(reason)


class TokenAuth:
    """Checks `Proxy-Authorization` on CONNECTs and plain proxied requests."""

    def __init__(self, routing: Routing, events: EventBus | None = None):
        self.routing = routing
        # every token check is reported (cached or not); metrics counts them
        self.events = events or EventBus()
        # the identity a successful CONNECT lends to every request in its tunnel
        self._by_client: weakref.WeakKeyDictionary[connection.Client, Identity] = (
            weakref.WeakKeyDictionary()
        )
        self.cache: TokenCache | None = None
        self.limiter = FailureLimiter()
        self._validator: GatewayTokenValidator | None = None

    def load(self, loader):
        loader.add_option(
            "aibridge_auth_mode",
            str,
            "validate",
            "validate: check each new token against the gateway (GET /api/v2/users/me) before "
            "accepting a CONNECT. presence: accept any non-empty token (the gateway still checks).",
            choices=("validate", "presence"),
        )
        loader.add_option(
            "aibridge_auth_url",
            str | None,
            None,
            "URL that validates a token (default: <gateway>/api/v2/users/me).",
        )
        loader.add_option(
            "aibridge_auth_header",
            str,
            "Coder-Session-Token",
            "Header that carries the token to aibridge_auth_url.",
        )
        loader.add_option(
            "aibridge_auth_fail_open",
            bool,
            False,
            "Accept tokens when the validation service is unreachable or failing (default: refuse "
            "with 503).",
        )
        loader.add_option(
            "aibridge_auth_cache_ttl", int, 300, "Seconds a valid token is remembered."
        )
        loader.add_option(
            "aibridge_auth_negative_ttl", int, 30, "Seconds an invalid token is remembered."
        )
        loader.add_option(
            "aibridge_auth_cache_size", int, 10000, "Most tokens remembered at once (LRU)."
        )
        loader.add_option(
            "aibridge_auth_max_failures",
            int,
            10,
            "Failed authentications from one client address within aibridge_auth_lockout "
            "seconds before it is refused with 429 (0 disables).",
        )
        loader.add_option(
            "aibridge_auth_lockout", int, 60, "Window and lockout period, in seconds."
        )
        loader.add_option(
            "aibridge_anonymous_tunnels",
            bool,
            False,
            "Let clients without credentials open tunnels to hosts that are not routed. Off by "
            "default: an unauthenticated tunnel makes the proxy an open relay.",
        )

    def configure(self, updated):
        opts = ctx.options
        for name in (
            "aibridge_auth_cache_ttl",
            "aibridge_auth_negative_ttl",
            "aibridge_auth_cache_size",
            "aibridge_auth_max_failures",
            "aibridge_auth_lockout",
        ):
            if name in updated and getattr(opts, name) < 0:
                raise exceptions.OptionsError(f"{name} must not be negative")
        if "aibridge_auth_header" in updated and not is_header_name(opts.aibridge_auth_header):
            raise exceptions.OptionsError(
                f"aibridge_auth_header {opts.aibridge_auth_header!r} is not a valid header name"
            )
        if {"aibridge_auth_max_failures", "aibridge_auth_lockout"} & set(updated):
            self.limiter = FailureLimiter(
                opts.aibridge_auth_max_failures, opts.aibridge_auth_lockout
            )
        relevant = {
            "aibridge_auth_mode",
            "aibridge_auth_url",
            "aibridge_auth_header",
            "aibridge_auth_cache_ttl",
            "aibridge_auth_negative_ttl",
            "aibridge_auth_cache_size",
            "aibridge_gateway",
            "aibridge_target",
            "aibridge_policy",  # its first `url` gateway is where tokens are checked
            "ssl_verify_upstream_trusted_ca",
            "aibridge_gateway_trusted_ca",
        }
        if not relevant & set(updated):
            return
        if opts.aibridge_auth_mode == "presence":
            self.cache = None
            return
        url = opts.aibridge_auth_url
        if not url:
            gw = self.routing.current.gateway
            if gw is None:
                raise exceptions.OptionsError(
                    "aibridge_auth_mode=validate needs aibridge_gateway or aibridge_auth_url"
                )
            url = gw.origin + gw.path + USERS_ME_PATH
        if not url.startswith(("http://", "https://")):
            raise exceptions.OptionsError(f"aibridge_auth_url {url!r} must be an http(s) URL")
        old = self._validator
        self._validator = GatewayTokenValidator(
            url,
            opts.aibridge_auth_header,
            verifying_context(gateway_cafile(opts)),
        )
        self.cache = TokenCache(
            self._validator,
            positive_ttl=opts.aibridge_auth_cache_ttl,
            negative_ttl=opts.aibridge_auth_negative_ttl,
            max_entries=opts.aibridge_auth_cache_size,
        )
        if old is not None:
            in_background(old.close())

    async def done(self):
        if self._validator is not None:
            await self._validator.close()

    # -- hooks -------------------------------------------------------------------------------

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:  # another addon already answered
            return
        identity = await self._identify(flow)
        if identity is not None:
            record(flow).identity = identity

    def http_connected(self, flow: http.HTTPFlow) -> None:
        """Only a CONNECT that succeeded lends its identity to the tunnel: after a refused one
        (403, 502, a refused port) the connection carries nobody's identity."""
        if (identity := record(flow).identity) is not None:
            self._by_client[flow.client_conn] = identity  # every request in the tunnel inherits it

    def identity_of(self, client: connection.Client) -> Identity | None:
        """Who opened this client connection's tunnel (None: nobody known)."""
        return self._by_client.get(client)

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        # Inside a tunnel: the CONNECT's identity. A plain proxied request (no CONNECT) carries
        # its own credentials each time.
        identity = self._by_client.get(flow.client_conn)
        if flow.response is None and identity is None:
            identity = await self._identify(flow)
        if identity is not None:
            flow.request.headers.pop("Proxy-Authorization", None)
            record(flow).identity = identity

    async def _identify(self, flow: http.HTTPFlow) -> Identity | None:
        """The caller's identity, or None after answering the flow with the reason (fail closed)."""
        try:
            return await self._authenticate(flow)
        except AuthRejected as e:
            self._reject(flow, e)
        except Exception:
            logger.exception("authentication failed unexpectedly")
            self._reject(flow, AuthRejected(503, "internal_error", "authentication unavailable"))
        return None

    # -- helpers -----------------------------------------------------------------------------

    async def _authenticate(self, flow: http.HTTPFlow) -> Identity:
        connect_id = uuid.uuid4().hex
        address = _client_address(flow)
        header = flow.request.headers.get("Proxy-Authorization")
        flow.request.headers.pop("Proxy-Authorization", None)
        if (
            header is None
            and ctx.options.aibridge_anonymous_tunnels
            and not self.routing.current.intercepts(flow.request.host)
        ):
            return Identity(connect_id, None, None)
        try:
            creds = parse_proxy_authorization(header)
        except ProxyAuthError as e:
            if self.limiter.is_blocked(address):
                raise AuthRejected(429, "rate_limited", "too many failed authentications") from None
            if e.reason != "missing":  # the first credential-less request is normal
                self.limiter.record_failure(address)
            raise AuthRejected(407, e.reason, str(e)) from None
        if self.limiter.is_blocked(address):
            # A token we already know to be valid still gets in: colleagues behind the same
            # NAT address must not be locked out by one misconfigured client. Anything else is
            # refused here, without asking the gateway.
            known = self.cache.cached(creds.token) if self.cache is not None else None
            if known is None or not known.valid:
                raise AuthRejected(429, "rate_limited", "too many failed authentications")
        workspace = workspace_of(creds.username)
        if self.cache is None:  # presence mode
            return Identity(connect_id, creds.token, None, workspace)
        try:
            verdict, cached = await self.cache.check(creds.token)
            self.events.emit(TOKEN_CHECKED, cached)
        except ValidationUnavailable as e:
            self.events.emit(TOKEN_CHECKED, False)
            if ctx.options.aibridge_auth_fail_open:
                logger.warning("token validation unavailable, accepting (fail open): %s", e)
                return Identity(connect_id, creds.token, None, workspace)
            raise AuthRejected(
                503, "validation_unavailable", "token validation service unavailable"
            ) from None
        if not verdict.valid:
            self.limiter.record_failure(address)
            raise AuthRejected(407, "invalid_token", "token rejected by the gateway")
        # A success does not clear the address's failures: interleaving one valid token with
        # guesses would otherwise lift the limit for every guess.
        return Identity(connect_id, creds.token, verdict.user, workspace)

    def _reject(self, flow: http.HTTPFlow, rejection: AuthRejected) -> None:
        client = _client_address(flow)
        logger.info(
            "rejected %s from %s: %s (%s)",
            "CONNECT" if flow.request.method == "CONNECT" else "request",
            client,
            rejection.reason,
            rejection,
        )
        entry = record(flow)
        entry.reject, entry.auth_failure = rejection.reason, True
        if rejection.status == 407:
            flow.response = challenge_response(str(rejection))
        elif rejection.status == 429:
            flow.response = refusal_response(
                429, str(rejection), {"Retry-After": str(ctx.options.aibridge_auth_lockout)}
            )
        else:
            flow.response = refusal_response(rejection.status, str(rejection))


def _client_address(flow: http.HTTPFlow) -> str:
    peer = flow.client_conn.peername
    return peer[0] if peer else "unknown"
