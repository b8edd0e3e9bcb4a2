"""addons/rules/ is pure: importing any of it loads no mitmproxy (the linter also bans it), and
neither do the settings nor the developer's tools; the CLI loads the engine only for `serve`."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import addons.rules
from tests.support import ROOT
from tests.support import base_env

RULES = [f"addons.rules.{m.name}" for m in pkgutil.iter_modules(addons.rules.__path__)]


def loads_engine(code: str) -> bool:
    probe = f"{code}\nimport sys\nprint('mitmproxy' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=base_env()
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize(
    "module",
    [
        *RULES,
        "proxy.server.settings",
        "addons.developer.client_env",
        "proxy.client.trust",
        "proxy.client.doctor",
        "proxy.cli",
    ],
)
def test_importing_loads_no_engine(module):
    assert not loads_engine(f"import {module}")


@pytest.mark.parametrize(
    "args", [["env", "--help"], ["trust", "--help"], ["doctor", "--help"], ["--version"]]
)
def test_developer_commands_load_no_engine(args):
    code = f"import sys; from proxy.cli import main\ntry:\n    main({args!r})\nexcept SystemExit:\n    pass"
    assert not loads_engine(code)
