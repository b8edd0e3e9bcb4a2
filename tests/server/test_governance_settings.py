"""The `dlp:` and `limits:` settings: parsed once, a broken entry is one line naming it, and
`explain` says which DLP action a request gets and which limits it counts against."""

from __future__ import annotations

import pytest

from proxy.server.explain import explain
from proxy.server.settings import SettingsError
from proxy.server.settings import load_settings
from tests.support import assert_one_line_error
from tests.support import cli

GATEWAY = "https://coder.example.com"
QA_FLAGS = [{"name": "qa-flags", "match": {"user": ["qa-*"]}, "route": {"provider": "openai"},
             "dlp": "flag"}]  # fmt: skip


def settings(tmp_path, **values):
    return load_settings({"gateway": GATEWAY, "state_dir": str(tmp_path), **values}, environ={})


def test_the_dlp_section_is_read_from_yaml_keys(tmp_path):
    s = settings(tmp_path, **{"dlp.action": "mask", "dlp.allow": ["sk_test_1"],
                              "dlp.patterns": [{"name": "acme", "regex": "acme_[0-9]{8}"}]})  # fmt: skip
    assert (s.dlp_action, s.dlp_allow, s.dlp_on_error) == ("mask", ("sk_test_1",), "auto")
    assert s.dlp_patterns == [{"name": "acme", "regex": "acme_[0-9]{8}"}]


@pytest.mark.parametrize(
    "values, problem",
    [
        ({"dlp.action": "redact"}, "dlp.action"),
        ({"dlp.patterns": [{"name": "x", "regex": "("}]}, "dlp.patterns[0] (x): regex does not compile"),
        ({"dlp.max_bytes": 10}, "dlp.max_bytes"),
        ({"rules": [{"name": "r", "origin": True, "dlp": "maybe"}]}, "rules[0] (r): dlp must be one of"),
    ],
)  # fmt: skip
def test_a_broken_dlp_setting_names_itself(tmp_path, values, problem):
    with pytest.raises(SettingsError) as e:
        settings(tmp_path, **values)
    assert problem in str(e.value)


def test_a_broken_pattern_is_one_line_from_the_cli(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"gateway: {GATEWAY}\ndlp:\n  action: block\n  patterns:\n    - {{name: acme, regex: '[a-'}}\n"
    )
    assert_one_line_error(
        cli("serve", "--config", str(bad)), "dlp.patterns", "(acme): regex does not compile"
    )


def test_explain_names_the_action_a_request_gets(tmp_path):
    s = settings(tmp_path, **{"dlp.action": "block", "rules": QA_FLAGS})
    url = "https://api.openai.com/v1/chat/completions"
    assert "dlp:      flag (the rule's dlp:)" in explain(s, url, user="qa-bob")
    assert "dlp:      block (dlp.action)" in explain(s, url, user="alice")
    assert not any(line.startswith("dlp:") for line in explain(settings(tmp_path), url))


def test_explain_lists_the_limits_a_request_counts_against(tmp_path):
    limits = [{"name": "three-a-minute", "match": {"host": ["api.openai.com"]}, "requests": 3, "per": "1m"},
              {"name": "claude-tokens", "match": {"host": ["api.anthropic.com"]}, "tokens": 1000, "per": "month"}]  # fmt: skip
    s = settings(tmp_path, limits=limits)
    lines = explain(s, "https://api.openai.com/v1/chat/completions", user="alice")
    assert "limit:    three-a-minute (3 requests per 1m by user)" in lines
    assert not any("claude-tokens" in line for line in lines)


def test_a_broken_limit_is_one_line_from_the_cli(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"gateway: {GATEWAY}\nlimits:\n  - {{name: l, requests: 3}}\n")
    assert_one_line_error(
        cli("serve", "--config", str(bad)), "limits", "limits[0] (l): requests needs per"
    )


@pytest.mark.parametrize("values, problem", [
    ({"telemetry.content": "redact"}, "needs the prompt scan, which does the masking: set dlp.action"),
    ({"telemetry.content": "everything"}, "telemetry.content"),
    ({"telemetry.otlp_endpoint": "collector:4318"}, "telemetry.otlp_endpoint"),
    ({"mcp": [{"name": "x", "url": "http://x/mcp"}]}, "mcp[0] (x): url must be https://"),
])  # fmt: skip
def test_broken_telemetry_and_mcp_settings_name_themselves(tmp_path, values, problem):
    with pytest.raises(SettingsError) as e:
        settings(tmp_path, **values)
    assert problem in str(e.value)


def test_telemetry_takes_the_standard_otel_variables(tmp_path):
    s = load_settings({"gateway": GATEWAY, "state_dir": str(tmp_path)}, environ={
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20abc,x-team=ai",
        "OTEL_SERVICE_NAME": "proxy-eu"})  # fmt: skip
    assert s.telemetry_otlp_endpoint == "http://collector:4318"
    assert s.telemetry_headers == {"authorization": "Bearer abc", "x-team": "ai"}
    assert s.telemetry_service_name == "proxy-eu"
    redacting = settings(tmp_path, **{"telemetry.content": "redact", "dlp.action": "mask"})
    assert redacting.telemetry_content == "redact"


def test_copilot_completions_are_observed_routed_or_tunnelled(tmp_path):
    fim = "proxy.business.githubcopilot.com"
    observed = settings(tmp_path)
    assert fim in observed.observed_items() and observed.provider_table.lookup(fim) is None
    assert fim not in observed.observed_items(signable=lambda host: host != fim)  # CA can't sign
    assert fim in observed.ca_hosts[0] or any(fim.endswith("." + h) for h in observed.ca_hosts[0])
    routed = settings(tmp_path, copilot_completions="route")
    assert routed.provider_table.lookup(fim) is not None and fim not in routed.observed_items()
    tunnelled = settings(tmp_path, copilot_completions="tunnel")
    assert tunnelled.provider_table.lookup(fim) is None and fim not in tunnelled.observed_items()
    url = f"https://{fim}/v1/engines/copilot-codex/completions"
    assert "tunnelled untouched" in explain(tunnelled, url)[0]
    assert "upstream: https://coder.example.com/api/v2/aibridge/copilot-business/v1/engines" in (
        "\n".join(explain(routed, url))
    )


def test_explain_says_a_workspace_limit_rests_on_the_clients_claim(tmp_path):
    limits = [{"name": "team-x", "tokens": 1000, "per": "month", "by": "workspace"}]
    lines = explain(settings(tmp_path, limits=limits), "https://api.openai.com/v1/responses")
    assert "limit:    team-x (1000 tokens per month by workspace)" in lines
    assert any("rests on the client's claim" in line and "by: user" in line for line in lines)
    by_user = explain(settings(tmp_path, limits=[{**limits[0], "by": "user"}]),
                      "https://api.openai.com/v1/responses")  # fmt: skip
    assert not any("client's claim" in line for line in by_user)


def test_explain_names_an_mcp_server_on_a_routed_host(tmp_path):
    """The manual's own MCP example lives on a routed host: explain says it is governed."""
    mcp = [{"name": "github", "url": "https://api.githubcopilot.com/mcp/",
            "deny_tools": ["delete_*"]}]  # fmt: skip
    lines = explain(settings(tmp_path, mcp=mcp), "https://api.githubcopilot.com/mcp/")
    assert any("MCP server github" in line and "deny_tools: delete_*" in line for line in lines)
    assert lines[0].startswith("rule:     none (provider table)")  # and still routed
    elsewhere = explain(
        settings(tmp_path, mcp=mcp), "https://api.githubcopilot.com/chat/completions"
    )
    assert not any("MCP server" in line for line in elsewhere)
