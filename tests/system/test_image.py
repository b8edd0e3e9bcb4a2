"""deploy/Dockerfile really builds (tests/system/image.py), and the image serves as its
non-root user."""

from __future__ import annotations

import ssl
import subprocess
import time

import httpx
import pytest

from tests.support import ALICE
from tests.support import free_port
from tests.system.image import LIMITS
from tests.system.image import PODMAN
from tests.system.image import podman

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]


def test_image_serves_as_its_non_root_user(image, gateway_server, tmp_path):
    port, admin = free_port(), free_port()
    config = tmp_path / "etc"
    config.mkdir()
    (config / "config.yaml").write_text(
        f'listen: "127.0.0.1:{port}"\ngateway: "{gateway_server.url}"\n'
        f'admin:\n  listen: "127.0.0.1:{admin}"\n'
    )
    config.chmod(0o755)
    (config / "config.yaml").chmod(0o644)
    name = f"abp-image-{port}"
    run = subprocess.Popen(
        [
            *PODMAN,
            "run",
            "--rm",
            "--name",
            name,
            "--network=host",
            *LIMITS,
            "-v",
            f"{config}:/etc/aibridge-proxy:ro",
            image,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                ca = httpx.get(f"http://127.0.0.1:{admin}/ca.pem", trust_env=False).text
                break
            except httpx.HTTPError:
                assert run.poll() is None, run.stdout.read()
                time.sleep(0.3)
        ctx = ssl.create_default_context(cadata=ca)
        proxy = f"http://coder:{ALICE}@127.0.0.1:{port}"
        with httpx.Client(proxy=proxy, verify=ctx, trust_env=False, timeout=20) as c:
            assert c.get("https://api.openai.com/v1/models").status_code == 200
        assert gateway_server.last().path == "/api/v2/aibridge/openai/v1/models"
        who = podman("exec", name, "id", "-u").stdout.strip()
        assert who == "10001"
        version = podman("exec", name, "aibridge-proxy", "--version").stdout
        assert "Python 3.13." in version and "mitmproxy 12." in version
    finally:
        podman("stop", "-t", "10", name, check=False, timeout=60)
        out, _ = run.communicate(timeout=60)
    assert '"msg":"stopped"' in out and ALICE not in out
