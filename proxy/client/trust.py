"""
`aibridge-proxy trust`: put our CA into (or take it out of) the operating system's trust
store, for clients that read only that store (VS Code's proxy agent, which Copilot uses).

Each platform is a plan (addons/developer/trust_plan.py): files to write or delete and
commands to run. The plan is printed first and runs only after confirmation (or `--yes`);
`--dry-run` only prints it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from addons.developer.trust_plan import Plan
from addons.developer.trust_plan import TrustError
from addons.developer.trust_plan import plan

__all__ = ["Plan", "TrustError", "detect_platform", "execute", "plan"]


def detect_platform() -> str:
    if sys.platform == "darwin":
        return "macos"
    if sys.platform.startswith("win"):
        return "windows"
    if Path("/usr/sbin/update-ca-certificates").exists() or shutil.which("update-ca-certificates"):
        return "debian"
    if shutil.which("update-ca-trust"):
        return "redhat"
    raise TrustError(
        "unknown trust store: no update-ca-certificates or update-ca-trust; use --platform"
    )


def execute(p: Plan) -> None:
    try:
        if p.copy:
            dest, content = p.copy
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(content)
            dest.chmod(0o644)
        if p.delete and p.delete.exists():
            p.delete.unlink()
    except PermissionError:
        raise TrustError(
            "permission denied: run it as root (sudo aibridge-proxy trust ...)"
        ) from None
    for command in p.commands:
        r = subprocess.run(command, capture_output=True, text=True)
        if r.returncode != 0:
            detail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            raise TrustError(f"`{' '.join(command)}` failed: {detail[0]}")
