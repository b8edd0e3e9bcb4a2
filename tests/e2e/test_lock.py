"""One locked set of dependencies: the suite runs exactly what the lock files pin, the service's
lock and the suite's agree, and pyproject.toml's ranges admit both (so `pip install .` into a
user's own environment can still pick the tested versions)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

from tests.support import frozen_versions
from tests.support import locked_versions
from tests.support import normalized

ROOT = Path(__file__).resolve().parents[2]
SERVICE_LOCK = ROOT / "deploy" / "requirements.lock"
TEST_LOCK = ROOT / "tests" / "requirements.lock"


def applicable(lock: Path) -> dict[str, str]:
    """The lock's pins whose environment markers hold on this interpreter and platform."""
    pins = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            spec, _, marker = line.rstrip(" \\").partition(";")
            if marker.strip() and not Marker(marker.strip()).evaluate():
                continue
            name, _, version = spec.partition("==")
            pins[normalized(name)] = version.strip()
    return pins


def test_this_environment_is_exactly_the_test_lock():
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True
    ).stdout
    assert frozen_versions(freeze) == applicable(TEST_LOCK)


def test_the_suite_runs_the_services_versions():
    service, suite = locked_versions(SERVICE_LOCK), locked_versions(TEST_LOCK)
    assert {k: suite.get(k) for k in service} == service


def test_pyproject_ranges_admit_the_locked_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = locked_versions(TEST_LOCK)
    requirements = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        requirements += [r for r in extra if not r.startswith("aibridge-proxy")]
    for text in requirements:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate():
            assert req.specifier.contains(locked[normalized(req.name)]), text
