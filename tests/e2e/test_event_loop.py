"""The event loop `serve` runs works with the mitmproxy it installs, on this interpreter.

mitmproxy 12.3 installs asyncio's eager task factory on the running loop; with uvloop 0.23 on
Python 3.13 the service died at start-up (`unexpected keyword argument 'eager_start'`). These
tests start the installed console script, as a user does, with one process and with workers,
and send a routed request and a tunnel through it. `.ci/run` runs them on every supported
Python."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import ALICE
from tests.support import LOOPBACK_INTERNET
from tests.support import ProxyProcess

CONSOLE_SCRIPT = Path(sys.executable).with_name("aibridge-proxy")


def test_version_names_this_interpreter_and_the_engine():
    import mitmproxy.version

    out = subprocess.run(
        [str(CONSOLE_SCRIPT), "--version"], capture_output=True, text=True, check=True
    ).stdout
    python = ".".join(map(str, sys.version_info[:3]))
    assert out.strip() == (
        f"aibridge-proxy 0.1.0 (mitmproxy {mitmproxy.version.VERSION}, Python {python})"
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_starts_and_proxies(workers, gateway_server, tmp_path, origin):
    p = ProxyProcess(
        tmp_path / "state",
        ["--gateway", gateway_server.url, "--workers", workers, *LOOPBACK_INTERNET],
        command=[str(CONSOLE_SCRIPT)],
    ).start()
    try:
        ctx = ssl.create_default_context(cafile=str(p.ca_path))
        ctx.load_verify_locations(cadata=origin.ca.cert_pem().decode())
        with httpx.Client(proxy=p.url(ALICE), verify=ctx, trust_env=False, timeout=20) as c:
            assert c.get("https://api.openai.com/v1/models").status_code == 200
            tunnelled = c.get(f"https://localhost:{origin.port}/hello")
            assert tunnelled.text == "origin saw GET /hello HTTP/1.1 body=0"
        assert gateway_server.last().path == "/api/v2/aibridge/openai/v1/models"
    finally:
        p.stop()
    assert "Traceback" not in p.output and "never awaited" not in p.output, p.output
