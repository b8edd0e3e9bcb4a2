"""A Debian 13 machine with systemd as PID 1, for tests of what a user installs on one.

The root file system is made once with `mmdebstrap` from Debian's package registry and kept as
a tarball in a cache directory (keyed by what it contains); each test boots a fresh copy with
`systemd-nspawn --boot` and runs commands in it through `nsenter`. The container shares the
host's network namespace, so it reaches the test's loopback gateway and the test reaches its
proxy on 127.0.0.1; it gets the host's CA bundle so that pip inside works as it does here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

SUITE = "trixie"  # Debian 13
MIRROR = "http://deb.debian.org/debian"
# systemd as init; libnss-systemd names DynamicUser= accounts; python3-venv is the README's step
PACKAGES = ("systemd", "systemd-sysv", "dbus", "libnss-systemd", "python3", "python3-venv")
CACHE = Path(os.environ.get("AIBRIDGE_TEST_CACHE", "/var/cache/aibridge-proxy-tests"))
CLEAN_ENV = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def require_tools() -> None:
    """Skip, saying why, where this machine cannot boot a container."""
    if os.geteuid() != 0:
        pytest.skip("booting a systemd container needs root")
    for tool in ("systemd-nspawn", "mmdebstrap", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (./run setup installs it on Debian)")


def root_tarball(packages: tuple[str, ...] = PACKAGES, label: str = "systemd") -> Path:
    """A minbase root with `packages`, made once and kept in CACHE (keyed by its contents)."""
    key = hashlib.sha256(" ".join((SUITE, MIRROR, *packages)).encode()).hexdigest()[:12]
    tar = CACHE / f"debian-{SUITE}-{label}-{key}.tar"
    if not tar.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = tar.with_name(f"{tar.stem}.partial.tar")
        subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--format=tar", "--quiet"]
            + [f"--include={','.join(packages)}"]
            + [SUITE, str(partial), MIRROR],
            check=True,
            timeout=900,
        )
        partial.rename(tar)
    return tar


class DebianMachine:
    """One booted container. `run()` executes a shell command inside as root."""

    def __init__(self, root: Path, name: str):
        self.root = root
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.init_pid: int | None = None
        self.console = root.parent / f"{name}-console.log"

    def boot(self, timeout: float = 60) -> DebianMachine:
        with tarfile.open(root_tarball()) as tf:
            tf.extractall(self.root, filter="fully_trusted")
        ca_bundle = self.root / "etc/ssl/certs/ca-certificates.crt"
        ca_bundle.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", ca_bundle)
        with open(self.console, "wb") as out:
            self.proc = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit"]
                + [f"--machine={self.name}", "--console=passive", "-D", str(self.root)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while self.init_pid is None and time.monotonic() < deadline:
            assert self.proc.poll() is None, f"nspawn exited: {self.console.read_text()}"
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            if pids := children.read_text().split():
                self.init_pid = int(pids[0])
            else:
                time.sleep(0.1)
        assert self.init_pid, "the container did not start"
        state = ""
        while time.monotonic() < deadline:
            r = self.run("systemctl is-system-running", check=False)
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                return self
            time.sleep(0.3)
        raise AssertionError(f"systemd in the container did not finish booting: {state}")

    def run(
        self, command: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        assert self.init_pid is not None
        r = subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "-a", *CLEAN_ENV, "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"`{command}` exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def path(self, inside: str) -> Path:
        """A file of the container, seen from the host."""
        return self.root / inside.lstrip("/")

    def shutdown(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.run("systemctl poweroff --no-block", check=False, timeout=30)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
