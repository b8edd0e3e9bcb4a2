"""
A dial the egress policy refused, carried through the engine: the engine only passes on an
error message, so the refusal rides in it as a marker that the CONNECT and request error
paths (egress, upstream errors) turn back into our status and public text.
"""

from __future__ import annotations

import re


class Blocked(Exception):
    def __init__(self, status: int, public: str, detail: str):
        super().__init__(detail)
        self.status = status
        self.public = public


# A refused dial surfaces in the engine's error message; this marker lets the CONNECT and
# request error paths recover our status and public text from it.
_MARK = "aibridge-egress:"
_MARK_RE = re.compile(re.escape(_MARK) + r"(\d{3}):([^\n]*?)(?: If you plan|$)")


def refusal_marker(blocked: Blocked) -> str:
    return f"{_MARK}{blocked.status}:{blocked.public}"


def parse_refusal(message: str | None) -> tuple[int, str] | None:
    """(status, public text) of a dial this addon refused, from an engine error message."""
    if not message or _MARK not in message:
        return None
    m = _MARK_RE.search(message)
    return (int(m.group(1)), m.group(2).strip()) if m else None
