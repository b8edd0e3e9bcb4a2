"""One locked set of dependencies, in stages: the service's lock, the demo's (that plus the SDK
clients), the suite's (that plus its tools) and the kerberos extra's (compiled, installed last).
The suite runs exactly what they pin, each stage runs its predecessor's exact versions, and
pyproject.toml's ranges admit them all (so `pip install .` into a user's own environment can
still pick the tested versions)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

from tests.support import frozen_versions
from tests.support import locked_versions
from tests.support import normalized

ROOT = Path(__file__).resolve().parents[2]
SERVICE_LOCK = ROOT / "deploy" / "requirements.lock"
DEMO_LOCK = ROOT / "deploy" / "demo.lock"
TEST_LOCK = ROOT / "tests" / "requirements.lock"
KERBEROS_LOCK = ROOT / "tests" / "kerberos.lock"
STAGES = (SERVICE_LOCK, DEMO_LOCK, TEST_LOCK)


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
    """The test lock, plus the kerberos lock where the set-up could build it (./run says so
    when it could not: no libkrb5-dev or compiler, and not root to install them)."""
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True
    ).stdout
    expected = applicable(TEST_LOCK)
    if importlib.util.find_spec("gssapi") is not None:
        expected |= applicable(KERBEROS_LOCK)
    assert frozen_versions(freeze) == expected


@pytest.mark.parametrize(
    "before,after", list(zip(STAGES[:-1], STAGES[1:], strict=True)), ids=lambda p: p.name
)
def test_each_stage_runs_the_versions_of_the_one_before(before, after):
    earlier, later = locked_versions(before), locked_versions(after)
    assert {k: later.get(k) for k in earlier} == earlier


def test_the_kerberos_stage_changes_no_version_of_the_suite():
    suite, kerberos = locked_versions(TEST_LOCK), locked_versions(KERBEROS_LOCK)
    assert {k: v for k, v in kerberos.items() if k in suite} == {
        k: suite[k] for k in kerberos if k in suite
    }


def test_only_the_kerberos_stage_compiles():
    """What the demo and the quick tier install must come as wheels: no sdist-only package
    (gssapi, krb5) may creep back into the locks they use."""
    compiled = set(locked_versions(KERBEROS_LOCK)) - set(locked_versions(TEST_LOCK))
    assert compiled >= {"gssapi", "krb5"}
    for lock in (SERVICE_LOCK, DEMO_LOCK, TEST_LOCK):
        assert not compiled & set(locked_versions(lock)), lock.name


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
