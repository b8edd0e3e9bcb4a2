"""
The company's egress proxy, as the operator writes it: `http(s)://[user[:pass]@]host:port`.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from urllib.parse import unquote
from urllib.parse import urlsplit


@dataclass(frozen=True)
class UpstreamProxy:
    scheme: str
    host: str
    port: int
    credentials: str | None = field(default=None, repr=False)  # "user:password"

    @property
    def mode_spec(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"upstream:{self.scheme}://{host}:{self.port}"


def parse_upstream_proxy(url: str) -> UpstreamProxy:
    """`http(s)://[user[:pass]@]host:port`. Credentials with both parts empty are refused."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise ValueError(f"is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be only scheme, credentials, host and port")
    credentials = None
    if parts.username is not None or parts.password is not None:
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        if not user and not password:
            raise ValueError("has credentials with both user name and password empty")
        credentials = f"{user}:{password}"
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return UpstreamProxy(parts.scheme, parts.hostname, port, credentials)


def kerberos_available() -> bool:
    """pyspnego speaks Kerberos only through the `gssapi` package (the `kerberos` extra)."""
    try:
        import gssapi  # noqa: F401
    except ImportError:
        return False
    return True
