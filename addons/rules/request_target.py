"""
What a request line may hold before the proxy writes it to the gateway: HTTP/2 lets a client
put spaces and control characters in `:method` and `:path`, which would be copied verbatim
into the HTTP/1.1 request line upstream; and a routed path must stay below the provider's
prefix on the gateway, so dot segments (also percent-encoded) are refused.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

# RFC 9110 token: the characters a method may hold
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# a request target: visible ASCII only (no space, no controls, no DEL, no raw non-ASCII)
_TARGET = re.compile(r"^[\x21-\x7e]*$")


def is_method(method: str) -> bool:
    return bool(_TOKEN.match(method))


def is_request_target(path: str) -> bool:
    return bool(_TARGET.match(path))


def has_dot_segments(path: str) -> bool:
    """True when a path (before its query) holds a `.` or `..` segment, as sent or
    percent-decoded (`%2e%2e`, `.%2E`): a gateway that normalises it would serve another route."""
    raw = path.split("?", 1)[0]
    for segment in raw.split("/"):
        decoded = unquote(segment)
        if (
            decoded in (".", "..")
            or "/" in decoded
            and any(part in (".", "..") for part in decoded.split("/"))
        ):
            return True
    return False


def is_websocket_upgrade(headers) -> bool:
    """A request asking to switch to WebSocket (any mapping of header names to values)."""
    return headers.get("upgrade", "").lower() == "websocket"
