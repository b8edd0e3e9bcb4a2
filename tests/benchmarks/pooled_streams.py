"""
Open SSE streams with the gateway leg multiplexed: one `-O` worker of ours in front of an
HTTP/2 gateway (as Coder serves; 250 streams per connection, Go's default), against the same
worker with the pool off in front of the HTTP/1.1 gateway (mitmproxy's way: a TLS connection
to the gateway per stream). RSS with 1,000 and 5,000 streams open (KB per stream from the
difference), then the event delays with 10,000 open, an event on each every 5 s.

    ./run bench                                          # runs this too
    .venv/py3.13/bin/python -m tests.benchmarks.pooled_streams [--quick]
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from proxy.server.limits import raise_open_files_limit
from tests.benchmarks.__main__ import HOST
from tests.benchmarks.__main__ import ONE_USERS_LOAD
from tests.benchmarks.__main__ import ROOT
from tests.benchmarks.__main__ import TOKEN
from tests.benchmarks.__main__ import Target
from tests.benchmarks.__main__ import ensure_tools
from tests.benchmarks.__main__ import free_port
from tests.benchmarks.__main__ import hold_streams
from tests.benchmarks.__main__ import scale_streams
from tests.benchmarks.__main__ import wait_port
from tests.benchmarks.dlp import Proxy
from tests.benchmarks.dlp import alternating_cpu
from tests.benchmarks.dlp import bench_env
from tests.benchmarks.dlp import bench_main
from tests.benchmarks.dlp import cpu_table
from tests.benchmarks.dlp import start_gateway
from tests.benchmarks.gateways import gateway_workdir
from tests.benchmarks.gateways import start_h2_gateway


def _serve(work: Path, name: str, gateway_port: int, args: list[str], env: dict):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-O", "-m", "proxy", "serve", "--workers", "1",
         "--gateway", f"https://localhost:{gateway_port}",
         "--gateway-ca-file", str(work / "gw-ca.pem"), "--auth-mode", "presence",
         "--listen", f"127.0.0.1:{port}", "--admin-listen", "off",
         "--state-dir", str(work / name), *ONE_USERS_LOAD, *args],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port)
    return proc, Target(name, f"http://coder:{TOKEN}@127.0.0.1:{port}", proc.pid, f"https://{HOST}")


def run(quick: bool = False) -> dict:
    ensure_tools()
    raise_open_files_limit()
    env = bench_env()
    work = gateway_workdir("aibridge-pooled-bench-")
    h1_port = free_port()
    h2_port, h2_gateway = start_h2_gateway(work, env)
    gateways = [
        h2_gateway,
        subprocess.Popen([sys.executable, "-m", "tests.benchmarks.gateway_server", str(h1_port),
                          str(work / "gw.pem"), TOKEN], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL),
    ]  # fmt: skip
    few, many = (200, 1000) if quick else (1000, 5000)
    out: dict = {"streams": [few, many]}
    try:
        wait_port(h2_port)
        wait_port(h1_port)
        variants = {
            "pooled, HTTP/2 gateway": (h2_port, []),
            "pooled, HTTP/1.1 gateway": (h1_port, []),
            "pool off, HTTP/1.1 gateway": (h1_port, ["--gateway-pool-max-connections", "0"]),
        }
        for name, (port, args) in variants.items():
            label = name.replace(",", "").replace(" ", "-").replace("/", "")
            proc, target = _serve(work, label, port, args, env)
            try:
                held = [hold_streams(target, work / target.name / "ca.pem", n) for n in (few, many)]
                r = out[name] = {
                    "rss_mb": [h["rss_mb"] for h in held],
                    "failed": [h["failed"] for h in held],
                    "kb_per_stream": (held[1]["rss_mb"] - held[0]["rss_mb"]) * 1024 / (many - few),
                }
                if name == "pooled, HTTP/2 gateway":
                    count = 2000 if quick else 10_000
                    r["scale"] = scale_streams(target, work / target.name / "ca.pem", count,
                                               10 if quick else 30)  # fmt: skip
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    finally:
        for g in gateways:
            g.terminate()
            g.wait(30)
    out["cpu"] = _cpu_per_request(quick, env)
    return out


def _cpu_per_request(quick: bool, env: dict) -> dict:
    """CPU per 1,000 ordinary requests (16 kept-alive connections, the local HTTP/1.1 gateway
    on loopback) with the pool and without, alternating."""
    gateway_port, gateway = start_gateway(env)
    proxies = {}
    try:
        wait_port(gateway_port)
        proxies = {
            "pooled": Proxy(gateway_port, [], env),
            "pool off": Proxy(gateway_port, ["--gateway-pool-max-connections", "0"], env),
        }
        return alternating_cpu(proxies, quick)
    finally:
        for p in proxies.values():
            p.stop()
        gateway.terminate()
        gateway.wait(30)


def targets(r: dict) -> list[tuple[str, str, bool]]:
    """(name, figure, met) for issue 26's stream targets (one worker, gateway leg pooled)."""
    x = r["pooled, HTTP/2 gateway"]
    few, many = r["streams"]
    out = [
        (
            f"memory per stream, pooled ({few} -> {many})",
            f"{x['kb_per_stream']:.1f} KB over HTTP/2 (target <= 60; pooled over HTTP/1.1: "
            f"{r['pooled, HTTP/1.1 gateway']['kb_per_stream']:.1f}; pool off: "
            f"{r['pool off, HTTP/1.1 gateway']['kb_per_stream']:.1f})",
            x["kb_per_stream"] <= 60 and not any(x["failed"]),
        ),
        (
            f"memory, {few} pooled streams, one worker",
            f"{x['rss_mb'][0]:.0f} MB (target <= 150)",
            x["rss_mb"][0] <= 150,
        ),
    ]
    if s := x.get("scale"):
        out.append(
            (
                f"{s['streams']} pooled streams, one worker (p99 <= 50 ms, no errors)",
                f"{s['opened']} open, {s['failed']} failed, {s['dropped']} dropped; p50 "
                f"{s['delay_p50_ms']:.1f} / p99 {s['delay_p99_ms']:.1f} ms (the load "
                f"generator's own loop lag p99 {s['client_lag_p99_ms']:.1f} ms); RSS "
                f"{s['rss_mb']:.0f} MB, CPU {s['cpu_cores']:.2f} cores",
                not (s["failed"] or s["dropped"]) and s["delay_p99_ms"] <= 50,
            )
        )
    return out  # fmt: skip


