"""
The model a request asks for, where the API puts it: the JSON body's top-level `model`, or the
path for Gemini (`/v1beta/models/<model>:generateContent`). Replacing it changes only that
value's bytes: everything else the client sent reaches the gateway as sent.

Where two readers of the same bytes could disagree, the body is unreadable (and a rule that
needs its model refuses it): a key given twice (we would read one, a gateway using gjson reads
the first, a Go struct decoder the last), a case variant of `model` (`"MODEL"`, which a Go
struct decoder takes for `model`), nesting too deep for this parser.
"""

from __future__ import annotations

import json
import re
from urllib.parse import unquote

_GEMINI_PATH = re.compile(r"/models/([^/:?]+):")
_DECODER = json.JSONDecoder()
_WS = " \t\n\r"


class ModelUnreadable(ValueError):
    """The body is not a JSON object, so a rule that needs the model cannot be applied."""


def model_in_path(path: str) -> str | None:
    """Gemini's model, read from the path as the gateway reads it: percent-decoded once."""
    m = _GEMINI_PATH.search(unquote(path.split("?", 1)[0]))
    return m.group(1) if m else None


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def top_level_fields(
    body: bytes, watched: tuple[str, ...] = ("model",)
) -> dict[str, tuple[object, tuple[int, int]]]:
    """The `watched` top-level keys of a JSON object body: value and character span (quotes
    included). Raises ModelUnreadable for anything else than one JSON object, for a key given
    twice, and for a case variant of a watched key."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelUnreadable("the body is not UTF-8 JSON") from None
    i = _skip(text, 0)
    if not text.startswith("{", i):
        raise ModelUnreadable("the body is not a JSON object")
    found: dict[str, tuple[object, tuple[int, int]]] = {}
    seen: set[str] = set()
    folded = {w.casefold(): w for w in watched}
    i = _skip(text, i + 1)
    try:
        if text.startswith("}", i):
            if _skip(text, i + 1) != len(text):
                raise ModelUnreadable("the body holds more than one JSON value")
            return found
        while True:
            key, i = json.decoder.scanstring(text, i + 1) if text[i] == '"' else (None, -1)
            if key is None:
                raise ModelUnreadable("the body is not a JSON object")
            if key in seen:
                raise ModelUnreadable(f"the body gives the key {key[:40]!r} twice")
            seen.add(key)
            if key not in watched and key.casefold() in folded:
                raise ModelUnreadable(
                    f"the body has {key[:40]!r}, which some readers take for "
                    f"{folded[key.casefold()]!r}"
                )
            i = _skip(text, i)
            if not text.startswith(":", i):
                raise ModelUnreadable("the body is not a JSON object")
            start = _skip(text, i + 1)
            value, end = _DECODER.raw_decode(text, start)
            if key in watched:
                found[key] = (value, (start, end))
            i = _skip(text, end)
            if text.startswith("}", i):
                if _skip(text, i + 1) != len(text):
                    raise ModelUnreadable("the body holds more than one JSON value")
                return found
            if not text.startswith(",", i):
                raise ModelUnreadable("the body is not a JSON object")
            i = _skip(text, i + 1)
    except RecursionError:
        # the decoder recurses per nesting level: a body nested thousands deep cannot be
        # read here, and a rule that needs its model must then refuse it (fail closed)
        raise ModelUnreadable("the body is nested too deeply to read") from None
    except (ValueError, IndexError) as e:
        if isinstance(e, ModelUnreadable):
            raise
        raise ModelUnreadable("the body is not valid JSON") from None


def model_span(body: bytes) -> tuple[str | None, tuple[int, int] | None]:
    """The top-level `model` string of a JSON object body and its character span (quotes
    included); (None, None) when the object has none. Raises ModelUnreadable."""
    value, span = top_level_fields(body).get("model", (None, None))
    if value is not None and not isinstance(value, str):
        raise ModelUnreadable("the body's model is not a string")
    return value, span  # type: ignore[return-value]


def model_in_prefix(prefix: bytes) -> str | None:
    """The top-level `model` of a JSON object from the first bytes of its body, read key by
    key and stopping at `model` (a request seen as it streams: what it asked for, for the
    record; never a decision, which model_span makes on the whole body). None when the prefix
    ends first, or the body is not a JSON object."""
    text = prefix.decode("utf-8", "ignore")
    i = _skip(text, 0)
    if not text.startswith("{", i):
        return None
    i += 1
    try:
        while True:
            i = _skip(text, i)
            if text.startswith("}", i) or not text.startswith('"', i):
                return None
            key, i = _DECODER.raw_decode(text, i)
            i = _skip(text, i)
            if not text.startswith(":", i):
                return None
            value, i = _DECODER.raw_decode(text, _skip(text, i + 1))
            if key == "model":
                return value if isinstance(value, str) else None
            i = _skip(text, i)
            if not text.startswith(",", i):
                return None
            i += 1
    except (ValueError, RecursionError):  # the prefix ends inside a value, or bad JSON
        return None


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def replace_model(body: bytes, model: str) -> bytes:
    """The body with only its top-level `model` value replaced (added when absent)."""
    text = body.decode("utf-8")
    _, span = model_span(body)
    literal = json.dumps(model, ensure_ascii=False)
    if span is None:
        brace = text.index("{")
        rest = text[brace + 1 :]
        sep = "" if rest.strip().startswith("}") else ","
        return (text[: brace + 1] + f'"model":{literal}{sep}' + rest).encode()
    return (text[: span[0]] + literal + text[span[1] :]).encode()
