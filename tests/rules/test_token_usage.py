"""Token usage from each provider's response shape, however the body is cut into chunks and
however it is compressed; unreadable bodies give no usage rather than zeros."""

from __future__ import annotations

import gzip
import json
import zlib

import brotli
import pytest
from hypothesis import given
from hypothesis import strategies as st

from addons.rules.token_usage import JSON_LIMIT
from addons.rules.token_usage import Usage
from addons.rules.token_usage import UsageReader


def sse(*events: dict | str, named: bool = False) -> bytes:
    out = b""
    for e in events:
        data = e if isinstance(e, str) else json.dumps(e)
        name = f"event: {e['type']}\n" if named and isinstance(e, dict) else ""
        out += f"{name}data: {data}\n\n".encode()
    return out


CHAT_SSE = sse(
    {"model": "gpt-4o", "choices": [{"delta": {"content": "a"}}], "usage": None},
    {"model": "gpt-4o", "choices": [{"delta": {"content": "b"}}], "usage": None},
    {"model": "gpt-4o", "choices": [], "usage": {
        "prompt_tokens": 100, "completion_tokens": 20,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 12}}},
    "[DONE]",
)  # fmt: skip
RESPONSES_SSE = sse(
    {"type": "response.created", "response": {"model": "o4-mini", "usage": None}},
    {"type": "response.output_text.delta", "delta": "hi"},
    {"type": "response.completed", "response": {"model": "o4-mini", "usage": {
        "input_tokens": 50, "output_tokens": 30,
        "input_tokens_details": {"cached_tokens": 10},
        "output_tokens_details": {"reasoning_tokens": 25}}}},
)  # fmt: skip
ANTHROPIC_SSE = sse(
    {"type": "message_start", "message": {"model": "claude-sonnet-4-5", "usage": {
        "input_tokens": 7, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200,
        "output_tokens": 1}}},
    {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "usage"}},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 42}},
    {"type": "message_stop"},
    named=True,
)  # fmt: skip
GEMINI_SSE = sse(
    {"candidates": [], "modelVersion": "gemini-2.5-flash", "usageMetadata": {
        "promptTokenCount": 9, "candidatesTokenCount": 1}},
    {"candidates": [], "modelVersion": "gemini-2.5-flash", "usageMetadata": {
        "promptTokenCount": 9, "candidatesTokenCount": 15, "thoughtsTokenCount": 5,
        "cachedContentTokenCount": 4}},
)  # fmt: skip

