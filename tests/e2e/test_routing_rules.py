"""Routing rules through the real proxy, with the official SDKs configured only by environment:
per-workspace routing to another gateway and provider with the model replaced (the gateway
receives the client's bytes but for that field), group and model denies that each SDK shows
with the rule's message, and the access log naming the rule."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from proxy.devtools.localgateway import REPLY
from proxy.server.explain import WORKSPACE_NOTE
from tests.e2e.test_real_clients import CODEX
from tests.e2e.test_real_clients import run as run_tool
from tests.e2e.test_real_clients import tool_env
from tests.support import ALICE
from tests.support import BOB
from tests.support import ThreadedGateway
from tests.support import assert_one_line_error
from tests.support import base_env
from tests.support import cli
from tests.support import client_env
from tests.support import proxy_client
from tests.support import run_python

OPENAI = """
import json, sys, openai
client = openai.OpenAI()
try:
    r = client.chat.completions.create(model=sys.argv[1], messages=[{"role": "user", "content": "hi"}])
    print(json.dumps({"text": r.choices[0].message.content}))
except openai.APIStatusError as e:
    print(json.dumps({"status": e.status_code, "error": e.message, "kind": type(e).__name__}))
"""

ANTHROPIC = """
import json, sys, anthropic
client = anthropic.Anthropic()
try:
    m = client.messages.create(model=sys.argv[1], max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    print(json.dumps({"text": m.content[0].text}))
except anthropic.APIStatusError as e:
    print(json.dumps({"status": e.status_code, "error": e.message, "kind": type(e).__name__}))
"""


@pytest.fixture
def second_gateway():
    gw = ThreadedGateway(prefix="/api/v2/ai-gateway").start()
    yield gw
    gw.stop()


@pytest.fixture
def ruled(make_proxy, gateway, second_gateway, tmp_path):
    config = {
        "gateways": {
            "coder": {"url": gateway.url},
            "standalone": {"target": f"{second_gateway.url}/api/v2/ai-gateway"},
        },
        "groups": {"ml-team": ["alice"]},
        "rules": [
            {
                "name": "fast-workspaces",
                "match": {"workspace": ["fast-*"], "host": ["api.openai.com"]},
                "route": {
                    "gateway": "standalone",
                    "provider": "openrouter",
                    "model": "qwen/qwen3-coder",
                },
            },
            {
                "name": "blocked-workspaces",
                "match": {"workspace": ["blocked-*"], "model": ["*"]},
                "deny": {"status": 403, "message": "this workspace may not use AI models"},
            },
            {
                "name": "no-reasoning-models",
                "match": {"model": ["o1*", "o3*"], "group": ["!ml-team"]},
                "deny": {"status": 403, "message": "reasoning models need the ml-team group"},
            },
        ],
        "profiles": {
            "careful": [
                {
                    "name": "careful-openrouter",
                    "match": {"host": ["api.openai.com"]},
                    "route": {"gateway": "standalone", "provider": "openrouter"},
                }
            ]
        },
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(config))
    p = make_proxy("--config", str(path), gateway="")
    p.config_path = path
    return p


def env_for(p, token=ALICE, workspace="coder", **extra):
    url = p.url(token, user=workspace)
    keys = {"OPENAI_API_KEY": "sk-own", "ANTHROPIC_API_KEY": "sk-ant-own", **extra}
    return client_env(p, token, HTTPS_PROXY=url, HTTP_PROXY=url, **keys)


def run(code, env, model):
    out = subprocess.run(
        [sys.executable, "-c", code, model], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_workspace_rule_routes_to_another_gateway_with_the_model_replaced(
    ruled, gateway, second_gateway
):
    out = run(OPENAI, env_for(ruled, workspace="fast-1", OPENAI_API_KEY="sk-own"), "gpt-4o")
    assert "text" in out, out
    assert not any("/chat/completions" in r.path for r in gateway.records)
    rec = second_gateway.last()
    assert rec.path == "/api/v2/ai-gateway/openrouter/v1/chat/completions"
    assert json.loads(rec.body)["model"] == "qwen/qwen3-coder"
    assert rec.header("Authorization") == "Bearer sk-own"
    assert rec.header("X-Coder-AI-Governance-Token") == ALICE
    line = ruled.wait_for_line(lambda r: r.get("rule") == "fast-workspaces")
    assert (line["workspace"], line["gateway"], line["model"], line["model_sent"]) == (
        "fast-1",
        "standalone",
        "gpt-4o",
        "qwen/qwen3-coder",
    )


def test_only_the_model_field_changes_in_the_bytes_sent(ruled, second_gateway):
    body = b'{ "model" : "gpt-4o",\n "messages": [{"role":"user","content":"h\\u00e9"}], "x": 1.50}'
    code = f"""
import requests
r = requests.post("https://api.openai.com/v1/chat/completions?q=1", data={body!r},
                  headers={{"Content-Type": "application/json"}})
print(r.status_code)
"""
    result = run_python(code, env_for(ruled, workspace="fast-2"))
    assert result.stdout.strip() == "200", result.stderr
    rec = second_gateway.last()
    assert rec.query == "q=1"
    assert rec.body == body.replace(b'"gpt-4o"', b'"qwen/qwen3-coder"')


def test_other_workspaces_follow_the_provider_table_to_the_first_gateway(ruled, gateway):
    out = run(OPENAI, env_for(ruled, workspace="slow-1"), "gpt-4o")
    assert "text" in out, out
    assert gateway.last().path == "/api/v2/aibridge/openai/v1/chat/completions"
    assert json.loads(gateway.last().body)["model"] == "gpt-4o"


@pytest.mark.parametrize(
    "code, kind", [(OPENAI, "PermissionDeniedError"), (ANTHROPIC, "PermissionDeniedError")]
)
def test_a_model_deny_is_shown_by_the_sdk_with_the_rules_message(ruled, gateway, code, kind):
    out = run(code, env_for(ruled, token=BOB), "o3-mini")
    assert out["status"] == 403 and out["kind"] == kind
    assert "reasoning models need the ml-team group (rule no-reasoning-models)" in out["error"]
    assert all(
        "chat/completions" not in r.path and "messages" not in r.path for r in gateway.records
    )  # never reached the gateway


def test_the_group_may_use_the_model(ruled, gateway):
    out = run(OPENAI, env_for(ruled, token=ALICE), "o3-mini")
    assert "text" in out, out
    assert json.loads(gateway.last().body)["model"] == "o3-mini"


def profile_cli(p, *args, token=ALICE, workspace="slow-1"):
    url = p.url(token, user=workspace)
    env = {**base_env(), "HTTPS_PROXY": url, "HTTP_PROXY": url}
    return subprocess.run(
        [sys.executable, "-m", "proxy", "profile", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_profile_switch_applies_on_an_open_connection_and_survives_a_restart(
    ruled, gateway, second_gateway
):
    assert profile_cli(ruled, "show").stdout == "alice, workspace slow-1: profile none (default)\n"
    with proxy_client(ruled, user="slow-1") as c:
        c.post("https://api.openai.com/v1/chat/completions", json={"model": "gpt-4o"})
        assert gateway.last().path == "/api/v2/aibridge/openai/v1/chat/completions"
        r = profile_cli(ruled, "use", "careful")
        assert r.returncode == 0 and "profile careful (your choice)" in r.stdout, r.stderr
        c.post("https://api.openai.com/v1/chat/completions", json={"model": "gpt-4o"})
    assert second_gateway.last().path == "/api/v2/ai-gateway/openrouter/v1/chat/completions"
    after = ruled.wait_for_line(lambda r: r.get("rule") == "careful-openrouter")
    before = ruled.wait_for_line(lambda r: r.get("provider") == "openai")
    assert after["profile"] == "careful"
    assert after["connect_id"] == before["connect_id"]  # the same kept-alive tunnel
    # nobody else's choice changed: bob's, and alice's other workspace
    assert "profile none (default)" in profile_cli(ruled, "show", token=BOB).stdout
    assert "profile none (default)" in profile_cli(ruled, "show", workspace="other").stdout
    ruled.stop()
    ruled.start()
    assert "profile careful (your choice)" in profile_cli(ruled, "show").stdout
    r = profile_cli(ruled, "use", "nonexistent")
    assert r.returncode == 1 and "no profile named 'nonexistent'" in r.stderr
    assert profile_cli(ruled, "use", "--default").returncode == 0
    assert "profile none (default)" in profile_cli(ruled, "list").stdout


@pytest.mark.parametrize(
    "token, workspace, model, expected",
    [
        (ALICE, "fast-3", "gpt-4o", "/api/v2/ai-gateway/openrouter/v1/chat/completions"),
        (ALICE, "slow-1", "o3-mini", "/api/v2/aibridge/openai/v1/chat/completions"),
        (BOB, "slow-1", "o3-mini", "403"),
    ],
)
def test_explain_agrees_with_what_the_proxy_does(
    ruled, gateway, second_gateway, token, workspace, model, expected
):
    user = "alice" if token == ALICE else "bob"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "explain",
            "--config",
            str(ruled.config_path),
            "--user",
            user,
            "--workspace",
            workspace,
            "--model",
            model,
            "https://api.openai.com/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        env=base_env(),
        timeout=30,
    ).stdout
    with proxy_client(ruled, token=token, user=workspace) as c:
        r = c.post("https://api.openai.com/v1/chat/completions", json={"model": model})
    # these rules match on the workspace, which the client names itself: explain says so
    assert out.rstrip().endswith(WORKSPACE_NOTE)
    if expected == "403":
        assert r.status_code == 403 and "answer:   403 " in out
        answer = out.split("answer:   403 ", 1)[1].splitlines()[0]
        assert json.loads(answer)["error"]["message"] in r.text
    else:
        upstream = out.split("upstream: ", 1)[1].splitlines()[0].strip()
        got = (second_gateway if "ai-gateway" in expected else gateway).last()
        assert got.path == expected and upstream.endswith(expected)


def test_a_broken_rule_is_one_line_naming_the_rule_and_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "gateway: https://coder.example.com\nrules:\n  - name: oops\n    match: {colour: red}\n    origin: true\n"
    )
    r = cli("serve", "--config", str(bad))
    assert_one_line_error(r, "rules[0] (oops): match.colour is not a condition", str(bad))


def test_rules_reload_atomically_and_a_broken_one_keeps_the_old(ruled, gateway):
    import signal

    config = yaml.safe_load(ruled.config_path.read_text())
    config["rules"].insert(
        0,
        {
            "name": "all-to-origin-deny",
            "match": {"path": ["/v1/embeddings"]},
            "deny": {"status": 451, "message": "no embeddings here"},
        },
    )
    ruled.config_path.write_text(yaml.safe_dump(config))
    ruled.signal(signal.SIGHUP)
    ruled.wait_for_line(lambda r: r.get("msg") == "configuration reloaded")
    with proxy_client(ruled) as c:
        r = c.post("https://api.openai.com/v1/embeddings", json={"model": "e"})
    assert r.status_code == 451 and "no embeddings here (rule all-to-origin-deny)" in r.text
    config["rules"][0]["match"] = {"colour": ["red"]}
    ruled.config_path.write_text(yaml.safe_dump(config))
    ruled.signal(signal.SIGHUP)
    line = ruled.wait_for_line(lambda r: "reload rejected" in r.get("msg", ""))
    assert "rules[0] (all-to-origin-deny): match.colour is not a condition" in line["msg"]
    with proxy_client(ruled) as c:
        assert c.post("https://api.openai.com/v1/embeddings", json={}).status_code == 451


async def _responses_over_websocket(p, token, workspace, model):
    import ssl as _ssl

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    ctx = _ssl.create_default_context(cafile=str(p.ca_path))
    async with connect("wss://api.openai.com/v1/responses", proxy=p.url(token, user=workspace),
                       ssl=ctx, open_timeout=10) as ws:  # fmt: skip
        await ws.send(json.dumps({"type": "response.create", "model": model, "input": "hi"}))
        received = []
        try:
            while True:
                event = json.loads(await ws.recv())
                received.append(event)
                if event.get("type") == "response.completed":
                    return received, None
        except ConnectionClosed as e:
            return received, e.rcvd


async def test_model_rules_apply_to_each_websocket_response_create(ruled, gateway, second_gateway):
    events, closed = await _responses_over_websocket(ruled, BOB, "slow-1", "o3-mini")
    assert events == [] and closed.code == 1008
    assert "reasoning models need the ml-team group" in closed.reason
    events, closed = await _responses_over_websocket(ruled, ALICE, "slow-1", "o3-mini")
    assert closed is None and events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["model"] == "o3-mini"
    events, closed = await _responses_over_websocket(ruled, ALICE, "fast-1", "gpt-4o")
    assert closed is None and events[-1]["response"]["model"] == "qwen/qwen3-coder"
    assert second_gateway.last().path == "/api/v2/ai-gateway/openrouter/v1/responses"


@pytest.mark.skipif(not CODEX.exists(), reason="Codex CLI not installed (./run setup)")
def test_codex_cli_follows_the_rules_over_websocket(ruled, second_gateway, tmp_path):
    env = tool_env(ruled, tmp_path, CODEX_CA_CERTIFICATE=str(ruled.ca_path), OPENAI_API_KEY=ALICE,
                   HTTPS_PROXY=ruled.url(ALICE, user="fast-7"))  # fmt: skip
    r, _ = run_tool([str(CODEX), "exec", "--skip-git-repo-check", "say hi"], env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert REPLY in r.stdout
    upgrades = [rec for rec in second_gateway.records if rec.header("Upgrade") == "websocket"]
    assert upgrades and upgrades[-1].path == "/api/v2/ai-gateway/openrouter/v1/responses"
    line = ruled.wait_for_line(lambda rec: rec.get("rule") == "fast-workspaces")
    assert line["workspace"] == "fast-7"

    blocked = {**env, "HTTPS_PROXY": ruled.url(ALICE, user="blocked-1")}
    r, _ = run_tool([str(CODEX), "exec", "--skip-git-repo-check", "say hi"], blocked, tmp_path)
    assert "this workspace may not use AI models" in r.stdout + r.stderr
