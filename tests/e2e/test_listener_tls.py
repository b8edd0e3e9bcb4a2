"""TLS between client and proxy (HTTPS_PROXY=https://...): the token never travels in clear."""

from __future__ import annotations

import ssl
import subprocess

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from certs.authority import generate_ca
from certs.authority import issue_leaf
from certs.authority import key_pem
from tests.support import ALICE
from tests.support import LOOPBACK_INTERNET
from tests.support import client_env
from tests.support import proxy_basic
from tests.support import raw_request


@pytest.fixture
def listener_cert(tmp_path):
    ca = generate_ca("listener CA", 30, permitted_domains=None)
    cert, key = issue_leaf(ca, ["proxy.test"], ips=["127.0.0.1"])
    cert_file, key_file, ca_file = (
        tmp_path / "listener.pem",
        tmp_path / "listener.key",
        tmp_path / "listener-ca.pem",
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key_pem(key))
    ca_file.write_bytes(ca.cert_pem())
    return cert_file, key_file, ca_file


@pytest.fixture
def tls_proxy(make_proxy, listener_cert):
    cert_file, key_file, _ = listener_cert
    return make_proxy(
        "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file), *LOOPBACK_INTERNET
    )


def test_routed_request_over_tls_to_the_proxy(tls_proxy, listener_cert, gateway, tmp_path):
    _, _, listener_ca = listener_cert
    proxy_ctx = ssl.create_default_context(cafile=str(listener_ca))
    proxy = httpx.Proxy(
        f"https://127.0.0.1:{tls_proxy.port}", auth=("coder", ALICE), ssl_context=proxy_ctx
    )
    ctx = ssl.create_default_context(cafile=str(tls_proxy.ca_path))
    with httpx.Client(proxy=proxy, verify=ctx, trust_env=False) as c:
        assert c.get("https://api.openai.com/v1/models").status_code == 200
    assert gateway.last().header("X-Coder-AI-Governance-Token") == ALICE


def test_curl_https_proxy_and_tunnel(tls_proxy, listener_cert, gateway, origin, tmp_path):
    _, _, listener_ca = listener_cert
    origin_ca = origin.write_ca(tmp_path / "origin-ca.pem")
    env = client_env(tls_proxy)
    url = f"https://coder:{ALICE}@127.0.0.1:{tls_proxy.port}"
    env.update(HTTPS_PROXY=url)
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--proxy-cacert",
            str(listener_ca),
            "--cacert",
            str(origin_ca),
            f"https://localhost:{origin.port}/x",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.stdout == "origin saw GET /x HTTP/1.1 body=0", out.stderr
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--proxy-cacert",
            str(listener_ca),
            "--cacert",
            str(tls_proxy.ca_path),
            "https://api.anthropic.com/v1/messages",
            "-d",
            "{}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert '"content"' in out.stdout, out.stderr


def test_plaintext_clients_are_refused_saying_what_they_did(tls_proxy, gateway):
    """GitHub Copilot's language server, given https://, still sends its CONNECT in clear: the
    answer and the log say what happened and what to use instead."""
    req = (f"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: x\r\nUser-Agent: GithubCopilot/1.539.0\r\n"
           f"Proxy-Authorization: {proxy_basic(ALICE)}\r\n\r\n")  # fmt: skip
    resp = raw_request(tls_proxy.port, req.encode())
    assert resp.startswith(b"HTTP/1.1 403 ")
    assert b"this client sent its request in plain text: it cannot speak TLS to a proxy" in resp
    assert b"Give it an http:// proxy URL on a listener without tls_cert_file" in resp
    line = tls_proxy.wait_for_line(lambda ln: "plain HTTP to the TLS listener" in ln.get("msg", ""))
    assert "GithubCopilot/1.539.0" in line["msg"] and ALICE not in tls_proxy.output


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_1_1_is_refused(tls_proxy, listener_cert):
    import socket

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client really offer TLS 1.1
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    except ValueError:
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with socket.create_connection(("127.0.0.1", tls_proxy.port), timeout=5) as sock:
        with pytest.raises(ssl.SSLError, match="(?i)protocol version|unsupported protocol|EOF"):
            ctx.wrap_socket(sock)
    # the same client, allowed TLS 1.2, gets through: the version is what was refused
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", tls_proxy.port), timeout=5) as sock:
        with ctx.wrap_socket(sock) as tls_sock:
            assert tls_sock.version() == "TLSv1.2"


def test_cert_and_key_go_together(tmp_path, listener_cert):
    from tests.support import assert_one_line_error
    from tests.support import cli

    cert_file, _, _ = listener_cert
    r = cli("serve", "--gateway", "http://127.0.0.1:1", "--tls-cert-file", str(cert_file))
    assert_one_line_error(r, "tls_cert_file", "set both tls_cert_file and tls_key_file")
