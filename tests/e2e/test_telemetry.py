"""The audit trail end to end: the real proxy exports one span per AI request over OTLP/HTTP to
a receiver that decodes real protobuf; the openai and anthropic SDKs, configured only by the
environment, make the requests. Checked: the GenAI attributes per API, who and what, a denied
request, the client's trace continued and carried on to the gateway, content policies, a
collector that goes away and comes back, and no token in any exported byte."""

from __future__ import annotations

import base64
import subprocess
import sys
import time

import pytest
import yaml

from proxy.devtools.localgateway import REPLY
from tests.support import ALICE
from tests.support import ProxyProcess
from tests.support import base_env
from tests.support import metric
from tests.support.otlp import OtlpReceiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def receiver():
    r = OtlpReceiver().start()
    yield r
    r.close()


def start_proxy(tmp, gateway_server, receiver, **telemetry) -> ProxyProcess:
    config = {
        "gateway": gateway_server.url,
        "telemetry": {"otlp_endpoint": receiver.url, **telemetry},
        "rules": [{"name": "no-forbidden-models", "match": {"model": ["forbidden-*"]},
                   "deny": {"status": 403, "message": "that model is not approved"}}],
    }  # fmt: skip
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return ProxyProcess(tmp / "state", ["--config", str(path)]).start()


@pytest.fixture(scope="module")
def traced(gateway_server, receiver, tmp_path_factory):
    p = start_proxy(tmp_path_factory.mktemp("traced"), gateway_server, receiver, content="hash")
    yield p
    p.stop()


SDK_SCRIPT = """
import os, sys, openai, anthropic
kind = sys.argv[1]
headers = {"traceparent": os.environ["CLIENT_TRACEPARENT"]}
if kind == "chat":
    c = openai.OpenAI(api_key="sk-user")
    r = c.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "same prompt"}],
                                  extra_headers=headers)
    print(r.choices[0].message.content)
elif kind == "chat-stream":
    c = openai.OpenAI(api_key="sk-user")
    s = c.chat.completions.create(model="gpt-test", stream=True, extra_headers=headers,
                                  messages=[{"role": "user", "content": "same prompt"}])
    print("".join(ch.choices[0].delta.content or "" for ch in s if ch.choices))
elif kind == "responses":
    c = openai.OpenAI(api_key="sk-user")
    print(c.responses.create(model="gpt-test", input="hello there", extra_headers=headers).output_text)
elif kind == "anthropic":
    c = anthropic.Anthropic(api_key="sk-ant-user")
    m = c.messages.create(model="claude-test", max_tokens=64, extra_headers=headers,
                          messages=[{"role": "user", "content": "hi"}])
    print(m.content[0].text)
elif kind == "denied":
    c = openai.OpenAI(api_key="sk-user", max_retries=0)
    try:
        c.chat.completions.create(model="forbidden-1", messages=[{"role": "user", "content": "x"}])
    except openai.PermissionDeniedError as e:
        print("denied", e.status_code)
"""


