"""
What a request line may hold before the proxy writes it to the gateway: HTTP/2 lets a client
put spaces and control characters in `:method` and `:path`, which would be copied verbatim
into the HTTP/1.1 request line upstream; and a routed path must stay below the provider's
prefix on the gateway, so dot segments (also percent-encoded), encoded slashes and empty
segments are refused; rules match the path as the gateway decodes it.
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


_ENCODED_SLASH = re.compile(r"%2f|%5c", re.I)


def decoded_path(path: str) -> str:
    """The path (before its query) as the gateway reads it: percent-decoded once, as Go's
    `URL.Path` is. Path rules and the provider table match on this, so an escape cannot step
    around them (`/v1/%66iles` is `/v1/files`)."""
    return unquote(path.split("?", 1)[0])


def ambiguous_path(path: str) -> str | None:
    """Why a routed path could be read as two different paths, or None: an encoded slash
    (`/v1/audio%2Fspeech`, one segment here and two once decoded) or an empty segment
    (`//v1/files`, which some servers merge)."""
    raw = path.split("?", 1)[0]
    if _ENCODED_SLASH.search(raw):
        return "the path holds an encoded slash (%2F or %5C)"
    if "//" in raw:
        return "the path holds an empty segment (//)"
    return None


_ESCAPED_ESCAPE = re.compile(r"%25[0-9a-f]{2}", re.I)


def path_problem(path: str) -> str | None:
    """Why a server could read this path as another than the one a check matched, or None:
    dot segments (also encoded), an encoded slash, an empty segment, or an escaped escape
    (`%256d`: `%6d` to a server that decodes once, `m` to one that decodes twice)."""
    if has_dot_segments(path):
        return "the path holds . or .. segments"
    if problem := ambiguous_path(path):
        return problem
    if _ESCAPED_ESCAPE.search(path.split("?", 1)[0]):
        return "the path holds an encoded percent sign (%25)"
    return None


def is_websocket_upgrade(headers) -> bool:
    """A request asking to switch to WebSocket (any mapping of header names to values)."""
    return headers.get("upgrade", "").lower() == "websocket"


# An observed tool's own binary protocols: no model or prompt in a JSON body to read, and
# holding back their bidirectional streams would break the tool.
BINARY_PROTOCOLS = (
    "application/grpc",
    "application/connect+proto",
    "application/proto",
    "application/protobuf",
    "application/x-protobuf",
)


def is_binary_protocol(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith(BINARY_PROTOCOLS)
