"""Proxy authentication on the real proxy: 407 before any TLS, for CONNECTs to routed and
tunnelled hosts alike, and for plain proxied requests."""

from __future__ import annotations

import base64
import ssl
import subprocess

import httpx
import pytest

from tests.support import ALICE
from tests.support import BOB
from tests.support import LOOPBACK_INTERNET
from tests.support import client_env
from tests.support import proxy_basic
from tests.support import raw_request


def connect(host: str, auth: str | None) -> bytes:
    head = f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n"
    if auth is not None:
        head += f"Proxy-Authorization: {auth}\r\n"
    return (head + "\r\n").encode()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def b64(s: bytes) -> str:
    return base64.b64encode(s).decode()


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "",
        "Basic",
        "Basic !!!notbase64",
        f"Basic {b64(b'no-colon-here')}",
        f"Basic {b64(b'user:')}",
        f"Bearer {ALICE}",
        f"Basic {b64(b'user:wrong-token')}",
    ],
    ids=[
        "missing",
        "empty",
        "no-value",
        "bad-base64",
        "no-colon",
        "empty-token",
        "bearer",
        "bad-token",
    ],
)
@pytest.mark.parametrize("host", ["api.openai.com:443", "example.org:443"])
def test_connect_without_valid_credentials_gets_407(proxy, gateway, auth, host):
    resp = raw_request(proxy.port, connect(host, auth))
    assert status_of(resp) == 407, resp
    assert b'\r\nProxy-Authenticate: Basic realm="aibridge-proxy"\r\n' in resp
    assert resp.split(b"\r\n\r\n", 1)[1].startswith(b"407 Proxy Authentication Required")
    assert not gateway.records


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC", "bAsIc"])
@pytest.mark.parametrize("user", ["coder", "", "my-ws.main_agent"])
def test_scheme_case_insensitive_username_ignored(proxy, scheme, user):
    auth = f"{scheme} {b64(f'{user}:{ALICE}'.encode())}"
    resp = raw_request(proxy.port, connect("api.openai.com:443", auth))
    assert status_of(resp) == 200, resp


@pytest.mark.parametrize("user", ["anything at all", "ws\r\nX-Forged", "é"])
def test_a_user_name_outside_the_workspace_characters_gets_407_naming_it(proxy, user):
    auth = f"Basic {b64(f'{user}:{ALICE}'.encode())}"
    resp = raw_request(proxy.port, connect("api.openai.com:443", auth))
    assert status_of(resp) == 407, resp
    assert b"the proxy user name is the workspace" in resp
    assert ALICE.encode() not in resp


def test_challenge_then_credentials_like_vscode(proxy, gateway):
    """curl --proxy-anyauth first asks without credentials, gets the 407, then retries."""
    env = client_env(proxy)
    env["HTTPS_PROXY"] = proxy.url(None)
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--proxy-anyauth",
            "--proxy-user",
            f"coder:{ALICE}",
            "https://api.openai.com/v1/models",
            "-w",
            "%{http_code}",
            "-o",
            "/dev/null",
            "-v",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout == "200", out.stderr
    assert "407" in out.stderr  # the first, credential-less attempt was challenged
    assert gateway.last().header("Authorization") is None


def test_plain_http_proxy_request_needs_credentials(proxy, gateway):
    req = b"GET http://api.openai.com/v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n"
    resp = raw_request(proxy.port, req)
    assert status_of(resp) == 407 and b"Proxy-Authenticate" in resp
    assert not gateway.records
    auth = proxy_basic(ALICE)
    req = f"GET http://api.openai.com/v1/models HTTP/1.1\r\nHost: api.openai.com\r\nProxy-Authorization: {auth}\r\n\r\n"
    resp = raw_request(proxy.port, req.encode())
    assert status_of(resp) == 200
    rec = gateway.last()
    assert rec.path == "/api/v2/aibridge/openai/v1/models"
    assert rec.header("Proxy-Authorization") is None
    assert rec.header("X-Coder-AI-Governance-Token") == ALICE


def test_each_token_is_its_own_user(proxy, gateway):
    ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
    for token, user in ((ALICE, "alice"), (BOB, "bob")):
        with httpx.Client(proxy=proxy.url(token), verify=ctx, trust_env=False) as c:
            assert c.get("https://api.openai.com/v1/models").status_code == 200
        assert gateway.last().header("X-Coder-AI-Governance-Token") == token
        rid = gateway.last().header("X-Coder-AI-Governance-Request-Id")
        line = proxy.wait_for_line(lambda r, rid=rid: r.get("request_id") == rid)
        assert line["user"] == user


def test_anonymous_tunnels_option(make_proxy, gateway, origin):
    p = make_proxy("--auth-anonymous-tunnels", *LOOPBACK_INTERNET)
    # tunnels to non-routed hosts: no credentials needed
    assert status_of(raw_request(p.port, connect(f"localhost:{origin.port}", None))) == 200
    # routed hosts still need them
    assert status_of(raw_request(p.port, connect("api.openai.com:443", None))) == 407
