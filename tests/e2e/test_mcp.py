"""MCP governance end to end: the official MCP Python SDK as server (over TLS, behind a host
name mapped to loopback) and as the agent's client, configured only by HTTPS_PROXY and
SSL_CERT_FILE, through the real proxy. Over Streamable HTTP with SSE answers, with JSON answers,
and the legacy HTTP+SSE transport: the denied tools are not listed, calling one gives the
agent the proxy's message as the tool's failure (and the server never runs it), an allowed
tool runs, a rule keeps one tool from one group, every call is one access line, and a slow
stream's events are not held back."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from certs.authority import generate_ca
from certs.authority import issue_leaf
from certs.authority import key_pem
from tests.support import ALICE
from tests.support import BOB
from tests.support import ProxyProcess
from tests.support import base_env
from tests.support import free_port
from tests.support.vendor_origin import hosts_resolve_to_loopback

HOST = "mcp.governed.test"


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory):
    """The SDK's server on a test CA of its own (trusted by the proxy as origin_ca_file)."""
    where = tmp_path_factory.mktemp("mcp-server")
    ca = generate_ca("test MCP server CA", 30, permitted_domains=None)
    cert, key = issue_leaf(ca, [HOST])
    pem = where / "server.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key_pem(key))
    (where / "ca.pem").write_bytes(ca.cert_pem())
    port, ran = free_port(), where / "ran.txt"
    ran.touch()
    with hosts_resolve_to_loopback([HOST]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.mcp_server", "--port", str(port),
             "--cert", str(pem), "--ran", str(ran)],
            env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "the MCP server did not start"
                time.sleep(0.2)
        yield {"port": port, "ca": where / "ca.pem", "ran": ran}
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def governing(mcp_server, gateway_server, tmp_path_factory):
    state = tmp_path_factory.mktemp("governing")
    base = f"https://{HOST}:{mcp_server['port']}"
    deny = ["delete_*"]
    config = {
        "gateway": gateway_server.url,
        "mcp": [
            {"name": "repo-sse", "url": f"{base}/mcp", "deny_tools": deny},
            {"name": "repo-json", "url": f"{base}/json/mcp", "deny_tools": deny},
            {"name": "repo-legacy", "url": f"{base}/legacy", "deny_tools": deny},
        ],
        "groups": {"contractors": ["bob"]},
        "rules": [{"name": "no-merges-for-contractors",
                   "match": {"group": ["contractors"], "mcp_tool": ["merge_*"]},
                   "deny": {"message": "contractors may not merge"}}],
        "origin_ca_file": str(mcp_server["ca"]),
        "allowed_private_cidrs": ["127.0.0.0/8"],
        "allowed_ports": ["1-65535"],
        "log": {"level": "debug"},
    }  # fmt: skip
    path = state / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    p = ProxyProcess(state / "state", ["--config", str(path)]).start()
    yield p
    p.stop()