def table(r: dict) -> str:
    few, many = r["streams"]
    lines = [f"open SSE streams, one worker      RSS {few} / {many} streams   KB per stream"]
    for name, x in r.items():
        if isinstance(x, dict) and "rss_mb" in x:
            lines.append(f"  {name:<32}{x['rss_mb'][0]:>7.0f} / {x['rss_mb'][1]:.0f} MB"
                         f"{x['kb_per_stream']:>15.1f}")  # fmt: skip
    s = r["pooled, HTTP/2 gateway"].get("scale")
    if s:
        lines.append(f"  {s['streams']} pooled streams: {s['opened']} open, {s['failed']} failed, "
                     f"{s['dropped']} dropped; event delay p50 {s['delay_p50_ms']:.1f} / p99 "
                     f"{s['delay_p99_ms']:.1f} / max {s['delay_max_ms']:.1f} ms over "
                     f"{s['events']} events; RSS {s['rss_mb']:.0f} MB; the load generator's "
                     f"own loop lag p99 {s['client_lag_p99_ms']:.1f} ms")  # fmt: skip
    cpu = r["cpu"]["cpu_s_per_1k"]
    lines += cpu_table("CPU, kept-alive requests", cpu, "pool off")
    return "\n".join(lines)


def main() -> None:
    bench_main(__doc__, run, table, "pooled_streams", targets)


if __name__ == "__main__":
    main()
