"""The wheel carries everything the program reads at run time, data files included."""

from __future__ import annotations

import zipfile

from tests.system.wheel import ROOT
from tests.system.wheel import build_wheel


def test_the_wheel_holds_every_module_and_the_ai_host_catalog(tmp_path):
    names = set(zipfile.ZipFile(build_wheel(tmp_path)).namelist())
    assert "addons/rules/ai_hosts.yaml" in names
    for package in ("addons", "certs", "proxy"):
        for source in (ROOT / package).rglob("*.py"):
            assert str(source.relative_to(ROOT)) in names, source
