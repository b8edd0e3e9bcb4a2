"""
The 10,000-stream tail and the cyclic garbage collector: one worker of ours (gateway leg pooled
over HTTP/2) with every collection timed through `gc.callbacks`, 10,000 streams open with an
event on each every 5 s, the event delays (gateway send time to client arrival) and the
collections' pauses by generation while all are open.

    .venv/py3.13/bin/python -m tests.benchmarks.gc_pauses [--quick]
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from certs.authority import generate_ca
from certs.authority import issue_leaf
from certs.authority import key_pem
from proxy.server.limits import raise_open_files_limit
from tests.benchmarks.__main__ import HOST
from tests.benchmarks.__main__ import ONE_USERS_LOAD
from tests.benchmarks.__main__ import ROOT
from tests.benchmarks.__main__ import TOKEN
from tests.benchmarks.__main__ import free_port
from tests.benchmarks.__main__ import percentile
from tests.benchmarks.__main__ import rss_mb
from tests.benchmarks.__main__ import wait_port
from tests.benchmarks.dlp import bench_env
from tests.benchmarks.dlp import bench_main
from tests.benchmarks.streams import StreamClient


def timed_worker() -> None:
    """`python -m tests.benchmarks.gc_pauses worker OUT ARGS...`: aibridge-proxy serve in this
    process; SIGUSR1 starts recording collections and the loop's lag, SIGUSR2 writes them to
    OUT as JSON."""
    import gc

    from proxy.cli import main

    out = Path(sys.argv[2])
    pauses: list[tuple[int, float]] = []
    recording = [False]
    started = [0.0]

    def callback(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
        elif recording[0]:
            pauses.append((info["generation"], (time.perf_counter() - started[0]) * 1000))

    lags: list[float] = []

    async def lag_probe() -> None:
        """How late the worker's loop runs a 5 ms timer: its own delay, whoever else runs."""
        loop = asyncio.get_running_loop()
        while True:
            planned = loop.time() + 0.005
            await asyncio.sleep(0.005)
            if recording[0]:
                lags.append((loop.time() - planned) * 1000)

    real_run = asyncio.run

    def run_with_probe(coro, **kw):
        async def probed():
            probe = asyncio.get_running_loop().create_task(lag_probe())
            try:
                return await coro
            finally:
                probe.cancel()

        return real_run(probed(), **kw)

    asyncio.run = run_with_probe
    gc.callbacks.append(callback)

    def start(*_):
        pauses.clear()
        lags.clear()
        recording[0] = True

    def dump(*_):
        recording[0] = False
        out.with_suffix(".tmp").write_text(json.dumps({"pauses": pauses, "lags": lags}))
        out.with_suffix(".tmp").rename(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, dump)
    sys.exit(main(sys.argv[3:]))


def run(quick: bool = False) -> dict:
    raise_open_files_limit()
    env = bench_env()
    work = Path(tempfile.mkdtemp(prefix="aibridge-gc-bench-"))
    ca = generate_ca("bench gateway CA", 2, permitted_domains=None)
    cert, key = issue_leaf(ca, ["localhost"], ips=["127.0.0.1"])
    (work / "gw.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key_pem(key))
    (work / "gw-ca.pem").write_bytes(ca.cert_pem())
    gw_port, port = free_port(), free_port()
    gateway = subprocess.Popen([sys.executable, "-m", "tests.support.h2_gateway", str(gw_port),
                                str(work / "gw.pem")], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL)  # fmt: skip
    out = work / "pauses.json"
    proc = subprocess.Popen(
        [sys.executable, "-O", "-m", "tests.benchmarks.gc_pauses", "worker", str(out), "serve",
         "--workers", "1", "--gateway", f"https://localhost:{gw_port}",
         "--gateway-ca-file", str(work / "gw-ca.pem"), "--auth-mode", "presence",
         "--listen", f"127.0.0.1:{port}", "--admin-listen", "off", "--state-dir",
         str(work / "ours"), *ONE_USERS_LOAD],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    count, measure = (2000, 10) if quick else (10_000, 30)
    try:
        wait_port(gw_port)
        wait_port(port, 60)
        client = StreamClient(f"http://coder:{TOKEN}@127.0.0.1:{port}", HOST, TOKEN,
                              str(work / "ours" / "ca.pem"))  # fmt: skip
        seen: dict = {}

        def at_end():
            proc.send_signal(signal.SIGUSR2)
            while not out.exists():
                time.sleep(0.1)
            seen["rss_mb"] = rss_mb(proc.pid)

        counts = asyncio.run(
            client.hold(count, interval=5, measure=measure,
                        at_start=lambda: proc.send_signal(signal.SIGUSR1), at_end=at_end)
        )  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        gateway.terminate()
        gateway.wait(30)
    recorded = json.loads(out.read_text())
    pauses, lags = recorded["pauses"], recorded["lags"]
    by_generation = {}
    for g in (0, 1, 2):
        mine = [ms for gen, ms in pauses if gen == g]
        by_generation[g] = {"count": len(mine), "total_ms": round(sum(mine), 1),
                            "max_ms": round(max(mine), 1) if mine else 0}  # fmt: skip
    d = counts.delays_ms
    return {
        "streams": count, "opened": counts.opened, "failed": counts.failed,
        "dropped": counts.dropped, "measure_s": measure, "events": len(d),
        "delay_p50_ms": percentile(d, 50), "delay_p99_ms": percentile(d, 99),
        "delay_max_ms": max(d) if d else None, "rss_mb": seen.get("rss_mb"),
        "collections": by_generation,
        "worker_loop_lag_ms": {"p50": percentile(lags, 50), "p99": percentile(lags, 99),
                               "max": max(lags) if lags else None, "samples": len(lags)},
    }  # fmt: skip


def table(r: dict) -> str:
    lines = [f"{r['streams']} pooled streams, one worker: {r['opened']} open, {r['failed']} "
             f"failed, {r['dropped']} dropped; event delay p50 {r['delay_p50_ms']:.1f} / p99 "
             f"{r['delay_p99_ms']:.1f} / max {r['delay_max_ms']:.1f} ms over {r['events']} "
             f"events in {r['measure_s']} s; RSS {r['rss_mb']:.0f} MB",
             f"the worker's own loop lag (a 5 ms timer): p50 {r['worker_loop_lag_ms']['p50']:.1f}"
             f" / p99 {r['worker_loop_lag_ms']['p99']:.1f} / max {r['worker_loop_lag_ms']['max']:.1f}"
             " ms", "collections while measuring:"]  # fmt: skip
    for g, c in r["collections"].items():
        lines.append(f"  generation {g}: {c['count']} collections, {c['total_ms']} ms in all, "
                     f"longest {c['max_ms']} ms")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        timed_worker()
        return
    bench_main(__doc__, run, table, "gc_pauses")


if __name__ == "__main__":
    main()
