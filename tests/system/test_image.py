"""deploy/Dockerfile really builds, and the image serves as its non-root user.

No public image registry is reachable here, so the Debian 13 base is made with mmdebstrap and
imported into podman (with the host's CA bundle, as a company base image carries its CA). The
build uses chroot isolation, and runs use runc with lowered rlimits: this machine's sandbox
forbids a container runtime to set rlimits at their current hard values and has hybrid
cgroups, which crun refuses. None of that changes what the Dockerfile does."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time

import httpx
import pytest

from tests.support import ALICE
from tests.support import free_port
from tests.system.debian import MIRROR
from tests.system.debian import SUITE
from tests.system.wheel import ROOT
from tests.system.wheel import build_wheel

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
BASE = f"localhost/aibridge-proxy-test-base:{SUITE}"


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {r.returncode}:\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    for tool in ("podman", "runc", "mmdebstrap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (./run setup installs it on Debian)")
    if podman("image", "exists", BASE, check=False).returncode != 0:
        hook = 'mkdir -p "$1/etc/ssl/certs" && cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/"'
        debootstrap = subprocess.Popen(
            ["mmdebstrap", "--variant=minbase", "--format=tar", "--quiet"]
            + ["--include=python3,python3-venv", f"--customize-hook={hook}", SUITE, "-", MIRROR],
            stdout=subprocess.PIPE,
        )
        subprocess.run(
            [*PODMAN, "import", "-", BASE],
            stdin=debootstrap.stdout,
            check=True,
            capture_output=True,
            timeout=900,
        )
        assert debootstrap.wait(60) == 0
    context = tmp_path_factory.mktemp("image")
    (context / "deploy").mkdir()
    for name in ("Dockerfile", "requirements.lock"):
        shutil.copy(ROOT / "deploy" / name, context / "deploy")
    build_wheel(context / "dist")
    tag = f"localhost/aibridge-proxy:test-{free_port()}"
    podman(
        "build",
        "--network=host",
        "--isolation=chroot",
        *LIMITS,
        "--build-arg",
        f"BASE={BASE}",
        "-f",
        "deploy/Dockerfile",
        "-t",
        tag,
        str(context),
    )
    yield tag
    podman("rmi", "-f", tag, check=False)


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
