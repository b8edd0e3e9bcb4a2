"""PromptGuard in the whole chain, hooks in their real order: what a routed or observed request
carrying a credential becomes under block, mask and flag (global, or a rule's own), what the
record, the access log, the metrics and the page say, and that the value is never in any of
them."""

from __future__ import annotations

import json
import logging

import pytest
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers import websocket as ws_layer
from prometheus_client import generate_latest

from addons.core.record import RejectReason
from addons.core.record import existing_record
from addons.rules.prompt_dlp import placeholder
from addons.rules.token_validation import TokenCache
from tests.addons.chain import full_chain
from tests.addons.chain import request_in_tunnel
from tests.addons.test_auth import CountingValidator
from tests.addons.test_full_chain import UPGRADE
from tests.addons.test_full_chain import _websocket_message

GITHUB = "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"
MASK_KEY = "00" * 32
JSON = (b"Content-Type", b"application/json")
FLAG_FOR_QA = {"rules": [{"name": "qa-flags", "match": {"workspace": ["qa-*"]}, "origin": True,
                          "dlp": "flag"}]}  # fmt: skip


@pytest.fixture
def options():
    return {}


@pytest.fixture
async def chain(options):
    settings = dict(
        aibridge_dlp_action="block",
        aibridge_dlp_mask_key=MASK_KEY,
        aibridge_observe=["*.observed.example"],
    )
    settings.update(options)
    with full_chain(**settings) as c:
        c.addons["TokenAuth"].cache = TokenCache(CountingValidator())
        yield c


def chat(text: str) -> bytes:
    return json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"},
                                                       {"role": "user", "content": text}]}).encode()  # fmt: skip


def everything_said(caplog, chain) -> str:
    """Every log record (any level, with its fields), the metrics and the page's rows."""
    logs = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    metrics = generate_latest(chain.addons["Metrics"].registry).decode()
    rows = repr(chain.addons["RecentRequests"]._by_user)
    return logs + metrics + rows


async def test_block_answers_in_the_apis_own_shape_and_never_sends(chain, caplog):
    caplog.set_level(logging.DEBUG)
    connect = await chain.connect("api.anthropic.com")
    flow = await chain.send(connect, path="/v1/messages", content=chat(f"token {GITHUB}"),
                            headers=[JSON])  # fmt: skip
    assert flow.response.status_code == 400
    error = json.loads(flow.response.content)
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "a GitHub token in messages[1]" in error["error"]["message"]
    await chain.answer(flow)
    entry = existing_record(flow)
    assert entry.reject == RejectReason.DLP_BLOCKED
    (line,) = [r.fields for r in caplog.records if r.name == "aibridge.access"]
    assert line["dlp"] == "block:github-pat@messages[1]" and line["outcome"] == "denied"
    said = everything_said(caplog, chain)
    assert 'aibridge_proxy_dlp_findings_total{action="block",kind="github-pat"} 1.0' in said
    assert "blocked: a GitHub token in messages[1]" in said  # the page's row
    assert GITHUB not in said and GITHUB not in flow.response.text


@pytest.mark.parametrize("options", [{"aibridge_dlp_action": "mask"}])
async def test_mask_sends_the_placeholder_and_nothing_else_changed(chain, caplog):
    caplog.set_level(logging.DEBUG)
    connect = await chain.connect("api.openai.com")
    body = chat(f"token {GITHUB}")
    flow = await chain.send(connect, content=body, headers=[JSON])
    assert flow.response is None and flow.request.host == "coder.example.com"  # routed
    mark = placeholder("github-pat", GITHUB, bytes.fromhex(MASK_KEY))
    assert flow.request.content == body.replace(GITHUB.encode(), mark.encode())
    assert existing_record(flow).route.bytes_in == len(flow.request.content)
    await chain.answer(flow, body=b"{}")
    assert GITHUB not in everything_said(caplog, chain)


@pytest.mark.parametrize(
    "options",
    [{"aibridge_dlp_action": "mask",
      "aibridge_policy": json.dumps({"rules": [{"name": "mini", "match": {"model": ["gpt-4o"]},
                                                "route": {"provider": "openai", "model": "gpt-4o-mini"}}]})}],
)  # fmt: skip
async def test_a_model_rule_and_a_mask_both_apply_and_the_dump_sees_what_was_sent(chain, tmp_path):
    chain.tctx.options.update(aibridge_dump_dir=str(tmp_path))
    connect = await chain.connect("api.openai.com")
    flow = await chain.send(connect, content=chat(f"token {GITHUB}"), headers=[JSON])
    sent = json.loads(flow.request.content)
    assert (
        sent["model"] == "gpt-4o-mini" and "[REDACTED github-pat " in sent["messages"][1]["content"]
    )
    assert existing_record(flow).route.bytes_in == len(flow.request.content)
    await chain.answer(flow, body=b"{}")
    dumped = b"".join(p.read_bytes() for p in tmp_path.rglob("*.req.txt"))
    assert b"[REDACTED github-pat " in dumped and GITHUB.encode() not in dumped


