"""
Several worker processes on one port: one asyncio process uses one core.

The supervisor prepares the CA once, starts the workers (each a normal `serve` that binds the
same address with SO_REUSEPORT, so the kernel spreads new connections over them), serves the
admin endpoints for all of them (metrics from prometheus_client's multiprocess files), checks a
new configuration before passing SIGHUP on, drains them all on SIGTERM, restarts a worker that
dies, and talks to systemd. Workers share nothing but the CA, the configuration and the port.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import shutil
import signal
import socket
import sys
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client import multiprocess

from proxy.server.admin import AdminServer
from proxy.server.admin import AdminState
from proxy.server.errors import StartupError
from proxy.server.reloading import ReloadRecorder
from proxy.server.settings import Settings
from proxy.server.settings import SettingsError
from proxy.server.startup import prepare_ca
from proxy.server.startup import start_admin
from proxy.server.systemd import Notifier
from proxy.server.worker_reports import READY
from proxy.server.worker_reports import RELOAD
from proxy.server.worker_reports import WorkerReport
from proxy.server.worker_reports import read_reports

logger = logging.getLogger("aibridge.proxy")
RELOAD_REPORT_TIMEOUT = 20.0  # seconds each worker has to report a reload (`reload` waits 30)

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def resolve_port(host: str, port: int) -> int:
    """Workers must agree on one port: pick a free one now if the setting says 0."""
    if port:
        return port
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host or "", 0))
        return s.getsockname()[1]


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        worker_argv: list[str],
        reload_settings: Callable[[], Settings],
        count: int,
    ):
        self.settings = settings
        self.worker_argv = worker_argv
        self.reload_settings = reload_settings
        self.count = count
        self.notifier = Notifier(settings.notify_socket, settings.watchdog_usec)
        self.admin_state = AdminState()
        self.reloads = ReloadRecorder(settings.state_path)
        self.admin: AdminServer | None = None
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.ready: dict[int, asyncio.Event] = {}
        # each worker's reload reports, in order, for the reload waiting on them
        self.reload_reports: dict[int, asyncio.Queue[WorkerReport]] = {}
        self._reloading = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self.stopping = False
        self.port = resolve_port(*settings.listen)
        self.metrics_dir = settings.state_path / "metrics"

    def _worker_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        env[METRICS_DIR_ENV] = str(self.metrics_dir)
        return env

    async def _spawn(self, index: int) -> None:
        host = self.settings.listen[0]
        listen = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        cmd = [
            sys.executable,
            # mitmproxy type-checks every request and response it builds and every event its
            # layers pass, under `if __debug__`: a sixth of a request's CPU. Our code keeps no
            # check in an assert, so workers run optimised (see the manual, Performance).
            "-O",
            "-m",
            "proxy",
            "serve",
            *self.worker_argv,
            "--listen",
            listen,
            "--admin-listen",
            "off",
            "--shutdown-delay",
            "0",
            "--worker-index",
            str(index),
            "--supervisor-pid",
            str(os.getpid()),
        ]
        self.ready[index] = asyncio.Event()
        self.reload_reports[index] = asyncio.Queue()
        report_read, report_write = os.pipe()
        cmd += ["--report-fd", str(report_write)]
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                env=self._worker_env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=(report_write,),
            )
        finally:
            os.close(report_write)  # the worker holds it now: its exit closes the pipe
        self.procs[index] = proc
        self._background(self._pump(index, proc))
        self._background(self._follow_reports(index, report_read))

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow_reports(self, index: int, fd: int) -> None:
        async for report in read_reports(fd):
            if report.kind == READY:
                self.ready[index].set()
            elif report.kind == RELOAD:
                self.reload_reports[index].put_nowait(report)

    async def _pump(self, index: int, proc: asyncio.subprocess.Process) -> None:
        """Forward a worker's log lines; notice when it dies."""
        assert proc.stdout is not None
        out = sys.stderr.buffer
        async for line in proc.stdout:
            out.write(line)
            out.flush()
        code = await proc.wait()
        multiprocess.mark_process_dead(proc.pid, str(self.metrics_dir))
        self.ready[index].clear()
        if not self.stopping:
            logger.error("worker %d exited with %s; starting it again", index, code)
            await asyncio.sleep(0.5)
            await self._spawn(index)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()  # handlers first: a SIGTERM during start-up still stops cleanly
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(
            signal.SIGHUP, lambda: self.admin_state.listening and self._background(self.reload())
        )
        ca = prepare_ca(self.settings)  # the CA exists before workers start
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir(parents=True, mode=0o700)
        if self.settings.admin_listen is not None:
            # bound before any worker accepts a client: a taken port stops us first
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=str(self.metrics_dir))
            self.admin = await start_admin(
                self.admin_state, lambda: registry, self.settings.admin_listen
            )
        for i in range(self.count):
            await self._spawn(i)
        all_ready = asyncio.ensure_future(asyncio.gather(*(e.wait() for e in self.ready.values())))
        stopped = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait(
            {all_ready, stopped}, timeout=60, return_when=asyncio.FIRST_COMPLETED
        )
        if all_ready not in done:
            all_ready.cancel()
            await asyncio.gather(all_ready, return_exceptions=True)  # retrieve the cancellation
            await self._stop_workers()
            if self.admin is not None:
                await self.admin.stop()
            if stopped in done:
                return
            raise StartupError("workers did not start; see the log lines above")
        # Each worker flushed its "proxy listening" line before it said READY, on another pipe:
        # give the log pumps a moment to forward those lines, so ours comes after theirs.
        await asyncio.sleep(0.1)
        self.admin_state.publish(self.settings, ca.cert_pem(), self.port)
        self.admin_state.listening = True
        logger.info(
            "proxy listening",
            extra={
                "fields": {
                    "open_files": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                    "listen": f"{self.settings.listen[0]}:{self.port}",
                    "workers": self.count,
                }
            },
        )
        self.reloads.record(True, "started")
        self.notifier.ready(f"{self.count} workers on port {self.port}")
        await stopped
        self.notifier.stopping()
        self.admin_state.listening = False
        if self.settings.shutdown_delay:
            await asyncio.sleep(self.settings.shutdown_delay)
        await self._stop_workers()
        if self.admin is not None:
            await self.admin.stop()
        logger.info("stopped")

    async def reload(self) -> None:
        """Check the new configuration here first (a broken one never reaches the workers),
        then pass it on and wait for every worker's verdict: applied only when all applied."""
        async with self._reloading:  # one reload at a time: each waits for its own reports
            try:
                new = self.reload_settings()
                if new.listen != self.settings.listen:
                    raise SettingsError("listen: changing the address needs a restart")
                ca = prepare_ca(new)
            except (SettingsError, StartupError) as e:
                self._reload_refused(str(e))
                return
            refusals = await self._reload_workers()
            if refusals:
                self._reload_refused("; ".join(refusals))
                return
            self.settings = new
            self.admin_state.publish(self.settings, ca.cert_pem(), self.port)
            logger.info("configuration reloaded by all %d workers", self.count)
            self.reloads.record(True, "configuration reloaded")

    async def _reload_workers(self) -> list[str]:
        """SIGHUP each live worker and collect its report; what each refusal said."""
        asked = []
        for index, proc in self.procs.items():
            if proc.returncode is None:
                queue = self.reload_reports[index]
                while not queue.empty():  # a stale report (of a timed-out reload) is not ours
                    queue.get_nowait()
                proc.send_signal(signal.SIGHUP)
                asked.append(index)
        refusals = []
        for index in asked:
            try:
                report = await asyncio.wait_for(
                    self.reload_reports[index].get(), RELOAD_REPORT_TIMEOUT
                )
            except TimeoutError:
                refusals.append(f"worker {index} did not report within {RELOAD_REPORT_TIMEOUT:g}s")
                continue
            if not report.ok:
                refusals.append(f"worker {index}: {report.message}")
        return refusals

    def _reload_refused(self, why: str) -> None:
        logger.error("configuration reload rejected, keeping the old one: %s", why)
        self.reloads.record(False, f"configuration reload rejected, keeping the old one: {why}")

    async def _stop_workers(self) -> None:
        self.stopping = True
        # shutdown_delay was spent here already; workers drain for grace_period themselves
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*(p.wait() for p in self.procs.values()))


def worker_count(setting: int) -> int:
    return setting if setting > 0 else (os.cpu_count() or 1)
