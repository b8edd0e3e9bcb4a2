"""
What an AI request is in the OpenTelemetry GenAI semantic conventions (pinned: SEMCONV below):
its operation, its provider's name, its messages as the conventions spell them, the text the
model answered (read from the stream as it passes), and keyed digests of both for the `hash`
content policy. Pure: addons/observe/telemetry.py makes the spans.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

from addons.rules.token_usage import BodyReader

SEMCONV = "1.44.0"  # the schema whose GenAI attribute names we emit (manual, Audit trail)
CONTENT_POLICIES = ("none", "hash", "redact", "full")  # what of prompts and answers spans carry
TEXT_LIMIT = 64 * 1024  # characters of output text kept for a span (content: hash, redact, full)
BODY_LIMIT = 1024 * 1024  # request bytes read for the input messages
ANSWER_LIMIT = 1024 * 1024  # a JSON answer larger than this (decoded) is not read for its text

# the conventions' well-known gen_ai.provider.name values, by our provider names
_PROVIDERS = {
    "openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini", "google": "gcp.gemini",
    "vertex": "gcp.vertex_ai", "bedrock": "aws.bedrock", "azure": "azure.ai.openai",
    "mistral": "mistral_ai", "groq": "groq", "perplexity": "perplexity", "xai": "x_ai",
    "deepseek": "deepseek", "cohere": "cohere",
}  # fmt: skip


def provider_name(provider: str | None, observed: str | None) -> str | None:
    """gen_ai.provider.name: a well-known value where there is one, else our own name
    (`copilot`, an observed tool's catalog entry)."""
    name = provider or observed
    if name is None:
        return None
    if name.startswith("copilot"):
        return "github_copilot"
    return _PROVIDERS.get(name, name)


def operation_of(path: str) -> str | None:
    """gen_ai.operation.name from the API path (None: not a model call, e.g. a model list)."""
    path = path.split("?", 1)[0].rstrip("/")
    if path.endswith(("/chat/completions", "/messages", "/responses")):
        return "chat"
    if ":generateContent" in path or ":streamGenerateContent" in path:
        return "generate_content"
    if path.endswith("/embeddings") or ":embedContent" in path:
        return "embeddings"
    if path.endswith("/completions"):  # the legacy API, Copilot's engines
        return "text_completion"
    return None


def _text_parts(content: Any) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts = []
    for block in content if isinstance(content, list) else []:
        if isinstance(block, str):
            parts.append({"type": "text", "content": block})
        elif isinstance(block, dict):
            text = block.get("text")
            if isinstance(text, str):
                parts.append({"type": "text", "content": text})
            elif block.get("type") in ("tool_result", "function_call_output"):
                inner = block.get("content", block.get("output"))
                parts += [{"type": "tool_call_response", "content": p["content"]}
                          for p in _text_parts(inner)]  # fmt: skip
    return parts


def input_messages(body: bytes) -> list[dict]:
    """The request's messages as gen_ai.input.messages spells them ({role, parts}): chat,
    Anthropic (with its system), Responses (instructions and input), Gemini contents."""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        return []
    if not isinstance(request, dict):
        return []
    out: list[dict] = []
    for key in ("system", "instructions"):
        if parts := _text_parts(request.get(key)):
            out.append({"role": "system", "parts": parts})
    items = request.get("messages") or request.get("input") or request.get("contents") or []
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        role = item.get("role") or ("tool" if "output" in item else "user")
        parts = _text_parts(item.get("content", item.get("parts", item.get("output"))))
        if parts:
            out.append({"role": "assistant" if role == "model" else role, "parts": parts})
    return out


# What a model name looks like (`gpt-4o`, `claude-sonnet-4-5@20250929`, `models/gemini-2.5-pro`,
# `us.anthropic.claude-3-7:0`): anything else, a credential a client put in `model` and the
# gateway echoed, is recorded as a digest, never as it is.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
# ... and no well-known credential's prefix (GitHub, OpenAI, Anthropic, Slack, AWS, Google,
# GitLab, Hugging Face tokens; a JWT)
_CREDENTIAL = re.compile(
    r"(gh[oprsu]_|github_pat_|sk-|sk_|xox[abeprs]-|A[KS]IA[0-9A-Z]{12}|AIza|glpat-|hf_|eyJ)"
)


def recorded_model(model: str | None) -> str | None:
    """A model name as logs and spans may carry it: itself when it has a model name's shape,
    else `unrecognised-model:<digest>` (high-entropy secrets stay unguessable)."""
    if model is None or (_MODEL_NAME.fullmatch(model) and not _CREDENTIAL.match(model)):
        return model
    return "unrecognised-model:" + hashlib.sha256(model.encode("utf-8", "replace")).hexdigest()[:16]


def digest(key: bytes, text: str) -> str:
    """A keyed digest: equal texts match within a deployment (one key), and nobody without
    the key can test a guess against it."""
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:32]


def _delta_text(event: Any) -> str:
    """The answer text one SSE event or JSON body carries, in any of the known shapes."""
    if not isinstance(event, dict):
        return ""
    found = []
    kind = event.get("type")
    if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
        return event["delta"]
    if kind == "content_block_delta":
        delta = event.get("delta")
        return delta.get("text", "") if isinstance(delta, dict) else ""
    for choice in event.get("choices") or []:  # chat: deltas, or the whole message
        if isinstance(choice, dict):
            for key in ("delta", "message"):
                part = choice.get(key)
                if isinstance(part, dict) and isinstance(part.get("content"), str):
                    found.append(part["content"])
            if isinstance(choice.get("text"), str):  # legacy completions
                found.append(choice["text"])
    if event.get("type") == "message":  # Anthropic, not streamed
        found += [p["content"] for p in _text_parts(event.get("content")) if p["type"] == "text"]
    for item in event.get("output") or []:  # Responses, not streamed
        if isinstance(item, dict):
            found += [p["content"] for p in _text_parts(item.get("content"))]
    for candidate in event.get("candidates") or []:  # Gemini
        if isinstance(candidate, dict) and isinstance(candidate.get("content"), dict):
            found += [p["content"] for p in _text_parts(candidate["content"].get("parts"))]
    return "".join(found)


class OutputText(BodyReader):
    """Fed each response chunk as it is relayed (never holding one back): the text the model
    answered, up to TEXT_LIMIT characters."""

    json_limit = ANSWER_LIMIT

    def __init__(self, content_type: str, content_encoding: str = ""):
        super().__init__(content_type, content_encoding)
        self._text: list[str] = []
        self._size = 0

    def _sse_line(self, line: bytes) -> None:
        if line.startswith(b"data:") and self._size < TEXT_LIMIT:
            try:
                self._message(json.loads(line[5:].strip()))
            except (ValueError, RecursionError):
                pass

    def _message(self, message: Any) -> None:
        text = _delta_text(message)
        if text:
            text = text[: TEXT_LIMIT - self._size]
            self._text.append(text)
            self._size += len(text)

    def finish(self) -> str:
        self._read_rest()
        return "".join(self._text)
