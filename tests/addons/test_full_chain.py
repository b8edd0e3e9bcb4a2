"""The whole chain in-process, hooks in their real order: what each refusal records (the
access log's reason, the page's explanation), and that the pieces share one record."""

from __future__ import annotations

import json
import logging

import pytest

from addons.core.record import RejectReason
from addons.core.record import existing_record
from addons.rules.token_validation import TokenCache
from tests.addons.chain import full_chain
from tests.addons.test_auth import CountingValidator

MODEL_RULE = {
    "rules": [
        {"name": "no-o1", "match": {"model": ["o1*"]}, "deny": {"status": 403, "message": "no"}}
    ]
}


@pytest.fixture
async def chain():
    with full_chain(
        aibridge_policy=json.dumps(MODEL_RULE), aibridge_observe=["*.observed.example"]
    ) as c:
        # validate mode, with the gateway's answers from a local table (tok-alice -> alice)
        c.addons["TokenAuth"].cache = TokenCache(CountingValidator())
        yield c


def access_lines(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == "aibridge.access"]


JSON = (b"Content-Type", b"application/json")


@pytest.mark.parametrize(
    "headers, content, without, status, reason, problem",
    [
        ([JSON], b"{}" * (8 << 20) + b"{}", [], 413, RejectReason.BODY_TOO_LARGE,
         "larger than the proxy reads"),
        ([JSON], b"not json!", [], 400, RejectReason.MODEL_UNREADABLE, "the body has none"),
    ],
)  # fmt: skip
async def test_each_unreadable_body_refusal_carries_its_own_reason(
    chain, caplog, headers, content, without, status, reason, problem
):
    caplog.set_level(logging.INFO, logger="aibridge.access")
    connect = await chain.connect("api.openai.com")
    flow = await chain.send(connect, headers=headers, content=content, without=without)
    await chain.answer(flow)
    assert flow.response.status_code == status
    assert json.loads(flow.response.content)["error"]  # the API's error shape
    assert existing_record(flow).reject is reason
    (line,) = access_lines(caplog)
    assert (line["status"], line["reason"], line["user"]) == (status, reason, "alice")
    (recent,) = chain.addons["RecentRequests"].of("alice")
    assert problem in recent.problem and recent.status == status


async def test_a_denied_model_is_denied_and_an_allowed_one_routed(chain):
    connect = await chain.connect("api.openai.com")
    body = b'{"model": "o1-mini"}'
    headers = [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(body))]
    denied = await chain.send(connect, headers=headers, content=body)
    assert denied.response.status_code == 403
    assert existing_record(denied).reject is RejectReason.RULE_DENIED
    body = b'{"model": "gpt-4o"}'
    headers = [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(body))]
    routed = await chain.send(connect, headers=headers, content=body)
    assert routed.response is None
    assert routed.request.host == "coder.example.com"
    assert routed.request.path == "/api/v2/aibridge/openai/v1/chat/completions"
    assert routed.request.content == body  # the exact bytes


async def test_a_body_too_deep_to_read_is_refused_when_a_rule_needs_its_model(chain):
    connect = await chain.connect("api.openai.com")
    body = b'{"model": "o1-preview", "x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    flow = await chain.send(connect, headers=[JSON], content=body)
    assert flow.response.status_code == 400  # neither denied nor routed past the rule
    assert existing_record(flow).reject is RejectReason.MODEL_UNREADABLE
    assert flow.request.host == "api.openai.com"  # never rewritten to the gateway


async def test_rules_that_fail_to_decide_on_the_body_fail_closed(chain, monkeypatch):
    def broken(flow):
        raise RuntimeError("a bug in a rule path")

    monkeypatch.setattr(chain.addons["RoutingRules"], "request", broken)
    connect = await chain.connect("api.openai.com")
    flow = await chain.send(connect, headers=[JSON], content=b'{"model": "o1-preview"}')
    assert flow.response.status_code == 500
    assert flow.request.host == "api.openai.com"


def model_request(body: bytes, media: bytes = b"application/json"):
    return {"headers": [(b"Content-Type", media)], "content": body}


