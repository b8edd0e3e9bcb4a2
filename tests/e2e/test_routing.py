"""Routing details: path scopes send other paths to the original host, the target and header
names are configurable, and the gateway connection verifies TLS and ignores proxy variables."""

from __future__ import annotations

import pytest

from tests.support import ALICE
from tests.support import LOOPBACK_INTERNET
from tests.support import ThreadedGateway
from tests.support import free_port
from tests.support import private_tls_server
from tests.support import proxy_client


def test_path_scope_sends_other_paths_to_the_origin(make_proxy, gateway, origin, tmp_path):
    origin_ca = origin.write_ca(tmp_path / "origin-ca.pem")
    p = make_proxy(
        "--provider",
        "localhost=openai@/v1/",
        "--origin-ca-file",
        str(origin_ca),
        *LOOPBACK_INTERNET,
    )
    with proxy_client(p) as c:
        r = c.post(f"https://localhost:{origin.port}/v1/chat/completions", json={"model": "m"})
        assert (
            r.status_code == 200
            and gateway.last().path == "/api/v2/aibridge/openai/v1/chat/completions"
        )
        # not under /v1/: decrypted, but sent to the original host unchanged
        r = c.post(f"https://localhost:{origin.port}/api/settings?a=%2F", content=b"12345")
        assert r.status_code == 200
        assert r.text == "origin saw POST /api/settings?a=%2F HTTP/1.1 body=5"
    assert len(gateway.records) == 1
    assert origin.connections == 1


def test_origin_tls_is_verified(make_proxy, gateway, origin):
    """Without origin_ca_file the origin's private CA is not trusted: 502, not a silent MITM."""
    p = make_proxy("--provider", "localhost=openai@/v1/", *LOOPBACK_INTERNET)
    with proxy_client(p) as c:
        r = c.get(f"https://localhost:{origin.port}/other")
    assert r.status_code == 502
    assert "TLS handshake failed" in r.text


def test_custom_target_and_header_names(make_proxy, gateway):
    p = make_proxy(
        "--target",
        f"{gateway.url}/api/v2/ai-gateway",
        "--headers-token",
        "X-My-Token",
        "--headers-request-id",
        "X-My-Id",
        "--auth-mode",
        "presence",
    )
    with proxy_client(p) as c:
        r = c.get("https://api.openai.com/v1/models", headers={"Authorization": "Bearer sk-own"})
    rec = gateway.last()
    assert r.status_code == 404  # the local gateway serves /api/v2/aibridge only
    assert rec.path == "/api/v2/ai-gateway/openai/v1/models"
    assert rec.header("X-My-Token") == ALICE and rec.header("X-My-Id")
    assert rec.header("X-Coder-AI-Governance-Token") is None


@pytest.fixture
def tls_gateway(tmp_path):
    ctx, ca_file = private_tls_server(tmp_path, "gateway")
    gw = ThreadedGateway(ssl_context=ctx).start()
    yield gw, ca_file
    gw.stop()


def test_https_gateway_needs_its_ca(make_proxy, tls_gateway):
    gw, ca_file = tls_gateway
    url = f"https://localhost:{gw.gateway.port}"
    p = make_proxy("--auth-mode", "presence", gateway=url)
    with proxy_client(p) as c:
        r = c.get("https://api.openai.com/v1/models")
    assert r.status_code == 502 and "TLS handshake failed" in r.text
    assert not gw.records
    p2 = make_proxy("--gateway-ca-file", str(ca_file), gateway=url)  # validate mode over TLS too
    with proxy_client(p2) as c:
        assert c.get("https://api.openai.com/v1/models").status_code == 200
    assert gw.last().path == "/api/v2/aibridge/openai/v1/models"


def test_gateway_connection_ignores_proxy_variables(make_proxy, gateway):
    dead = f"http://127.0.0.1:{free_port()}"
    env = {
        "HTTPS_PROXY": dead,
        "HTTP_PROXY": dead,
        "https_proxy": dead,
        "http_proxy": dead,
        "ALL_PROXY": dead,
    }
    p = make_proxy(env=env)  # validate mode: the token check must not use them either
    with proxy_client(p) as c:
        assert c.get("https://api.openai.com/v1/models").status_code == 200
