"""The wheel a user installs, built from this checkout as `./run wheel` builds it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build_wheel(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    work = dest / "build"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--wheel-dir", str(dest), str(ROOT)],
        check=True,
        capture_output=True,
        cwd=dest,
        env={"PATH": "/usr/bin:/bin", "HOME": str(dest), "TMPDIR": str(dest)},
        timeout=300,
    )
    for leftover in (ROOT / "build", *ROOT.glob("*.egg-info")):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    (wheel,) = dest.glob("aibridge_proxy-*.whl")
    return wheel