@pytest.mark.parametrize("host", ["api.openai.com", "chat.observed.example"])
async def test_a_body_without_a_content_length_is_read_and_the_rule_applies(chain, host):
    """Chunked (or HTTP/2 without a length): read up to the limit, never passed unread."""
    connect = await chain.connect(host)
    flow = await chain.send(
        connect, without=["content-length"], **model_request(b'{"model": "o1-preview"}')
    )
    assert flow.response.status_code == 403
    assert existing_record(flow).reject is RejectReason.RULE_DENIED


@pytest.mark.parametrize(
    "body, media",
    [
        (b'{"model": "o1-preview"}', b"text/plain"),  # JSON under another name
        (b'{"model": "o1-preview"}', b""),
        (b'{"model": "o1-preview"}', b"application/octet-stream"),
    ],
)
async def test_observed_hosts_apply_model_denies_whatever_the_body_is_labelled(chain, body, media):
    connect = await chain.connect("chat.observed.example")
    flow = await chain.send(connect, **model_request(body, media))
    assert flow.response.status_code == 403
    assert flow.request.host == "chat.observed.example"


async def test_observed_hosts_refuse_a_body_the_rule_needs_but_cannot_read(chain):
    connect = await chain.connect("chat.observed.example")
    body = b'{"model": "o1-preview", "note": "\xff"}'  # one byte that is not UTF-8
    flow = await chain.send(connect, **model_request(body))
    assert flow.response.status_code == 400
    assert existing_record(flow).reject is RejectReason.MODEL_UNREADABLE


@pytest.mark.parametrize("media", [b"application/grpc", b"application/connect+proto"])
async def test_an_observed_tools_binary_protocol_is_exempt_and_streams(chain, media):
    connect = await chain.connect("chat.observed.example")
    flow = await chain.send(connect, **model_request(b"\x00\x00\x00\x00\x05hello", media))
    assert flow.response is None  # sent on, not held back for a model
    assert flow.request.stream


async def test_a_request_without_a_body_has_no_model_and_goes_on(chain):
    connect = await chain.connect("api.openai.com")
    flow = await chain.send(connect, method="GET", path="/v1/models", content=b"")
    assert flow.response is None
    assert flow.request.host == "coder.example.com"


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "o1-preview", "model": "gpt-4o-mini"}',  # we read one, a gateway another
        b'{"model": "gpt-4o-mini", "model": "o1-preview"}',
        b'{"MODEL": "o1-preview"}',  # a Go struct decoder takes it for model
        b'{"mod\\u0065l": "o1-preview", "model": "gpt-4o"}',
    ],
)
async def test_an_ambiguous_body_is_refused_when_a_model_rule_applies(chain, body):
    connect = await chain.connect("api.openai.com")
    flow = await chain.send(connect, **model_request(body))
    assert flow.response.status_code == 400
    assert existing_record(flow).reject is RejectReason.MODEL_UNREADABLE
    assert b"twice" in flow.response.content or b"take for" in flow.response.content
    assert flow.request.host == "api.openai.com"


@pytest.fixture
async def path_rules():
    policy = {
        "rules": [
            {"name": "no-files", "match": {"path": ["/v1/files", "/v1/audio/*"]},
             "deny": {"status": 403, "message": "no files"}},
            {"name": "no-pro", "match": {"model": ["gemini-2.5-pro"]},
             "deny": {"status": 403, "message": "no pro"}},
        ]
    }  # fmt: skip
    providers = ["api.openai.com=openai", "generativelanguage.googleapis.com=gemini"]
    with full_chain(aibridge_policy=json.dumps(policy), aibridge_providers=providers) as c:
        c.addons["TokenAuth"].cache = TokenCache(CountingValidator())
        yield c


@pytest.mark.parametrize(
    "host, path, status",
    [
        ("api.openai.com", "/v1/%66iles", 403),
        ("api.openai.com", "/v1/fil%65s", 403),
        ("api.openai.com", "/v1/%61udio/speech", 403),
        ("api.openai.com", "/v1/audio%2Fspeech", 403),  # the rule sees the gateway's reading
        ("api.openai.com", "/v1/chat%2Fcompletions", 400),  # ambiguous: one segment or two
        ("api.openai.com", "//v1/files", 400),
        ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-pr%6f:generateContent", 403),
        ("generativelanguage.googleapis.com", "/v1beta/models/%67emini-2.5-pro:generateContent", 403),
        ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-pro%3AgenerateContent", 403),
    ],
)  # fmt: skip
async def test_percent_encoding_does_not_step_around_path_and_model_rules(
    path_rules, host, path, status
):
    connect = await path_rules.connect(host)
    flow = await path_rules.send(connect, path=path, **model_request(b"{}"))
    assert flow.response is not None and flow.response.status_code == status
    assert flow.request.host == host  # never sent on


