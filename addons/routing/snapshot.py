"""
What is routed where: the provider table, the gateway target and the routing rules (with their
gateways, groups and profiles), as one immutable snapshot.

Other addons hold a reference to `Routing` and read `routing.current` once per decision, so a
reload (which swaps the snapshot) never gives one request half of the old table and half of
the new one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from mitmproxy import ctx
from mitmproxy import exceptions

from addons.rules.ai_catalog import CatalogError
from addons.rules.ai_catalog import ObservedHosts
from addons.rules.gateway_target import GatewayTarget
from addons.rules.gateway_target import TargetError
from addons.rules.gateway_target import parse_base_url
from addons.rules.gateway_target import resolve_target
from addons.rules.mcp import McpServers
from addons.rules.mcp import parse_mcp_servers
from addons.rules.policy import POLICY_KEYS
from addons.rules.policy import PolicyError
from addons.rules.policy import RoutingPolicy
from addons.rules.policy import parse_policy
from addons.rules.providers import ProviderSpecError
from addons.rules.providers import ProviderTable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoutingSnapshot:
    table: ProviderTable
    target: GatewayTarget | None
    gateway: GatewayTarget | None  # the gateway's own base URL (for /users/me and exemptions)
    policy: RoutingPolicy = RoutingPolicy()
    observed: ObservedHosts = ObservedHosts()
    mcp: McpServers = McpServers()  # governed MCP servers: their hosts are decrypted too

    def intercepts(self, host: str) -> bool:
        """Routed, observed or a governed MCP server's: we decrypt it (everything else is a raw
        tunnel)."""
        return (
            self.table.lookup(host) is not None
            or self.observed.lookup(host) is not None
            or self.mcp.on_host(host)
        )

    def gateways(self) -> list[GatewayTarget]:
        """Every gateway and Coder deployment we send to or check tokens with."""
        targets = (
            self.target,
            self.gateway,
            *self.policy.gateways.values(),
            *self.policy.deployments.values(),
        )
        return [t for t in targets if t is not None]

    def is_gateway(self, host: str, port: int) -> bool:
        """`host:port` is one of the gateways (or a Coder deployment we check tokens with)."""
        host = host.lower()
        return any(t.host == host and t.port == port for t in self.gateways())


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
        loader.add_option(
            "aibridge_policy",
            str,
            "{}",
            "Routing rules as JSON: {gateways, groups, rules, profiles, default_profile}, as in "
            "the configuration file (see the manual, Routing rules and profiles).",
        )
        loader.add_option(
            "aibridge_gateway_trusted_ca",
            str | None,
            None,
            "CA bundle the gateway leg is verified against (routed requests, token checks, "
            "health); default: ssl_verify_upstream_trusted_ca, which then covers every leg.",
        )
        loader.add_option(
            "aibridge_observe",
            Sequence[str],
            [],
            "Hosts to decrypt only to record who uses them, how much (tokens) and how, then "
            "forward unchanged: AI host catalog entries (cursor, windsurf, ...) or host names "
            "and *.suffix patterns.",
        )

        loader.add_option(
            "aibridge_mcp",
            str,
            "[]",
            "Governed MCP servers as JSON: [{name, url, allow_tools, deny_tools}] (manual, MCP "
            "servers and tools).",
        )

    def configure(self, updated):
        options = {
            "aibridge_gateway", "aibridge_target", "aibridge_providers", "aibridge_policy",
            "aibridge_observe", "aibridge_mcp",
        }  # fmt: skip
        if not options & set(updated):
            return
        try:
            table = ProviderTable.from_specs(ctx.options.aibridge_providers)
            target = resolve_target(ctx.options.aibridge_gateway, ctx.options.aibridge_target)
            gateway = (
                parse_base_url(ctx.options.aibridge_gateway, "gateway")
                if ctx.options.aibridge_gateway
                else target
            )
            policy = policy_from_json(ctx.options.aibridge_policy, target)
            observed = ObservedHosts(ctx.options.aibridge_observe)
            mcp = mcp_from_json(ctx.options.aibridge_mcp)
            if target is None and policy.gateways:  # `gateways:` alone: the first is the default
                target = policy.gateway(None)
                gateway = policy.deployments.get(policy.default_gateway or "", target)
        except (ProviderSpecError, TargetError, PolicyError, CatalogError) as e:
            raise exceptions.OptionsError(str(e)) from e
        self.current = RoutingSnapshot(table, target, gateway, policy, observed, mcp)


def mcp_from_json(text: str) -> McpServers:
    try:
        raw = json.loads(text or "[]")
    except ValueError:
        raise PolicyError("aibridge_mcp is not JSON") from None
    return parse_mcp_servers(raw)


def policy_from_json(text: str, fallback_gateway: GatewayTarget | None) -> RoutingPolicy:
    try:
        raw = json.loads(text or "{}")
    except ValueError:
        raise PolicyError("aibridge_policy is not JSON") from None
    if not isinstance(raw, dict) or set(raw) - set(POLICY_KEYS):
        raise PolicyError(f"aibridge_policy takes {', '.join(POLICY_KEYS)}")
    return parse_policy(**{k: raw.get(k) for k in POLICY_KEYS}, fallback_gateway=fallback_gateway)
