"""
The audit trail's cost on the hot path: one `-O` worker's CPU per 1,000 ordinary requests with
spans exported to a local OTLP receiver, content `none` and `hash`, against telemetry off, in
the same run and alternating (loopback only). The receiver decodes every batch, as a collector
would; its CPU is not the proxy's.

    ./run bench                                   # runs this too
    .venv/py3.13/bin/python -m tests.benchmarks.telemetry [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tests.benchmarks.__main__ import ensure_tools
from tests.benchmarks.__main__ import wait_port
from tests.benchmarks.dlp import Proxy
from tests.benchmarks.dlp import bench_env
from tests.benchmarks.dlp import cpu_per_1k
from tests.benchmarks.dlp import start_gateway
from tests.support.otlp import OtlpReceiver

ROOT = Path(__file__).resolve().parents[2]


def run(quick: bool = False) -> dict:
    ensure_tools()
    env = bench_env()
    receiver = OtlpReceiver().start()
    gateway_port, gateway = start_gateway(env)
    proxies = {}
    try:
        wait_port(gateway_port)
        export = ["--telemetry-otlp-endpoint", receiver.url]
        proxies = {
            "off": Proxy(gateway_port, [], env),
            "content none": Proxy(gateway_port, export, env),
            "content hash": Proxy(gateway_port, [*export, "--telemetry-content", "hash"], env),
        }
        cpu: dict[str, list[float]] = {n: [] for n in proxies}
        for _ in range(2 if quick else 4):
            for name, p in proxies.items():
                cpu[name].append(cpu_per_1k(p, 2000 if quick else 4000))
    finally:
        for p in proxies.values():
            p.stop()
        gateway.terminate()
        gateway.wait(30)
        exported = len(receiver.spans)
        receiver.close()
    medians = {n: statistics.median(v) for n, v in cpu.items()}
    return {"cpu_s_per_1k": medians, "rounds": cpu, "spans_received": exported}


def table(r: dict) -> str:
    c = r["cpu_s_per_1k"]
    return "\n".join([
        "telemetry (OTLP/HTTP export)         CPU s per 1k requests   ratio to off",
        *(f"  {name:<34} {c[name]:.3f}                   {c[name] / c['off']:.2f}x" for name in c),
        f"  spans the receiver decoded: {r['spans_received']}",
    ])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    r = run(ap.parse_args().quick)
    out = ROOT / "tests" / "benchmarks" / "results" / "telemetry.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2))
    print(table(r))


if __name__ == "__main__":
    main()
