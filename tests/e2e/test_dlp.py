"""Prompt DLP end to end: real clients (the openai and anthropic SDKs in Python, the Node openai
SDK, Codex CLI over WebSocket, curl to an observed vendor) configured only by what a user sets,
through `aibridge-proxy serve` with `dlp.action` block, mask or flag. We assert what the client
showed, what the gateway (or vendor) received byte for byte, and that neither the credential
nor the Coder token appears in any log line (debug level), the metrics or the dump."""

from __future__ import annotations

import json
import subprocess

import pytest

from addons.rules.prompt_dlp import placeholder
from proxy.server.app import dlp_mask_key
from tests.e2e.test_real_clients import CODEX
from tests.e2e.test_real_clients import run
from tests.e2e.test_real_clients import tool_env
from tests.support import ALICE
from tests.support import NODE_BIN
from tests.support import NODE_DIR
from tests.support import ProxyProcess
from tests.support import client_env
from tests.support import run_python
from tests.support.vendor_origin import VendorOrigin
from tests.support.vendor_origin import hosts_resolve_to_loopback

# Generated for this test, in GitHub's and Slack's formats: not real credentials.
GITHUB = "ghp_" + "Q7wE2rT9yU4iO1pA6sD3fG8hJ5kL0zX2cV7b"
SLACK = "xoxb-" + "204817365529-7718264453210-" + "Hq3ZtW9vKx2LmN8pR4sY6uJd"
VENDOR = "chat.dlp-observed.test"


@pytest.fixture
def dlp_proxy(configured_proxy, tmp_path):
    def start(action: str, **extra) -> ProxyProcess:
        dumps = tmp_path / f"dump-{len(list(tmp_path.glob('dump-*')))}"
        dumps.mkdir()
        config = {"dlp": {"action": action}, "log": {"level": "debug"}, "dump_dir": str(dumps)}
        return configured_proxy({**config, **extra})

    return start


def mark(p: ProxyProcess, kind: str, value: str) -> str:
    """The placeholder this proxy writes for `value` (its key comes from its CA key)."""
    return placeholder(kind, value, bytes.fromhex(dlp_mask_key(p.state_dir / "ca-key.pem")))


def assert_said_nowhere(p: ProxyProcess, tmp_path, *secrets: str) -> None:
    """Not in any log line at any level, not in the metrics, not in any dumped file."""
    said = p.output + p.admin("/metrics").text
    for dumped in tmp_path.glob("dump-*/**/*"):
        if dumped.is_file():
            said += dumped.read_text(errors="replace")
    for secret in (*secrets, ALICE):
        assert secret not in said


OPENAI_CHAT = """
import json, openai, sys
client = openai.OpenAI()
try:
    r = client.chat.completions.create(model="gpt-test", messages=[
        {"role": "user", "content": "why does this fail?"},
        {"role": "user", "content": sys.argv[1]}])
    print(json.dumps({"text": r.choices[0].message.content}))
except openai.BadRequestError as e:
    print(json.dumps({"status": e.status_code, "error": e.message}))
"""


def test_block_shows_the_openai_sdk_its_error_and_sends_nothing(dlp_proxy, gateway, tmp_path):
    p = dlp_proxy("block")
    code = OPENAI_CHAT.replace("sys.argv[1]", repr(f"export GITHUB_TOKEN={GITHUB}"))
    out = run_python(code, client_env(p, OPENAI_API_KEY="sk-personal-key"))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["status"] == 400  # a 4xx: the SDK does not retry it
    assert "a GitHub token in messages[1]" in result["error"] and GITHUB not in result["error"]
    assert gateway.records == []  # it never left
    line = p.wait_for_line(lambda r: r.get("msg") == "request")
    assert line["dlp"] == "block:github-pat@messages[1]" and line["reason"] == "dlp_blocked"
    assert (
        'aibridge_proxy_dlp_findings_total{action="block",kind="github-pat"} 1.0'
        in p.admin("/metrics").text
    )
    assert_said_nowhere(p, tmp_path, GITHUB)


ANTHROPIC_TOOL_RESULT = """
import json, anthropic, httpx2, sys
sent = []
hooks = {"request": [lambda r: sent.append(r.read())]}
client = anthropic.Anthropic(http_client=httpx2.Client(event_hooks=hooks))
m = client.messages.create(model="claude-test", max_tokens=64, messages=[
    {"role": "user", "content": "read .env"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01", "name": "read", "input": {"path": ".env"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": sys.argv[1]}]}])
print(json.dumps({"text": m.content[0].text, "sent": sent[-1].decode()}))
"""


def test_mask_sends_the_anthropic_sdks_body_with_only_the_credential_replaced(
    dlp_proxy, gateway, tmp_path
):
    p = dlp_proxy("mask")
    env_file = f"SLACK_BOT_TOKEN={SLACK}\\nPORT=8080\\n"
    code = ANTHROPIC_TOOL_RESULT.replace("sys.argv[1]", repr(env_file))
    out = run_python(code, client_env(p, ANTHROPIC_API_KEY="sk-ant-personal"))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["text"] == "Hello from the aibridge-proxy local gateway."
    received = gateway.last().body
    expected = (
        result["sent"].encode().replace(SLACK.encode(), mark(p, "slack-bot-token", SLACK).encode())
    )
    assert received == expected  # byte for byte, but the credential
    line = p.wait_for_line(lambda r: r.get("msg") == "request")
    assert line["dlp"] == "mask:slack-bot-token@messages[2] (tool_result of call toolu_01)"
    assert_said_nowhere(p, tmp_path, SLACK)


