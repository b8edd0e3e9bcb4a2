"""Cross-checks between settings that no single parser can make (a TLS certificate without
its key, NTLM without a password, validate mode without a gateway...)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from addons.rules.gateway_target import TargetError
from addons.rules.policy import POLICY_KEYS
from addons.rules.policy import PolicyError
from addons.rules.proxy_authorization import is_header_name
from addons.rules.upstream_proxy import kerberos_available
from proxy.server.settings.base import SettingsError
from proxy.server.settings.base import Source
from proxy.server.settings.base import shown
from proxy.server.settings.model import Settings


def check_combinations(
    s: Settings, sources: Mapping[str, tuple[Any, Source]], require_gateway: bool
) -> None:
    def fail(key: str, problem: str) -> SettingsError:
        raw, source = sources[key]
        return SettingsError(f"{key}: {shown(raw)!r} from {source} {problem}")

    try:
        target = s.routing_target
    except TargetError as e:
        raise SettingsError(str(e)) from None
    try:
        policy = s.policy
    except PolicyError as e:
        source = next(
            (src for key in POLICY_KEYS if (src := sources[key][1]).kind != "default"), None
        )
        raise SettingsError(f"{e} (in {source})" if source else str(e)) from None
    if require_gateway and target is None and not policy.gateways:
        raise SettingsError(
            "gateway: not set; pass --gateway https://coder.example.com "
            "(or AIBRIDGE_PROXY_GATEWAY, or gateway: in the config file)"
        )
    if (
        require_gateway
        and s.auth_mode == "validate"
        and not (s.gateway or s.auth_url or policy.deployments)
    ):
        raise SettingsError(
            "auth.mode: 'validate' needs gateway (or a gateways entry with url) or auth.url "
            "to check tokens against; set one, or use auth.mode: presence"
        )
    if s.upstream_proxy_auth != "basic":
        upstream = s.upstream_proxy
        if upstream is None:
            raise fail("upstream_proxy_auth", "needs upstream_proxy")
        if upstream.credentials is None and s.upstream_proxy_auth == "ntlm":
            raise fail(
                "upstream_proxy_auth",
                "needs a user name and password in upstream_proxy "
                "(http://DOMAIN%5Cuser:password@host:port)",
            )
        if upstream.credentials is None and not kerberos_available():
            raise fail(
                "upstream_proxy_auth",
                "without a password signs in with Kerberos (the credential cache or keytab), "
                "which needs the gssapi package: pip install 'aibridge-proxy[kerberos]'",
            )
    if s.telemetry_content == "redact" and s.dlp_action == "off" and not policy.has_dlp_rules:
        raise fail(
            "telemetry.content",
            "needs the prompt scan, which does the masking: set dlp.action (block, mask or "
            "flag), or use telemetry.content: hash",
        )
    if (s.tls_cert_file is None) != (s.tls_key_file is None):
        key = "tls_cert_file" if s.tls_cert_file is not None else "tls_key_file"
        raise fail(key, "is set alone; set both tls_cert_file and tls_key_file, or neither")
    for key in ("tls_cert_file", "tls_key_file"):
        p = getattr(s, key)
        if p is not None and not p.is_file():
            raise fail(key, "does not name a readable file")
    if (s.ca_cert_file is None) != (s.ca_key_file is None):
        key = "ca.cert_file" if s.ca_cert_file is not None else "ca.key_file"
        raise fail(key, "is set alone; set both ca.cert_file and ca.key_file, or neither")
    for key in ("headers.token", "headers.request_id", "auth.header"):
        raw, _ = sources[key]
        if not is_header_name(str(raw).strip()):
            raise fail(key, "is not a valid header name")
    from addons.rules.destinations import parse_cidrs
    from addons.rules.destinations import parse_ports

    for key, parse in (("allowed_ports", parse_ports), ("allowed_private_cidrs", parse_cidrs)):
        try:
            parse(getattr(s, key))
        except ValueError as e:
            raise fail(key, str(e)) from None
    for key in ("gateway_ca_file", "origin_ca_file", "upstream_proxy_ca"):
        p = getattr(s, key)
        if p is not None and not p.is_file():
            raise fail(key, "does not name a readable file")
