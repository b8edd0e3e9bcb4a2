"""
Limits' cost on the hot path: one `-O` worker's CPU per 1,000 ordinary requests with three
limits in force (a request window, a token budget, an open-request cap, none of them reached),
counted in memory and in a real redis-server, against no limits, in the same run and
alternating (loopback only).

    ./run bench                                   # runs this too
    .venv/py3.13/bin/python -m tests.benchmarks.limits [--quick]
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.benchmarks.__main__ import ensure_tools
from tests.benchmarks.__main__ import wait_port
from tests.benchmarks.dlp import Proxy
from tests.benchmarks.dlp import alternating_cpu
from tests.benchmarks.dlp import bench_env
from tests.benchmarks.dlp import bench_main
from tests.benchmarks.dlp import cpu_table
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
        measured = alternating_cpu(proxies, quick)
    finally:
        for p in proxies.values():
            p.stop()
        gateway.terminate()
        gateway.wait(30)
        redis.stop()
    return measured


def table(r: dict) -> str:
    return "\n".join(cpu_table("limits (three in force)", r["cpu_s_per_1k"], "none"))


def main() -> None:
    bench_main(__doc__, run, table, "limits")


if __name__ == "__main__":
    main()
