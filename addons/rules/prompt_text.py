"""
The text a client sends to a model, as parts with a place each (`messages[3]`, `tool_result
of call toolu_01`, `system`), taken from a JSON request body in any API's shape, and credentials
masked in place in the raw body, every other byte unchanged.

Every string value of the body is read, not only the fields one API names: OpenAI Chat
Completions and Responses (`messages[].content` strings and parts, `input`, `instructions`,
tool results), Anthropic Messages (`system`, text and `tool_result` blocks), Gemini
(`contents[].parts[].text`), Copilot (the Chat Completions shape), Codex's `response.create`
messages and an observed tool's own JSON all come out the same way, and a field a new API
version adds is read too. Skipped: opaque blobs no one types into (signatures, encrypted
reasoning, base64 images and other binary media); a text file attached as a document (a text
source, a base64 source or data URL of a text media type) is read decoded. Objects keep every key: a duplicated key cannot hide
a value from the scan.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

# Opaque values: signed or encrypted by the provider, or binary data in base64.
_OPAQUE_KEYS = frozenset(
    {"signature", "encrypted_content", "thoughtSignature", "thought_signature"}
)
_BINARY_KEYS = frozenset({"data", "image_url", "url", "file_data", "bytes"})
_TOOL_RESULTS = {
    # (marker key, value) -> the key naming the call
    ("type", "tool_result"): ("tool_use_id", "tool_result of call"),
    ("type", "function_call_output"): ("call_id", "tool output of call"),
    ("role", "tool"): ("tool_call_id", "tool result of call"),
}
_WHERE_LIMIT = 80


class NotJson(ValueError):
    """The body is not one JSON document (the caller decides what that means)."""


@dataclass(frozen=True)
class PromptPart:
    where: str  # where a developer would look for it; never holds the text itself
    text: bytes  # UTF-8


class _Object(list):
    """A JSON object, as the list of its (key, value) pairs."""


def parse(body: bytes) -> Any:
    try:
        return json.loads(body, object_pairs_hook=_Object)
    except (ValueError, RecursionError) as e:
        raise NotJson(str(e)[:100]) from None


def _get(obj: _Object, key: str) -> Any:
    return next((v for k, v in obj if k == key), None)


# Media types whose bytes are text a person or a tool wrote (a file attached as a document)
_TEXT_MEDIA = re.compile(
    r"^(text/[\w.+-]+|application/(json|xml|yaml|x-yaml|toml|x-toml|javascript|x-sh|x-python"
    r"|sql|x-ndjson|ld\+json|[\w.-]+\+(json|xml)))$",
    re.I,
)
_DATA_URL = re.compile(r"^data:([^,;]*)((?:;[^,;]*)*),", re.S)


def _is_text_media(media: Any) -> bool:
    return isinstance(media, str) and bool(_TEXT_MEDIA.match(media.split(";", 1)[0].strip()))


def _decoded_base64(value: str) -> str | None:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8", "replace")
    except (ValueError, binascii.Error):
        return None


def _data_url_text(value: str) -> str | None:
    """The text a `data:` URL carries, decoded; None for binary media (an image)."""
    m = _DATA_URL.match(value)
    if m is None:
        return value  # not a data URL after all: read as it is
    media = m.group(1) or "text/plain"
    if not _is_text_media(media):
        return None
    payload = value[m.end() :]
    if ";base64" in m.group(2).lower():
        decoded = _decoded_base64(payload)
        return decoded if decoded is not None else value
    return unquote(payload)


def _text_of(key: str, value: str, parent: _Object) -> str | None:
    """The text to scan in one string value: itself, or a text file's decoded content (a data
    URL, a base64 source whose media type is text); None for what is really opaque or binary
    (signatures, encrypted reasoning, images)."""
    if key in _OPAQUE_KEYS:
        return None
    if key not in _BINARY_KEYS:
        return value
    if value.startswith("data:"):
        return _data_url_text(value)
    media = next((v for k, v in parent if k in ("media_type", "mime_type", "mimeType")), None)
    if _get(parent, "type") == "base64":
        return _decoded_base64(value) if _is_text_media(media) else None
    if media is not None and not _is_text_media(media):
        return None  # Gemini's inlineData: base64 of its mimeType
    return value  # a text source (Anthropic's {"type": "text", "data": ...}) or a plain URL


def _tool_label(obj: _Object) -> str | None:
    for (marker, expected), (id_key, label) in _TOOL_RESULTS.items():
        if _get(obj, marker) == expected:
            call = _get(obj, id_key)
            if isinstance(call, str) and call:
                return f"{label} {_printable(call)}"
            return label.removesuffix(" of call")
    return None


def _printable(text: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9._:-]", "?", text)
    return clean[:40]


def prompt_parts(document: Any) -> list[PromptPart]:
    """Every string a person or a tool put into the request, with its place: the top-level
    field (`system`), numbered by the first list below it (`messages[3]`), or the tool call
    whose result holds it."""
    out: list[PromptPart] = []
    # (node, its place, whether the place is numbered yet, the key it sits under, its object)
    stack: list[tuple[Any, str, bool, str, _Object | None]] = [(document, "body", False, "", None)]
    keys: list[str] = []
    while stack:
        node, where, numbered, key, parent = stack.pop()
        if isinstance(node, str):
            text = node if parent is None else _text_of(key, node, parent)
            if text is not None:
                out.append(PromptPart(where[:_WHERE_LIMIT], text.encode("utf-8", "surrogatepass")))
        elif isinstance(node, _Object):
            top = parent is None and where == "body"
            label = None if top else _tool_label(node)
            keys.extend(k for k, _ in node)  # a key is text too: {"ghp_...": 1}
            for k, v in reversed(node):
                if top:
                    stack.append((v, _printable(k), False, k, node))
                elif label is not None:
                    place = f"{where} ({label})" if numbered else label
                    stack.append((v, place, True, k, node))
                else:  # only a list right under a top-level field is numbered
                    stack.append((v, where, True, k, node))
        elif isinstance(node, list):
            # a message's text parts read together as well: a credential split across two
            # adjacent parts is one to the model
            joined = [v for item in node if isinstance(item, _Object)
                      for k, v in item if k == "text" and isinstance(v, str)]  # fmt: skip
            if len(joined) > 1:
                text = "".join(joined).encode("utf-8", "surrogatepass")
                out.append(PromptPart(where[:_WHERE_LIMIT], text))
            for i in range(len(node) - 1, -1, -1):
                if numbered or where == "body":
                    stack.append((node[i], where, numbered, key, parent))
                else:
                    stack.append((node[i], f"{where}[{i}]", True, key, parent))
    if keys:  # every object key, read as one text (one scan, not one per key)
        out.append(PromptPart("object keys", "\n".join(keys).encode("utf-8", "surrogatepass")))
    return out


class MaskError(ValueError):
    """A credential could not be found in the raw body to replace (the policy decides)."""


def _raw_forms(value: str) -> list[bytes]:
    """How a decoded string value may be spelt inside a JSON string literal."""
    forms = {
        json.dumps(value, ensure_ascii=False)[1:-1],
        json.dumps(value)[1:-1],
    }
    forms |= {f.replace("/", "\\/") for f in forms}
    return sorted((f.encode("utf-8", "surrogatepass") for f in forms), key=len, reverse=True)


_STRING_LITERAL = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def outermost(values: dict[str, str]) -> list[str]:
    """The values to replace, longest first, without those inside another (a private key
    inside its service-account key file goes with the file)."""
    kept: list[str] = []
    for value in sorted(values, key=len, reverse=True):
        if not any(value in longer for longer in kept):
            kept.append(value)
    return kept


def mask_json(body: bytes, replacements: dict[str, str]) -> bytes:
    """`body` with each credential (a decoded value) replaced by its placeholder wherever it
    appears; every other byte as it was. MaskError if one cannot be placed."""
    for value in outermost(replacements):
        placeholder = replacements[value].encode()
        before = body
        for form in _raw_forms(value):
            body = body.replace(form, placeholder)
        if body == before:
            body = _mask_escaped(body, value, replacements[value])
    return body


def _literal_offsets(literal: str) -> tuple[str, list[int]]:
    """A JSON string literal's (without its quotes) decoded text, and where each decoded
    character starts in the literal (one more entry: the end)."""
    out, offsets, i = [], [], 0
    while i < len(literal):
        offsets.append(i)
        if literal[i] != "\\":
            out.append(literal[i])
            i += 1
        elif literal[i + 1] == "u":
            code = int(literal[i + 2 : i + 6], 16)
            i += 6
            if 0xD800 <= code < 0xDC00 and literal[i : i + 2] == "\\u":  # a surrogate pair
                low = int(literal[i + 2 : i + 6], 16)
                if 0xDC00 <= low < 0xE000:
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    i += 6
            out.append(chr(code))
        else:
            out.append(json.loads(f'"{literal[i : i + 2]}"'))
            i += 2
    offsets.append(i)
    return "".join(out), offsets


def _mask_escaped(body: bytes, value: str, placeholder: str) -> bytes:
    """The slow way, for a value the client spelt with unusual escapes (`\\u005f`): in each
    string literal whose decoded text holds the value, the characters that spell it are
    replaced, escapes and all; every other byte stays."""
    found = False

    def rewrite(m: re.Match[bytes]) -> bytes:
        nonlocal found
        literal = m.group(0)[1:-1].decode("utf-8", "surrogatepass")
        try:
            decoded, offsets = _literal_offsets(literal)
        except (ValueError, IndexError):
            return m.group(0)
        if value not in decoded:
            return m.group(0)
        found = True
        pieces, last, at = [], 0, decoded.find(value)
        while at >= 0:
            pieces += [literal[offsets[last] : offsets[at]], placeholder]
            last = at + len(value)
            at = decoded.find(value, last)
        pieces.append(literal[offsets[last] :])
        return b'"' + "".join(pieces).encode("utf-8", "surrogatepass") + b'"'

    body = _STRING_LITERAL.sub(rewrite, body)
    if not found:
        raise MaskError("a credential could not be located in the body to mask")
    return body
