"""
Which gateways can take a request now. A route may name several gateways in order; one that
refuses connections, or fails the periodic health check (`GET <gateway><health path>`, Coder's
`/api/v2/buildinfo` by default; a 5xx or no answer fails it), is skipped until it recovers.

A request moves on to the next gateway only before any of it has been sent: just before a
request is routed to a failover list, the proxy opens a TCP connection to the candidate, and
a refused one marks it down and tries the next. A stream that has started is never retried.
This costs one TCP handshake per request on routes with more than one gateway, none on others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp
from mitmproxy import ctx
from mitmproxy import exceptions

from addons.core.events import GATEWAY_FAILOVER
from addons.core.events import EventBus
from addons.core.gateway_tls import gateway_cafile
from addons.core.gateway_tls import verifying_context
from addons.routing.snapshot import Routing
from addons.rules.gateway_target import GatewayTarget

logger = logging.getLogger(__name__)


class GatewayHealth:
    def __init__(self, routing: Routing, events: EventBus | None = None):
        self.routing = routing
        self.down: dict[str, float] = {}  # gateway name -> when it went down
        self.events = events or EventBus()  # each failover is reported; metrics counts them
        self._task: asyncio.Task | None = None

    def load(self, loader):
        loader.add_option(
            "aibridge_health_interval",
            float,
            10.0,
            "Seconds between health checks of each named gateway (0: no checks).",
        )
        loader.add_option(
            "aibridge_health_path",
            str,
            "/api/v2/buildinfo",
            "Path checked on each gateway's origin; a 5xx or no answer marks it down.",
        )

    def configure(self, updated):
        if "aibridge_health_interval" in updated and ctx.options.aibridge_health_interval < 0:
            raise exceptions.OptionsError("aibridge_health_interval must not be negative")
        if "aibridge_health_path" in updated and not ctx.options.aibridge_health_path.startswith(
            "/"
        ):
            raise exceptions.OptionsError("aibridge_health_path must start with /")

    def running(self):
        if ctx.options.aibridge_health_interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._check_forever())

    async def done(self):
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def choose(self, names: tuple[str, ...]) -> tuple[str, GatewayTarget] | None:
        """The first of `names` that is up and accepts a connection now."""
        policy = self.routing.current.policy
        for name in names:
            target = policy.gateway(name)
            if target is None or not self._may_try(name):
                continue
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(target.host, target.port), 2.0
                )
                writer.close()
                return name, target
            except (OSError, TimeoutError) as e:
                self._mark_down(name, f"refused a connection ({type(e).__name__})")
        return None

    def _may_try(self, name: str) -> bool:
        """Up, or down for a while with no health checks to tell (then one request probes)."""
        since = self.down.get(name)
        return since is None or (
            ctx.options.aibridge_health_interval == 0 and time.monotonic() - since > 5
        )

    def _mark_down(self, name: str, why: str) -> None:
        if name not in self.down:
            logger.warning("gateway %s is down: %s; skipped until it recovers", name, why)
            self.events.emit(GATEWAY_FAILOVER, name)
        self.down[name] = time.monotonic()

    async def _check_forever(self) -> None:
        while True:
            await self.check_all()
            await asyncio.sleep(ctx.options.aibridge_health_interval)

    async def check_all(self) -> None:
        policy = self.routing.current.policy
        if len(policy.gateways) < 2:
            return
        context = verifying_context(gateway_cafile(ctx.options))
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
            for name, target in policy.gateways.items():
                url = target.origin + ctx.options.aibridge_health_path
                try:
                    async with session.get(
                        url, ssl=context if url.startswith("https") else None
                    ) as r:
                        healthy, why = r.status < 500, f"health check answered {r.status}"
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    healthy, why = False, f"health check failed ({type(e).__name__})"
                if healthy and self.down.pop(name, None) is not None:
                    logger.info("gateway %s recovered", name)
                elif not healthy:
                    self._mark_down(name, why)
