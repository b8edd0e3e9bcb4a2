"""Every host the real AI tools use: Copilot for every plan (its own Authorization kept),
sign-in and telemetry hosts tunnelled, completions and GHE.com opt-in, Codex with ChatGPT
sign-in, and the opt-in presets for other gateways."""

from __future__ import annotations

import pytest

from tests.support import ALICE
from tests.support import connect_through
from tests.support import proxy_basic
from tests.support import proxy_client


def connect_status(p, host: str) -> tuple[int, bytes]:
    return connect_through(p.port, f"{host}:443", proxy_basic(ALICE))


@pytest.mark.parametrize(
    "host, provider",
    [
        ("api.githubcopilot.com", "copilot"),
        ("api.individual.githubcopilot.com", "copilot"),
        ("api.business.githubcopilot.com", "copilot-business"),
        ("api.enterprise.githubcopilot.com", "copilot-enterprise"),
    ],
)
def test_copilot_every_plan_keeps_its_own_authorization(proxy, gateway, host, provider):
    headers = {
        "Authorization": "Bearer tid=abc;exp=1;sku=copilot_for_business;proxy-ep=proxy.business.githubcopilot.com",
        "Editor-Version": "vscode/1.99.0",
        "Copilot-Integration-Id": "vscode-chat",
    }
    with proxy_client(proxy) as c:
        r = c.post(
            f"https://{host}/chat/completions",
            json={"model": "gpt-4o", "messages": []},
            headers=headers,
        )
    assert r.status_code == 200
    rec = gateway.last()
    assert rec.path == f"/api/v2/aibridge/{provider}/chat/completions"
    assert rec.header("Authorization") == headers["Authorization"]
    assert rec.header("X-Coder-AI-Governance-Token") == ALICE
    assert (
        rec.header("Editor-Version") == "vscode/1.99.0"
        and rec.header("Copilot-Integration-Id") == "vscode-chat"
    )


def test_copilot_models_and_agents_reach_the_gateway(proxy, gateway):
    with proxy_client(proxy) as c:
        assert c.get("https://api.githubcopilot.com/models").status_code == 200
        c.get("https://api.githubcopilot.com/agents/x")
        c.get("https://api.githubcopilot.com/_ping")
    assert [r.path for r in gateway.records] == [
        "/api/v2/aibridge/copilot/models",
        "/api/v2/aibridge/copilot/agents/x",
        "/api/v2/aibridge/copilot/_ping",
    ]


@pytest.mark.parametrize(
    "host",
    [
        "api.github.com",
        "github.com",
        "copilot-telemetry.githubusercontent.com",
        "collector.github.com",
        "origin-tracker.githubusercontent.com",
    ],
)
def test_sign_in_and_telemetry_hosts_are_tunnelled_by_default(proxy, host):
    # A tunnel dials the real host before answering; it cannot resolve here, which proves the
    # proxy tried to tunnel rather than decrypt (an intercepted host is answered 200 at once).
    status, body = connect_status(proxy, host)
    assert status == 502 and b"cannot resolve the destination" in body


@pytest.mark.parametrize(
    "host", ["proxy.business.githubcopilot.com", "copilot-proxy.githubusercontent.com"]
)
def test_completion_hosts_are_observed_by_default_and_tunnelled_on_request(proxy, make_proxy, host):
    assert connect_status(proxy, host)[0] == 200  # decrypted: answered at once, never dialled
    status, body = connect_status(make_proxy("--copilot-completions", "tunnel"), host)
    assert status == 502 and b"cannot resolve the destination" in body


def test_completion_hosts_with_the_preset(make_proxy, gateway):
    p = make_proxy("--provider-presets", "copilot-completions")
    with proxy_client(p) as c:
        c.post(
            "https://proxy.business.githubcopilot.com/v1/engines/copilot-codex/completions",
            json={"prompt": "x"},
        )
        c.post(
            "https://copilot-proxy.githubusercontent.com/v1/engines/copilot-codex/completions",
            json={},
        )
    assert [r.path for r in gateway.records] == [
        "/api/v2/aibridge/copilot-business/v1/engines/copilot-codex/completions",
        "/api/v2/aibridge/copilot/v1/engines/copilot-codex/completions",
    ]


