"""
A pool of connections per routed gateway, per worker (`addons/engine/gateway_pool.py`): this
addon owns its options, builds the pools from the routing snapshot (the default target and each
named gateway), verifies them against the gateway bundle, warms them at start-up, and closes
those a reload removes.
"""

from __future__ import annotations

import functools
import logging
import ssl

from mitmproxy import ctx
from mitmproxy import exceptions

from addons.core.events import GATEWAY_CONNECTION
from addons.core.events import EventBus
from addons.engine.gateway_leg import PooledGatewayLeg
from addons.engine.gateway_pool import SENSITIVE_HEADERS
from addons.engine.gateway_pool import GatewayPool
from addons.engine.gateway_pool import PoolLimits
from addons.routing.snapshot import Routing

logger = logging.getLogger(__name__)

_REBUILD_ON = {
    "aibridge_gateway_pool_max_connections",
    "aibridge_gateway_pool_idle_timeout",
    "aibridge_gateway_pool_warm",
    "aibridge_gateway",
    "aibridge_target",
    "aibridge_policy",
    "aibridge_gateway_trusted_ca",
    "aibridge_gateway_timeout",
    "aibridge_token_header",
    "ssl_insecure",
    "http2",
}


class GatewayPooling:
    def __init__(self, routing: Routing, legs: PooledGatewayLeg, events: EventBus) -> None:
        self.routing = routing
        self.legs = legs
        self.events = events
        self.started = False  # warm-up waits for the proxy to run (not for options alone)

    def load(self, loader):
        loader.add_option(
            "aibridge_gateway_pool_max_connections",
            int,
            8,
            "Connections each worker keeps to each gateway, shared by all clients; 0: every "
            "client connection dials the gateway itself (mitmproxy's way).",
        )
        loader.add_option(
            "aibridge_gateway_pool_idle_timeout",
            float,
            90.0,
            "Seconds an idle pooled gateway connection stays open (the warm ones stay).",
        )
        loader.add_option(
            "aibridge_gateway_pool_warm",
            int,
            1,
            "Pooled connections opened to each gateway before the first request, and kept.",
        )

    def configure(self, updated):
        if not _REBUILD_ON & set(updated):
            return
        o = ctx.options
        if o.aibridge_gateway_pool_max_connections < 0:
            raise exceptions.OptionsError("gateway_pool.max_connections: must be 0 or more")
        if o.aibridge_gateway_pool_idle_timeout <= 0:
            raise exceptions.OptionsError("gateway_pool.idle_timeout: must be above 0 seconds")
        if not 0 <= o.aibridge_gateway_pool_warm <= max(1, o.aibridge_gateway_pool_max_connections):
            raise exceptions.OptionsError(
                "gateway_pool.warm: must be between 0 and gateway_pool.max_connections"
            )
        self._rebuild()

    def running(self):
        self.started = True
        for pool in self.legs.pools.values():
            pool.warm_up()

    def done(self):
        for pool in self.legs.pools.values():
            pool.close()
        self.legs.pools = {}

    def _rebuild(self) -> None:
        o = ctx.options
        limits = PoolLimits(
            max_connections=o.aibridge_gateway_pool_max_connections,
            idle_timeout=o.aibridge_gateway_pool_idle_timeout,
            warm=min(o.aibridge_gateway_pool_warm, o.aibridge_gateway_pool_max_connections),
            connect_timeout=min(10.0, o.aibridge_gateway_timeout),
        )
        snapshot = self.routing.current
        targets = [snapshot.target, *snapshot.policy.gateways.values()]
        wanted = {
            (t.host, t.port, t.scheme == "https")
            for t in targets
            if t is not None and limits.max_connections > 0
        }
        old, pools = self.legs.pools, {}
        for key in wanted:
            host, port, tls = key
            origin = f"{'https' if tls else 'http'}://{host}:{port}"
            pools[key] = GatewayPool(
                host, port, self._tls_context() if tls else None, limits,
                sensitive_headers=SENSITIVE_HEADERS | {o.aibridge_token_header.lower().encode()},
                on_connection=functools.partial(self.events.emit, GATEWAY_CONNECTION, origin),
            )  # fmt: skip
        self.legs.pools = pools
        for pool in old.values():
            pool.retire()  # streams under way finish; their connections close after
        if self.started:
            for pool in pools.values():
                pool.warm_up()

    @staticmethod
    def _tls_context() -> ssl.SSLContext:
        """The gateway leg's trust, as GatewayTrust gives mitmproxy's own gateway connections."""
        o = ctx.options
        context = ssl.create_default_context(cafile=o.aibridge_gateway_trusted_ca or None)
        if o.ssl_insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["h2", "http/1.1"] if o.http2 else ["http/1.1"])
        return context