@pytest.mark.parametrize("options", [{"aibridge_dlp_action": "mask"}])
async def test_a_large_body_is_scanned_in_the_worker_thread_and_masked(chain):
    connect = await chain.connect("api.openai.com")
    body = chat("some code\n" * 60_000 + f"token {GITHUB}")  # 600 KB: past IN_LOOP_BYTES
    flow = await chain.send(connect, content=body, headers=[JSON])
    mark = placeholder("github-pat", GITHUB, bytes.fromhex(MASK_KEY))
    assert flow.request.content == body.replace(GITHUB.encode(), mark.encode())


@pytest.mark.parametrize("options", [{"aibridge_dlp_action": "mask"}])
async def test_a_gzip_body_is_masked_and_sent_gzip(chain):
    import gzip

    connect = await chain.connect("api.openai.com")
    body = chat(f"token {GITHUB}")
    # the flow's content is encoded by its Content-Encoding, as the client sent it
    flow = await chain.send(connect, content=body, headers=[JSON, (b"Content-Encoding", b"gzip")])
    assert flow.request.headers["content-encoding"] == "gzip"
    mark = placeholder("github-pat", GITHUB, bytes.fromhex(MASK_KEY))
    assert gzip.decompress(flow.request.raw_content) == body.replace(GITHUB.encode(), mark.encode())


@pytest.mark.parametrize("options", [{"aibridge_dlp_action": "flag"}])
async def test_flag_sends_unchanged_and_records(chain, caplog, tmp_path):
    chain.tctx.options.update(aibridge_dump_dir=str(tmp_path))
    caplog.set_level(logging.INFO)
    connect = await chain.connect("api.openai.com")
    body = chat(f"token {GITHUB}")
    flow = await chain.send(connect, content=body, headers=[JSON])
    assert flow.response is None and flow.request.content == body
    await chain.answer(flow, body=b"{}")
    (line,) = [r.fields for r in caplog.records if r.name == "aibridge.access"]
    assert line["dlp"] == "flag:github-pat@messages[1]" and line["outcome"] == "routed"
    dumped = b"".join(p.read_bytes() for p in tmp_path.rglob("*.req.txt"))
    assert b"[REDACTED github-pat " in dumped and GITHUB.encode() not in dumped  # sent, not dumped


@pytest.mark.parametrize("options", [{"aibridge_policy": json.dumps(FLAG_FOR_QA)}])
async def test_a_rule_sets_its_own_action(chain):
    body = chat(f"token {GITHUB}")
    qa = await chain.send(await chain.connect("api.openai.com", user="qa-bob"), content=body)
    assert qa.response is None and existing_record(qa).dlp.action == "flag"
    other = await chain.send(await chain.connect("api.openai.com"), content=body)
    assert other.response.status_code == 400  # the global action: block


async def test_an_observed_tools_json_is_scanned_and_its_protobuf_recorded_unscanned(chain):
    connect = await chain.connect("api2.observed.example")
    flow = await chain.send(connect, path="/chat", content=chat(f"x {GITHUB}"), headers=[JSON])
    assert flow.response.status_code == 400
    grpc = await chain.send(connect, path="/aiserver.v1.Chat/Stream", content=b"\x00\x00\x00\x00\x05hello",
                            headers=[(b"Content-Type", b"application/grpc")])  # fmt: skip
    assert grpc.response is None and callable(grpc.request.stream)  # never held back
    assert existing_record(grpc).dlp.unscanned == "a binary protocol body"


async def test_shapes_that_once_passed_are_read(chain):
    """A JSON body labelled as gRPC on a routed host (its gateway speaks JSON APIs), and a
    GET with a JSON body, are read like any other body."""
    connect = await chain.connect("api.openai.com")
    grpc = await chain.send(connect, content=chat(f"x {GITHUB}"),
                            headers=[(b"Content-Type", b"application/grpc")])  # fmt: skip
    assert grpc.response is not None and grpc.response.status_code == 400
    get = await chain.send(connect, method="GET", content=chat(f"x {GITHUB}"), headers=[JSON])
    assert get.response is not None and get.response.status_code == 400


async def test_headers_and_query_strings_are_outside_dlps_scope_as_documented(chain):
    """The manual's DLP page: bodies and WebSocket messages are scanned (what a model reads);
    a query string or a custom header is not, and goes on as it is."""
    connect = await chain.connect("api.openai.com")
    flow = await chain.send(connect, path=f"/v1/chat/completions?note={GITHUB}",
                            content=chat("hello"), headers=[JSON, (b"X-Note", GITHUB.encode())])  # fmt: skip
    assert flow.response is None
    assert flow.request.headers["x-note"] == GITHUB and GITHUB in flow.request.path


