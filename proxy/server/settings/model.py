"""The parsed settings: one frozen object, and what is derived from it (the provider table,
the routing target and policy)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from addons.rules.ai_catalog import ObservedHosts
from addons.rules.gateway_target import GatewayTarget
from addons.rules.gateway_target import resolve_target
from addons.rules.mcp import McpServers
from addons.rules.mcp import parse_mcp_servers
from addons.rules.policy import POLICY_KEYS
from addons.rules.policy import RoutingPolicy
from addons.rules.policy import parse_policy
from addons.rules.providers import PRESETS
from addons.rules.providers import ProviderTable
from addons.rules.providers import constraint_hosts
from addons.rules.providers import copilot_completion_hosts
from addons.rules.providers import make_route
from addons.rules.upstream_proxy import UpstreamProxy
from proxy.server.settings.parsers import ProviderOverrides


@dataclass(frozen=True)
class Settings:
    listen: tuple[str, int]
    gateway: str | None
    target: str | None
    providers: ProviderOverrides
    default_providers: bool
    provider_presets: tuple[str, ...]
    copilot_completions: str
    gateways: dict | None
    groups: dict | None
    rules: list | None
    profiles: dict | None
    default_profile: str | None
    model_body_limit: int
    health_interval: float
    profile_store: str | None
    health_path: str
    state_dir: Path | None
    ca_cert_file: Path | None
    ca_key_file: Path | None
    gateway_ca_file: Path | None
    origin_ca_file: Path | None
    gateway_timeout: float
    gateway_pool_max_connections: int
    gateway_pool_idle_timeout: float
    gateway_pool_warm: int
    header_timeout: float
    idle_timeout: float
    first_request_timeout: float
    connections_max_per_user: int
    connections_max_per_address: int
    connections_max_total: int
    max_header_bytes: int
    headers_token: str
    headers_request_id: str
    auth_mode: str
    auth_url: str | None
    auth_header: str
    auth_fail_open: bool
    auth_cache_ttl: int
    auth_negative_ttl: int
    auth_cache_size: int
    auth_max_failures: int
    auth_lockout: int
    auth_anonymous_tunnels: bool
    tls_cert_file: Path | None
    tls_key_file: Path | None
    upstream_proxy: UpstreamProxy | None
    upstream_proxy_auth: str
    upstream_proxy_spn: str | None
    upstream_proxy_ca: Path | None
    allowed_ports: tuple[str, ...]
    allowed_private_cidrs: tuple[str, ...]
    observe: tuple[str, ...]
    mcp: list | None
    egress_deny_hosts: tuple[str, ...]
    egress_allow_hosts: tuple[str, ...]
    admin_listen: tuple[str, int] | None
    admin_proxy_address: str | None
    admin_allowed_hosts: tuple[str, ...]
    workers: int
    grace_period: float
    shutdown_delay: float
    metrics_user_labels: bool
    dump_dir: Path | None
    websocket_negative_ttl: int
    websocket_max_message: int
    limits: list | None
    prices: list | None
    limits_store: str | None
    limits_on_store_error: str
    dlp_action: str
    dlp_on_error: str
    dlp_unreadable: str
    dlp_max_bytes: int
    dlp_timeout: float
    dlp_patterns: list | None
    dlp_allow: tuple[str, ...]
    telemetry_otlp_endpoint: str | None
    telemetry_headers: dict[str, str] | None
    telemetry_content: str
    telemetry_service_name: str
    log_level: str
    log_format: str
    log_access_file: Path | None
    config_file: Path | None = None
    # Set by systemd, not by the operator: where to send sd_notify messages.
    notify_socket: str | None = None
    watchdog_usec: int | None = None

    # -- derived values, computed once per Settings --------------------------------------------

    @cached_property
    def provider_table(self) -> ProviderTable:
        presets = self.provider_presets
        if self.copilot_completions == "route" and "copilot-completions" not in presets:
            presets = (*presets, "copilot-completions")
        return build_provider_table(self.providers, self.default_providers, presets)

    def observed_items(self, signable: Callable[[str], bool] | None = None) -> tuple[str, ...]:
        """What is observed: `observe`, and under `copilot_completions: observe` Copilot's
        completion hosts that are not routed otherwise and that the CA can sign for
        (`signable`): with a CA made before this default, clients would reject our leaf, so
        those stay tunnelled (start-up says so)."""
        if self.copilot_completions != "observe":
            return self.observe
        table = self.provider_table
        extra = tuple(h for h in copilot_completion_hosts() if table.lookup(h) is None
                      and h not in self.observe and (signable is None or signable(h)))  # fmt: skip
        return (*self.observe, *extra)

    @cached_property
    def ca_hosts(self) -> tuple[list[str], list[str]]:
        """What the CA's name constraints permit for the routed, observed and MCP hosts, and the
        patterns they cannot cover (see addons/rules/providers.py `constraint_hosts`)."""
        return constraint_hosts(
            self.provider_table.hosts() + self.observed_hosts.patterns + self.mcp_servers.hosts()
        )

    @cached_property
    def mcp_servers(self) -> McpServers:
        return parse_mcp_servers(self.mcp)

    @cached_property
    def observed_hosts(self) -> ObservedHosts:
        return ObservedHosts(self.observed_items())

    @cached_property
    def policy_config(self) -> dict:
        """The routing rules' part of the configuration, as the Routing addon takes it."""
        return {k: getattr(self, k) for k in POLICY_KEYS}

    @cached_property
    def policy(self) -> RoutingPolicy:
        return parse_policy(**self.policy_config, fallback_gateway=self.routing_target)

    @cached_property
    def routing_target(self) -> GatewayTarget | None:
        return resolve_target(self.gateway, self.target)

    @property
    def state_path(self) -> Path:
        assert self.state_dir is not None
        return self.state_dir

    @property
    def ca_cert_path(self) -> Path:
        return self.ca_cert_file or self.state_path / "ca.pem"

    @property
    def client_bundle_path(self) -> Path:
        return self.state_path / "ca-bundle.pem"

    @property
    def ca_key_path(self) -> Path:
        return self.ca_key_file or self.state_path / "ca-key.pem"


def build_provider_table(
    overrides: ProviderOverrides, use_defaults: bool = True, presets: tuple[str, ...] = ()
) -> ProviderTable:
    """defaults, then presets, then the operator's own entries (which win)."""
    merged: dict[str, tuple[str, tuple[str, ...]] | None] = {}
    if use_defaults:
        merged.update({r.host: (r.provider, r.paths) for r in ProviderTable.defaults().routes})
    for name in presets:
        merged.update({h: (p, paths) for h, p, paths in PRESETS[name]})
    merged.update(overrides)
    return ProviderTable(
        tuple(make_route(h, spec[0], spec[1]) for h, spec in merged.items() if spec is not None)
    )
