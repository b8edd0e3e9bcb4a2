"""Client self-service: `env` prints what a developer sets, `trust` installs the CA in the OS
store (for real on this Linux), `doctor` explains broken set-ups in one line each."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from certs.authority import generate_ca
from certs.authority import issue_leaf
from certs.authority import key_pem
from tests.support import ALICE
from tests.support import NODE_BIN
from tests.support import ROOT
from tests.support import BackgroundLoop
from tests.support import base_env
from tests.support import cli
from tests.support import client_env
from tests.support import free_port
from tests.support import start_tcp_server


def test_env_bash_sets_every_variable(proxy, tmp_path):
    ca = tmp_path / "ca.pem"
    shutil.copy(proxy.ca_path, ca)
    r = cli(
        "env",
        "--proxy-url",
        "http://coder:$CODER_SESSION_TOKEN@proxy.example.com:8888",
        "--ca",
        str(ca),
    )
    assert r.returncode == 0, r.stderr
    script = r.stdout + "\nenv\n"
    out = subprocess.run(
        ["bash", "-c", script],
        env={**base_env(), "CODER_SESSION_TOKEN": "t0k"},
        capture_output=True,
        text=True,
    )
    env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        assert env[name] == "http://coder:t0k@proxy.example.com:8888"
    assert env["NO_PROXY"] == "localhost,127.0.0.1,::1"
    assert env["NODE_EXTRA_CA_CERTS"] == str(ca) and env["CODEX_CA_CERTIFICATE"] == str(ca)
    assert env["NODE_USE_ENV_PROXY"] == "1"
    bundle = Path(env["SSL_CERT_FILE"])
    assert env["REQUESTS_CA_BUNDLE"] == env["CURL_CA_BUNDLE"] == str(bundle)
    assert bundle != ca and bundle.read_bytes().endswith(ca.read_bytes())
    assert bundle.stat().st_size > 50_000  # the system roots are in it


def test_env_other_shells_and_ides(proxy):
    fish = cli(
        "env",
        "--proxy-url",
        "http://coder:$T@p:8888",
        "--ca",
        str(proxy.ca_path),
        "--bundle",
        str(proxy.bundle_path),
        "--shell",
        "fish",
        "--ide",
    ).stdout
    assert 'set -gx HTTPS_PROXY "http://coder:$T@p:8888"' in fish
    assert f'set -gx SSL_CERT_FILE "{proxy.bundle_path}"' in fish
    assert '"http.proxy": "http://coder:$T@p:8888"' in fish and "HTTP Proxy" in fish
    ps = cli(
        "env",
        "--proxy-url",
        "http://coder:$T@p:8888",
        "--ca",
        str(proxy.ca_path),
        "--bundle",
        str(proxy.bundle_path),
        "--shell",
        "powershell",
    ).stdout
    assert '$env:HTTPS_PROXY = "http://coder:$env:T@p:8888"' in ps
    assert f'$env:NODE_EXTRA_CA_CERTS = "{proxy.ca_path}"' in ps


@pytest.mark.parametrize(
    "platform, install, remove",
    [
        (
            "redhat",
            [
                "write /etc/pki/ca-trust/source/anchors/aibridge-proxy.pem",
                "update-ca-trust extract",
            ],
            [
                "remove /etc/pki/ca-trust/source/anchors/aibridge-proxy.pem",
                "update-ca-trust extract",
            ],
        ),
        (
            "macos",
            [
                "write /tmp/aibridge-proxy-ca.pem",
                "security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain /tmp/aibridge-proxy-ca.pem",
            ],
            ["security delete-certificate -Z {SHA1} /Library/Keychains/System.keychain"],
        ),
        (
            "windows",
            ["write aibridge-proxy-ca.cer", "certutil -addstore -f Root aibridge-proxy-ca.cer"],
            ["certutil -delstore Root {sha1}"],
        ),
    ],
)
def test_trust_commands_for_other_systems(proxy, platform, install, remove):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    sha1 = (
        x509.load_pem_x509_certificate(proxy.ca_path.read_bytes()).fingerprint(hashes.SHA1()).hex()
    )
    for args, expected in (([], install), (["--remove"], remove)):
        r = cli("trust", "--ca", str(proxy.ca_path), "--platform", platform, "--dry-run", *args)
        assert r.returncode == 0, r.stderr
        lines = [line.strip() for line in r.stdout.splitlines()[1:]]
        assert lines == [e.format(SHA1=sha1.upper(), sha1=sha1) for e in expected]


def test_trust_needs_confirmation(proxy):
    r = cli("trust", "--ca", str(proxy.ca_path), "--platform", "debian")
    assert r.returncode == 2 and "pass --yes" in r.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("update-ca-certificates"),
    reason="installs into the system trust store: needs root and update-ca-certificates",
)
def test_trust_installs_and_removes_for_real(tmp_path):
    ca = generate_ca("aibridge-proxy trust test", 2, permitted_domains=["api.openai.com"])
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem())
    cert, key = issue_leaf(ca, ["api.openai.com"])
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    server_pem = tmp_path / "server.pem"
    server_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key_pem(key))

    def openssl_trusts() -> bool:
        return subprocess.run(["openssl", "verify", str(leaf)], capture_output=True).returncode == 0

    def python_trusts() -> bool:
        code = (
            "import socket, ssl, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1])));"
            "ssl.create_default_context().wrap_socket(s, server_hostname='api.openai.com')"
        )
        return (
            subprocess.run(
                [sys.executable, "-c", code, str(port)], capture_output=True, env=base_env()
            ).returncode
            == 0
        )

    bg = BackgroundLoop()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(server_pem)

    async def handle(reader, writer):
        writer.close()

    port = bg.run(start_tcp_server(handle, ctx))
    try:
        assert not openssl_trusts() and not python_trusts()
        r = cli("trust", "--ca", str(ca_file), "--yes", timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert openssl_trusts() and python_trusts()
    finally:
        r = cli("trust", "--ca", str(ca_file), "--yes", "--remove", timeout=120)
        bg.close()
    assert r.returncode == 0, r.stdout + r.stderr
    assert not openssl_trusts()


def doctor(env: dict, *args: str) -> tuple[int, list[str]]:
    r = subprocess.run(
        [sys.executable, "-m", "proxy", "doctor", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    return r.returncode, r.stdout.splitlines()


def _with_node(env: dict) -> dict:
    if NODE_BIN.exists():
        env["PATH"] = f"{NODE_BIN.parent}:{env['PATH']}"
    return env


def test_doctor_all_good(proxy, gateway):
    code, lines = doctor(_with_node(client_env(proxy)))
    assert code == 0, lines
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "ok    proxy configured",
        "ok    proxy answers",
        "ok    token accepted",
        "ok    CA trusted by Python",
        "ok    CA trusted by OpenSSL",
        "ok    CA trusted by Node",
        "ok    gateway answers",
    ]
    assert ALICE not in "\n".join(lines)


def test_doctor_for_copilot_checks_the_completions_host_too(proxy, gateway):
    code, lines = doctor(client_env(proxy), "--tool", "copilot-jetbrains")
    assert code == 0, lines
    assert "ok    token accepted: CONNECT api.individual.githubcopilot.com:443 accepted" in lines
    assert ("ok    completions host proxy.individual.githubcopilot.com: Python's ssl accepts the "
            "certificate for proxy.individual.githubcopilot.com") in lines  # fmt: skip


def test_doctor_wrong_token(proxy):
    code, lines = doctor(client_env(proxy, token="not-my-token"))
    assert code == 1
    assert lines[-1].startswith(
        "FAIL  token accepted: the proxy rejected the token  -> fix: get a fresh token"
    )


def test_doctor_ca_not_trusted(proxy, gateway):
    env = _with_node(client_env(proxy))
    env["SSL_CERT_FILE"] = "/etc/ssl/certs/ca-certificates.crt"  # system roots only
    env.pop("NODE_EXTRA_CA_CERTS")
    code, lines = doctor(env)
    assert code == 1
    failed = {line.split(":")[0] for line in lines if line.startswith("FAIL")}
    assert {"FAIL  CA trusted by Python", "FAIL  CA trusted by OpenSSL"} <= failed
    if NODE_BIN.exists():
        assert "FAIL  CA trusted by Node" in failed
    assert any("set SSL_CERT_FILE" in line for line in lines)


def test_doctor_proxy_down():
    env = base_env()
    env["HTTPS_PROXY"] = f"http://coder:x@127.0.0.1:{free_port()}"
    code, lines = doctor(env)
    assert code == 1
    assert lines[-1].startswith("FAIL  proxy answers: cannot connect to the proxy at 127.0.0.1:")
    assert "-> fix: check the host and port in HTTPS_PROXY" in lines[-1]


def test_doctor_says_copilot_needs_an_http_proxy_url():
    env = base_env()
    env["HTTPS_PROXY"] = f"https://coder:x@127.0.0.1:{free_port()}"
    code, lines = doctor(env)
    assert code == 1 and lines[1].startswith("note  https:// works for this shell's tools")
    assert "give Copilot an http:// proxy URL on a plain listener" in lines[1]


def test_doctor_not_configured():
    code, lines = doctor(base_env())
    assert code == 1 and lines[0].startswith("FAIL  proxy configured: HTTPS_PROXY is not set")


def test_doctor_gateway_down(make_proxy):
    p = make_proxy("--auth-mode", "presence", gateway=f"http://127.0.0.1:{free_port()}")
    code, lines = doctor(client_env(p))
    assert code == 1
    assert any(
        line.startswith("FAIL  gateway answers: the proxy cannot reach the gateway")
        for line in lines
    ), lines