async def test_ordinary_requests_pass_and_an_off_switch_holds_nothing(chain):
    connect = await chain.connect("api.openai.com")
    flow = await chain.send(connect, content=chat("def f():\n    return sha256(b'x').hexdigest()"))
    assert flow.response is None and existing_record(flow).dlp is None
    with full_chain(aibridge_dlp_action="off") as off:
        off.addons["TokenAuth"].cache = TokenCache(CountingValidator())
        tunnel = await off.connect("api.openai.com")
        streamed = request_in_tunnel(tunnel, content=chat(GITHUB))
        await off.hook(http_layer.HttpRequestHeadersHook(streamed))
        assert callable(streamed.request.stream)  # streamed as before: nothing held


@pytest.mark.parametrize(
    "options, status",
    [({"aibridge_dlp_max_bytes": 2048}, 413), ({"aibridge_dlp_max_bytes": 2048, "aibridge_dlp_on_error": "pass"}, None)],
)  # fmt: skip
async def test_a_body_over_max_bytes_follows_on_error(chain, caplog, status):
    caplog.set_level(logging.INFO)
    connect = await chain.connect("api.openai.com")
    flow = await chain.send(connect, content=chat("x" * 4096))
    assert (flow.response.status_code if flow.response else None) == status
    assert "dlp.max_bytes (2048 bytes)" in existing_record(flow).dlp.unscanned
    await chain.answer(flow, body=b"{}")
    (line,) = [r.fields for r in caplog.records if r.name == "aibridge.access"]
    assert line["dlp"] == ("block:unscanned" if status else "pass:unscanned")


async def _codex_session(chain, monkeypatch):
    """A Codex WebSocket session's upgrade, and the closes the guard asks for in it."""
    guard = chain.addons["PromptGuard"]
    closes = []
    monkeypatch.setattr(
        guard.websocket_closer, "close", lambda c, code, why: closes.append((code, why))
    )
    connect = await chain.connect("api.openai.com")
    flow = await chain.send(
        connect, method="GET", path="/v1/responses", headers=UPGRADE, content=b""
    )
    return flow, closes


@pytest.mark.parametrize("is_text", [True, False], ids=["text-frame", "binary-frame"])
@pytest.mark.parametrize("options", [{"aibridge_dlp_action": "mask"}, {}])
async def test_codex_websocket_messages_are_masked_or_close_the_session(
    chain, monkeypatch, options, is_text
):
    flow, closes = await _codex_session(chain, monkeypatch)
    message = _websocket_message(flow, json.dumps({"type": "response.create", "model": "gpt-5",
                                                   "input": [{"role": "user", "content": f"k {GITHUB}"}]}).encode(),
                                 is_text=is_text)  # fmt: skip
    await chain.hook(ws_layer.WebsocketMessageHook(flow))
    if options:  # mask
        assert closes == [] and GITHUB.encode() not in message.content
        assert b"[REDACTED github-pat " in message.content
    else:
        assert message.dropped and closes == [(1008, "DLP: a GitHub token in input[0]")]


@pytest.mark.parametrize(
    "options, dropped",
    [({"aibridge_dlp_unreadable": "pass"}, False), ({"aibridge_dlp_unreadable": "block"}, True)],
)
async def test_a_binary_websocket_message_that_is_not_text_is_a_decision(
    chain, monkeypatch, caplog, options, dropped
):
    flow, closes = await _codex_session(chain, monkeypatch)
    message = _websocket_message(flow, b"\x00\x01\xff binary " + GITHUB.encode(), is_text=False)
    await chain.hook(ws_layer.WebsocketMessageHook(flow))
    assert message.dropped == dropped and bool(closes) == dropped
    assert any("could not scan a WebSocket message" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "bad, problem",
    [
        ({"aibridge_dlp_action": "maybe"}, "aibridge_dlp_action must be one of"),
        ({"aibridge_dlp_patterns": '[{"name": "x", "regex": "("}]'}, "dlp.patterns[0] (x)"),
        ({"aibridge_dlp_patterns": "[{"}, "aibridge_dlp_patterns is not JSON"),
        ({"aibridge_dlp_mask_key": "zz"}, "aibridge_dlp_mask_key must be hex"),
        ({"aibridge_dlp_max_bytes": 10}, "aibridge_dlp_max_bytes must be at least 1024"),
    ],
)
def test_broken_settings_are_refused_with_their_name(bad, problem):
    from mitmproxy import exceptions
    from mitmproxy.test import taddons

    from addons.govern.prompt_guard import PromptGuard
    from addons.routing.snapshot import Routing

    with taddons.context(PromptGuard(Routing())) as tctx:
        with pytest.raises(exceptions.OptionsError) as e:
            tctx.options.update(**bad)
    assert problem in str(e.value)
