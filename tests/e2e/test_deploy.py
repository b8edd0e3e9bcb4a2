"""What ships in deploy/: the systemd unit passes systemd's own checks, and every query in the
Grafana dashboard names a metric the proxy really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ALICE
from tests.support import ROOT

UNIT = ROOT / "deploy" / "aibridge-proxy.service"
DASHBOARD = ROOT / "deploy" / "grafana" / "aibridge-proxy.json"
needs_systemd = pytest.mark.skipif(
    not shutil.which("systemd-analyze"), reason="systemd-analyze missing (./run setup installs it)"
)


def unit_directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_unit_has_what_the_service_needs():
    d = unit_directives()
    assert d["Type"] == ["notify"]
    assert d["ExecStart"] == [
        "/opt/aibridge-proxy/bin/aibridge-proxy serve --config /etc/aibridge-proxy/config.yaml"
    ]
    # our own command signals and waits for the verdict: no /bin/kill, refusals fail the reload
    assert d["ExecReload"] == ["/opt/aibridge-proxy/bin/aibridge-proxy reload --pid $MAINPID"]
    assert d["DynamicUser"] == ["yes"]
    assert d["StateDirectory"] == ["aibridge-proxy"] and d["ConfigurationDirectory"] == [
        "aibridge-proxy"
    ]
    assert d["EnvironmentFile"] == ["-/etc/aibridge-proxy/env"]
    assert "PYTHONOPTIMIZE=1" in " ".join(d["Environment"]).split()
    assert d["CapabilityBoundingSet"] == [""]
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "LockPersonality",
    ):
        assert d[key] == ["yes"], key
    assert d["ProtectSystem"] == ["strict"]
    assert d["SystemCallFilter"][0] == "@system-service"
    assert "AF_INET" in d["RestrictAddressFamilies"][0]
    assert "serve --config /etc/aibridge-proxy/config.yaml" in d["ExecStart"][0]


@needs_systemd
def test_systemd_analyze_verify_is_clean(tmp_path):
    # the unit points at the install location; check it against this checkout's executable
    exe = Path(sys.executable).with_name("aibridge-proxy")
    unit = tmp_path / "aibridge-proxy.service"
    unit.write_text(UNIT.read_text().replace("/opt/aibridge-proxy/bin/aibridge-proxy", str(exe)))
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


@needs_systemd
def test_systemd_analyze_security_is_ok():
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for aibridge-proxy.service: (\d+\.\d+) (\w+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0 and m.group(2) in ("OK", "SAFE"), m.group(0)


def exported_names(metrics_text: str) -> set[str]:
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {name + s for s in ("_bucket", "_count", "_sum")}
    return names


def test_dashboard_queries_use_exported_metrics(proxy, gateway):
    import ssl

    import httpx

    ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
    with httpx.Client(proxy=proxy.url(ALICE), verify=ctx, trust_env=False) as c:
        c.get("https://api.openai.com/v1/models")
    exported = exported_names(proxy.admin("/metrics").text)
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert len(queries) > 15
    used = set()
    for q in queries:
        names = set(re.findall(r"\baibridge_proxy_[a-z_]+", q))
        assert names, q
        used |= names
    assert used <= exported, sorted(used - exported)
    # the dashboard covers what the issue asks for
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in (
        "traffic by provider",
        "error",
        "duration",
        "first byte",
        "auth failures",
        "ca expires",
    ):
        assert topic in titles, topic
