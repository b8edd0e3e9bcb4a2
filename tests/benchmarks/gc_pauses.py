"""
The 10,000-stream tail and the cyclic garbage collector: one worker of ours (gateway leg pooled
over HTTP/2) with every collection timed through `gc.callbacks` and its loop's lag probed,
10,000 streams opened and then held with an event on each every 5 s: the event delays (gateway
send time to client arrival), and the collections and the lag while they open and while they
are open; the worker's collector paced (as shipped) and left alone.

    .venv/py3.13/bin/python -m tests.benchmarks.gc_pauses [--quick]
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

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
from tests.benchmarks.gateways import gateway_workdir
from tests.benchmarks.gateways import start_h2_gateway
from tests.benchmarks.streams import StreamClient


def timed_worker() -> None:
    """`python -m tests.benchmarks.gc_pauses worker OUT PACING ARGS...`: aibridge-proxy serve in
    this process, its collections and its loop's lag recorded; each SIGUSR1 writes what was
    recorded since the last to OUT.<n> as JSON. PACING: paced (as shipped) or unpaced."""
    import gc

    from proxy.cli import main

    out, paced = Path(sys.argv[2]), sys.argv[3] == "paced"
    pauses: list[tuple[int, float]] = []
    lags: list[float] = []
    started = [0.0]
    dumps = [0]
    if not paced:  # the worker as it was before CollectorPacing
        from proxy.server import collector

        collector.CollectorPacing.start = lambda self, loop: None

    def callback(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], (time.perf_counter() - started[0]) * 1000))

    async def lag_probe() -> None:
        """How late the worker's loop runs a 5 ms timer: its own delay, whoever else runs."""
        loop = asyncio.get_running_loop()
        while True:
            planned = loop.time() + 0.005
            await asyncio.sleep(0.005)
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

    def dump(*_):
        path = out.with_suffix(f".{dumps[0]}")
        path.with_suffix(".tmp").write_text(json.dumps({"pauses": pauses, "lags": lags}))
        path.with_suffix(".tmp").rename(path)
        pauses.clear()
        lags.clear()
        dumps[0] += 1

    signal.signal(signal.SIGUSR1, dump)
    sys.exit(main(sys.argv[4:]))


def _recorded(proc: subprocess.Popen, out: Path, n: int) -> dict:
    proc.send_signal(signal.SIGUSR1)
    path = out.with_suffix(f".{n}")
    while not path.exists():
        time.sleep(0.05)
    return json.loads(path.read_text())


def _summary(recorded: dict) -> dict:
    collections = {}
    for g in (0, 1, 2):
        mine = [ms for gen, ms in recorded["pauses"] if gen == g]
        collections[g] = {"count": len(mine), "total_ms": round(sum(mine), 1),
                          "max_ms": round(max(mine), 1) if mine else 0}  # fmt: skip
    lags = recorded["lags"]
    return {"collections": collections,
            "loop_lag_ms": {"p50": percentile(lags, 50), "p99": percentile(lags, 99),
                            "max": max(lags) if lags else 0}}  # fmt: skip


# the worker's collector as shipped (proxy/server/collector.py), and left alone
VARIANTS = {"paced (as shipped)": "paced", "unpaced": "unpaced"}


def run(quick: bool = False) -> dict:
    return {variant: run_one(quick, variant) for variant in VARIANTS}


def run_one(quick: bool, variant: str) -> dict:
    raise_open_files_limit()
    env = bench_env()
    work = gateway_workdir("aibridge-gc-bench-")
    port = free_port()
    gw_port, gateway = start_h2_gateway(work, env)
    out = work / "recorded"
    proc = subprocess.Popen(
        [sys.executable, "-O", "-m", "tests.benchmarks.gc_pauses", "worker", str(out),
         VARIANTS[variant], "serve",
         "--workers", "1", "--gateway", f"https://localhost:{gw_port}",
         "--gateway-ca-file", str(work / "gw-ca.pem"), "--auth-mode", "presence",
         "--listen", f"127.0.0.1:{port}", "--admin-listen", "off", "--state-dir",
         str(work / "ours"), *ONE_USERS_LOAD],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    count, measure = (2000, 10) if quick else (10_000, 30)
    phases: dict = {}
    try:
        wait_port(gw_port)
        wait_port(port, 60)
        client = StreamClient(f"http://coder:{TOKEN}@127.0.0.1:{port}", HOST, TOKEN,
                              str(work / "ours" / "ca.pem"))  # fmt: skip
        _recorded(proc, out, 0)  # start-up: not counted

        def at_start():
            phases["opening"] = _summary(_recorded(proc, out, 1))

        def at_end():
            phases["open"] = _summary(_recorded(proc, out, 2))
            phases["rss_mb"] = rss_mb(proc.pid)

        counts = asyncio.run(
            client.hold(count, interval=5, measure=measure, at_start=at_start, at_end=at_end)
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        gateway.terminate()
        gateway.wait(30)
    d = counts.delays_ms
    return {
        "streams": count, "opened": counts.opened, "failed": counts.failed,
        "dropped": counts.dropped, "open_s": round(counts.open_s, 1), "measure_s": measure,
        "events": len(d), "delay_p50_ms": percentile(d, 50), "delay_p99_ms": percentile(d, 99),
        "client_loop_lag_ms": {"p99": percentile(counts.client_lag_ms, 99),
                               "max": max(counts.client_lag_ms, default=0)},
        "delay_max_ms": max(d) if d else 0, **phases,
    }  # fmt: skip


def table(r: dict) -> str:
    lines = []
    for variant, x in r.items():
        lines.append(f"{x['streams']} pooled streams, one worker, collector {variant}: "
                     f"{x['opened']} open, {x['failed']} failed, {x['dropped']} dropped; event "
                     f"delay p50 {x['delay_p50_ms']:.1f} / p99 {x['delay_p99_ms']:.1f} / max "
                     f"{x['delay_max_ms']:.1f} ms over {x['events']} events; RSS "
                     f"{x['rss_mb']:.0f} MB; the load generator's own loop lag p99 "
                     f"{x['client_loop_lag_ms']['p99']:.1f} / max "
                     f"{x['client_loop_lag_ms']['max']:.1f} ms")  # fmt: skip
        for phase, seconds in (("opening", x["open_s"]), ("open", x["measure_s"])):
            p = x[phase]
            lag = p["loop_lag_ms"]
            gens = ", ".join(f"gen{g} {c['count']} ({c['total_ms']:g} ms, longest "
                             f"{c['max_ms']:g})" for g, c in p["collections"].items())  # fmt: skip
            lines.append(f"  {phase} ({seconds:g} s): worker loop lag p50 {lag['p50']:.1f} / p99 "
                         f"{lag['p99']:.1f} / max {lag['max']:.1f} ms; {gens}")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        timed_worker()
        return
    bench_main(__doc__, run, table, "gc_pauses")


if __name__ == "__main__":
    main()
