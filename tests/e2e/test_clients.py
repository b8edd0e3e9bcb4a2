"""Real clients, configured only by the environment variables a user sets, through the real
proxy to the local gateway. We assert what the gateway received and what the client got."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import pytest

from tests.support import ALICE
from tests.support import NODE_BIN
from tests.support import NODE_DIR
from tests.support import client_env
from tests.support import run_python

OPENAI_CHAT = """
import json, openai
client = openai.OpenAI()
r = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
print(json.dumps({"text": r.choices[0].message.content}))
"""

OPENAI_STREAM = """
import json, openai
client = openai.OpenAI()
parts = []
for chunk in client.chat.completions.create(model="gpt-test", stream=True,
                                            messages=[{"role": "user", "content": "hi"}]):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
print(json.dumps({"text": "".join(parts), "chunks": len(parts)}))
"""

ANTHROPIC_STREAM = """
import json, anthropic
client = anthropic.Anthropic()
with client.messages.stream(model="claude-test", max_tokens=64,
                            messages=[{"role": "user", "content": "hi"}]) as s:
    text = "".join(s.text_stream)
print(json.dumps({"text": text}))
"""

ANTHROPIC_PLAIN = """
import json, anthropic
client = anthropic.Anthropic()
m = client.messages.create(model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
print(json.dumps({"text": m.content[0].text}))
"""

REPLY = "Hello from the aibridge-proxy local gateway."


def sdk_key(rec) -> str | None:
    """The provider key as the SDK sent it (x-api-key, or Bearer in newer Anthropic SDKs)."""
    auth = rec.header("Authorization") or ""
    return rec.header("x-api-key") or (auth[7:] if auth.startswith("Bearer ") else None)


def _run(code, env):
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_openai_sdk_centralized_key(proxy, gateway):
    """The client's API key is the Coder token: no governance header is added."""
    out = _run(OPENAI_CHAT, client_env(proxy, OPENAI_API_KEY=ALICE))
    assert out["text"] == REPLY
    rec = gateway.last()
    assert rec.method == "POST"
    assert rec.path == "/api/v2/aibridge/openai/v1/chat/completions"
    assert rec.header("Authorization") == f"Bearer {ALICE}"
    assert rec.header("X-Coder-AI-Governance-Token") is None
    assert rec.header("Proxy-Authorization") is None
    assert rec.header("Host") == f"127.0.0.1:{gateway.gateway.port}"
    uuid.UUID(rec.header("X-Coder-AI-Governance-Request-Id"))
    assert json.loads(rec.body)["messages"] == [{"role": "user", "content": "hi"}]


def test_openai_sdk_streaming_byok(proxy, gateway):
    """A personal key stays; the Coder token rides in the governance header."""
    out = _run(OPENAI_STREAM, client_env(proxy, OPENAI_API_KEY="sk-personal-key"))
    assert out["text"] == REPLY and out["chunks"] > 3
    rec = gateway.last()
    assert rec.header("Authorization") == "Bearer sk-personal-key"
    assert rec.header("X-Coder-AI-Governance-Token") == ALICE


def test_anthropic_sdk_stream_and_plain(proxy, gateway):
    env = client_env(proxy, ANTHROPIC_API_KEY="sk-ant-personal")
    assert _run(ANTHROPIC_STREAM, env)["text"] == REPLY
    assert _run(ANTHROPIC_PLAIN, env)["text"] == REPLY
    for rec in gateway.records:
        assert rec.path == "/api/v2/aibridge/anthropic/v1/messages"
        assert sdk_key(rec) == "sk-ant-personal"
        assert rec.header("X-Coder-AI-Governance-Token") == ALICE
        assert rec.header("anthropic-version")


def test_anthropic_sdk_with_coder_token_as_key(proxy, gateway):
    _run(ANTHROPIC_PLAIN, client_env(proxy, ANTHROPIC_API_KEY=ALICE))
    rec = gateway.last()
    assert sdk_key(rec) == ALICE
    assert rec.header("X-Coder-AI-Governance-Token") is None


def test_requests_exact_body_and_query(proxy, gateway):
    body = bytes(range(256)) * 4 + b'{"a": "\\u00e9"}'
    code = f"""
import requests, sys
url = "https://api.openai.com/v1/files/a%20b/c?x=1%2F2&y=%20z&x=3"
r = requests.post(url, data={body!r}, headers={{"Content-Type": "application/octet-stream"}})
print(r.status_code)
# a governance header naming someone else's token is refused before the gateway
r = requests.post(url, data=b"x", headers={{"X-Coder-AI-Governance-Token": "tok-bob-9876543210"}})
print(r.status_code, r.text.strip())
"""
    result = run_python(code, client_env(proxy))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "404"  # the local gateway has no files route; what matters is below
    assert lines[1] == (
        "400 400 Bad Request: X-Coder-AI-Governance-Token does not match the token in the "
        "proxy credentials"
    )
    assert len(gateway.records) == 1  # the refused one never reached it
    rec = gateway.last()
    assert rec.path == "/api/v2/aibridge/openai/v1/files/a%20b/c"
    assert rec.query == "x=1%2F2&y=%20z&x=3"
    assert rec.body == body
    assert rec.header("X-Coder-AI-Governance-Token") == ALICE


def test_curl(proxy, gateway):
    env = client_env(proxy)
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail-with-body",
            "https://api.anthropic.com/v1/messages",
            "-H",
            "content-type: application/json",
            "-H",
            f"x-api-key: {ALICE}",
            "--data-binary",
            '{"model":"m","max_tokens":5,"messages":[]}',
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["content"][0]["text"] == REPLY
    assert gateway.last().body == b'{"model":"m","max_tokens":5,"messages":[]}'


@pytest.mark.skipif(not NODE_BIN.exists(), reason="Node clients not installed (./run setup)")
def test_node_openai_sdk_with_env_proxy(proxy, gateway):
    """Node 22's built-in fetch honours HTTPS_PROXY with NODE_USE_ENV_PROXY=1, and trusts our CA
    through NODE_EXTRA_CA_CERTS (which adds to, not replaces, the built-in roots)."""
    script = NODE_DIR / "openai_client.mjs"
    env = client_env(proxy, OPENAI_API_KEY="sk-node-key")
    env.pop("SSL_CERT_FILE")
    out = subprocess.run(
        [str(NODE_BIN), str(script), "stream"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=NODE_DIR,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["text"] == REPLY
    rec = gateway.last()
    assert rec.path == "/api/v2/aibridge/openai/v1/chat/completions"
    assert rec.header("Authorization") == "Bearer sk-node-key"
    assert rec.header("X-Coder-AI-Governance-Token") == ALICE


def test_curl_is_installed():
    assert shutil.which("curl"), "curl is needed for the client tests"
