"""
Where routed requests go: the gateway's base URL and the target derived from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from urllib.parse import urlsplit

from addons.rules.providers import gateway_path

AIBRIDGE_ROOT = "/api/v2/aibridge"


class TargetError(ValueError):
    pass


@dataclass(frozen=True)
class GatewayTarget:
    """Where routed requests go: `<scheme>://<host>:<port><path>/<provider>/...`."""

    scheme: str
    host: str
    port: int
    path: str

    @cached_property
    def authority(self) -> str:
        """The Host header (and h2 :authority) of requests to it."""
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    @cached_property
    def origin(self) -> str:
        return f"{self.scheme}://{self.authority}"

    @property
    def url(self) -> str:
        return self.origin + self.path

    def path_for(self, provider: str, original_path: str) -> str:
        return gateway_path(self.path, provider, original_path)

    def url_for(self, provider: str, original_path: str) -> str:
        return self.origin + self.path_for(provider, original_path)


def parse_base_url(url: str, what: str) -> GatewayTarget:
    """Parse an http(s) base URL with no query, fragment or credentials."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise TargetError(f"{what} {url!r} is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise TargetError(f"{what} {url!r} must start with https:// or http://")
    if not parts.hostname:
        raise TargetError(f"{what} {url!r} has no host")
    if parts.query or parts.fragment:
        raise TargetError(f"{what} {url!r} must not contain a query or fragment")
    if parts.username is not None or parts.password is not None:
        raise TargetError(f"{what} {url!r} must not contain credentials")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return GatewayTarget(parts.scheme, parts.hostname.lower(), port, parts.path.rstrip("/"))


def resolve_target(gateway: str | None, target: str | None) -> GatewayTarget | None:
    """`target` if given, else `<gateway>/api/v2/aibridge`; None if neither is set."""
    if target:
        return parse_base_url(target, "target")
    if gateway:
        base = parse_base_url(gateway, "gateway")
        return GatewayTarget(base.scheme, base.host, base.port, base.path + AIBRIDGE_ROOT)
    return None
