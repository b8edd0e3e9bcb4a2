"""deploy/kubernetes really runs: `podman kube play` plays the example's ConfigMap and Deployment
with the image deploy/Dockerfile builds, as two replicas that share one Redis; a limit counts
requests through both together, a profile choice made through one holds on the other, and each
replica's usage gauges read the shared counts.

What differs from a cluster (podman 4.3, Debian 12's, on one host), changed in the played copy
only, and why:
- Host networking. The replicas reach the test's gateway and Redis on 127.0.0.1 and the test
  reaches them there. Two pods on one host network cannot share a port, so each replica is its
  own one-replica Deployment whose listen addresses come from the environment; in a cluster each
  pod has its own address, and the Service spreads clients over them (here the test plays the
  Service, sending through each replica in turn).
- Container ports: port mappings need a pod network, so they go, and the probes name the admin
  port by number instead of by its name.
- The CA Secret: podman 4.3 plays no Secret kind and writes secret files 0644 whatever
  `defaultMode` says, a mode the proxy refuses for a key. The same files are mounted from the
  host with the modes a kubelet gives them (root, the pod's fsGroup, 0440).
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from certs.authority import generate_ca
from certs.authority import key_pem
from tests.support import ALICE
from tests.support import RedisServer
from tests.support import ThreadedGateway
from tests.support import cli
from tests.support import free_port
from tests.support import metric
from tests.support import proxy_client
from tests.system.image import podman
from tests.system.wheel import ROOT

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

K8S = ROOT / "deploy" / "kubernetes"
FSGROUP = 10001  # the Deployment's fsGroup


@dataclass
class Replica:
    """One played pod, as the test's clients see it (what proxy_client needs)."""

    name: str
    port: int
    admin_port: int
    ca_path: Path

    def url(self, token: str | None, user: str = "coder") -> str:
        return f"http://{user}:{token}@127.0.0.1:{self.port}"

    def admin(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.admin_port}{path}", trust_env=False, timeout=5)


