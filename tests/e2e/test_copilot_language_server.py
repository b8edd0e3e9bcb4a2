"""The real GitHub Copilot language server (npm), driven over stdio as an IDE drives it, through
the proxy: configured with `http.proxy` as JetBrains sets it, trusting the CA through
NODE_EXTRA_CA_CERTS, signed in with a GitHub token against a stand-in GitHub the proxy tunnels
to; an inline completion goes to the completions host, which the proxy observes by default.
Loopback only: the hosts are mapped to 127.0.0.1 for the test."""

from __future__ import annotations

import time

import pytest
import yaml

from proxy.devtools.localgateway import REPLY
from tests.support import ALICE
from tests.support import ProxyProcess
from tests.support import base_env
from tests.support.copilot_ls import LANGUAGE_SERVER
from tests.support.copilot_ls import FakeGitHub
from tests.support.copilot_ls import LanguageServer
from tests.support.vendor_origin import VendorOrigin
from tests.support.vendor_origin import hosts_resolve_to_loopback

GITHUB = "ghe.test"
COMPLETIONS = "proxy.individual.githubcopilot.com"
SOURCE = "def add(a, b):\n    "


def replies(reports: list[dict]) -> str:
    """The chat reply text in a turn's progress reports (in agent rounds, or plain)."""
    text = [str(r.get("reply", "")) for r in reports]
    text += [str(a.get("reply", "")) for r in reports for a in r.get("editAgentRounds") or []]
    return "".join(text)


@pytest.fixture
def copilot_world(gateway_server, tmp_path):
    """The completions host, the stand-in GitHub and a proxy that knows them."""
    if not LANGUAGE_SERVER.exists():
        pytest.skip("the Copilot language server is not installed (./run setup)")
    with hosts_resolve_to_loopback([GITHUB, f"api.{GITHUB}", COMPLETIONS]):
        completions = VendorOrigin([COMPLETIONS]).start(tmp_path)
        github = FakeGitHub(GITHUB, {
            "api": "https://api.individual.githubcopilot.com",
            "proxy": f"https://{COMPLETIONS}:{completions.port}",
            "telemetry": "https://copilot-telemetry.githubusercontent.com",
            "origin-tracker": "https://origin-tracker.githubusercontent.com",
        }).start(tmp_path, port=443)  # fmt: skip
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "gateway": gateway_server.url,
            "origin_ca_file": str(completions.write_ca(tmp_path / "completions-ca.pem")),
            "allowed_private_cidrs": ["127.0.0.0/8"],
            "allowed_ports": ["1-65535"],
        }))  # fmt: skip
        proxy = ProxyProcess(tmp_path / "state", ["--config", str(config)]).start()
        trusted = tmp_path / "ide-trust.pem"  # the IDE trusts our CA, and GitHub's own
        trusted.write_bytes(proxy.ca_path.read_bytes() + github.ca.cert_pem())
        try:
            yield proxy, github, completions, trusted
        finally:
            proxy.stop()
            github.stop()
            completions.stop()


def test_the_language_server_signs_in_completes_and_chats_through_the_proxy(
    copilot_world, gateway, tmp_path
):
    proxy, github, completions, trusted = copilot_world
    home = tmp_path / "home"
    home.mkdir()
    env = {**base_env(), "HOME": str(home), "NODE_EXTRA_CA_CERTS": str(trusted)}
    settings = {"http": {"proxy": proxy.url(ALICE), "proxyStrictSSL": True},
                "github-enterprise": {"uri": github.url}}  # fmt: skip
    ls = LanguageServer(env, settings)
    try:
        ls.request("initialize", {
            "processId": None, "rootUri": None, "capabilities": {"workspace": {"configuration": True}},
            "initializationOptions": {"editorInfo": {"name": "JetBrains-IC", "version": "2025.2"},
                                      "editorPluginInfo": {"name": "copilot-intellij", "version": "1.5.50"}},
        })  # fmt: skip
        ls.notify("initialized", {})
        ls.notify("workspace/didChangeConfiguration", {"settings": settings})
        signed = ls.request(
            "signInWithGithubToken", {"githubToken": "gho_test0123456789", "user": "alice-gh"}
        )
        assert "error" not in signed, ls.log()[:6000]
        uri = (tmp_path / "add.py").as_uri()
        ls.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python",
                                                            "version": 1, "text": SOURCE}})  # fmt: skip
        answer = ls.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri, "version": 1}, "position": {"line": 1, "character": 4},
            "context": {"triggerKind": 1}, "formattingOptions": {"tabSize": 4, "insertSpaces": True},
        }, timeout=60)  # fmt: skip
        items = answer.get("result", {}).get("items", [])
        assert any("a + b" in item["insertText"] for item in items), (answer, ls.log()[-3000:])
        turn = ls.request("conversation/create", {
            "turns": [{"request": "say hi"}], "capabilities": {"allSkills": False, "skills": []},
            "source": "panel", "workDoneToken": "chat-1", "model": "local-model"}, timeout=60)  # fmt: skip
        assert "error" not in turn, turn
        deadline = time.monotonic() + 30  # the reply streams back as progress reports
        while REPLY not in replies(ls.progress("chat-1")):
            assert time.monotonic() < deadline, repr(ls.progress("chat-1"))[:3000]
            time.sleep(0.2)
    finally:
        ls.stop()
    assert "/copilot_internal/v2/token" in github.paths  # signed in through the tunnel
    chat = [r for r in gateway.records if r.path == "/api/v2/aibridge/copilot/chat/completions"]
    assert chat and chat[-1].header("X-Coder-AI-Governance-Token") == ALICE  # routed, as alice
    fim = [r for r in completions.records if "/completions" in r["path"]]
    assert fim and fim[-1]["path"].startswith("/v1/engines/")
    line = proxy.wait_for_line(
        lambda ln: ln.get("msg") == "request" and ln.get("host") == COMPLETIONS
    )
    assert (line["outcome"], line["tool"], line["user"]) == ("observed", "GitHub Copilot", "alice")
    assert ALICE not in proxy.output
