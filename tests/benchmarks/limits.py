"""
Limits' cost on the hot path: one `-O` worker's CPU per 1,000 ordinary requests with three
limits in force (a request window, a token budget, an open-request cap, none of them reached),
counted in memory and in a real redis-server, against no limits, in the same run and
alternating (loopback only).

    ./run bench                                   # runs this too
    .venv/py3.13/bin/python -m tests.benchmarks.limits [--quick]
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
from tests.support import RedisServer

ROOT = Path(__file__).resolve().parents[2]
THREE = [
    {"name": "requests-a-minute", "match": {"host": ["api.openai.com"]}, "requests": 10**9, "per": "1m"},
    {"name": "tokens-a-month", "tokens": 10**12, "per": "month", "by": "all"},
    {"name": "open-at-once", "concurrent": 10_000},
]  # fmt: skip


def run(quick: bool = False) -> dict:
    ensure_tools()
    env = bench_env()
    redis = RedisServer().start()
    gateway_port, gateway = start_gateway(env)
    limits = json.dumps(THREE)
    proxies = {}
    try:
        wait_port(gateway_port)
        proxies = {
            "none": Proxy(gateway_port, [], env),
            "memory": Proxy(gateway_port, ["--limits", limits], env),
            "redis": Proxy(gateway_port, ["--limits", limits, "--limits-store", redis.url], env),
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
        redis.stop()
    medians = {n: statistics.median(v) for n, v in cpu.items()}
    return {"cpu_s_per_1k": medians, "rounds": cpu}


def table(r: dict) -> str:
    c = r["cpu_s_per_1k"]
    return "\n".join([
        "limits (three in force)              CPU s per 1k requests   ratio to none",
        *(f"  {name:<34} {c[name]:.3f}                   {c[name] / c['none']:.2f}x" for name in c),
    ])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    r = run(ap.parse_args().quick)
    out = ROOT / "tests" / "benchmarks" / "results" / "limits.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2))
    print(table(r))


if __name__ == "__main__":
    main()