async def test_an_allowed_path_is_forwarded_with_its_raw_spelling(path_rules):
    connect = await path_rules.connect("api.openai.com")
    flow = await path_rules.send(
        connect, path="/v1/chat/%63ompletions?x=%41", **model_request(b"{}")
    )
    assert flow.response is None
    assert flow.request.path == "/api/v2/aibridge/openai/v1/chat/%63ompletions?x=%41"


async def test_an_observed_body_that_is_not_json_at_all_goes_on(chain):
    connect = await chain.connect("chat.observed.example")
    flow = await chain.send(connect, **model_request(b"x" * 100, b""))
    assert flow.response is None and flow.request.host == "chat.observed.example"
    flow = await chain.send(connect, **model_request(b'\xef\xbb\xbf {"model": "o1-preview"'))
    assert flow.response.status_code == 400  # starts like JSON: must be readable


def _websocket_message(flow, content: bytes, is_text: bool = True):
    from mitmproxy import websocket
    from wsproto.frame_protocol import Opcode

    if flow.websocket is None:
        flow.websocket = websocket.WebSocketData()
    opcode = Opcode.TEXT if is_text else Opcode.BINARY
    flow.websocket.messages.append(websocket.WebSocketMessage(opcode, True, content))
    return flow.websocket.messages[-1]


UPGRADE = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]


@pytest.mark.parametrize(
    "content, is_text, closed",
    [
        (b'{"type": "response.create", "model": "gpt-4o"}', True, False),
        (b'{"type": "response.create", "model": "o1-preview"}', True, True),  # denied
        (b'{"type": "response.create", "model": "o1-preview"}', False, True),  # binary frame
        (b'{"type": "response.create", "model": "gpt-4o", "model": "o1-preview"}', True, True),
        (b'{"type": "response.create", "MODEL": "o1-preview"}', True, True),
        (b'{"type": "response.create", "n": ' + b"9" * 5000 + b"}", True, True),
        (b'{"type": "response.create", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", True, True),
        (b"not json", True, True),
    ],
)
async def test_websocket_messages_the_rules_cannot_read_unambiguously_close_the_session(
    chain, monkeypatch, content, is_text, closed
):
    from mitmproxy.proxy.layers import websocket as ws_layer

    rules = chain.addons["RoutingRules"]
    closes = []
    monkeypatch.setattr(rules.websocket_closer, "close", lambda c, code, why: closes.append(code))
    connect = await chain.connect("api.openai.com")
    flow = await chain.send(connect, method="GET", path="/v1/responses", headers=UPGRADE,
                            content=b"")  # fmt: skip
    message = _websocket_message(flow, content, is_text)
    await chain.hook(ws_layer.WebsocketMessageHook(flow))
    assert (closes == [1008]) is closed
    assert message.dropped is closed


async def test_an_observed_tools_own_websocket_frames_pass(chain, monkeypatch):
    from mitmproxy.proxy.layers import websocket as ws_layer

    rules = chain.addons["RoutingRules"]
    closes = []
    monkeypatch.setattr(rules.websocket_closer, "close", lambda c, code, why: closes.append(code))
    connect = await chain.connect("chat.observed.example")
    flow = await chain.send(connect, method="GET", path="/ws", headers=UPGRADE, content=b"")
    for content, is_text in ((b"\x00\x01binary", False), (b"ping", True)):
        _websocket_message(flow, content, is_text)
        await chain.hook(ws_layer.WebsocketMessageHook(flow))
    assert closes == []
    _websocket_message(flow, b'{"type": "response.create", "model": "o1-preview"}')
    await chain.hook(ws_layer.WebsocketMessageHook(flow))
    assert closes == [1008]
