"""
Token usage, read from a response body as it streams past: never holding a byte back.

Providers report usage in their own shapes; `Usage` is one shape for all of them:
- input_tokens: every prompt token, cached ones included (Anthropic reports cache reads and
  writes apart from `input_tokens`; they are added here, as OpenAI already counts them).
- output_tokens: every generated token, reasoning included (Gemini counts thoughts apart).
- cached_tokens: prompt tokens served from the provider's cache; reasoning_tokens: thinking.

Shapes read: OpenAI Chat Completions and Responses (JSON, SSE; also Copilot, which speaks the
Chat Completions shape), Anthropic Messages (JSON; `message_start` and `message_delta` in SSE)
and Gemini (`usageMetadata`, JSON, JSON arrays and SSE). A body that cannot be read yields no
usage, never a zero.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from dataclasses import replace
from typing import Any

from addons.rules.content_decoding import BoundedDecoder

JSON_LIMIT = 4 * 1024 * 1024  # a JSON body larger than this (decoded) is not read
LINE_LIMIT = 1024 * 1024  # one SSE line longer than this is skipped
# SSE events parsed per response at most (Gemini repeats its usage in every event; a real
# stream has far fewer): the CPU a response can cost is bounded, whatever it holds
EVENT_LIMIT = 50_000
MAX_TOKENS = 10**12  # a count above this is not a token count (and would break the metrics)


@dataclass(frozen=True)
class Usage:
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    # counts the proxy estimated (the answer's characters / 4): a stream that reported none
    estimated: bool = False

    def merged(self, later: Usage) -> Usage:
        """Fields `later` knows replace ours (SSE usage counts are running totals)."""
        # read on every routed response: spelt out, not dataclasses.fields and replace
        return Usage(
            self.model if later.model is None else later.model,
            self.input_tokens if later.input_tokens is None else later.input_tokens,
            self.output_tokens if later.output_tokens is None else later.output_tokens,
            self.cached_tokens if later.cached_tokens is None else later.cached_tokens,
            self.reasoning_tokens if later.reasoning_tokens is None else later.reasoning_tokens,
            self.estimated and later.estimated,
        )

    @property
    def known(self) -> bool:
        return self.input_tokens is not None or self.output_tokens is not None

    def token_fields(self) -> dict[str, int]:
        """The counts that are known, for a log line (absent, not zero, when unknown)."""
        names = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")
        return {n: v for n in names if (v := getattr(self, n)) is not None}


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    return None


def _add(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def usage_of_block(u: Any) -> Usage:
    """One provider `usage` object (OpenAI, Anthropic) in our shape."""
    if not isinstance(u, dict):
        return Usage()
    if "prompt_tokens" in u or "completion_tokens" in u:  # Chat Completions, Copilot
        return Usage(
            input_tokens=_int(u.get("prompt_tokens")),
            output_tokens=_int(u.get("completion_tokens")),
            cached_tokens=_int((u.get("prompt_tokens_details") or {}).get("cached_tokens")),
            reasoning_tokens=_int(
                (u.get("completion_tokens_details") or {}).get("reasoning_tokens")
            ),
        )
    if "input_tokens_details" in u or "output_tokens_details" in u:  # Responses API
        return Usage(
            input_tokens=_int(u.get("input_tokens")),
            output_tokens=_int(u.get("output_tokens")),
            cached_tokens=_int((u.get("input_tokens_details") or {}).get("cached_tokens")),
            reasoning_tokens=_int((u.get("output_tokens_details") or {}).get("reasoning_tokens")),
        )
    # Anthropic Messages: cache reads and writes are not part of input_tokens
    cache_read = _int(u.get("cache_read_input_tokens"))
    cache_write = _int(u.get("cache_creation_input_tokens"))
    plain_input = _int(u.get("input_tokens"))
    return Usage(
        input_tokens=_add(plain_input, cache_read, cache_write)
        if plain_input is not None
        else None,
        output_tokens=_int(u.get("output_tokens")),
        cached_tokens=cache_read,
    )


def _gemini(meta: Any) -> Usage:
    if not isinstance(meta, dict):
        return Usage()
    thoughts = _int(meta.get("thoughtsTokenCount"))
    candidates = _int(meta.get("candidatesTokenCount"))
    return Usage(
        input_tokens=_int(meta.get("promptTokenCount")),
        output_tokens=_add(candidates, thoughts),
        cached_tokens=_int(meta.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


def usage_of_message(obj: Any) -> Usage:
    """Usage (and model) from one JSON body or SSE event, in any of the known shapes."""
    if not isinstance(obj, dict):
        return Usage()
    found = Usage()
    if isinstance(obj.get("response"), dict):  # Responses API events: response.completed, ...
        found = found.merged(usage_of_message(obj["response"]))
    if isinstance(obj.get("message"), dict):  # Anthropic message_start
        found = found.merged(usage_of_message(obj["message"]))
    model = obj.get("model") or obj.get("modelVersion")
    if isinstance(model, str) and model:
        found = found.merged(Usage(model=model))
    if "usage" in obj:
        found = found.merged(usage_of_block(obj["usage"]))
    if "usageMetadata" in obj:
        found = found.merged(_gemini(obj["usageMetadata"]))
    return found


class BodyReader:
    """Fed each response chunk as it is relayed, never holding one back: an SSE stream is cut
    into lines, each handed to `_sse_line` (a line over LINE_LIMIT is skipped); a JSON body is
    kept (up to `json_limit`, decoded) and read whole at its end, each message handed to
    `_message`. What a reader takes from them is its own (usage here, answer text in genai)."""

    json_limit = JSON_LIMIT

    def __init__(self, content_type: str, content_encoding: str = ""):
        media = content_type.split(";", 1)[0].strip().lower()
        self.sse = media == "text/event-stream"
        self.json = media == "application/json" or media.endswith("+json")
        self._decoder = BoundedDecoder(content_encoding)
        self.active = (self.sse or self.json) and self._decoder.ok
        self._buffer = bytearray()
        self._skipping_line = False

    def feed(self, chunk: bytes) -> None:
        if not self.active or not chunk:
            return
        try:
            data = self._decoder.decode(chunk)
        except Exception:  # a broken encoding, or a bomb: we read nothing more, the bytes
            self.active = False  # still flow to the client untouched
            self._buffer.clear()
            self._forget()
            return
        if self.sse:
            self._feed_sse(data)
        else:
            self._buffer += data
            if len(self._buffer) > self.json_limit:
                self.active = False
                self._buffer.clear()

    def _feed_sse(self, data: bytes) -> None:
        if b"\n" not in data:
            self._buffer += data
        else:
            # one split per chunk: linear in its size, however many lines it holds
            *lines, rest = (bytes(self._buffer) + data).split(b"\n")
            self._buffer = bytearray(rest)
            for line in lines:
                if not self.active:
                    return
                if self._skipping_line:
                    self._skipping_line = False
                    continue
                self._sse_line(line)
        if len(self._buffer) > LINE_LIMIT:  # a giant event: skip to its end
            self._buffer.clear()
            self._skipping_line = True

    def _read_rest(self) -> None:
        """At the end: the JSON body, read whole, or the last SSE line without its newline."""
        if self.active and self.json and self._buffer:
            try:
                body = json.loads(self._buffer)
            except (ValueError, RecursionError):
                body = None
            for item in body if isinstance(body, list) else [body]:  # Gemini streams arrays
                self._message(item)
        elif self.active and self.sse and self._buffer and not self._skipping_line:
            self._sse_line(bytes(self._buffer))
        self._buffer.clear()

    def _sse_line(self, line: bytes) -> None:
        raise NotImplementedError

    def _message(self, message: Any) -> None:
        raise NotImplementedError

    def _forget(self) -> None:
        """What was read so far cannot be trusted (the body broke off): drop it."""


# The text of an OpenAI chat stream's chunk (`"content":"..."`), found without parsing it
_CHUNK_CONTENT = re.compile(rb'"content":\s*"((?:[^"\\]|\\.)*)"')
CHARS_PER_TOKEN = 4  # the usual estimate for English and code


class UsageReader(BodyReader):
    """`finish` says what usage the body reported. An OpenAI chat stream whose request did not
    ask for usage (`stream_options.include_usage`) reports none: its answer's characters are
    counted on the way (a regular expression, no parse), and `finish` estimates the output
    tokens from them, marked `estimated`, so a budget is never spent by nothing."""

    def __init__(self, content_type: str, content_encoding: str = ""):
        super().__init__(content_type, content_encoding)
        self._usage = Usage()
        self._events = 0
        self._answer_chars = 0

    def _forget(self) -> None:
        self._usage = Usage()

    def _message(self, message: Any) -> None:
        self._usage = self._usage.merged(usage_of_message(message))

    def _sse_line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if b"chat.completion.chunk" in payload and self._usage.output_tokens is None:
            self._answer_chars += sum(len(m.group(1)) for m in _CHUNK_CONTENT.finditer(payload))
        # Parse only what can carry a model or usage: every event of a long stream otherwise.
        if self._usage.model is not None and b"usage" not in payload:
            return
        self._events += 1
        if self._events > EVENT_LIMIT:
            self.active = False
            self._usage = Usage()  # a partial count would pass for the whole
            return
        try:
            event = json.loads(payload)
        except (ValueError, RecursionError):
            return  # e.g. OpenAI's [DONE]
        self._message(event)

    def finish(self) -> Usage | None:
        """The usage the body reported, or None when it reported none we could read; for a
        chat stream that reported none, the output estimated from its answer."""
        self._read_rest()
        usage = self._usage
        if usage.output_tokens is None and self._answer_chars and self.active:
            estimate = -(-self._answer_chars // CHARS_PER_TOKEN)
            usage = replace(usage, output_tokens=estimate, estimated=True)
        return usage if usage.known else None
