"""
mitmproxy addons that make up aibridge-proxy, one concern each, in the order a request meets
them: CONNECT -> auth -> intercept or tunnel -> rewrite -> stream back -> log.
"""

from __future__ import annotations

from addons.accesslog import AccessLog
from addons.auth import TokenAuth
from addons.dump import ApiDump
from addons.egress import EgressPolicy
from addons.error_pages import UpstreamErrors
from addons.gateway import GatewayRouter
from addons.http2_clients import Http2Clients
from addons.intercept import InterceptPolicy
from addons.listener_tls import ListenerTLS
from addons.metrics import Metrics
from addons.request_limits import RequestLimits
from addons.routing import Routing
from addons.upstream_proxy import UpstreamCredentials
from addons.websocket import WebSocketFallback


def make_addons() -> list:
    """The addon chain, wired together. Order matters: each hook runs in this order."""
    routing = Routing()
    auth = TokenAuth(routing)
    return [
        routing,
        RequestLimits(),
        ListenerTLS(),
        auth,
        EgressPolicy(routing),
        InterceptPolicy(routing),
        GatewayRouter(routing, auth),
        Http2Clients(),
        UpstreamCredentials(),
        WebSocketFallback(),
        ApiDump(),
        UpstreamErrors(),
        AccessLog(auth),
        Metrics(routing, auth),
    ]