def manifests(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def played_copy(replica: Replica, image: str, config: dict, ca_dir: Path) -> str:
    """The example's ConfigMap and Deployment, changed only as the module docstring says."""
    configmap = manifests("configmap.yaml")
    example = yaml.safe_load(configmap["data"]["config.yaml"])
    merged = {k: v for k, v in {**example, **config}.items() if v is not None}  # None: removed
    configmap["data"]["config.yaml"] = yaml.safe_dump(merged)
    deployment = manifests("deployment.yaml")
    deployment["metadata"]["name"] = replica.name
    deployment["spec"]["replicas"] = 1
    pod = deployment["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    (container,) = pod["containers"]
    container["image"] = image
    container.pop("ports")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "admin"
        container[probe]["httpGet"]["port"] = replica.admin_port
    container["env"] += [
        {"name": "AIBRIDGE_PROXY_LISTEN", "value": f"127.0.0.1:{replica.port}"},
        {"name": "AIBRIDGE_PROXY_ADMIN_LISTEN", "value": f"127.0.0.1:{replica.admin_port}"},
    ]
    (ca,) = [v for v in pod["volumes"] if v["name"] == "ca"]
    assert ca.pop("secret")["secretName"] == manifests("secret.example.yaml")["metadata"]["name"]
    ca["hostPath"] = {"path": str(ca_dir), "type": "Directory"}
    return yaml.safe_dump_all([configmap, deployment])


def ca_as_the_kubelet_mounts_it(directory: Path) -> None:
    """The Secret's two files, as a kubelet writes them for defaultMode 0440 and the fsGroup."""
    ca = generate_ca()
    directory.mkdir()
    for name, data in (("ca.pem", ca.cert_pem()), ("ca-key.pem", key_pem(ca.key))):
        path = directory / name
        path.write_bytes(data)
        os.chown(path, 0, FSGROUP)
        path.chmod(0o440)
    directory.chmod(0o755)


def wait_ready(replica: Replica, deadline: float) -> None:
    while True:
        try:
            if replica.admin("/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        logs = podman("logs", f"{replica.name}-pod-0-aibridge-proxy", check=False)
        assert time.monotonic() < deadline, f"{replica.name} never became ready:\n{logs.stderr}"
        time.sleep(0.5)


def test_the_example_plays_as_two_replicas_sharing_limits_and_profiles(image, tmp_path):
    gateway, other, redis = ThreadedGateway().start(), ThreadedGateway().start(), RedisServer()
    redis.start()
    ca_dir = tmp_path / "ca"
    ca_as_the_kubelet_mounts_it(ca_dir)
    config = {
        "gateway": None,
        "gateways": {"coder": {"url": gateway.url}, "other": {"url": other.url}},
        "profiles": {"elsewhere": [{"name": "to-other", "match": {"host": ["api.anthropic.com"]},
                                    "route": {"gateway": "other", "provider": "anthropic"}}]},
        "profile_store": redis.url,
        "limits_store": redis.url,
        "limits": [{"name": "three-a-month", "match": {"host": ["api.openai.com"]},
                    "requests": 3, "per": "month"}],
        "metrics": {"user_labels": True},
    }  # fmt: skip
    tag = free_port()
    replicas = [
        Replica(f"abp-{tag}-{i}", free_port(), free_port(), ca_dir / "ca.pem") for i in "ab"
    ]
    conf = tmp_path / "containers.conf"  # rlimits this sandbox lets a runtime set
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n')
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    plays = []
    try:
        for replica in replicas:
            play = tmp_path / f"{replica.name}.yaml"
            play.write_text(played_copy(replica, image, config, ca_dir))
            podman("kube", "play", str(play), env=env, timeout=120)
            plays.append(play)
        deadline = time.monotonic() + 90
        for replica in replicas:
            wait_ready(replica, deadline)
        a, b = replicas

        # the limit: 2 + 2 requests against 3 a month, the fourth refused by the other replica
        def send(replica: Replica) -> int:
            with proxy_client(replica, ALICE) as c:
                return c.post("https://api.openai.com/v1/chat/completions", json={}).status_code

        assert [send(a), send(a), send(b), send(b)] == [200, 200, 200, 429]
        assert len(gateway.records) == 3  # the refused one never reached the gateway
        assert metric(b.admin("/metrics").text, "aibridge_proxy_limit_refusals_total",
                      limit="three-a-month") == 1  # fmt: skip

        # the profile: chosen through a, followed by b
        url = a.url(ALICE, user="ws-1")
        chosen = cli("profile", "use", "elsewhere", env={"HTTPS_PROXY": url, "HTTP_PROXY": url})
        assert chosen.returncode == 0, chosen.stderr
        deadline = time.monotonic() + 10
        while not other.records:
            assert time.monotonic() < deadline, "replica b never followed the choice made on a"
            with proxy_client(b, ALICE, user="ws-1") as c:
                c.post("https://api.anthropic.com/v1/messages", json={"model": "m"})
            time.sleep(0.2)
        assert other.last().path == "/api/v2/aibridge/anthropic/v1/messages"

        # each replica samples the shared counts (every 15 s): a's gauges see b's requests
        deadline = time.monotonic() + 40
        while (used := metric(a.admin("/metrics").text, "aibridge_proxy_limit_used",
                              limit="three-a-month")) != 3:  # fmt: skip
            assert time.monotonic() < deadline, f"limit_used stayed {used}"
            time.sleep(1)
        assert metric(a.admin("/metrics").text, "aibridge_proxy_user_limit_left",
                      user="alice", limit="three-a-month") == 0  # fmt: skip
    finally:
        logs = ""
        for replica, play in zip(replicas, plays, strict=False):
            logs += podman("logs", f"{replica.name}-pod-0-aibridge-proxy", check=False).stdout
            podman("kube", "down", str(play), env=env, check=False, timeout=120)
        gateway.stop()
        other.stop()
        redis.stop()
    assert ALICE not in logs and base64.b64encode(ALICE.encode()).decode() not in logs
