"""The image deploy/Dockerfile builds, made once per session for the tests that run it.

No public image registry is reachable here, so the Debian 13 base is made with mmdebstrap and
imported into podman (with the host's CA bundle, as a company base image carries its CA). The
build uses chroot isolation, and runs use runc with lowered rlimits: this machine's sandbox
forbids a container runtime to set rlimits at their current hard values and has hybrid
cgroups, which crun refuses. None of that changes what the Dockerfile does."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port
from tests.system.debian import MIRROR
from tests.system.debian import SUITE
from tests.system.wheel import ROOT
from tests.system.wheel import build_wheel

PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
BASE = f"localhost/aibridge-proxy-test-base:{SUITE}"


def podman(
    *args: str, timeout: float = 600, check: bool = True, **kwargs
) -> subprocess.CompletedProcess:
    r = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {r.returncode}:\n{r.stderr}")
    return r


def build_image(workdir: Path) -> Iterator[str]:
    """The image's tag while the caller holds it; removed afterwards."""
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
    (workdir / "deploy").mkdir()
    for name in ("Dockerfile", "requirements.lock"):
        shutil.copy(ROOT / "deploy" / name, workdir / "deploy")
    build_wheel(workdir / "dist")
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
        str(workdir),
    )
    try:
        yield tag
    finally:
        podman("rmi", "-f", tag, check=False)