CASES = {
    "openai-chat-sse": ("text/event-stream", CHAT_SSE, Usage("gpt-4o", 100, 20, 64, 12)),
    "openai-responses-sse": ("text/event-stream", RESPONSES_SSE, Usage("o4-mini", 50, 30, 10, 25)),
    "anthropic-sse": ("text/event-stream", ANTHROPIC_SSE,
                      Usage("claude-sonnet-4-5", 1207, 42, 1000, None)),
    "gemini-sse": ("text/event-stream", GEMINI_SSE, Usage("gemini-2.5-flash", 9, 20, 4, 5)),
    "openai-chat-json": ("application/json", json.dumps({
        "model": "gpt-4o-mini", "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4}}).encode(),
        Usage("gpt-4o-mini", 3, 4, None, None)),
    "openai-responses-json": ("application/json; charset=utf-8", json.dumps({
        "object": "response", "model": "gpt-5", "usage": {
            "input_tokens": 8, "output_tokens": 9, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 6}}}).encode(),
        Usage("gpt-5", 8, 9, 0, 6)),
    "anthropic-json": ("application/json", json.dumps({
        "type": "message", "model": "claude-haiku-4-5",
        "usage": {"input_tokens": 12, "output_tokens": 34}}).encode(),
        Usage("claude-haiku-4-5", 12, 34, None, None)),
    "gemini-json-array": ("application/json", json.dumps([
        {"usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 1}},
        {"modelVersion": "gemini-2.5-pro",
         "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 5}}]).encode(),
        Usage("gemini-2.5-pro", 2, 5, None, None)),
}  # fmt: skip


def read(content_type: str, chunks, encoding: str = "") -> Usage | None:
    reader = UsageReader(content_type, encoding)
    for chunk in chunks:
        reader.feed(chunk)
    return reader.finish()


@pytest.mark.parametrize("name", CASES)
def test_each_shape_whole(name):
    content_type, body, expected = CASES[name]
    assert read(content_type, [body]) == expected


@pytest.mark.parametrize("name", CASES)
def test_each_shape_one_byte_at_a_time(name):
    content_type, body, expected = CASES[name]
    assert read(content_type, [body[i : i + 1] for i in range(len(body))]) == expected


@given(st.lists(st.integers(min_value=1, max_value=len(CHAT_SSE)), max_size=12))
def test_any_cut_of_a_stream_gives_the_same_usage(cuts):
    points = sorted(set(cuts))
    pieces = [CHAT_SSE[a:b] for a, b in zip([0, *points], [*points, len(CHAT_SSE)], strict=True)]
    assert read("text/event-stream", pieces) == CASES["openai-chat-sse"][2]


@pytest.mark.parametrize(
    "encoding, compress",
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("br", brotli.compress),
    ],
)
def test_compressed_bodies_are_read(encoding, compress):
    for name in ("openai-chat-sse", "anthropic-json"):
        content_type, body, expected = CASES[name]
        packed = compress(body)
        chunks = [packed[i : i + 7] for i in range(0, len(packed), 7)]
        assert read(content_type, chunks, encoding) == expected


@pytest.mark.parametrize(
    "content_type, chunks, encoding",
    [
        ("text/event-stream", [b"data: {not json}\n\n", b"data: [DONE]\n\n"], ""),
        ("application/json", [b'{"model": "m", "choices": []}'], ""),  # no usage block
        ("application/json", [b'{"usage": {"prompt_tokens": 1'], ""),  # cut short
        ("application/json", [b'{"usage": {"prompt_tokens": "many"}}'], ""),
        ("application/octet-stream", [CASES["openai-chat-json"][1]], ""),
        ("text/event-stream", [CHAT_SSE], "zstd"),  # an encoding we cannot undo
        ("text/event-stream", [b"\x1f\x8b garbage"], "gzip"),
        ("application/json", [b" " * (JSON_LIMIT + 1), CASES["openai-chat-json"][1]], ""),
    ],
)
def test_unreadable_bodies_give_no_usage(content_type, chunks, encoding):
    assert read(content_type, chunks, encoding) is None


def test_token_fields_leave_out_what_is_unknown():
    assert Usage("m", 1, 2).token_fields() == {"input_tokens": 1, "output_tokens": 2}


def test_an_endless_sse_line_is_skipped_and_what_follows_is_read():
    endless = b"data: " + b"x" * (2 * 1024 * 1024)
    assert (
        read("text/event-stream", [endless[:100], endless[100:], b"\n\n", CHAT_SSE])
        == (CASES["openai-chat-sse"][2])
    )


def test_merged_keeps_what_the_later_part_does_not_say():
    first = Usage(model="m", input_tokens=10, output_tokens=1, cached_tokens=4)
    later = Usage(output_tokens=7, reasoning_tokens=2)
    assert first.merged(later) == Usage("m", 10, 7, 4, 2)
    assert first.merged(Usage()) == first
    assert Usage().merged(first) == first


def _gzip_stream(data: bytes) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    return z.compress(data) + z.flush()


@pytest.mark.parametrize(
    "encoding, compress",
    [("gzip", _gzip_stream), ("br", lambda data: brotli.compress(data, quality=5))],
)
@pytest.mark.parametrize("media", ["text/event-stream", "application/json"])
def test_a_decompression_bomb_stops_the_reading_not_the_stream(encoding, compress, media):
    """A few KB that unpack to 64 MB (or a gigabyte): decoded no further than the budget."""
    from addons.rules.content_decoding import DECODED_LIMIT

    line = b'data: {"usage": {"prompt_tokens": 1}}\n' if media == "text/event-stream" else b" "
    bomb = compress(line * ((1 << 26) // len(line)))
    assert len(bomb) < 4 * 1024 * 1024
    reader = UsageReader(media, encoding)
    for i in range(0, len(bomb), 16384):
        reader.feed(bomb[i : i + 16384])
    assert not reader.active
    assert reader._decoder._left >= -(1 << 20)  # decoded a step past the budget at most
    assert reader.finish() is None  # no partial count passes for the whole
    assert DECODED_LIMIT < 1 << 26


def test_many_short_lines_are_read_in_linear_time():
    """The line loop was quadratic: a ~24 KB gzip SSE answer stalled the worker for seconds."""
    import time

    from addons.rules.token_usage import EVENT_LIMIT

    body = (
        b'data: {"model": "m"}\n'
        + b"data: x\n" * 1_000_000
        + b'data: {"usage": {"prompt_tokens": 5}}\n'
    )
    reader = UsageReader("text/event-stream")
    started = time.process_time()
    reader.feed(body)  # one chunk holding a million lines
    elapsed = time.process_time() - started
    assert reader.finish() == Usage(model="m", input_tokens=5)
    # compared with one pass over the same bytes, not with a wall-clock limit
    baseline_start = time.process_time()
    for _ in body.split(b"\n"):
        pass
    baseline = time.process_time() - baseline_start
    assert elapsed < 50 * max(baseline, 1e-3)
    events = b'data: {"model": "m", "usage": {}}\n' * (EVENT_LIMIT + 1)
    reader = UsageReader("text/event-stream")
    reader.feed(events)
    assert not reader.active and reader.finish() is None


@pytest.mark.parametrize("count", ["9" * 4299, "10000000000000", "-1", "1e30", "true"])
def test_token_counts_out_of_range_are_not_counts(count):
    body = b'{"usage": {"prompt_tokens": %s, "completion_tokens": 2}}' % count.encode()
    reader = UsageReader("application/json")
    reader.feed(body)
    usage = reader.finish()
    assert usage is not None and usage.input_tokens is None and usage.output_tokens == 2
