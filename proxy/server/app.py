"""
The running service: a slim mitmproxy master with our addons, embedded in our own event loop.

`ProxyApp` turns `Settings` into engine options, binds the listener, reloads on SIGHUP (a bad
new configuration is logged and the old one stays) and drains on SIGTERM.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mitmproxy import exceptions
from mitmproxy import master
from mitmproxy import options
from mitmproxy.addons import core
from mitmproxy.addons import next_layer
from mitmproxy.addons import proxyserver
from mitmproxy.addons import tlsconfig

from addons.chain import make_addons
from addons.engine import EnginePatches
from addons.engine.hook_table import HookTable
from addons.engine.log_events import stop_log_redispatch
from addons.govern.mcp_pins import PINS_FILE
from addons.rules.policy import gateway_ca_files
from addons.rules.profile_choices import CHOICES_FILE
from certs import prepare as certs_prepare
from certs.authority import CertificateAuthority
from certs.authority import signable_by
from certs.bundle import BundleError
from proxy.server.admin import AdminServer
from proxy.server.admin import AdminState
from proxy.server.collector import CollectorPacing
from proxy.server.errors import StartupError
from proxy.server.reloading import ReloadRecorder
from proxy.server.settings import FIELDS
from proxy.server.settings import Settings
from proxy.server.settings import SettingsError
from proxy.server.startup import ensure_ca
from proxy.server.startup import prepare_ca
from proxy.server.startup import start_admin
from proxy.server.systemd import Notifier
from proxy.server.worker_reports import READY
from proxy.server.worker_reports import RELOAD
from proxy.server.worker_reports import ReportWriter
from proxy.server.worker_reports import WorkerReport

logger = logging.getLogger("aibridge.proxy")


@dataclass(frozen=True)
class EngineFiles:
    confdir: Path  # mitmproxy's: our CA
    origin_trust: Path  # bundle for origins, observed hosts and the upstream proxy
    gateway_trust: Path  # bundle for the gateway leg (routed requests, token checks, health)


def engine_options(
    settings: Settings, files: EngineFiles, ca: CertificateAuthority | None = None
) -> dict[str, Any]:
    """Our settings, spelt as mitmproxy options: each setting that feeds an addon option says
    so in its declaration (`Field.option`); the rest are the engine's own or derived. `ca`:
    the CA in use, for what it can sign (observed hosts it cannot stay tunnelled)."""
    host, port = settings.listen
    upstream = settings.upstream_proxy
    fed = {f.option: option_value(getattr(settings, f.attr)) for f in FIELDS if f.option}
    return {
        **fed,
        "listen_host": host,
        "listen_port": port,
        # upstream mode: tunnels and pass-through leave through the company proxy; routed
        # requests are sent straight to the gateway by GatewayRouter
        "mode": [upstream.mode_spec] if upstream else ["regular"],
        "aibridge_upstream_auth": upstream.credentials if upstream else None,
        "aibridge_providers": settings.provider_table.to_specs(),
        "aibridge_policy": json.dumps(settings.policy_config),
        "aibridge_dlp_patterns": json.dumps(settings.dlp_patterns or []),
        "aibridge_limits": json.dumps(settings.limits or []),
        "aibridge_prices": json.dumps(settings.prices or []),
        "aibridge_mcp": json.dumps(settings.mcp or []),
        "aibridge_observe": list(settings.observed_items(signable_by(ca))),
        "aibridge_dlp_mask_key": dlp_mask_key(settings.ca_key_path),
        "aibridge_telemetry_headers": json.dumps(settings.telemetry_headers or {}),
        "aibridge_telemetry_key": derived_key(settings.ca_key_path, b"telemetry content"),
        "aibridge_profile_store": settings.profile_store or str(settings.state_path / CHOICES_FILE),
        "aibridge_mcp_pins_file": str(settings.state_path / PINS_FILE),
        "confdir": str(files.confdir),
        # eager: a tunnel's destination is dialled (and checked) before the CONNECT is answered;
        # routed CONNECTs are answered by InterceptPolicy first, so providers are never dialled
        "connection_strategy": "eager",
        "upstream_cert": False,
        "http2": True,  # see addons/connection/http2_clients.py for what makes h2 -> h1 correct
        "ssl_verify_upstream_trusted_ca": str(files.origin_trust),
        "aibridge_gateway_trusted_ca": str(files.gateway_trust),
    }


def dlp_mask_key(ca_key: Path) -> str:
    """The key DLP placeholders are made with: derived from the CA key, which every replica
    and worker shares, so one credential masks the same everywhere and in every turn. One-way:
    the placeholder tells nothing of the CA key."""
    return derived_key(ca_key, b"dlp mask key")


def derived_key(ca_key: Path, purpose: bytes) -> str:
    """A key for `purpose` every replica and worker derives alike from the CA key (one-way),
    so digests and placeholders agree across a deployment and mean nothing outside it."""
    material = ca_key.read_bytes() if ca_key.is_file() else b""
    return hashlib.sha256(b"aibridge-proxy " + purpose + b"\0" + material).hexdigest()


def option_value(value: Any) -> Any:
    """A typed setting as a mitmproxy option holds it: paths as text, sequences as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [str(v) for v in value]
    return value


