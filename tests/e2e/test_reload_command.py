"""`aibridge-proxy reload`: what the unit's ExecReload runs. It signals the service and exits
with the service's own verdict, so a broken file is a failed reload while the old settings keep
serving; with workers the supervisor answers for all of them."""

from __future__ import annotations

import ssl
import subprocess
import sys

import httpx
import pytest

from tests.support import ALICE
from tests.support import base_env


def reload(p) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "proxy", "reload", "--pid", str(p.proc.pid)]
    cmd += ["--state-dir", str(p.state_dir), "--timeout", "15"]
    return subprocess.run(cmd, capture_output=True, text=True, env=base_env(), timeout=30)


def routed_path(p) -> None:
    ctx = ssl.create_default_context(cafile=str(p.ca_path))
    with httpx.Client(proxy=p.url(ALICE), verify=ctx, trust_env=False, timeout=20) as c:
        c.get("https://api.example-ai.com/x")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_reload_reports_the_services_verdict(workers, make_proxy, gateway, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("providers:\n  api.example-ai.com: first\n")
    p = make_proxy("--workers", workers, "--config", str(config))

    config.write_text("providers: [[[\n")
    r = reload(p)
    assert r.returncode == 1, r
    assert r.stderr.startswith("aibridge-proxy reload: configuration reload rejected, keeping")
    assert "Traceback" not in r.stderr
    routed_path(p)
    assert gateway.last().path == "/api/v2/aibridge/first/x"  # the old settings still serve

    config.write_text("providers:\n  api.example-ai.com: second\n")
    r = reload(p)
    assert (r.returncode, r.stdout) == (0, "configuration reloaded\n"), r
    p.wait_for_line(lambda rec: rec.get("msg") == "configuration reloaded")
    routed_path(p)
    assert gateway.last().path == "/api/v2/aibridge/second/x"


def test_reload_of_a_process_that_is_not_the_service_says_so(tmp_path):
    cmd = [sys.executable, "-m", "proxy", "reload", "--pid", "1", "--state-dir", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=base_env(), timeout=30)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"aibridge-proxy reload: no running aibridge-proxy with pid 1 records its state in "
        f"{tmp_path} (is --state-dir the service's?)"
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_reload_a_worker_refuses_is_reported_as_refused(workers, make_proxy, gateway, tmp_path):
    """The supervisor checks settings and CA only; a change only a worker can judge (a new
    upstream proxy needs a restart) must come back as that worker's refusal, not as applied."""
    config = tmp_path / "c.yaml"
    config.write_text("providers:\n  api.example-ai.com: first\n")
    p = make_proxy("--workers", workers, "--config", str(config))

    config.write_text(
        "providers:\n  api.example-ai.com: second\nupstream_proxy: http://127.0.0.1:9\n"
    )
    r = reload(p)
    assert r.returncode == 1, r
    assert "upstream_proxy: changing it needs a restart" in r.stderr, r.stderr
    if workers == "2":
        assert "worker 0: " in r.stderr and "worker 1: " in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    routed_path(p)
    assert gateway.last().path == "/api/v2/aibridge/first/x"  # every worker kept the old table
