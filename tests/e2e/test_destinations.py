"""The whole destination table, through the real proxy, where nothing can be dialled by
mistake: a network namespace of its own with only loopback up. And the security model's table is the
code's table."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from addons.rules.destinations import REFUSED_DESTINATIONS
from tests.support import ROOT
from tests.support import base_env


def test_the_security_model_lists_every_refused_range():
    readme = (ROOT / "docs" / "security.md").read_text()
    for net, what, example in REFUSED_DESTINATIONS:
        assert f"| `{net}` | {what} | `{example}` |" in readme, net


def test_every_refused_range_is_refused_through_the_proxy():
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs root, unshare and ip to make a network namespace with only loopback")
    script = f"ip link set lo up && exec {sys.executable} -m tests.e2e.netns_destinations"
    r = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=base_env(),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert results == {ex: [403, 403] for _, _, ex in REFUSED_DESTINATIONS}