def prepare_engine_files(
    settings: Settings, ca: CertificateAuthority, engine_dir: str = "engine"
) -> EngineFiles:
    """mitmproxy's confdir (our CA) and a trust bundle per upstream leg. Worker processes each
    get their own engine directory."""
    origin = [
        (p, name)
        for p, name in (
            (settings.origin_ca_file, "origin_ca_file"),
            (settings.upstream_proxy_ca, "upstream_proxy_ca"),
        )
        if p
    ]
    gateway = [
        (p, name)
        for p, name in (
            (settings.gateway_ca_file, "gateway_ca_file"),
            *((Path(f), "gateways' ca_file") for f in gateway_ca_files(settings.gateways)),
        )
        if p
    ]
    if (
        settings.upstream_proxy_ca
        and settings.upstream_proxy
        and settings.upstream_proxy.scheme == "http"
    ):
        logger.warning("upstream_proxy_ca is ignored: the upstream proxy is plain http://")
    try:
        return EngineFiles(
            *certs_prepare.write_engine_files(ca, settings.state_path / engine_dir, origin, gateway)
        )
    except BundleError as e:
        raise StartupError(str(e)) from None


class ProxyApp:
    def __init__(
        self,
        settings: Settings,
        reload_settings: Callable[[], Settings] | None = None,
        worker_index: int | None = None,
        supervisor_pid: int | None = None,
        report_fd: int | None = None,
    ):
        self.settings = settings
        self.worker_index = (
            worker_index  # set when one of several workers (proxy/server/workers.py)
        )
        self.engine_dir = "engine" if worker_index is None else f"engine-{worker_index}"
        # a worker's supervisor, given by it: our own parent may already be someone else
        self.supervisor_pid = supervisor_pid or os.getppid()
        self.reload_settings = reload_settings
        self.notifier = Notifier(settings.notify_socket, settings.watchdog_usec)
        self.admin_state = AdminState()
        self.patches = EnginePatches()
        # a worker's supervisor speaks for all its workers: a worker reports to it instead
        self.reloads = ReloadRecorder(settings.state_path) if worker_index is None else None
        self.reports = ReportWriter(report_fd) if report_fd is not None else None
        self.admin: AdminServer | None = None
        self.master: master.Master | None = None
        self.ca: CertificateAuthority | None = None
        self.listen_address: tuple[str, int] | None = None
        self.started = asyncio.Event()
        self.stopping = False
        self.collector = CollectorPacing()

    # -- assembly ----------------------------------------------------------------------------

    def _build_master(self) -> master.Master:
        self.patches.install()
        ca = self._ca(self.settings)
        files = prepare_engine_files(self.settings, ca, self.engine_dir)
        self.ca = ca
        opts = options.Options()
        m = master.Master(opts)
        HookTable.install(m)
        stop_log_redispatch(m)
        lifecycle = _RunningSignal()
        m.addons.add(
            core.Core(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            *make_addons(self.patches),
            lifecycle,
        )
        self._lifecycle = lifecycle
        try:
            # addon-defined options exist only now that the addons are added
            opts.update(**engine_options(self.settings, files, self.ca))
        except exceptions.OptionsError as e:
            raise StartupError(str(e)) from None
        return m

    async def start(self) -> None:
        # We report bind failures ourselves, in one line that names the setting.
        logging.getLogger("mitmproxy.addons.proxyserver").addFilter(_drop_bind_errors)
        self.master = self._build_master()
        # The admin listener first: if its port is taken, we stop before the main listener
        # has accepted anyone (a client connecting in between would get a reset).
        if self.settings.admin_listen is not None:
            self.admin = await start_admin(
                self.admin_state, lambda: self.metrics.registry, self.settings.admin_listen
            )
        self._run_task = asyncio.get_running_loop().create_task(self.master.run())
        waiter = asyncio.ensure_future(self._lifecycle.event.wait())
        done, _ = await asyncio.wait({waiter, self._run_task}, return_when=asyncio.FIRST_COMPLETED)
        try:
            if self._run_task in done:
                waiter.cancel()
                self._run_task.result()
                raise StartupError("the proxy engine stopped during start-up")
            self.listen_address = self._bound_address()
        except BaseException:
            if not self._run_task.done():
                self.master.shutdown()
                await self._run_task
            if self.admin is not None:
                await self.admin.stop()
            raise
        self.collector.start(asyncio.get_running_loop())
        self._publish()
        logger.info(
            "proxy listening",
            extra={
                "fields": {
                    "open_files": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                    "optimized": sys.flags.optimize > 0,  # python -O: see workers.py
                    "listen": f"{self.listen_address[0]}:{self.listen_address[1]}",
                    "target": self.settings.routing_target.url
                    if self.settings.routing_target
                    else None,
                    "ca": str(self.settings.ca_cert_path),
                    "auth_mode": self.settings.auth_mode,
                }
            },
        )
        self.started.set()
        if self.reloads is not None:
            self.reloads.record(True, "started")
        if self.reports is not None:
            for handler in logging.getLogger().handlers:
                handler.flush()  # our "proxy listening" line is in the log pipe before READY
            self.reports.send(WorkerReport(READY))
        self.notifier.ready(f"proxy on {self.listen_address[0]}:{self.listen_address[1]}")

    def _bound_address(self) -> tuple[str, int]:
        """The main listener's address, or the one line that says why it has none."""
        assert self.master is not None
        ps = self.master.addons.get("proxyserver")
        for server in ps.servers:
            if (exc := server.last_exception) is not None:
                host, port = self.settings.listen
                reason = getattr(exc, "strerror", None) or str(exc)
                if "address already in use" in str(exc).lower():
                    reason = "address already in use"
                raise StartupError(
                    f"listen: cannot bind {host or '*'}:{port}: {reason}; "
                    "choose another address with --listen"
                )
        if not (addrs := ps.listen_addrs()):
            raise StartupError("the proxy did not bind any listener")
        return addrs[0][:2]

    @property
    def metrics(self):
        assert self.master is not None
        return self.master.addons.get("metrics")

    def _publish(self) -> None:
        """Hand the current settings and CA to the admin endpoints and metrics."""
        assert self.ca is not None and self.listen_address is not None
        self.admin_state.publish(self.settings, self.ca.cert_pem(), self.listen_address[1])
        self.admin_state.listening = True
        self.metrics.ca_expiry.set(self.ca.not_after.timestamp())

    # -- reload and stop ---------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the configuration and CA; keep the old ones if anything is wrong."""
        assert self.master is not None
        if self.reload_settings is None:
            return False
        try:
            new = self.reload_settings()
            if new.listen != self.settings.listen:
                raise SettingsError("listen: changing the address needs a restart")
            ca = self._ca(new)
            opts = engine_options(new, prepare_engine_files(new, ca, self.engine_dir), ca)
            for key in ("listen_host", "listen_port", "mode"):
                opts.pop(key)
            if new.upstream_proxy != self.settings.upstream_proxy:
                raise SettingsError("upstream_proxy: changing it needs a restart")
            # every option passed counts as updated, so TlsConfig re-reads the CA from confdir
            self.master.options.update(**opts)
        except (SettingsError, StartupError, exceptions.OptionsError) as e:
            self._count_reload(False)
            logger.error("configuration reload rejected, keeping the old one: %s", e)
            self._record_reload(
                False, f"configuration reload rejected, keeping the old one: {e}", str(e)
            )
            return False
        self.settings, self.ca = new, ca
        self._publish()
        self._count_reload(True)
        logger.info("configuration reloaded")
        self._record_reload(True, "configuration reloaded")
        return True

    def _record_reload(self, ok: bool, message: str, reason: str = "") -> None:
        if self.reloads is not None:
            self.reloads.record(ok, message)
        if self.reports is not None:
            self.reports.send(WorkerReport(RELOAD, ok, reason or message))

    def _ca(self, settings: Settings) -> CertificateAuthority:
        """A worker's supervisor has already created, checked and published the CA."""
        return prepare_ca(settings) if self.worker_index is None else ensure_ca(settings)

    async def _stop_when_orphaned(self, stop_requested: asyncio.Event) -> None:
        """A worker outlives a supervisor that was killed outright (SIGKILL, OOM): notice the
        new parent and stop, rather than serve on unsupervised."""
        while not stop_requested.is_set():
            await asyncio.sleep(1)
            if os.getppid() != self.supervisor_pid:
                logger.warning("the supervisor is gone; worker %s stopping", self.worker_index)
                stop_requested.set()

    def _count_reload(self, ok: bool) -> None:
        # with several workers, each reloads; one of them speaks for all in the metrics
        if self.worker_index in (None, 0):
            self.metrics.reload_result(ok)

    async def stop(self) -> None:
        """Stop accepting, let open requests and streams finish (up to the grace period)."""
        if self.master is None or self.stopping:
            return
        self.stopping = True
        self.notifier.stopping()
        self.admin_state.listening = False  # /readyz fails from now on
        if delay := self.settings.shutdown_delay:
            logger.info("stopping: still accepting for %ss while load balancers notice", delay)
            await asyncio.sleep(delay)
        grace = self.settings.grace_period
        logger.info("stopping: draining connections", extra={"fields": {"grace_s": grace}})
        self.master.options.update(server=False)
        ps = self.master.addons.get("proxyserver")
        deadline = time.monotonic() + grace
        while ps.active_connections() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if left := ps.active_connections():
            logger.warning("grace period over, closing %d connections", left)
        self.master.shutdown()
        await self._run_task
        if self.admin is not None:
            await self.admin.stop()
        self.collector.stop()
        logger.info("stopped")

    async def serve_forever(self) -> None:
        """Install signal handlers, start, and return once stopped. The handlers come first:
        a SIGTERM during start-up still ends in a clean stop."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop_requested.set)
        loop.add_signal_handler(signal.SIGINT, stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.started.is_set() and self.reload())
        if self.worker_index is not None:
            loop.create_task(self._stop_when_orphaned(stop_requested))
        try:
            await self.start()
            await stop_requested.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        await self.stop()


def _drop_bind_errors(record: logging.LogRecord) -> bool:
    return "failed to listen" not in record.getMessage()


class _RunningSignal:
    """A tiny addon: mitmproxy calls `running` once its servers are up."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def running(self) -> None:
        self.event.set()
