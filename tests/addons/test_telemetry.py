"""The audit trail in-process, the spans caught by the SDK's in-memory exporter: what `redact`
lets out (the prompt scan's masking), an observed tool's and an MCP call's spans, and the pure
parts (operations and provider names per API, input messages, output text, keyed digests)."""

from __future__ import annotations

import json

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from addons.rules.genai import OutputText
from addons.rules.genai import digest
from addons.rules.genai import input_messages
from addons.rules.genai import operation_of
from addons.rules.genai import provider_name
from addons.rules.token_validation import TokenCache
from tests.addons.chain import full_chain
from tests.addons.test_auth import CountingValidator
from tests.addons.test_mcp_guard import SERVERS
from tests.addons.test_mcp_guard import call
from tests.addons.test_prompt_guard import GITHUB
from tests.addons.test_prompt_guard import MASK_KEY
from tests.addons.test_prompt_guard import chat

JSON = (b"Content-Type", b"application/json")


def catching(chain) -> InMemorySpanExporter:
    """The chain's spans go to memory instead of a collector."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    chain.addons["Telemetry"].tracer = provider.get_tracer("test")
    return exporter


async def test_redact_lets_out_the_prompt_as_the_scan_masked_it():
    with full_chain(aibridge_telemetry_endpoint="http://127.0.0.1:9", aibridge_telemetry_content="redact",
                    aibridge_dlp_action="mask", aibridge_dlp_mask_key=MASK_KEY) as chain:  # fmt: skip
        chain.addons["TokenAuth"].cache = TokenCache(CountingValidator())
        spans = catching(chain)
        connect = await chain.connect("api.openai.com")
        flow = await chain.send(connect, content=chat(f"my token is {GITHUB}"), headers=[JSON])
        answer = json.dumps({"model": "gpt-4o", "choices": [{"message": {"content": "noted"}}],
                             "usage": {"prompt_tokens": 3, "completion_tokens": 1}})  # fmt: skip
        await chain.answer(flow, body=answer.encode(), headers=[JSON])
        (span,) = spans.get_finished_spans()
        sent = span.attributes["gen_ai.input.messages"]
        assert "[REDACTED" in sent and GITHUB not in sent and "my token is" in sent
        assert "noted" in span.attributes["gen_ai.output.messages"]
        assert span.attributes["aibridge.dlp"] == "mask"


async def test_an_observed_tools_span_and_an_mcp_calls_span():
    with full_chain(aibridge_telemetry_endpoint="http://127.0.0.1:9", aibridge_mcp=json.dumps(SERVERS),
                    aibridge_observe=["mistral"]) as chain:  # fmt: skip
        chain.addons["TokenAuth"].cache = TokenCache(CountingValidator())
        spans = catching(chain)
        connect = await chain.connect("api.mistral.ai")
        flow = await chain.send(connect, content=b'{"model": "mistral-small"}', headers=[JSON])
        await chain.answer(flow, body=b'{"model": "mistral-small", "usage": {"prompt_tokens": 4, '
                                      b'"completion_tokens": 2}}', headers=[JSON])  # fmt: skip
        mcp = await chain.send(await chain.connect("mcp.example.com"), path="/mcp",
                               content=json.dumps(call(1, "delete_repo")).encode(), headers=[JSON])  # fmt: skip
        await chain.answer(mcp)
        by_name = {s.name: s.attributes for s in spans.get_finished_spans()}
        observed = by_name["chat mistral-small"]
        assert (observed["gen_ai.provider.name"], observed["aibridge.outcome"]) == (
            "mistral_ai",
            "observed",
        )
        assert observed["gen_ai.usage.input_tokens"] == 4
        tool = by_name["tools/call delete_repo"]
        assert (tool["mcp.method.name"], tool["gen_ai.tool.name"], tool["aibridge.outcome"]) == (
            "tools/call",
            "delete_repo",
            "denied",
        )
        assert tool["gen_ai.operation.name"] == "execute_tool" and tool["user.name"] == "alice"


@pytest.mark.parametrize("path, operation", [
    ("/v1/chat/completions", "chat"), ("/chat/completions", "chat"), ("/v1/messages", "chat"),
    ("/v1/responses", "chat"), ("/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
                                "generate_content"),
    ("/v1/embeddings", "embeddings"), ("/v1/engines/copilot-codex/completions", "text_completion"),
    ("/v1/models", None),
])  # fmt: skip
def test_the_operation_from_the_path(path, operation):
    assert operation_of(path) == operation


def test_provider_names_are_the_conventions_well_known_ones():
    assert provider_name("gemini", None) == "gcp.gemini"
    assert provider_name("copilot-business", None) == "github_copilot"
    assert provider_name(None, "cursor") == "cursor"  # an observed tool: its catalog entry
    assert provider_name(None, None) is None


def test_input_messages_and_output_text_in_every_shape():
    anthropic = {"system": "be brief", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "tool_result", "content": "42"}]}]}  # fmt: skip
    assert input_messages(json.dumps(anthropic).encode()) == [
        {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
        {"role": "user", "parts": [{"type": "text", "content": "hi"},
                                   {"type": "tool_call_response", "content": "42"}]}]  # fmt: skip
    assert input_messages(b'{"instructions": "x", "input": "y"}')[1]["parts"][0]["content"] == "y"
    assert input_messages(b"not json") == []
    stream = OutputText("text/event-stream")
    for event in ({"type": "content_block_delta", "delta": {"text": "Hel"}},
                  {"type": "content_block_delta", "delta": {"text": "lo"}}):  # fmt: skip
        data = f"data: {json.dumps(event)}\n\n".encode()
        stream.feed(data[:7])
        stream.feed(data[7:])
    assert stream.finish() == "Hello"
    gemini = OutputText("application/json")
    gemini.feed(b'{"candidates": [{"content": {"parts": [{"text": "G"}]}}]}')
    assert gemini.finish() == "G"


def test_digests_match_within_a_deployment_and_not_across():
    assert digest(b"key-a", "same prompt") == digest(b"key-a", "same prompt")
    assert digest(b"key-a", "same prompt") != digest(b"key-b", "same prompt")
    assert "same" not in digest(b"key-a", "same prompt")


async def test_values_a_client_or_gateway_controls_reach_spans_bounded_and_unkeyed_never():
    """A token in a session header leaves as a keyed digest; a gateway echoing a huge model
    (or a credential as the model) is digested and every other attribute capped."""
    with full_chain(aibridge_telemetry_endpoint="http://127.0.0.1:9") as chain:
        chain.addons["TokenAuth"].cache = TokenCache(CountingValidator())
        spans = catching(chain)
        connect = await chain.connect("api.openai.com")
        flow = await chain.send(connect, content=chat("hello"), headers=[JSON,
                                (b"X-Claude-Code-Session-Id", GITHUB.encode())])  # fmt: skip
        # the gateway echoes a credential the client put in `model` (dlp: flag lets it through)
        answer = {"model": GITHUB, "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
        await chain.answer(flow, body=json.dumps(answer).encode(), headers=[JSON])
        (span,) = spans.get_finished_spans()
        assert span.attributes["session.id"].startswith("h:")
        assert span.attributes["gen_ai.response.model"].startswith("unrecognised-model:")
        assert GITHUB not in json.dumps(dict(span.attributes)) and GITHUB not in span.name

        connect = await chain.connect("api.openai.com")
        flow = await chain.send(connect, content=json.dumps({"model": "m" * 200_002}).encode(),
                                headers=[JSON])  # fmt: skip
        await chain.answer(flow, body=b"{}", headers=[JSON])
        span = spans.get_finished_spans()[-1]
        assert len(span.name) <= 256
        assert all(len(v) <= 256 for v in span.attributes.values() if isinstance(v, str))

        connect = await chain.connect("api.openai.com")
        uuid = "0f8fad5b-d9cb-469f-a165-70867728950e"
        flow = await chain.send(connect, content=chat("hi"), headers=[JSON,
                                (b"X-Claude-Code-Session-Id", uuid.encode())])  # fmt: skip
        answer = {"model": "gpt-4o", "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
        await chain.answer(flow, body=json.dumps(answer).encode(), headers=[JSON])
        span = spans.get_finished_spans()[-1]
        assert span.attributes["session.id"] == uuid  # the client's own shape: as it is
        assert span.attributes["gen_ai.response.model"] == "gpt-4o"


def test_the_export_queue_is_bounded_in_bytes_as_well_as_spans(monkeypatch):
    """A collector that never answers: spans queue up to QUEUE_BYTES of attributes, and the
    rest are dropped and counted, not held."""
    from addons.observe import telemetry

    monkeypatch.setattr(telemetry, "QUEUE_BYTES", 3 * (1 << 20))
    dropped = []

    class Hanging(telemetry.SpanExporter):
        def export(self, spans):
            raise AssertionError("not reached: the batch waits for its schedule")

        def shutdown(self):
            pass

    counting = telemetry._CountingExporter(Hanging(), dropped.append)
    processor = telemetry._BoundedProcessor(counting)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    prompt = "p" * (1 << 20)  # a 1 MiB prompt under content: full
    for _ in range(10):
        with tracer.start_as_current_span("chat m") as span:
            span.set_attribute("gen_ai.input.messages", prompt)
    assert counting.pending == 2 and counting.pending_bytes <= 3 * (1 << 20)
    assert sum(dropped) == 8
    processor._batch_processor._queue.clear()  # (nothing to flush at shutdown)
    processor.shutdown()


async def test_the_request_model_is_known_without_a_rule_reading_the_body():
    """No rule holds the body: the model is read from its first bytes as they stream by (a
    large prompt after it), for the span and the access line."""
    from mitmproxy.proxy.layers import http as http_layer

    from tests.addons.chain import request_in_tunnel

    with full_chain(aibridge_telemetry_endpoint="http://127.0.0.1:9") as chain:
        chain.addons["TokenAuth"].cache = TokenCache(CountingValidator())
        spans = catching(chain)
        connect = await chain.connect("api.openai.com")
        body = json.dumps(
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 200_000}]}
        ).encode()
        flow = request_in_tunnel(connect, content=b"", headers=[JSON])
        await chain.hook(http_layer.HttpRequestHeadersHook(flow))
        assert callable(flow.request.stream)  # streamed on, never held
        for i in range(0, len(body), 16384):
            flow.request.stream(body[i : i + 16384])
        flow.request.stream(b"")
        flow.request.data.content = None  # (a streamed body is not kept)
        await chain.hook(http_layer.HttpRequestHook(flow))
        await chain.answer(flow, body=b"{}", headers=[JSON])  # an answer that names no model
        (span,) = spans.get_finished_spans()
        assert span.attributes["gen_ai.request.model"] == "gpt-4o"
