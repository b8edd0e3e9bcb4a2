"""The AI tools themselves, installed from the npm registry and run as a user runs them,
configured only by the variables the README gives: Codex CLI (WebSocket first, HTTPS on 426)
and Claude Code."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from proxy.devtools.localgateway import REPLY
from tests.support import ALICE
from tests.support import NODE_BIN
from tests.support import NODE_TOOLS
from tests.support import ROOT
from tests.support import ThreadedGateway
from tests.support import base_env

CODEX = NODE_TOOLS / "codex"
CLAUDE = NODE_TOOLS / "claude"


def tool_env(p, tmp_path, **extra) -> dict:
    env = base_env()
    home = tmp_path / "home"
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        CODEX_HOME=str(home / ".codex"),
        HTTPS_PROXY=p.url(ALICE),
        NO_PROXY="localhost,127.0.0.1,::1",
        PATH=f"{NODE_BIN.parent}:{env['PATH']}",
    )
    env.update(extra)
    return env


def run(cmd, env, cwd, timeout=120) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    r = subprocess.run(
        cmd,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return r, time.monotonic() - started


@pytest.mark.skipif(not CODEX.exists(), reason="Codex CLI not installed (./run setup)")
def test_codex_cli_over_websocket(proxy, gateway, tmp_path):
    env = tool_env(proxy, tmp_path, CODEX_CA_CERTIFICATE=str(proxy.ca_path), OPENAI_API_KEY=ALICE)
    r, _ = run([str(CODEX), "exec", "--skip-git-repo-check", "say hi"], env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert REPLY in r.stdout
    upgrades = [rec for rec in gateway.records if rec.header("Upgrade") == "websocket"]
    assert upgrades and upgrades[-1].path == "/api/v2/aibridge/openai/v1/responses"
    # the gateway gets the Coder token: Codex sends no Authorization on this path, so the proxy adds it
    assert upgrades[-1].header("X-Coder-AI-Governance-Token") == ALICE


@pytest.mark.skipif(not CODEX.exists(), reason="Codex CLI not installed (./run setup)")
def test_codex_in_a_git_repository_is_attributed_to_it_and_its_session(proxy, gateway, tmp_path):
    """Codex names its workspace's remote in its turn metadata (in each response.create of a
    WebSocket session) and its session in a header: the access line carries both, the remote
    as host/owner/name without its credentials."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.email=dev@example.com", "-c", "user.name=dev"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "remote", "add", "origin",
                    "https://dev:s3cret@github.com/acme/widgets.git"], cwd=repo, check=True)  # fmt: skip
    (repo / "README").write_text("widgets\n")
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "start"], cwd=repo, check=True)
    env = tool_env(proxy, tmp_path, CODEX_CA_CERTIFICATE=str(proxy.ca_path), OPENAI_API_KEY=ALICE)
    r, _ = run([str(CODEX), "exec", "say hi"], env, repo)
    assert r.returncode == 0, r.stdout + r.stderr
    session = next(rec.header("session-id") for rec in gateway.records if rec.header("session-id"))
    # a WebSocket session's messages name the repository: its closing line says it
    line = proxy.wait_for_line(
        lambda rec: rec.get("msg") == "websocket session" and rec.get("repo")
    )
    assert line["repo"] == "github.com/acme/widgets" and line["session"] == session
    upgrade = next(rec for rec in proxy.access_lines() if rec.get("request_id") == line["request_id"]
                   and rec.get("msg") == "request")  # fmt: skip
    assert upgrade["status"] == 101 and upgrade["session"] == session
    assert "s3cret" not in proxy.output


@pytest.fixture
def gateway_without_websocket():
    gw = ThreadedGateway(websocket=False).start()
    yield gw
    gw.stop()


@pytest.mark.skipif(not CODEX.exists(), reason="Codex CLI not installed (./run setup)")
def test_codex_cli_falls_back_to_https_at_once(make_proxy, gateway_without_websocket, tmp_path):
    p = make_proxy(gateway=gateway_without_websocket.url)
    env = tool_env(p, tmp_path, CODEX_CA_CERTIFICATE=str(p.ca_path), OPENAI_API_KEY=ALICE)
    r, elapsed = run([str(CODEX), "exec", "--skip-git-repo-check", "say hi"], env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert REPLY in r.stdout
    assert elapsed < 5  # on anything but 426 Codex retries for about 7 s
    posts = [rec for rec in gateway_without_websocket.records if rec.method == "POST"]
    assert posts[-1].path == "/api/v2/aibridge/openai/v1/responses"


@pytest.mark.skipif(not CLAUDE.exists(), reason="Claude Code not installed (./run setup)")
def test_claude_code(proxy, gateway, tmp_path):
    env = tool_env(
        proxy,
        tmp_path,
        NODE_EXTRA_CA_CERTS=str(proxy.ca_path),
        ANTHROPIC_API_KEY="sk-ant-personal",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
    )
    r, _ = run([str(CLAUDE), "-p", "say hi"], env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert REPLY in r.stdout
    messages = [
        rec for rec in gateway.records if rec.path == "/api/v2/aibridge/anthropic/v1/messages"
    ]
    assert messages
    sent_key = messages[-1].header("x-api-key") or (messages[-1].header("Authorization") or "")[7:]
    assert sent_key == "sk-ant-personal"
    assert messages[-1].header("X-Coder-AI-Governance-Token") == ALICE


@pytest.mark.skipif(
    not shutil.which("go"), reason="Go not installed (./run setup installs golang-go)"
)
def test_go_net_http(proxy, gateway, tmp_path):
    env = base_env()
    env.update(
        HTTPS_PROXY=proxy.url(ALICE),
        SSL_CERT_FILE=str(proxy.bundle_path),
        OPENAI_API_KEY="sk-go-key",
        HOME=str(tmp_path),
        GOCACHE=str(tmp_path / "gocache"),
        GOPATH=str(tmp_path / "gopath"),
        GOTOOLCHAIN="local",
        GOPROXY="off",
        GOFLAGS="-mod=mod",
    )
    r, _ = run(["go", "run", "client.go"], env, ROOT / "tests" / "go", timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == REPLY
    rec = gateway.last()
    assert rec.path == "/api/v2/aibridge/openai/v1/chat/completions"
    assert (
        rec.header("Authorization") == "Bearer sk-go-key"
        and rec.header("X-Coder-AI-Governance-Token") == ALICE
    )