def test_ghe_com_data_residency_tenant(make_proxy, gateway):
    p = make_proxy("--provider", "copilot-api.acme.ghe.com=copilot-acme")
    with proxy_client(p) as c:
        c.post("https://copilot-api.acme.ghe.com/chat/completions", json={})
    assert gateway.last().path == "/api/v2/aibridge/copilot-acme/chat/completions"
    assert connect_status(p, "acme.ghe.com")[0] == 502  # the tenant's web/API host stays a tunnel


def test_a_wildcard_inside_a_name_is_kept_out_of_the_ca_constraints(make_proxy):
    """`copilot-api.*.ghe.com` could only be constrained as all of ghe.com (every tenant)."""
    p = make_proxy("--provider", "copilot-api.*.ghe.com=copilot-acme")
    line = p.wait_for_line(lambda r: "left out of the CA's name constraints" in r.get("msg", ""))
    assert "copilot-api.*.ghe.com" in line["msg"]
    from cryptography import x509

    ca = x509.load_pem_x509_certificate(p.ca_path.read_bytes())
    nc = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    assert "ghe.com" not in [n.value for n in nc.permitted_subtrees]


def test_chatgpt_codex_paths_only(proxy, gateway):
    with proxy_client(proxy) as c:
        r = c.post("https://chatgpt.com/backend-api/codex/responses", json={"model": "m"})
        assert r.status_code == 404  # the local gateway has no chatgpt routes: it did reach it
        assert gateway.last().path == "/api/v2/aibridge/chatgpt/backend-api/codex/responses"
        r = c.get("https://chatgpt.com/backend-api/conversation")
    assert r.status_code == 502 and "cannot resolve the destination" in r.text  # tried the origin
    assert len(gateway.records) == 1


@pytest.mark.parametrize(
    "preset, url, path",
    [
        (
            "gemini",
            "https://generativelanguage.googleapis.com/v1beta/models/g:generateContent?key=K",
            "/api/v2/aibridge/gemini/v1beta/models/g:generateContent",
        ),
        ("xai", "https://api.x.ai/v1/chat/completions", "/api/v2/aibridge/xai/v1/chat/completions"),
        (
            "deepseek",
            "https://api.deepseek.com/chat/completions",
            "/api/v2/aibridge/deepseek/chat/completions",
        ),
        (
            "openrouter",
            "https://openrouter.ai/api/v1/chat/completions",
            "/api/v2/aibridge/openrouter/api/v1/chat/completions",
        ),
        (
            "mistral",
            "https://api.mistral.ai/v1/chat/completions",
            "/api/v2/aibridge/mistral/v1/chat/completions",
        ),
        (
            "azure-openai",
            "https://east.openai.azure.com/openai/deployments/d/chat/completions?api-version=1",
            "/api/v2/aibridge/azure/openai/deployments/d/chat/completions",
        ),
        (
            "bedrock",
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse",
            "/api/v2/aibridge/bedrock/model/m/converse",
        ),
    ],
)
def test_presets(make_proxy, gateway, preset, url, path):
    p = make_proxy("--provider-presets", preset)
    with proxy_client(p) as c:
        c.post(url, json={})
    assert gateway.last().path == path
    host = url.split("/")[2]
    assert connect_status(make_proxy(), host)[0] == 502  # without the preset: a tunnel


def test_preset_entries_can_be_changed(make_proxy, gateway, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "provider_presets: [openrouter]\nproviders:\n  openrouter.ai: {provider: or, paths: [/api/v1/]}\n"
    )
    p = make_proxy("--config", str(config))
    with proxy_client(p) as c:
        c.post("https://openrouter.ai/api/v1/chat/completions", json={})
        r = c.get("https://openrouter.ai/api/v2/other")
    assert gateway.last().path == "/api/v2/aibridge/or/api/v1/chat/completions"
    assert r.status_code == 502 and len(gateway.records) == 1


def test_unknown_preset_is_a_config_error():
    from tests.support import assert_one_line_error
    from tests.support import cli

    r = cli("serve", "--gateway", "http://127.0.0.1:1", "--provider-presets", "gemini,chatgpt-pro")
    assert_one_line_error(r, "provider_presets", "unknown preset 'chatgpt-pro'")
