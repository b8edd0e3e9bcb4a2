"""
A/B of two checkouts: CPU per 1,000 routed requests of one optimised worker (`-O`, as the
unit runs it), alternating the two trees round by round (and which goes first) so that the
machine's drift falls on both. For a refactor that must not cost CPU: check out the old commit in a worktree, then

    git worktree add /tmp/old <commit>
    .venv/py3.13/bin/python -m tests.benchmarks.ab /tmp/old --rounds 7

Loopback only: a local gateway (`aibridge-proxy gateway`) and the proxy, driven by `hey`.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.benchmarks.__main__ import TOKEN
from tests.benchmarks.__main__ import cpu_seconds
from tests.benchmarks.__main__ import ensure_tools
from tests.benchmarks.__main__ import free_port
from tests.benchmarks.__main__ import wait_port

BODY = '{"model":"m","messages":[]}'
URL = "https://api.openai.com/v1/chat/completions"
CONNECTIONS = 16


def one_round(tree: Path, gateway_port: int, requests: int, env: dict) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory() as state:
        proxy = subprocess.Popen(
            [sys.executable, "-O", "-m", "proxy", "serve", "--workers", "1",
             "--gateway", f"http://127.0.0.1:{gateway_port}", "--listen", f"127.0.0.1:{port}",
             "--admin-listen", "off", "--state-dir", state],
            cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_port(port)
            hey = ["hey", "-c", str(CONNECTIONS), "-m", "POST", "-T", "application/json", "-d", BODY,
                   "-x", f"http://coder:{TOKEN}@127.0.0.1:{port}"]  # fmt: skip
            subprocess.run([*hey, "-n", "500", URL], capture_output=True, check=True)  # warm-up
            before = cpu_seconds(proxy.pid)
            out = subprocess.run([*hey, "-n", str(requests), URL], capture_output=True, text=True)
            used = cpu_seconds(proxy.pid) - before
        finally:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(30)
    sent = requests - requests % CONNECTIONS  # hey gives each connection requests // c
    ok = re.search(r"\[200\]\s+(\d+) responses", out.stdout)
    if not ok or int(ok.group(1)) != sent:
        raise SystemExit(f"{tree}: not every request succeeded:\n{out.stdout[-800:]}")
    return used / sent * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path, help="the baseline checkout")
    ap.add_argument("new", type=Path, nargs="?", default=Path(__file__).resolve().parents[2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=4000)
    args = ap.parse_args()
    ensure_tools()  # hey, installed from Debian's packages when missing
    env = {**os.environ, "PYTHONOPTIMIZE": "1"}
    gateway_port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "proxy", "gateway", "--listen", f"127.0.0.1:{gateway_port}",
         "--token", f"{TOKEN}=alice"],
        cwd=args.new, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    runs: dict[str, list[float]] = {"old": [], "new": []}
    try:
        wait_port(gateway_port)
        for n in range(args.rounds):
            # ABBA: the tree that runs second in a round (a warmer machine) alternates
            for name in ("old", "new") if n % 2 == 0 else ("new", "old"):
                runs[name].append(one_round(getattr(args, name), gateway_port, args.requests, env))
                print(f"round {n}: {name} {runs[name][-1]:.3f} s CPU per 1k", flush=True)
    finally:
        gateway.terminate()
        gateway.wait(30)
    old, new = statistics.median(runs["old"]), statistics.median(runs["new"])
    print(f"median CPU per 1k requests: old {old:.3f} s, new {new:.3f} s = {new / old:.2f}x")


if __name__ == "__main__":
    main()
