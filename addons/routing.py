"""
What is routed where: the provider table and the gateway target, as one immutable snapshot.

Other addons hold a reference to `Routing` and read `routing.current` once per decision, so a
reload (which swaps the snapshot) never gives one request half of the old table and half of
the new one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from mitmproxy import ctx
from mitmproxy import exceptions

from addons.providers import ProviderSpecError
from addons.providers import ProviderTable
from addons.providers import gateway_path

logger = logging.getLogger(__name__)

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

    @property
    def origin(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")

    @property
    def url(self) -> str:
        return self.origin + self.path

    def url_for(self, provider: str, original_path: str) -> str:
        return self.origin + gateway_path(self.path, provider, original_path)


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


@dataclass(frozen=True)
class RoutingSnapshot:
    table: ProviderTable
    target: GatewayTarget | None
    gateway: GatewayTarget | None  # the gateway's own base URL (for /users/me and exemptions)


class Routing:
    """Owns the options that say which hosts are routed and to which gateway."""

    def __init__(self) -> None:
        self.current = RoutingSnapshot(ProviderTable.defaults(), None, None)

    def load(self, loader):
        loader.add_option(
            "aibridge_gateway",
            str | None,
            None,
            "Base URL of the Coder deployment, e.g. https://coder.example.com. Routed requests go "
            "to <gateway>/api/v2/aibridge/<provider><path> unless aibridge_target is set.",
        )
        loader.add_option(
            "aibridge_target",
            str | None,
            None,
            "Full URL routed requests go to (the provider name and original path are appended), "
            "e.g. https://coder.example.com/api/v2/ai-gateway. Overrides the default derived "
            "from aibridge_gateway.",
        )
        loader.add_option(
            "aibridge_providers",
            Sequence[str],
            ProviderTable.defaults().to_specs(),
            "Routed hosts, each as host=provider[@/path/prefix,...]. `*` matches one DNS label. "
            "With path prefixes, other paths on that host go to the original host unchanged.",
        )

    def configure(self, updated):
        if not {"aibridge_gateway", "aibridge_target", "aibridge_providers"} & set(updated):
            return
        try:
            table = ProviderTable.from_specs(ctx.options.aibridge_providers)
            target = resolve_target(ctx.options.aibridge_gateway, ctx.options.aibridge_target)
            gateway = (
                parse_base_url(ctx.options.aibridge_gateway, "gateway")
                if ctx.options.aibridge_gateway
                else target
            )
        except (ProviderSpecError, TargetError) as e:
            raise exceptions.OptionsError(str(e)) from e
        self.current = RoutingSnapshot(table, target, gateway)