@pytest.mark.skipif(not NODE_BIN.exists(), reason="Node clients not installed (./run setup)")
def test_flag_lets_the_node_sdks_request_through_unchanged_and_records_it(
    dlp_proxy, gateway, tmp_path
):
    p = dlp_proxy("flag")
    env = client_env(p, OPENAI_API_KEY="sk-node-key", PROMPT=f"token={GITHUB}")
    env.pop("SSL_CERT_FILE")
    out = subprocess.run([str(NODE_BIN), str(NODE_DIR / "openai_client.mjs"), "stream"],
                         env=env, capture_output=True, text=True, timeout=60, cwd=NODE_DIR)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["text"] == "Hello from the aibridge-proxy local gateway."
    assert json.loads(gateway.last().body)["messages"][0]["content"] == f"token={GITHUB}"
    line = p.wait_for_line(lambda r: r.get("msg") == "request")
    assert line["dlp"] == "flag:github-pat@messages[0]" and line["status"] == 200
    # flagged, so the gateway got it, but the proxy never writes the value anywhere (its dump
    # holds the request masked)
    assert_said_nowhere(p, tmp_path, GITHUB)
    assert any(
        "[REDACTED github-pat " in f.read_text() for f in tmp_path.glob("dump-*/**/*.req.txt")
    )


@pytest.mark.skipif(not NODE_BIN.exists(), reason="Node clients not installed (./run setup)")
def test_block_fails_the_node_sdk_with_the_message(dlp_proxy, gateway):
    p = dlp_proxy("block")
    env = client_env(p, OPENAI_API_KEY="sk-node-key", PROMPT=f"token={GITHUB}")
    env.pop("SSL_CERT_FILE")
    out = subprocess.run([str(NODE_BIN), str(NODE_DIR / "openai_client.mjs")],
                         env=env, capture_output=True, text=True, timeout=60, cwd=NODE_DIR)  # fmt: skip
    assert out.returncode != 0
    assert "400" in out.stderr and "a GitHub token in messages[0]" in out.stderr
    assert gateway.records == []


@pytest.mark.skipif(not CODEX.exists(), reason="Codex CLI not installed (./run setup)")
@pytest.mark.parametrize("action", ["mask", "block"])
def test_codex_over_websocket(dlp_proxy, gateway, tmp_path, action):
    p = dlp_proxy(action)
    env = tool_env(p, tmp_path, CODEX_CA_CERTIFICATE=str(p.ca_path), OPENAI_API_KEY=ALICE)
    r, _ = run(
        [str(CODEX), "exec", "--skip-git-repo-check", f"is {GITHUB} a valid token?"], env, tmp_path
    )
    received = "".join(gateway.gateway.websocket_messages) + "".join(
        rec.body.decode(errors="replace") for rec in gateway.records
    )
    assert GITHUB not in received
    if action == "mask":
        assert r.returncode == 0, r.stdout + r.stderr
        assert mark(p, "github-pat", GITHUB) in "".join(gateway.gateway.websocket_messages)
    else:
        assert r.returncode != 0 or "GitHub token" in r.stdout + r.stderr
        assert "GitHub token" in r.stdout + r.stderr
    assert_said_nowhere(p, tmp_path, GITHUB)


@pytest.fixture
def vendor(tmp_path):
    with hosts_resolve_to_loopback([VENDOR]):
        origin = VendorOrigin([VENDOR]).start(tmp_path)
        yield origin
        origin.stop()


def test_an_observed_tools_json_is_blocked_and_its_protobuf_recorded_unscanned(
    dlp_proxy, vendor, tmp_path
):
    p = dlp_proxy("block", observe=[VENDOR], origin_ca_file=str(vendor.write_ca(tmp_path / "v.pem")),
                  allowed_private_cidrs=["127.0.0.0/8"], allowed_ports=["1-65535"])  # fmt: skip
    url = f"https://{VENDOR}:{vendor.port}"
    body = json.dumps({"messages": [{"role": "user", "content": f"use {GITHUB}"}]})
    out = subprocess.run(["curl", "-sS", "--data-binary", body, "-H", "Content-Type: application/json",
                          f"{url}/v1/chat"], capture_output=True, text=True, env=client_env(p), timeout=30)  # fmt: skip
    assert "a GitHub token in messages[0]" in out.stdout and GITHUB not in out.stdout
    assert vendor.records == []
    proto = b"\x00\x00\x00\x00\x08" + GITHUB.encode()[:8]
    out = subprocess.run(["curl", "-sS", "--data-binary", "@-", "-H", "Content-Type: application/grpc",
                          f"{url}/aiserver.v1.Chat/Stream"], input=proto.decode(), capture_output=True,
                         text=True, env=client_env(p), timeout=30)  # fmt: skip
    assert vendor.records and vendor.records[-1]["body"] == proto  # passed, recorded unscanned
    line = p.wait_for_line(
        lambda r: r.get("msg") == "request" and r.get("path") == "/aiserver.v1.Chat/Stream"
    )
    assert line["dlp"] == "pass:unscanned"
    assert 'aibridge_proxy_dlp_unscanned_total{action="pass"} 1.0' in p.admin("/metrics").text
    assert_said_nowhere(p, tmp_path, GITHUB)
