"""
Where an open SSE stream's memory goes, with the gateway leg pooled over HTTP/2: one worker of
ours under tracemalloc, snapshots while `few` and then `many` streams are open, and the
difference per stream by allocating file (Python objects), next to the RSS difference (which
also holds OpenSSL's buffers, which tracemalloc does not see).

    .venv/py3.13/bin/python -m tests.benchmarks.stream_memory [--quick]
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

from proxy.server.limits import raise_open_files_limit
from tests.benchmarks.__main__ import HOST
from tests.benchmarks.__main__ import ONE_USERS_LOAD
from tests.benchmarks.__main__ import ROOT
from tests.benchmarks.__main__ import TOKEN
from tests.benchmarks.__main__ import free_port
from tests.benchmarks.__main__ import rss_mb
from tests.benchmarks.__main__ import wait_port
from tests.benchmarks.dlp import bench_env
from tests.benchmarks.dlp import bench_main
from tests.benchmarks.gateways import gateway_workdir
from tests.benchmarks.gateways import start_h2_gateway
from tests.benchmarks.streams import StreamClient


def traced_worker() -> None:
    """`python -m tests.benchmarks.stream_memory worker SNAPSHOT ARGS...`: aibridge-proxy
    serve in this process under tracemalloc; SIGUSR1 writes a snapshot to SNAPSHOT."""
    import gc

    from proxy.cli import main

    path = sys.argv[2]
    tracemalloc.start(1)

    def dump(*_):
        gc.collect()
        tracemalloc.take_snapshot().dump(path + ".tmp")
        Path(path + ".tmp").rename(path)

    signal.signal(signal.SIGUSR1, dump)
    sys.exit(main(sys.argv[3:]))


def _snapshot(proc: subprocess.Popen, path: Path) -> tracemalloc.Snapshot:
    path.unlink(missing_ok=True)
    proc.send_signal(signal.SIGUSR1)
    while not path.exists():
        time.sleep(0.2)
    return tracemalloc.Snapshot.load(str(path))


def run(quick: bool = False) -> dict:
    raise_open_files_limit()
    env = bench_env()
    work = gateway_workdir("aibridge-memory-bench-")
    port = free_port()
    gw_port, gateway = start_h2_gateway(work, env)
    snap = work / "snapshot"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.benchmarks.stream_memory", "worker", str(snap), "serve",
         "--workers", "1", "--gateway", f"https://localhost:{gw_port}",
         "--gateway-ca-file", str(work / "gw-ca.pem"), "--auth-mode", "presence",
         "--listen", f"127.0.0.1:{port}", "--admin-listen", "off", "--state-dir",
         str(work / "ours"), "--log-level", "warning", *ONE_USERS_LOAD],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    few, many = (200, 600) if quick else (500, 2000)
    try:
        wait_port(gw_port)
        wait_port(port, 60)
        client = StreamClient(f"http://coder:{TOKEN}@127.0.0.1:{port}", HOST, TOKEN,
                              str(work / "ours" / "ca.pem"))  # fmt: skip
        held = {}
        for n in (few, many):

            def at_end(n=n):
                held[n] = (rss_mb(proc.pid), _snapshot(proc, snap))

            client_counts = __import__("asyncio").run(
                client.hold(n, interval=60, measure=0.5, at_end=at_end)
            )
            assert client_counts.opened == n, client_counts
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        gateway.terminate()
        gateway.wait(30)
    (rss_few, a), (rss_many, b) = held[few], held[many]
    streams = many - few
    by_file: Counter = Counter()
    for stat in b.compare_to(a, "filename"):
        by_file[_short(stat.traceback[0].filename)] += stat.size_diff
    python_kb = sum(by_file.values()) / streams / 1024
    by_line = [(f"{_short(x.traceback[0].filename)}:{x.traceback[0].lineno}",
                round(x.size_diff / streams / 1024, 2), round(x.count_diff / streams, 1))
               for x in b.compare_to(a, "lineno")[:30]]  # fmt: skip
    return {
        "streams": [few, many],
        "rss_kb_per_stream": (rss_many - rss_few) * 1024 / streams,
        "python_kb_per_stream": python_kb,
        "top_files_kb_per_stream": {
            f: round(s / streams / 1024, 2) for f, s in by_file.most_common(25)
        },
        "top_lines": by_line,  # (file:line, KB per stream, blocks per stream)
    }


def _short(name: str) -> str:
    for marker in ("site-packages/", "/lib/", str(ROOT) + "/"):
        if marker in name:
            return name.split(marker, 1)[1]
    return name


def table(r: dict) -> str:
    few, many = r["streams"]
    lines = [f"memory per open pooled stream ({few} -> {many}): RSS {r['rss_kb_per_stream']:.1f} KB,"
             f" of it Python objects (tracemalloc) {r['python_kb_per_stream']:.1f} KB; by file:"]  # fmt: skip
    lines += [f"  {kb:>6.2f} KB  {name}" for name, kb in r["top_files_kb_per_stream"].items()]
    lines.append("by line (KB, blocks per stream):")
    lines += [f"  {kb:>6.2f} KB {n:>5} {where}" for where, kb, n in r["top_lines"]]
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        traced_worker()
        return
    bench_main(__doc__, run, table, "stream_memory")


if __name__ == "__main__":
    main()
