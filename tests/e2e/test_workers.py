"""Several worker processes on one port: they share the load, report metrics together, reload
together (a bad configuration reaches none of them), stop cleanly, and a dead worker comes back."""

from __future__ import annotations

import os
import signal
import ssl
import time
from pathlib import Path

import httpx

from tests.support import ALICE
from tests.support import child_pids
from tests.support import metric


def request(p, url="https://api.openai.com/v1/models") -> int:
    ctx = ssl.create_default_context(cafile=str(p.ca_path))
    with httpx.Client(proxy=p.url(ALICE), verify=ctx, trust_env=False, timeout=20) as c:
        return c.get(url).status_code


def test_workers_share_the_port_and_the_metrics(make_proxy, gateway, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("providers:\n  api.example-ai.com: first\n")
    p = make_proxy("--workers", "2", "--config", str(config))
    assert len(child_pids(p.proc.pid)) == 2
    assert all(request(p) == 200 for _ in range(30))  # a new connection each time
    assert len({r.peer for r in gateway.records}) > 1 or len(gateway.records) == 30
    text = p.admin("/metrics").text
    assert metric(text, "aibridge_proxy_requests_total", provider="openai", code="200") == 30
    assert p.admin("/readyz").json()["ready"] is True

    # a broken configuration is stopped at the supervisor
    config.write_text("providers: [[[\n")
    p.signal(signal.SIGHUP)
    p.wait_for_line(lambda r: "reload rejected" in r.get("msg", ""))
    request(p, "https://api.example-ai.com/x")
    assert gateway.last().path == "/api/v2/aibridge/first/x"
    # a good one reaches every worker
    config.write_text("providers:\n  api.example-ai.com: second\n")
    p.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while (
        time.monotonic() < deadline
        and len([r for r in p.json_lines() if r.get("msg") == "configuration reloaded"]) < 2
    ):
        time.sleep(0.05)
    for _ in range(10):
        request(p, "https://api.example-ai.com/x")
        assert gateway.last().path == "/api/v2/aibridge/second/x"


def test_a_dead_worker_is_restarted(make_proxy, gateway):
    p = make_proxy("--workers", "2")
    victim = child_pids(p.proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    p.wait_for_line(lambda r: "starting it again" in r.get("msg", ""))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (
        victim in child_pids(p.proc.pid) or len(child_pids(p.proc.pid)) < 2
    ):
        time.sleep(0.1)
    assert len(child_pids(p.proc.pid)) == 2 and victim not in child_pids(p.proc.pid)
    assert all(request(p) == 200 for _ in range(10))


def test_workers_stop_cleanly(make_proxy, gateway):
    p = make_proxy("--workers", "2")
    workers = child_pids(p.proc.pid)
    assert request(p) == 200
    p.signal(signal.SIGTERM)
    assert p.proc.wait(20) == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.05)
    assert not any(Path(f"/proc/{w}").exists() for w in workers)


def test_workers_stop_when_the_supervisor_is_killed(make_proxy, gateway):
    p = make_proxy("--workers", "2")
    workers = child_pids(p.proc.pid)
    os.kill(p.proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(alive(w) for w in workers)


def alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for a reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_supervisor_does_not_load_the_engine(make_proxy):
    """Only workers run mitmproxy; the supervisor serves admin and supervises (~40 MB less)."""
    p = make_proxy("--workers", "2")
    maps = Path(f"/proc/{p.proc.pid}/maps").read_text()
    assert "mitmproxy" not in maps
    assert all("mitmproxy" in Path(f"/proc/{w}/maps").read_text() for w in child_pids(p.proc.pid))


def test_workers_run_optimised_and_still_route(make_proxy, gateway):
    """Workers run with python -O (mitmproxy's debug-only type checks off): each says so, and
    requests through them are what they are without it."""
    p = make_proxy("--workers", "2")
    listening = [r for r in p.json_lines() if r.get("msg") == "proxy listening"]
    workers = [r for r in listening if "workers" not in r]  # the supervisor's line counts them
    assert len(workers) == 2 and all(r["optimized"] is True for r in workers)
    for w in child_pids(p.proc.pid):
        assert Path(f"/proc/{w}/cmdline").read_bytes().split(b"\0")[1] == b"-O"
    assert request(p) == 200
    assert gateway.last().path == "/api/v2/aibridge/openai/v1/models"
