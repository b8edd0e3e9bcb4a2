"""Each setting declared once: every option our addons declare is fed by exactly one setting
(or is derived, named here), with the same default, and `engine_options` sets all of them."""

from __future__ import annotations

from mitmproxy.test import taddons

from addons.chain import make_addons
from addons.engine import EnginePatches
from proxy.server.app import EngineFiles
from proxy.server.app import engine_options
from proxy.server.app import option_value
from proxy.server.settings import FIELDS
from proxy.server.settings import load_settings

DERIVED = {
    "aibridge_providers": "providers + default_providers + provider_presets",
    "aibridge_upstream_auth": "upstream_proxy's credentials",
    "aibridge_policy": "gateways + groups + rules + profiles + default_profile",
    "aibridge_profile_store": "profile_store, else state_dir/profiles.json",
    "aibridge_gateway_trusted_ca": "system roots + gateway_ca_file + gateways' ca_file",
    "aibridge_dlp_patterns": "dlp.patterns, as JSON",
    "aibridge_limits": "limits, as JSON",
    "aibridge_prices": "prices, as JSON",
    "aibridge_mcp": "mcp, as JSON",
    "aibridge_observe": "observe + Copilot's completion hosts the CA can sign (copilot_completions)",
    "aibridge_telemetry_headers": "telemetry.headers, as JSON",
    "aibridge_telemetry_key": "derived from the CA key (the same in every replica)",
    "aibridge_dlp_mask_key": "derived from the CA key (the same in every replica)",
    "aibridge_mcp_pins_file": "state_dir/mcp-pins.json",
}


def addon_options() -> dict:
    with taddons.context(*make_addons(EnginePatches())) as tctx:
        return {n: o for n, o in tctx.options._options.items() if n.startswith("aibridge_")}


def test_every_addon_option_has_one_setting_with_the_same_default():
    options = addon_options()
    fed = [f for f in FIELDS if f.option]
    assert len({f.option for f in fed}) == len(fed), "two settings feed one option"
    assert set(options) == {f.option for f in fed} | set(DERIVED)
    for f in fed:
        assert option_value(f.parse(f.default)) == options[f.option].default, f.key


def test_engine_options_set_every_addon_option(tmp_path):
    settings = load_settings(
        {"gateway": "https://coder.example.com", "state_dir": str(tmp_path)}, environ={}
    )
    files = EngineFiles(tmp_path, tmp_path / "trust.pem", tmp_path / "gateway-trust.pem")
    produced = engine_options(settings, files)
    assert set(addon_options()) <= set(produced)
    assert produced["aibridge_websocket_negative_ttl"] == 600  # a setting since this change
