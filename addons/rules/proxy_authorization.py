"""
Parsing of `Proxy-Authorization: Basic base64(<user>:<coder token>)`.

Pure functions only: the auth addon calls them, the property-based tests aim at them.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from dataclasses import field

REALM = "aibridge-proxy"

# A Basic credential for a Coder token is well under 1 KiB; anything larger is an attack or a
# mistake, and we refuse it before decoding.
MAX_HEADER_LENGTH = 8192

# The token ends up in a request header to the gateway: only visible ASCII is safe there.
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")
# The user name names a workspace: Coder's workspace (and agent) names are letters, digits and
# single hyphens; `.` and `_` are allowed for `workspace.agent` and tools' own names. Nothing
# else reaches logs, rules and reports (a newline in it forged whole log lines).
USER_NAME = re.compile(r"^[A-Za-z0-9._-]{0,64}$")


class ProxyAuthError(ValueError):
    """Why a request carries no usable credential. `reason` is a stable label for logs and metrics."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class ProxyCredentials:
    username: str
    token: str = field(repr=False)


def parse_proxy_authorization(value: str | bytes | None) -> ProxyCredentials:
    """Return the credentials in a Proxy-Authorization value, or raise ProxyAuthError.

    Reasons: `missing` (no header), `malformed` (not Basic, bad base64, no colon, not UTF-8,
    too long, unsafe characters) and `empty_token` (nothing after the colon).
    The username is kept only for logs: the token alone identifies the user.
    """
    if value is None:
        raise ProxyAuthError("missing", "no Proxy-Authorization header")
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise ProxyAuthError("malformed", "Proxy-Authorization is not ASCII") from None
    if len(value) > MAX_HEADER_LENGTH:
        raise ProxyAuthError("malformed", "Proxy-Authorization is too long")
    value = value.strip()
    if not value:
        raise ProxyAuthError("missing", "empty Proxy-Authorization header")
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        raise ProxyAuthError("malformed", "Proxy-Authorization scheme is not Basic")
    encoded = encoded.strip()
    if not encoded:
        raise ProxyAuthError("malformed", "Proxy-Authorization Basic value is empty")
    try:
        raw = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ProxyAuthError("malformed", "Proxy-Authorization is not valid base64") from None
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProxyAuthError("malformed", "Proxy-Authorization credentials are not UTF-8") from None
    username, sep, token = decoded.partition(":")
    if not sep:
        raise ProxyAuthError("malformed", "Proxy-Authorization credentials have no ':'")
    if not token:
        raise ProxyAuthError("empty_token", "Proxy-Authorization carries an empty token")
    if not _TOKEN_CHARS.match(token):
        raise ProxyAuthError("malformed", "token holds whitespace or control characters")
    if not USER_NAME.match(username):
        raise ProxyAuthError(
            "malformed",
            "the proxy user name is the workspace: up to 64 letters, digits, '.', '_' or '-'",
        )
    return ProxyCredentials(username=username, token=token)


_HEADER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def is_header_name(name: str) -> bool:
    """A header name we accept in settings (letters, digits, '-' and '_')."""
    return bool(_HEADER_NAME.match(name or ""))


def basic_credentials(username: str, token: str) -> str:
    """The header value a client would send; used by tests, `doctor` and upstream chaining."""
    return "Basic " + base64.b64encode(f"{username}:{token}".encode()).decode("ascii")
