"""The README's two commands on a bare machine: Debian 13 minbase with only `python3` and
`python3-venv` (no compiler, no system headers, no Node, no curl), the checkout copied in as a
fresh clone would hold it, `./run demo` to the end, then `./run test --unit`.

Each runs as a plain command in `systemd-nspawn` (no init), sharing the host's network only so
that pip reaches the package registry; the demo's proxy and gateway listen on loopback. The
root is made once with mmdebstrap and kept in the tests' cache, like the systemd test's."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.system.debian import require_tools
from tests.system.debian import root_tarball
from tests.system.wheel import ROOT

pytestmark = pytest.mark.system

BARE = ("python3", "python3-venv")
CHECKOUT = "/root/aibridge-proxy"


def copy_checkout(dest: Path) -> None:
    """The files a clone of this work tree holds: tracked and new, minus what git ignores
    (no venv, no node_modules, no caches)."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, names):
        src = ROOT / name.decode()
        if src.is_file():  # a file deleted in the work tree but not yet in git is skipped
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def in_container(
    root: Path, command: str, timeout: float
) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    r = subprocess.run(
        ["systemd-nspawn", "--quiet", "--keep-unit", "--register=no", "--as-pid2"]
        + ["-D", str(root), "--chdir", CHECKOUT, "/bin/sh", "-c", command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return r, time.monotonic() - started


@pytest.fixture(scope="module")
def bare_root(tmp_path_factory) -> Path:
    require_tools()
    root = tmp_path_factory.mktemp("bare") / "root"
    with tarfile.open(root_tarball(BARE, "bare")) as tf:
        tf.extractall(root, filter="fully_trusted")
    # the machine's CA bundle, as on a company laptop: pip reaches the registry through it
    bundle = root / "etc/ssl/certs/ca-certificates.crt"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", bundle)
    for tool in ("cc", "gcc", "krb5-config", "node", "npm", "curl"):
        assert not (root / "usr/bin" / tool).exists(), f"the bare root has {tool}"
    copy_checkout(root / CHECKOUT.lstrip("/"))
    return root


def test_demo_then_the_quick_tier_on_a_bare_debian(bare_root, capsys):
    demo, demo_s = in_container(bare_root, "./run demo", timeout=900)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    # each SDK request was answered through the proxy by the local gateway
    rows = [line for line in demo.stdout.splitlines() if "/api/v2/aibridge/" in line]
    assert len(rows) == 3 and all(" 200 " in row for row in rows), demo.stdout
    assert "Replies came from the local gateway" in demo.stdout, demo.stdout
    assert "Traceback" not in demo.stderr, demo.stderr
    unit, unit_s = in_container(
        bare_root, "./run test --unit -q -p no:cacheprovider --color=no", timeout=900
    )
    assert unit.returncode == 0, unit.stdout[-5000:] + unit.stderr[-5000:]
    assert " passed" in unit.stdout.splitlines()[-1], unit.stdout[-2000:]
    with capsys.disabled():
        print(
            f"\nfresh Debian 13 (python3, python3-venv only): ./run demo {demo_s:.0f} s, "
            f"then ./run test --unit {unit_s:.0f} s ({unit.stdout.splitlines()[-1].strip()})"
        )
