"""The Kubernetes manifests validate against the API schemas, run non-root on a read-only
filesystem with probes on /healthz and /readyz, and their config is one the proxy accepts."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
import yaml

from proxy.server.settings import load_settings
from tests.support import ROOT

K8S = ROOT / "deploy" / "kubernetes"
MANIFESTS = [
    "configmap.yaml",
    "secret.example.yaml",
    "deployment.yaml",
    "service.yaml",
    "pdb.yaml",
    "hpa.yaml",
]


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_validates_against_the_schema(name):
    kubernetes_validate.validate(load(name), kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_the_manifests():
    listed = set(load("kustomization.yaml")["resources"])
    assert listed == set(MANIFESTS) - {"secret.example.yaml"}


def test_deployment_is_locked_down_and_probed():
    d = load("deployment.yaml")
    spec = d["spec"]["template"]["spec"]
    assert d["spec"]["replicas"] >= 2
    assert (
        spec["securityContext"]["runAsNonRoot"] is True
        and spec["securityContext"]["runAsUser"] != 0
    )
    c = spec["containers"][0]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["ca"]["secret"]["secretName"] == "aibridge-proxy-ca"
    assert volumes["config"]["configMap"]["name"] == "aibridge-proxy"
    assert "emptyDir" in volumes["state"]  # writable state on a read-only root filesystem
    assert spec["terminationGracePeriodSeconds"] > 30  # longer than the drain grace period
    assert load("pdb.yaml")["spec"]["selector"] == d["spec"]["selector"]
    assert load("hpa.yaml")["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"]


def test_configmap_config_is_accepted_by_the_proxy(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(load("configmap.yaml")["data"]["config.yaml"])
    s = load_settings({}, environ={}, config_file=cfg, require_gateway=True)
    assert s.listen == ("", 8888) and s.admin_listen == ("", 8889)
    mounts = {
        m["name"]: m["mountPath"]
        for m in load("deployment.yaml")["spec"]["template"]["spec"]["containers"][0][
            "volumeMounts"
        ]
    }
    assert str(s.ca_cert_file).startswith(mounts["ca"]) and str(s.state_dir) == mounts["state"]


def test_dockerfile_is_non_root_and_complete():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    for src in re.findall(r"^COPY\s+(?!--from)(\S+)", text, re.M):
        assert src == "dist/" or (ROOT / src).exists(), src  # dist/: what ./run wheel builds
    assert re.search(r"^ENTRYPOINT \[\"aibridge-proxy\"\]", text, re.M)
