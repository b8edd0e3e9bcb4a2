"""A real browser for the pages' tests: Debian's chromium, headless, driven by playwright (which
is told to use that browser and never downloads its own). The browser is configured as a
developer's would be: the proxy with the proxy credentials, and the proxy's CA trusted or not
(an NSS database in the browser's own HOME, where chromium on Linux keeps user-added roots)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / ".artifacts" / "pages"  # screenshots, kept out of git (.gitignore)


def available() -> bool:
    if not Path(CHROMIUM).exists() or shutil.which("certutil") is None:
        return False
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def browser_home(tmp: Path, trusted_ca: Path | None) -> Path:
    """A HOME for chromium whose NSS database trusts `trusted_ca` (or nothing extra)."""
    home = tmp / ("home-trusting" if trusted_ca else "home-plain")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True, timeout=30
    )
    if trusted_ca is not None:
        subprocess.run(
            ["certutil", "-A", "-d", f"sql:{nssdb}", "-n", "aibridge-proxy", "-t", "C,,",
             "-i", str(trusted_ca)],
            check=True, timeout=30,
        )  # fmt: skip
    return home


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
