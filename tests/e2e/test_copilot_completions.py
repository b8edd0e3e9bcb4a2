"""Copilot's inline completions (`POST proxy.<plan>.githubcopilot.com/v1/engines/<model>/
completions`), which the gateway does not serve: observed by default (who, which tool, what it
used, forwarded unchanged), routed or tunnelled when the admin says so, and left tunnelled with
a start-up warning when the CA in use cannot sign for the host (a CA made before this
default). The completions host is a local TLS server on its own CA behind a host name mapped to
loopback."""

from __future__ import annotations

import ssl

import httpx
import pytest
import yaml

from certs.authority import generate_ca
from certs.authority import key_pem
from tests.support import ALICE
from tests.support import ProxyProcess
from tests.support import cli
from tests.support.vendor_origin import VendorOrigin
from tests.support.vendor_origin import hosts_resolve_to_loopback

HOST = "proxy.individual.githubcopilot.com"
FIM = {"prompt": "def add(a, b):\n    ", "suffix": "", "max_tokens": 50, "n": 3, "stream": True}
AGENT = "GithubCopilot/1.539.0"


@pytest.fixture(scope="module")
def completions(tmp_path_factory):
    with hosts_resolve_to_loopback([HOST]):
        origin = VendorOrigin([HOST]).start(tmp_path_factory.mktemp("copilot"))
        yield origin
        origin.stop()


def start(tmp, gateway_server, completions, **config) -> ProxyProcess:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump({
        "gateway": gateway_server.url,
        "origin_ca_file": str(completions.write_ca(tmp / "copilot-ca.pem")),
        "allowed_private_cidrs": ["127.0.0.0/8"],
        "allowed_ports": ["1-65535"],
        **config,
    }))  # fmt: skip
    return ProxyProcess(tmp / "state", ["--config", str(path)]).start()


def complete(proxy: ProxyProcess, completions, verify) -> httpx.Response:
    url = f"https://{HOST}:{completions.port}/v1/engines/copilot-codex/completions"
    with httpx.Client(proxy=proxy.url(ALICE), verify=verify, trust_env=False, timeout=20) as c:
        return c.post(url, json=FIM, headers={"User-Agent": AGENT, "Authorization": "Bearer tid=1"})


def test_completions_are_observed_by_default(gateway, completions, tmp_path):
    p = start(tmp_path, gateway, completions)
    try:
        r = complete(p, completions, ssl.create_default_context(cafile=str(p.ca_path)))
        assert r.status_code == 200 and '"text": "a + b"' in r.text
        assert completions.records[-1]["path"] == "/v1/engines/copilot-codex/completions"
        assert not [rec for rec in gateway.records if "engines" in rec.path]  # not the gateway
        line = p.wait_for_line(lambda ln: ln.get("msg") == "request" and ln.get("host") == HOST)
        assert (line["outcome"], line["tool"], line["user"]) == (
            "observed",
            "GitHub Copilot",
            "alice",
        )
        assert (line["input_tokens"], line["output_tokens"]) == (21, 4)
        said = cli("explain", "--config", str(tmp_path / "config.yaml"),
                   f"https://{HOST}/v1/engines/copilot-codex/completions").stdout  # fmt: skip
        assert "observed (copilot_completions: observe" in said
    finally:
        p.stop()


def test_tunnel_when_asked_or_when_the_ca_cannot_sign_for_it(gateway, completions, tmp_path):
    ours = generate_ca(permitted_domains=["api.openai.com"])  # a CA made for routed hosts only
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "ca.pem").write_bytes(ours.cert_pem())
    (tmp_path / "ca" / "ca-key.pem").write_bytes(key_pem(ours.key))
    (tmp_path / "ca" / "ca-key.pem").chmod(0o600)
    for case, config in (
        ("asked", {"copilot_completions": "tunnel"}),
        ("old CA", {"ca": {"cert_file": str(tmp_path / "ca" / "ca.pem"),
                           "key_file": str(tmp_path / "ca" / "ca-key.pem")}}),
    ):  # fmt: skip
        where = tmp_path / case.replace(" ", "-")
        where.mkdir()
        p = start(where, gateway, completions, **config)
        try:
            # tunnelled: the client talks TLS with the completions host itself
            vendor = ssl.create_default_context(cadata=completions.ca.cert_pem().decode())
            assert complete(p, completions, vendor).status_code == 200
            assert not [ln for ln in p.access_lines() if ln.get("host") == HOST]
            warned = "Copilot's inline completions are tunnelled, not observed" in p.output
            assert warned == (case == "old CA"), p.output[-2000:]
        finally:
            p.stop()
