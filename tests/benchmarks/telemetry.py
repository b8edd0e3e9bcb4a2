"""
The audit trail's cost on the hot path: one `-O` worker's CPU per 1,000 ordinary requests with
spans exported to a local OTLP receiver, content `none` and `hash`, and to a collector that is
down (every export refused), against telemetry off, in the same run and alternating (loopback
only). The receiver decodes every batch, as a collector
would; its CPU is not the proxy's.

    ./run bench                                   # runs this too
    .venv/py3.13/bin/python -m tests.benchmarks.telemetry [--quick]
"""

from __future__ import annotations

from pathlib import Path

from tests.benchmarks.__main__ import ensure_tools
from tests.benchmarks.__main__ import free_port
from tests.benchmarks.__main__ import wait_port
from tests.benchmarks.dlp import Proxy
from tests.benchmarks.dlp import alternating_cpu
from tests.benchmarks.dlp import bench_env
from tests.benchmarks.dlp import bench_main
from tests.benchmarks.dlp import cpu_table
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
            # nothing listens there: every export fails, spans are dropped and counted
            "collector down": Proxy(
                gateway_port, ["--telemetry-otlp-endpoint", f"http://127.0.0.1:{free_port()}"], env
            ),
        }
        measured = alternating_cpu(proxies, quick)
    finally:
        for p in proxies.values():
            p.stop()
        gateway.terminate()
        gateway.wait(30)
        exported = len(receiver.spans)
        receiver.close()
    return {**measured, "spans_received": exported}


def table(r: dict) -> str:
    lines = cpu_table("telemetry (OTLP/HTTP export)", r["cpu_s_per_1k"], "off")
    return "\n".join([*lines, f"  spans the receiver decoded: {r['spans_received']}"])


def main() -> None:
    bench_main(__doc__, run, table, "telemetry")


if __name__ == "__main__":
    main()