def agent(proxy: ProxyProcess, url: str, transport: str, *calls: str, token: str = ALICE) -> dict:
    """The SDK client, as an agent runs it: only the environment says where the proxy is."""
    env = {**base_env(), "HTTPS_PROXY": proxy.url(token), "SSL_CERT_FILE": str(proxy.bundle_path)}
    r = subprocess.run([sys.executable, "-m", "tests.support.mcp_client", url, transport, *calls],
                       env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


URLS = {"repo-sse": "/mcp", "repo-json": "/json/mcp", "repo-legacy": "/legacy/sse"}
CASES = [
    ("repo-sse", "streamable"),
    ("repo-json", "streamable"),
    ("repo-legacy", "legacy"),
    ("repo-json", "stateless"),
]  # the 2026-07-28 revision: no initialize, no session


@pytest.mark.parametrize("server, transport", CASES)
def test_the_sdk_agent_never_sees_or_runs_a_denied_tool(governing, mcp_server, server, transport):
    ran_before = mcp_server["ran"].read_text()
    lines_before = len(governing.access_lines())
    url = f"https://{HOST}:{mcp_server['port']}{URLS[server]}"
    seen = agent(governing, url, transport,
                 'search_issues={"query": "proxy"}', 'delete_repo={"name": "prod"}')  # fmt: skip
    assert seen["tools"] == ["merge_pull_request", "search_issues", "slow_count"]
    assert seen["calls"]["search_issues"] == {**seen["calls"]["search_issues"], "error": False}
    assert "ran search_issues" in seen["calls"]["search_issues"]["text"]
    refused = seen["calls"]["delete_repo"]
    assert refused["error"] and refused.get("code") == -32001, refused
    assert f"the tool delete_repo of the MCP server {server} is denied" in refused["text"]
    assert refused["seconds"] < 5  # shown at once, no hang
    ran = mcp_server["ran"].read_text()[len(ran_before) :].split()
    assert ran == ["search_issues"]  # the server never ran delete_repo
    lines = [ln for ln in governing.access_lines() if ln.get("msg") == "mcp call"
             and ln.get("mcp_server") == server and ln.get("mcp_tool")]  # fmt: skip
    assert [(ln["mcp_tool"], ln["outcome"], ln["user"]) for ln in lines[-2:]] == [
        ("search_issues", "ok", "alice"), ("delete_repo", "denied", "alice")]  # fmt: skip
    assert all(ln["args_digest"] and "prod" not in json.dumps(ln) for ln in lines)
    methods = {ln["mcp_method"] for ln in governing.access_lines()[lines_before:]
               if ln.get("msg") == "mcp call"}  # fmt: skip
    assert ("initialize" in methods) == (transport != "stateless")


def test_an_escaped_path_is_governed_as_the_server_reads_it(governing, mcp_server):
    """`/json/%6dcp` is `/json/mcp` to the server (Starlette decodes it): the entry governs it,
    and the SDK agent there still never runs the denied tool."""
    ran_before = mcp_server["ran"].read_text()
    url = f"https://{HOST}:{mcp_server['port']}/json/%6dcp"
    seen = agent(governing, url, "streamable", 'delete_repo={"name": "prod"}')
    assert "delete_repo" not in seen["tools"]
    refused = seen["calls"]["delete_repo"]
    assert refused["error"] and refused.get("code") == -32001, refused
    assert "the MCP server repo-json is denied" in refused["text"]
    assert mcp_server["ran"].read_text()[len(ran_before) :].split() == []


@pytest.mark.parametrize(
    "path", ["/json/%2e/mcp", "/json/%2E%2e/json/mcp", "/json%2fmcp", "//json/mcp", "/json/%256dcp"]
)
def test_a_path_servers_could_read_two_ways_is_refused(governing, mcp_server, path):
    ran_before = mcp_server["ran"].read_text()
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "delete_repo", "arguments": {"name": "prod"}}}  # fmt: skip
    url = httpx.URL(f"https://{HOST}:{mcp_server['port']}").copy_with(raw_path=path.encode())
    verify = ssl.create_default_context(cafile=str(governing.bundle_path))
    with httpx.Client(proxy=governing.url(ALICE), verify=verify, trust_env=False,
                      timeout=20) as client:  # fmt: skip
        r = client.post(url, json=call, headers={"Accept": "application/json, text/event-stream"})
    assert r.status_code == 400, r.text
    assert "MCP servers are governed here" in r.text
    assert mcp_server["ran"].read_text()[len(ran_before) :].split() == []


def test_a_rule_keeps_merging_from_contractors_only(governing, mcp_server):
    url = f"https://{HOST}:{mcp_server['port']}/mcp"
    bob = agent(governing, url, "streamable", 'merge_pull_request={"number": 7}', token=BOB)
    assert "contractors may not merge (rule no-merges-for-contractors" in bob["calls"][
        "merge_pull_request"]["text"]  # fmt: skip
    alice = agent(governing, url, "streamable", 'merge_pull_request={"number": 7}')
    assert "ran merge_pull_request: #7 merged" in alice["calls"]["merge_pull_request"]["text"]
    output = governing.output
    assert ALICE not in output and BOB not in output  # tokens in no log line, at debug level


def test_a_slow_streams_events_reach_the_agent_as_they_are_sent(governing, mcp_server):
    """Progress events 0.3 s apart on an SSE answer arrive 0.3 s apart, not at the end."""
    url = f"https://{HOST}:{mcp_server['port']}/mcp"
    seen = agent(governing, url, "streamable", 'slow_count={"n": 5}')
    counted = seen["calls"]["slow_count"]
    assert "ran slow_count: counted to 5" in counted["text"]
    arrivals = counted["progress"]
    assert len(arrivals) == 5
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert min(gaps) > 0.15, gaps  # each event went on when it came, none waited for the next
    print(f"progress events arrived {[round(g, 2) for g in gaps]} s apart (sent 0.3 s apart)")
    assert counted["seconds"] - (arrivals[-1] - arrivals[0]) < 1.5


