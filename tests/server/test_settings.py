from __future__ import annotations

from pathlib import Path

import pytest

from proxy.server.settings import SettingsError
from proxy.server.settings import load_settings


def load(flags=None, env=None, config=None, **kw):
    return load_settings(flags or {}, environ=env or {"HOME": "/home/u"}, config_file=config, **kw)


def test_defaults():
    s = load()
    assert s.listen == ("127.0.0.1", 8888)
    assert s.auth_mode == "validate"
    assert s.state_dir == Path("/home/u/.local/state/aibridge-proxy")
    assert s.ca_cert_path == s.state_dir / "ca.pem"
    assert s.provider_table.lookup("api.openai.com").provider == "openai"
    assert s.routing_target is None


def test_precedence_flags_over_env_over_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "gateway: https://file.example.com\nauth:\n  mode: presence\nlisten: 0.0.0.0:1\n"
    )
    env = {"AIBRIDGE_PROXY_GATEWAY": "https://env.example.com", "AIBRIDGE_PROXY_LISTEN": "[::1]:2"}
    s = load({"listen": "127.0.0.2:3"}, env, cfg)
    assert s.gateway == "https://env.example.com"
    assert s.auth_mode == "presence"
    assert s.listen == ("127.0.0.2", 3)
    assert load({}, env, cfg).listen == ("::1", 2)
    assert load({}, {}, cfg).listen == ("0.0.0.0", 1)


def test_target_default_and_override():
    s = load({"gateway": "https://coder.example.com/"})
    assert s.routing_target.url == "https://coder.example.com/api/v2/aibridge"
    s = load(
        {
            "gateway": "https://coder.example.com",
            "target": "https://gw.example.com:8443/api/v2/ai-gateway",
        }
    )
    assert s.routing_target.url == "https://gw.example.com:8443/api/v2/ai-gateway"
    assert (
        s.routing_target.url_for("openai", "/v1/x?y=1")
        == "https://gw.example.com:8443/api/v2/ai-gateway/openai/v1/x?y=1"
    )


def test_coder_environment_names():
    env = {
        "CODER_AIBRIDGE_PROXY_LISTEN_ADDR": ":9999",
        "CODER_AIBRIDGE_PROXY_CERT_FILE": "/etc/ca.pem",
        "CODER_AIBRIDGE_PROXY_KEY_FILE": "/etc/ca.key",
    }
    s = load({}, env)
    assert s.listen == ("", 9999)
    assert s.ca_cert_path == Path("/etc/ca.pem") and s.ca_key_path == Path("/etc/ca.key")
    # our own name wins over Coder's
    assert load({}, {**env, "AIBRIDGE_PROXY_LISTEN": "127.0.0.1:1"}).listen == ("127.0.0.1", 1)


def test_providers_add_replace_remove(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "providers:\n"
        "  api.anthropic.com: null\n"
        "  api.openai.com: my-openai\n"
        "  '*.openai.azure.com': azure\n"
        "  chatgpt.com: {provider: chatgpt, paths: [/backend-api/codex/]}\n"
    )
    s = load({"providers": "api.x.ai=xai api.openai.com=-"}, {}, cfg)
    t = s.provider_table
    assert t.lookup("api.anthropic.com") is None
    assert t.lookup("api.openai.com") is None  # the flag removed what the file replaced
    assert t.lookup("east.openai.azure.com").provider == "azure"
    assert t.route("chatgpt.com", "/backend-api/codex/responses").provider == "chatgpt"
    assert t.route("chatgpt.com", "/") is None
    assert t.lookup("api.x.ai").provider == "xai"
    assert t.lookup("api.githubcopilot.com").provider == "copilot"
    s = load({"default_providers": "false", "providers": "api.x.ai=xai"})
    assert s.provider_table.hosts() == ["api.x.ai"]


@pytest.mark.parametrize(
    "flags, env, yaml_text, expected",
    [
        (
            {"listen": "nonsense"},
            {},
            None,
            "listen: 'nonsense' from flag --listen must be host:port",
        ),
        ({"listen": "1.2.3.4:70000"}, {}, None, "port must be at most 65535"),
        (
            {},
            {"AIBRIDGE_PROXY_AUTH_MODE": "maybe"},
            None,
            "auth.mode: 'maybe' from environment variable AIBRIDGE_PROXY_AUTH_MODE must be one of validate, presence",
        ),
        ({}, {}, "gateway: ftp://x\n", "gateway: 'ftp://x' from config file"),
        ({"gateway": "https://c.example.com?x=1"}, {}, None, "must not contain a query"),
        ({}, {}, "auth:\n  mdoe: presence\n", "unknown setting 'auth.mdoe' in config file"),
        (
            {},
            {"AIBRIDGE_PROXY_GATEWY": "x"},
            None,
            "unknown setting 'gatewy' in environment variable AIBRIDGE_PROXY_GATEWY (did you mean 'gateway'?)",
        ),
        ({}, {}, "providers:\n  '*.com': x\n", "wildcard"),
        (
            {"auth.cache_ttl": "-1"},
            {},
            None,
            "auth.cache_ttl: '-1' from flag --auth-cache-ttl must be at least 0",
        ),
        ({"ca.cert_file": "/x.pem"}, {}, None, "set both ca.cert_file and ca.key_file"),
        (
            {"headers.token": "Bad Header"},
            {},
            None,
            "headers.token: 'Bad Header' from flag --headers-token is not a valid header name",
        ),
        ({"gateway_ca_file": "/nonexistent.pem"}, {}, None, "does not name a readable file"),
        ({}, {}, "[unbalanced\n", "is not valid YAML"),
        ({}, {}, "- a list\n", "must hold a mapping"),
    ],
)
def test_errors_name_key_value_and_source(tmp_path, flags, env, yaml_text, expected):
    cfg = None
    if yaml_text is not None:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml_text)
    with pytest.raises(SettingsError) as e:
        load(flags, env, cfg)
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_serve_requires_gateway():
    with pytest.raises(SettingsError, match="gateway: not set; pass --gateway"):
        load(require_gateway=True)
    assert load({"gateway": "http://127.0.0.1:1"}, require_gateway=True)


def test_systemd_state_directory():
    assert load({}, {"STATE_DIRECTORY": "/var/lib/aibridge-proxy"}).state_dir == Path(
        "/var/lib/aibridge-proxy"
    )


def test_example_config_loads():
    example = Path(__file__).resolve().parents[2] / "deploy" / "config.example.yaml"
    s = load(config=example)
    assert s.gateway == "https://coder.example.com"
    assert s.provider_table.lookup("api.openai.com").provider == "openai"