def sdk(p: ProxyProcess, kind: str) -> str:
    env = {**base_env(), "HTTPS_PROXY": p.url(ALICE), "SSL_CERT_FILE": str(p.bundle_path),
           "CLIENT_TRACEPARENT": TRACEPARENT}  # fmt: skip
    r = subprocess.run([sys.executable, "-c", SDK_SCRIPT, kind], env=env, capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def spans_for(receiver, count: int, where, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while True:
        found = [s for s in receiver.spans if where(s)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.mark.parametrize("kind, path, provider, model, operation", [
    ("chat", "/v1/chat/completions", "openai", "gpt-test", "chat"),
    ("chat-stream", "/v1/chat/completions", "openai", "gpt-test", "chat"),
    ("responses", "/v1/responses", "openai", "gpt-test", "chat"),
    ("anthropic", "/v1/messages", "anthropic", "claude-test", "chat"),
])  # fmt: skip
def test_one_genai_span_per_request_continuing_the_clients_trace(
    traced, receiver, gateway, kind, path, provider, model, operation
):
    before = len(receiver.spans)
    assert REPLY in sdk(traced, kind)
    (span,) = spans_for(receiver, 1, lambda s: s in receiver.spans[before:]
                        and s.attributes.get("url.path") == path)  # fmt: skip
    a = span.attributes
    assert span.name == f"{operation} {model}"
    assert (a["gen_ai.operation.name"], a["gen_ai.provider.name"]) == (operation, provider)
    assert a["gen_ai.request.model"] == model
    if kind != "chat-stream":  # a chat stream says its usage only when asked (include_usage)
        assert a["gen_ai.response.model"] == model
        assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (5, 8)
    assert (a["server.address"], a["user.name"], a["aibridge.outcome"]) == (
        f"api.{provider}.com",
        "alice",
        "routed",
    )
    assert a["http.response.status_code"] == 200 and a["aibridge.client.tool"]
    assert span.resource["service.name"] == "aibridge-proxy"
    assert span.resource["service.instance.id"] and span.resource["service.version"]
    # the client's trace, continued; ours carried on to the gateway
    assert span.trace_id == TRACE_ID and span.parent_span_id == "00f067aa0ba902b7"
    sent = gateway.last().header("traceparent")
    assert sent == f"00-{TRACE_ID}-{span.span_id}-01"
    # hash: digests of the prompt and of the answer, never the text
    assert len(a["aibridge.input.message_digests"]) >= 1 and a["aibridge.output.digest"]
    assert "gen_ai.input.messages" not in a


def test_the_same_prompt_hashes_the_same(traced, receiver):
    before = len(receiver.spans)
    sdk(traced, "chat")
    sdk(traced, "chat-stream")
    spans = spans_for(receiver, 2, lambda s: s in receiver.spans[before:])
    digests = {tuple(s.attributes["aibridge.input.message_digests"]) for s in spans}
    outputs = {s.attributes["aibridge.output.digest"] for s in spans}
    assert len(digests) == 1 and len(outputs) == 1  # streamed or not, the same text


def test_a_denied_request_is_a_span_naming_the_rule(traced, receiver):
    before = len(receiver.spans)
    assert "denied 403" in sdk(traced, "denied")
    (span,) = spans_for(receiver, 1, lambda s: s in receiver.spans[before:])
    a = span.attributes
    assert (a["aibridge.outcome"], a["aibridge.rule"], a["http.response.status_code"]) == (
        "denied",
        "no-forbidden-models",
        403,
    )
    assert a["gen_ai.request.model"] == "forbidden-1" and span.status_code == 2  # ERROR


def test_no_token_or_key_in_any_exported_byte(traced, receiver):
    sdk(traced, "chat")
    spans_for(receiver, 1, lambda s: True)
    exported = b"".join(receiver.bodies)
    for secret in (ALICE, "sk-user", "sk-ant-user"):
        assert secret.encode() not in exported
        assert base64.b64encode(secret.encode()) not in exported


def test_full_content_and_a_collector_that_goes_away(gateway_server, receiver, tmp_path):
    p = start_proxy(tmp_path, gateway_server, receiver, content="full")
    try:
        assert "prompts and answers leave the proxy" in p.output  # the loud warning
        before = len(receiver.spans)
        sdk(p, "chat")
        (span,) = spans_for(receiver, 1, lambda s: s in receiver.spans[before:])
        assert "same prompt" in span.attributes["gen_ai.input.messages"]
        assert REPLY in span.attributes["gen_ai.output.messages"]
        receiver.stop()  # the collector goes away: requests go on, spans are dropped
        started = time.monotonic()
        for _ in range(3):
            assert REPLY in sdk(p, "chat")
        assert time.monotonic() - started < 30
        deadline = time.monotonic() + 20
        while metric(p.admin("/metrics").text, "aibridge_proxy_telemetry_dropped_total") < 3:
            assert time.monotonic() < deadline, "dropped spans were not counted"
            time.sleep(0.5)
        outage = [ln for ln in p.json_lines() if "collector cannot take spans" in ln.get("msg", "")]
        assert len(outage) == 1  # once per outage, and nothing per retry or batch
        assert not [ln for ln in p.json_lines() if ln.get("logger", "").startswith("opentelemetry")]
        receiver.start()  # back, on the same port: export resumes
        before = len(receiver.spans)
        sdk(p, "anthropic")
        assert spans_for(receiver, 1, lambda s: s in receiver.spans[before:], timeout=20)
    finally:
        if receiver._runner is None:  # the module's other tests use it too
            receiver.start()
        p.stop()


@pytest.mark.parametrize("tool, header", [("claude", "X-Claude-Code-Session-Id"),
                                          ("codex", "session-id")])  # fmt: skip
def test_the_real_clients_sessions_become_session_id(
    traced, receiver, gateway, tmp_path, tool, header
):
    """What each client sends as its session key, read from its real traffic: the span's
    session.id is the header the gateway received."""
    from tests.e2e.test_real_clients import CLAUDE
    from tests.e2e.test_real_clients import CODEX
    from tests.e2e.test_real_clients import run
    from tests.e2e.test_real_clients import tool_env

    exe = CLAUDE if tool == "claude" else CODEX
    if not exe.exists():
        pytest.skip(f"{tool} not installed (./run setup)")
    if tool == "claude":
        env = tool_env(traced, tmp_path, NODE_EXTRA_CA_CERTS=str(traced.ca_path),
                       ANTHROPIC_API_KEY="sk-ant-personal", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")  # fmt: skip
        cmd = [str(exe), "-p", "say hi"]
    else:
        env = tool_env(
            traced, tmp_path, CODEX_CA_CERTIFICATE=str(traced.ca_path), OPENAI_API_KEY=ALICE
        )
        cmd = [str(exe), "exec", "--skip-git-repo-check", "say hi"]
    before = len(receiver.spans)
    r, _ = run(cmd, env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    sent = [rec.header(header) for rec in gateway.records if rec.header(header)]
    assert sent, f"{tool} sent no {header}"
    spans = spans_for(receiver, 1, lambda s: s in receiver.spans[before:]
                      and s.attributes.get("session.id") == sent[-1])  # fmt: skip
    assert spans and spans[0].attributes["aibridge.client.tool"]