@pytest.mark.parametrize("who, shown", [
    (BOB, "contractors may not merge (rule no-merges-for-contractors; tool merge_pull_request)"),
    (ALICE, "ran merge_pull_request: #7 merged"),
])  # fmt: skip
def test_claude_code_shows_a_denied_tools_message_and_an_allowed_tools_result(
    governing, mcp_server, gateway, tmp_path, who, shown
):
    """The real Claude Code with the server added as an HTTP MCP server, as a user adds it; the
    local gateway's model calls the MCP tool, then repeats what the tool said."""
    from tests.e2e.test_real_clients import CLAUDE
    from tests.e2e.test_real_clients import run
    from tests.e2e.test_real_clients import tool_env

    if not CLAUDE.exists():
        pytest.skip("Claude Code not installed (./run setup)")
    url = f"https://{HOST}:{mcp_server['port']}/mcp"
    env = tool_env(
        governing,
        tmp_path,
        NODE_EXTRA_CA_CERTS=str(governing.ca_path),
        ANTHROPIC_API_KEY="sk-ant-personal",
        HTTPS_PROXY=governing.url(who),
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        ENABLE_TOOL_SEARCH="false",
    )  # the MCP tools in the model's list, not deferred
    # fmt: skip
    added, _ = run([str(CLAUDE), "mcp", "add", "--transport", "http", "repo", url], env, tmp_path)
    assert added.returncode == 0, added.stdout + added.stderr
    ran_before = mcp_server["ran"].read_text()
    gateway.gateway.tool_use = ("mcp__repo__merge_pull_request", {"number": 7})
    try:
        r, elapsed = run([str(CLAUDE), "-p", "merge pull request 7",
                          "--allowedTools", "mcp__repo__merge_pull_request"], env, tmp_path)  # fmt: skip
    finally:
        gateway.gateway.tool_use = None
    said = r.stdout + r.stderr
    assert shown in said, said[-3000:]
    ran = mcp_server["ran"].read_text()[len(ran_before) :].split()
    assert ran == ([] if who == BOB else ["merge_pull_request"])  # bob's call never ran
    offered = [rec for rec in gateway.records if rec.path.endswith("/v1/messages")
               and b"mcp__repo__" in rec.body]  # fmt: skip
    assert offered, "Claude Code never offered the MCP tools to the model"
    tools = {t["name"] for t in json.loads(offered[0].body)["tools"]}
    assert "mcp__repo__merge_pull_request" in tools and "mcp__repo__search_issues" in tools
    assert "mcp__repo__delete_repo" not in tools  # denied by the entry: never listed
    print(f"Claude Code answered in {elapsed:.1f} s")


def peak_rss_kib(proxy: ProxyProcess) -> int:
    status = open(f"/proc/{proxy.proc.pid}/status").read()
    return int(status.split("VmHWM:")[1].split()[0])


def test_hostile_messages_get_clear_errors_and_memory_stays_bounded(governing, mcp_server):
    from tests.support import proxy_client

    url = f"https://{HOST}:{mcp_server['port']}/mcp"
    headers = {"Accept": "application/json, text/event-stream"}
    with proxy_client(governing, ALICE, timeout=60) as c:
        broken = c.post(url, content=b"{not json", headers=headers)
        assert broken.status_code == 400 and broken.json()["error"]["code"] == -32700
        odd_id = c.post(url, json={"jsonrpc": "2.0", "id": {"x": 1}, "method": "ping"},
                        headers=headers)  # fmt: skip
        assert odd_id.status_code == 400 and "neither a string nor a number" in odd_id.text
        before = peak_rss_kib(governing)

        def fifty_megabytes():
            yield b"["
            for _ in range(50):
                yield b" " * (1024 * 1024)
            yield b"]"

        try:
            # past its bound the proxy answers 413 and stops reading; a client that sends its
            # whole body before it reads an answer (httpx) sees its write time out instead
            huge = c.post(url, content=fifty_megabytes(), headers=headers, timeout=5)
            assert huge.status_code == 413, huge.text
        except httpx.TransportError:
            pass
        governing.wait_for_line(lambda ln: "larger than" in str(ln.get("error")))
        grown = peak_rss_kib(governing) - before
        assert grown < 40 * 1024, f"peak memory grew {grown} KiB for a 50 MB message"
        print(f"peak memory grew {grown} KiB for a 50 MB message")
    # and the proxy serves the next agent as before
    seen = agent(governing, url, "streamable", 'search_issues={"query": "after"}')
    assert "ran search_issues" in seen["calls"]["search_issues"]["text"]
