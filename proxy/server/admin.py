"""
The admin listener: health, readiness, metrics, the CA for clients, and a PAC file.

Separate from the proxy port so it can stay on loopback (or a management network) while the
proxy faces developers. Nothing here ever serves the CA key.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest

from addons.rules.destinations import parse_ip
from addons.rules.providers import ProviderTable
from certs.bundle import build_bundle
from proxy.server.settings import Settings

TRAFFIC_WINDOW = 15 * 60  # seconds of "requests in the last minutes" on the admin page
TRAFFIC_SAMPLE = 15.0


@dataclass
class AdminState:
    """What the admin endpoints report on; the app keeps it current (reloads replace fields)."""

    listening: bool = False
    ca_pem: bytes | None = None
    table: ProviderTable | None = None
    gateway: tuple[str, int] | None = None  # host, port checked by /readyz
    gateways: dict = field(default_factory=dict)  # named gateways (routing rules): name -> address
    proxy_address: str | None = None  # host:port clients use, for the PAC file
    proxy_scheme: str = "PROXY"  # PAC keyword: PROXY, or HTTPS with a TLS listener
    listen: str = ""  # the proxy listener, as bound
    gateway_urls: dict = field(default_factory=dict)  # name -> base URL, for the admin page
    # Host header names answered besides IP addresses and localhost (DNS rebinding)
    allowed_hosts: frozenset[str] = frozenset()

    def publish(self, settings: Settings, ca_pem: bytes, port: int) -> None:
        """Take the current settings and CA (at start and after each reload)."""
        self.ca_pem = ca_pem
        self.table = settings.provider_table
        target = settings.routing_target
        self.gateway = (target.host, target.port) if target else None
        # named gateways only: a lone `gateway:` is the single gateway checked above
        named = settings.policy.gateways if settings.gateways else {}
        self.gateways = {name: (t.host, t.port) for name, t in named.items()}
        host = settings.listen[0]
        self.proxy_address = settings.admin_proxy_address or (
            f"{host}:{port}" if host not in ("", "0.0.0.0", "::") else None
        )
        self.listen = f"[{host}]:{port}" if ":" in host else f"{host or '0.0.0.0'}:{port}"
        urls = {name: t.origin + t.path for name, t in named.items()}
        self.gateway_urls = urls or ({"gateway": target.origin + target.path} if target else {})
        self.proxy_scheme = "HTTPS" if settings.tls_cert_file else "PROXY"
        names = {socket.gethostname(), socket.getfqdn(), *settings.admin_allowed_hosts}
        if settings.admin_listen is not None:
            names.add(settings.admin_listen[0])
        if self.proxy_address:
            names.add(self.proxy_address.rsplit(":", 1)[0])
        self.allowed_hosts = frozenset(n.lower().strip("[]") for n in names if n)


def admin_host_allowed(host_header: str | None, allowed: frozenset[str]) -> bool:
    """Whether a request's Host names this listener: an IP address (no DNS name can be
    rebound behind it), localhost, or a configured name. A page on another site that rebinds
    its own name to our address sends that name, and is refused."""
    if not host_header:
        return True  # a health check that names no host (HAProxy's default); browsers always do
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.rstrip(".")
    if parse_ip(host) is not None:
        return True
    return host == "localhost" or host.endswith(".localhost") or host in allowed


def pac_file(table: ProviderTable, proxy_address: str, keyword: str = "PROXY") -> str:
    """Provider hosts via the proxy, everything else DIRECT. `*` matches exactly one label."""
    exact = sorted(r.host for r in table.routes if not r.is_wildcard)
    patterns = [
        "^"
        + r"\.".join("[^.]+" if lbl == "*" else re.escape(lbl) for lbl in r.host.split("."))
        + "$"
        for r in table.routes
        if r.is_wildcard
    ]
    via = json.dumps(f"{keyword} {proxy_address}")  # a string literal, whatever it holds
    return (
        "// aibridge-proxy: AI provider hosts go through the proxy, everything else is direct.\n"
        "function FindProxyForURL(url, host) {\n"
        "  host = host.toLowerCase();\n"
        f"  var exact = {json.dumps(exact)};\n"
        f"  var patterns = {json.dumps(patterns)};\n"
        "  for (var i = 0; i < exact.length; i++) {\n"
        f"    if (host == exact[i]) return {via};\n"
        "  }\n"
        "  for (var j = 0; j < patterns.length; j++) {\n"
        f"    if (new RegExp(patterns[j]).test(host)) return {via};\n"
        "  }\n"
        '  return "DIRECT";\n'
        "}\n"
    )


class GatewayProbe:
    """Can we open a TCP connection to the gateway? Cached briefly: probes come often."""

    def __init__(self, ttl: float = 5.0, timeout: float = 2.0):
        self.ttl = ttl
        self.timeout = timeout
        self._last: dict[tuple[str, int], tuple[float, str | None]] = {}

    async def problem(self, address: tuple[str, int] | None) -> str | None:
        if address is None:
            return "no gateway configured"
        at, result = self._last.get(address, (0.0, None))
        if address in self._last and time.monotonic() - at < self.ttl:
            return result
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(*address), self.timeout)
            writer.close()
            result = None
        except (OSError, TimeoutError) as e:
            result = f"gateway {address[0]}:{address[1]} unreachable: {type(e).__name__}"
        self._last[address] = (time.monotonic(), result)
        return result


class AdminServer:
    def __init__(self, state: AdminState, registry: Callable[[], CollectorRegistry | None]):
        self.state = state
        self.registry = registry
        self.probe = GatewayProbe()
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None
        self._sampler: asyncio.Task | None = None
        self._samples: collections.deque = collections.deque()  # (monotonic time, totals)

    @web.middleware
    async def _known_hosts_only(self, request: web.Request, handler):
        if not admin_host_allowed(request.headers.get("Host"), self.state.allowed_hosts):
            return web.Response(
                status=421,
                text="421 Misdirected Request: this admin listener does not answer that Host "
                "name (add it to admin.allowed_hosts)\n",
            )
        return await handler(request)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._known_hosts_only])
        app.router.add_get("/", self.page)
        app.router.add_get("/ca.cer", self.ca_der)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/ca.pem", self.ca_pem)
        app.router.add_get("/ca-bundle.pem", self.ca_bundle)
        app.router.add_get("/proxy.pac", self.proxy_pac)
        return app

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host or None, port)
        await site.start()
        self.address = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
        self._sampler = asyncio.create_task(self._sample_traffic())
        return self.address

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- the admin page ----------------------------------------------------------------------

    def _totals(self) -> dict[str, tuple[float, float]]:
        """Requests and errors (5xx, failed) so far, per provider."""
        registry = self.registry()
        totals: dict[str, list[float]] = {}
        if registry is None:
            return {}
        for family in registry.collect():
            if family.name != "aibridge_proxy_requests":
                continue
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                entry = totals.setdefault(sample.labels.get("provider", "?"), [0.0, 0.0])
                entry[0] += sample.value
                code = sample.labels.get("code", "")
                if code == "error" or code.startswith("5"):
                    entry[1] += sample.value
        return {k: (v[0], v[1]) for k, v in totals.items()}

    async def _sample_traffic(self) -> None:
        while True:
            self._samples.append((time.monotonic(), self._totals()))
            while (
                len(self._samples) > 1 and time.monotonic() - self._samples[1][0] > TRAFFIC_WINDOW
            ):
                self._samples.popleft()
            await asyncio.sleep(TRAFFIC_SAMPLE)

    def _traffic(self) -> list[tuple[str, int, int]]:
        now = self._totals()
        before = self._samples[0][1] if self._samples else {}
        rows = []
        for provider, (requests, errors) in sorted(now.items()):
            old = before.get(provider, (0.0, 0.0))
            if requests - old[0] > 0:
                rows.append((provider, int(requests - old[0]), int(errors - old[1])))
        return rows

    def _limit_refusals(self) -> list[tuple[str, str, int]]:
        """Who hits what: refusals per limit, and per user where user labels are on."""
        registry = self.registry()
        rows: dict[tuple[str, str], float] = {}
        for family in registry.collect() if registry is not None else ():
            for sample in family.samples:
                if sample.name == "aibridge_proxy_limit_refusals_total":
                    key = (sample.labels.get("limit", "?"), "")
                elif sample.name == "aibridge_proxy_user_limit_refusals_total":
                    key = (sample.labels.get("limit", "?"), sample.labels.get("user", "?"))
                else:
                    continue
                rows[key] = rows.get(key, 0.0) + sample.value
        return sorted((limit, user, int(n)) for (limit, user), n in rows.items() if n)

    def _last_reload(self) -> str:
        registry = self.registry()
        if registry is None:
            return "no reload yet"
        counts, last_ok = {}, 0.0
        for family in registry.collect():
            for sample in family.samples:
                if sample.name == "aibridge_proxy_config_reloads_total":
                    counts[sample.labels.get("result")] = sample.value
                elif sample.name == "aibridge_proxy_config_last_reload_success_timestamp_seconds":
                    last_ok = max(last_ok, sample.value)
        ok, failed = int(counts.get("success", 0)), int(counts.get("failure", 0))
        if not ok and not failed:
            return "no reload since start"
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last_ok)) if last_ok else "never"
        return f"last success {when}; {ok} succeeded, {failed} refused since start"

    async def page(self, request: web.Request) -> web.Response:
        from cryptography import x509

        from addons.developer.pages import AdminView
        from addons.developer.pages import DeveloperPage
        from addons.developer.pages import nonce
        from addons.developer.pages import page_headers
        from addons.developer.pages import platform_and_shell
        from addons.developer.pages import render_developer
        from certs.authority import fingerprint

        if not self.state.ca_pem:
            return web.Response(status=503, text="CA not loaded\n")
        cert = x509.load_pem_x509_certificate(self.state.ca_pem)
        gateways = []
        for name, url in self.state.gateway_urls.items():
            address = self.state.gateways.get(name, self.state.gateway)
            gateways.append((name, url, await self.probe.problem(address) or "reachable"))
        view = AdminView(
            listeners=[
                ("proxy", self.state.listen),
                ("admin", ":".join(map(str, self.address or ()))),
            ],
            ca_fingerprint=fingerprint(cert),
            ca_expiry=f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            gateways=gateways,
            traffic=self._traffic(),
            window_minutes=TRAFFIC_WINDOW // 60,
            last_reload=self._last_reload(),
            limit_refusals=self._limit_refusals(),
        )
        platform, shell = platform_and_shell(
            request.query.get("os", ""),
            request.query.get("shell", ""),
            request.headers.get("User-Agent"),
        )
        page = DeveloperPage(
            proxy_address=self.state.proxy_address or self.state.listen,
            ca_fingerprint=view.ca_fingerprint,
            platform=platform,
            shell=shell,
        )
        page_nonce = nonce()
        html = await asyncio.get_running_loop().run_in_executor(
            None, render_developer, page, self.state.ca_pem, page_nonce, view
        )
        return web.Response(
            text=html,
            content_type="text/html",
            headers=page_headers(page_nonce, None),
        )

    async def ca_der(self, request: web.Request) -> web.Response:
        from certs.authority import der_certificate

        if not self.state.ca_pem:
            return web.Response(status=503, text="CA not loaded\n")
        return web.Response(
            body=der_certificate(self.state.ca_pem),
            content_type="application/pkix-cert",
            headers={"Content-Disposition": 'attachment; filename="aibridge-proxy-ca.cer"'},
        )

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        problems = []
        if not self.state.listening:
            problems.append("proxy listener not bound (starting or stopping)")
        if not self.state.ca_pem:
            problems.append("CA not loaded")
        named = {}
        for name, address in self.state.gateways.items():
            named[name] = await self.probe.problem(address) or "ok"
        if not named:
            if problem := await self.probe.problem(self.state.gateway):
                problems.append(problem)
        elif "ok" not in named.values():  # one reachable gateway is enough to serve
            problems.append("no gateway reachable: " + "; ".join(named.values()))
        body = {"ready": not problems, "problems": problems}
        if named:
            body["gateways"] = named
        return web.json_response(body, status=200 if not problems else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        registry = self.registry()
        if registry is None:
            return web.Response(status=503, text="metrics not available yet\n")
        resp = web.Response(body=generate_latest(registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def ca_pem(self, request: web.Request) -> web.Response:
        if not self.state.ca_pem:
            return web.Response(status=503, text="CA not loaded\n")
        return _pem(self.state.ca_pem, "aibridge-proxy-ca.pem")

    async def ca_bundle(self, request: web.Request) -> web.Response:
        if not self.state.ca_pem:
            return web.Response(status=503, text="CA not loaded\n")
        bundle = await asyncio.get_running_loop().run_in_executor(None, build_bundle)
        return _pem(bundle + self.state.ca_pem, "aibridge-proxy-ca-bundle.pem")

    async def proxy_pac(self, request: web.Request) -> web.Response:
        if self.state.table is None:
            return web.Response(status=503, text="not ready\n")
        address = self.state.proxy_address
        if address is None:
            # Never from the request's Host header: a crafted one would write its own proxy
            # into every developer's PAC file.
            return web.Response(
                status=503,
                text="set admin.proxy_address (the host:port clients use for the proxy) "
                "to serve /proxy.pac\n",
            )
        return web.Response(
            text=pac_file(self.state.table, address, self.state.proxy_scheme),
            content_type="application/x-ns-proxy-autoconfig",
        )


def _pem(data: bytes, filename: str) -> web.Response:
    return web.Response(
        body=data,
        headers={
            "Content-Type": "application/x-pem-file",
            "Content-Disposition": f'attachment; filename="{filename}"',
        },
    )
