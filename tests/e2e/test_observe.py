"""Observe mode, end to end: tools no gateway can serve keep talking to their vendor, byte for
byte and streamed in time, while the proxy records who, which tool, which model and how many
tokens; denied hosts and models are refused with their messages.

Vendor hosts are a local TLS server on its own CA (trusted as origin_ca_file), reached through
/etc/hosts lines this module adds and removes; nothing leaves loopback."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import time

import pytest
import yaml
from cryptography import x509

from tests.support import ALICE
from tests.support import BOB
from tests.support import ROOT
from tests.support import cli
from tests.support import client_env
from tests.support import connect_through
from tests.support import metric
from tests.support import proxy_basic
from tests.support import proxy_client
from tests.support import run_python
from tests.support.vendor_origin import BLOB
from tests.support.vendor_origin import VendorOrigin
from tests.support.vendor_origin import hosts_resolve_to_loopback

CURSOR = "api2.cursor.sh"
MISTRAL = "api.mistral.ai"
GEMINI = "generativelanguage.googleapis.com"
MESSAGES = "messages.observed.test"
VENDOR_HOSTS = [CURSOR, MISTRAL, GEMINI, MESSAGES]


@pytest.fixture(scope="module")
def vendor(tmp_path_factory):
    with hosts_resolve_to_loopback(VENDOR_HOSTS):
        origin = VendorOrigin(VENDOR_HOSTS).start(tmp_path_factory.mktemp("vendor"))
        yield origin
        origin.stop()


@pytest.fixture(scope="module")
def observing(vendor, gateway_server, tmp_path_factory):
    from tests.support import ProxyProcess

    state = tmp_path_factory.mktemp("observing")
    config = {
        "gateway": gateway_server.url,
        "observe": ["cursor", "mistral", "gemini", "*.observed.test"],
        "egress": {"deny_hosts": ["windsurf"]},
        "origin_ca_file": str(vendor.write_ca(state / "vendor-ca.pem")),
        "allowed_private_cidrs": ["127.0.0.0/8"],
        "allowed_ports": ["1-65535"],
        "metrics": {"user_labels": True},
        "rules": [
            {
                "name": "no-large-mistral",
                "match": {"host": [MISTRAL], "model": ["mistral-large*"]},
                "deny": {"status": 403, "message": "mistral-large is not approved here"},
            }
        ],
    }
    path = state / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    p = ProxyProcess(state / "state", ["--config", str(path)]).start()
    yield p
    p.stop()


def last_access(p, **match) -> dict:
    return p.wait_for_line(
        lambda r: r.get("msg") == "request" and all(r.get(k) == v for k, v in match.items())
    )


def test_an_observed_request_reaches_the_vendor_unchanged(observing, vendor):
    vendor.records.clear()
    url = f"https://{CURSOR}:{vendor.port}/aiserver.v1.ChatService/Stream?a=%2F&b=1"
    body = bytes(range(256)) * 8
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--data-binary", "@-", url,
         "-H", "Authorization: Bearer cursor-own-key", "-H", "User-Agent: Cursor/1.7.2",
         "-H", "Content-Type: application/proto"],
        input=body, capture_output=True, env=client_env(observing), timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout
        == f"vendor saw POST /aiserver.v1.ChatService/Stream?a=%2F&b=1 body={len(body)}".encode()
    )
    got = vendor.records[-1]
    assert got["body"] == body and got["host"] == f"{CURSOR}:{vendor.port}"
    assert got["headers"]["Authorization"] == "Bearer cursor-own-key"
    assert not {"Proxy-Authorization", "X-Coder-AI-Governance-Token"} & set(got["headers"])
    assert not any("Governance" in h for h in got["headers"])
    line = last_access(observing, host=CURSOR)
    assert line["outcome"] == "observed" and line["observed"] == "cursor"
    assert line["tool"] == "Cursor" and line["user_agent"] == "Cursor/1.7.2"
    assert line["user"] == "alice" and line["status"] == 200
    assert line["bytes_in"] == len(body) and line["upstream"].startswith(f"https://{CURSOR}:")
    assert "input_tokens" not in line  # nothing to read: absent, not zero

    with proxy_client(observing) as c:
        r = c.get(f"https://{CURSOR}:{vendor.port}/blob")
    assert r.status_code == 200 and r.content == BLOB


def test_the_ca_generated_by_serve_covers_the_observed_domains(observing):
    ca = x509.load_pem_x509_certificate(observing.ca_path.read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    permitted = {n.value for n in constraints.permitted_subtrees}
    assert {"cursor.sh", "cursorapi.com", MISTRAL, GEMINI, "observed.test"} <= permitted


OPENAI_STREAM = """
import json, os, sys, time
import openai
client = openai.OpenAI(base_url=os.environ["BASE_URL"], api_key="mistral-own-key")
stream = client.chat.completions.create(
    model="codestral-latest", messages=[{"role": "user", "content": "hi"}], stream=True,
    stream_options={"include_usage": True})
arrivals, text = [], ""
for chunk in stream:
    arrivals.append(time.time())
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
print(json.dumps({"arrivals": arrivals, "text": text}))
"""


def test_the_openai_sdk_on_an_observed_host_streams_in_time_and_is_counted(observing, vendor):
    vendor.sent_at.clear()
    env = client_env(observing, BOB, BASE_URL=f"https://{MISTRAL}:{vendor.port}/v1")
    out = run_python(OPENAI_STREAM, env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["text"] == "one two three"
    # every event reached the client soon after the vendor sent it, not at the end
    sent = vendor.sent_at[: len(result["arrivals"])]  # the SDK yields no chunk for [DONE]
    delays = [got - at for got, at in zip(result["arrivals"], sent, strict=True)]
    assert max(delays) < 0.15, delays
    line = last_access(observing, host=MISTRAL, user="bob")
    assert line["observed"] == "mistral" and line["model"] == "codestral-latest"
    assert (line["input_tokens"], line["output_tokens"]) == (11, 7)
    assert (line["cached_tokens"], line["reasoning_tokens"]) == (3, 2)
    assert line["tool"] == "Mistral AI"
    metrics = observing.admin("/metrics").text
    labels = {"provider": "mistral", "model": "codestral-latest"}
    assert metric(metrics, "aibridge_proxy_tokens_total", **labels, kind="input") == 11
    assert metric(metrics, "aibridge_proxy_tokens_total", **labels, kind="cached") == 3
    assert (
        metric(metrics, "aibridge_proxy_user_tokens_total", user="bob", **labels, kind="output")
        == 7
    )


@pytest.mark.parametrize(
    "host, path, payload, tokens",
    [
        (MISTRAL, "/v1/chat/completions", {"model": "mistral-small"}, (13, 5, None)),
        (MESSAGES, "/v1/messages", {"model": "claude-x", "stream": True}, (14, 6, 4)),
        (GEMINI, "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", {}, (20, 13, None)),
    ],
    ids=["openai-json", "anthropic-sse", "gemini-sse"],
)
def test_token_usage_is_read_in_each_shape(observing, vendor, host, path, payload, tokens):
    with proxy_client(observing) as c:
        r = c.post(f"https://{host}:{vendor.port}{path}", json=payload)
    assert r.status_code == 200
    model = payload.get("model", "gemini-2.5-pro")
    line = last_access(observing, host=host, path=path.split("?")[0], model=model)
    assert (line["input_tokens"], line["output_tokens"], line.get("cached_tokens")) == tokens


WEBSOCKET = """
import asyncio, os
from websockets.asyncio.client import connect
async def main():
    async with connect(os.environ["WS_URL"]) as ws:
        await ws.send("ping")
        print(await ws.recv())
        await ws.send(bytes(range(256)))
        print((await ws.recv()) == bytes(range(256)))
asyncio.run(main())
"""


def test_a_websocket_client_talks_to_an_observed_host(observing, vendor):
    env = client_env(observing, WS_URL=f"wss://{CURSOR}:{vendor.port}/ws")
    out = run_python(WEBSOCKET, env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["echo", "ping", "True"]


def test_an_http2_client_is_observed(observing, vendor):
    out = subprocess.run(
        ["curl", "-sS", "--http2", "-N", "-w", "\n%{http_version}",
         f"https://{MISTRAL}:{vendor.port}/v1/chat/completions",
         "-H", "Content-Type: application/json", "--data", '{"model": "h2-model", "stream": true}'],
        capture_output=True, text=True, env=client_env(observing), timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    body, _, version = out.stdout.rpartition("\n")
    assert version == "2" and body.endswith("data: [DONE]\n\n")
    line = last_access(observing, host=MISTRAL, model="h2-model")
    assert (line["input_tokens"], line["output_tokens"]) == (11, 7)


def test_a_denied_catalog_entry_is_refused_before_any_tls(observing):
    status, answer = connect_through(observing.port, "windsurf.com:443", proxy_basic(ALICE))
    assert status == 403
    assert answer.endswith(
        b"windsurf.com is denied by the proxy's egress policy (egress.deny_hosts: windsurf)\n"
    )
    line = observing.wait_for_line(
        lambda r: r.get("msg") == "connect refused" and r.get("host") == "windsurf.com"
    )
    assert line["outcome"] == "denied" and line["tool"] == "Windsurf" and line["user"] == "alice"
    metrics = observing.admin("/metrics").text
    assert metric(metrics, "aibridge_proxy_connects_total", outcome="rejected",
                  reason="denied_host") >= 1  # fmt: skip


def test_a_denied_model_on_an_observed_host_is_refused_with_the_rules_message(observing, vendor):
    vendor.records.clear()
    with proxy_client(observing) as c:
        r = c.post(f"https://{MISTRAL}:{vendor.port}/v1/chat/completions",
                   json={"model": "mistral-large-latest"})  # fmt: skip
    assert r.status_code == 403
    assert "mistral-large is not approved here (rule no-large-mistral)" in r.text
    assert vendor.records == []
    line = last_access(observing, host=MISTRAL, rule="no-large-mistral")
    assert line["outcome"] == "denied"


def test_observed_hosts_count_as_intercepted_connects(observing, vendor):
    time.sleep(0.1)
    metrics = observing.admin("/metrics").text
    assert metric(metrics, "aibridge_proxy_connects_total", outcome="observed", reason="") >= 1


def test_the_usage_report_matches_a_known_traffic_mix(vendor, gateway_server, tmp_path):
    """Through a proxy of its own: routed, observed and denied traffic of two users, the log
    rotated (and gzipped) half-way, and the report adds up exactly."""
    from tests.support import ProxyProcess

    log = tmp_path / "logs" / "access.log"
    log.parent.mkdir()
    config = {
        "gateway": gateway_server.url,
        "observe": ["cursor", "mistral"],
        "egress": {"deny_hosts": ["windsurf"]},
        "origin_ca_file": str(vendor.write_ca(tmp_path / "vendor-ca.pem")),
        "allowed_private_cidrs": ["127.0.0.0/8"],
        "allowed_ports": ["1-65535"],
        "log": {"access_file": str(log)},
        "rules": [{"name": "no-large", "match": {"model": ["*-large*"]},
                   "deny": {"message": "no large models"}}],
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    p = ProxyProcess(tmp_path / "state", ["--config", str(tmp_path / "config.yaml")]).start()
    chat = f"https://{MISTRAL}:{vendor.port}/v1/chat/completions"
    got = {"alice": {"bytes_out": 0}, "bob": {"bytes_out": 0}}
    try:
        with proxy_client(p, ALICE) as c:
            for _ in range(2):  # observed, 11 in / 7 out / 3 cached each
                got["alice"]["bytes_out"] += len(
                    c.post(chat, json={"model": "m", "stream": True}).content
                )
            routed = c.post("https://api.openai.com/v1/chat/completions", json={"model": "gpt"})
            assert routed.status_code == 200  # the local gateway: 5 in / 8 out
            got["alice"]["routed_out"] = len(routed.content)
        p.wait_for_line(lambda r: r.get("msg") == "request" and r.get("provider") == "openai")
        log.rename(log.with_name("access.log.1"))  # logrotate's move; the proxy reopens
        assert connect_through(p.port, "windsurf.com:443", proxy_basic(ALICE))[0] == 403
        with proxy_client(p, BOB) as c:
            r = c.post(f"https://{CURSOR}:{vendor.port}/x", content=b"x" * 100)
            got["bob"]["bytes_out"] += len(r.content)
            assert c.post(chat, json={"model": "mistral-large-2"}).status_code == 403
        p.wait_for_line(lambda r: r.get("msg") == "request" and r.get("rule") == "no-large")
    finally:
        p.stop()
    rotated = log.with_name("access.log.1")
    log.with_name("access.log.1.gz").write_bytes(gzip.compress(rotated.read_bytes()))
    rotated.unlink()

    out = subprocess.run(
        [sys.executable, "-m", "proxy", "usage", "--log", str(log), "--by", "user",
         "--format", "json"], capture_output=True, text=True, cwd=ROOT, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = {(r["user"], r["traffic"]): r for r in json.loads(out.stdout)}
    counts = lambda r: (r["requests"], r["input_tokens"], r["output_tokens"], r["cached_tokens"])  # noqa: E731
    assert counts(rows["alice", "observed"]) == (2, 22, 14, 6)
    assert rows["alice", "observed"]["bytes_out"] == got["alice"]["bytes_out"]
    assert counts(rows["alice", "routed"]) == (1, 5, 8, 0)
    assert rows["alice", "routed"]["bytes_out"] == got["alice"]["routed_out"]
    assert counts(rows["alice", "denied"]) == (1, 0, 0, 0)  # the CONNECT to windsurf.com
    assert counts(rows["bob", "observed"]) == (1, 0, 0, 0)
    assert rows["bob", "observed"]["bytes_in"] == 100
    assert rows["bob", "observed"]["bytes_out"] == got["bob"]["bytes_out"]
    assert counts(rows["bob", "denied"]) == (1, 0, 0, 0)  # the rule on the large model
    assert counts(rows["total", "observed"]) == (3, 22, 14, 6)
    assert set(rows) == {
        ("alice", "observed"), ("alice", "routed"), ("alice", "denied"),
        ("bob", "observed"), ("bob", "denied"),
        ("total", "routed"), ("total", "observed"), ("total", "denied"),
    }  # fmt: skip
    table = subprocess.run(
        [sys.executable, "-m", "proxy", "usage", "--log", str(log), "--by", "tool"],
        capture_output=True, text=True, cwd=ROOT, timeout=30,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert re.search(r"^Mistral AI\s+observed\s+2\s+22\s+14\s+6\s", table.stdout, re.M), (
        table.stdout
    )
    assert re.search(r"^Windsurf\s+denied\s+1\s", table.stdout, re.M), table.stdout


def test_each_leg_trusts_only_its_own_cas(vendor, tmp_path):
    """gateway_ca_file is trusted for the gateway only and origin_ca_file for origins only: a
    vendor certificate signed by the company's gateway CA is refused, and the other way round."""
    from tests.support import ProxyProcess
    from tests.support import ThreadedGateway
    from tests.support import private_tls_server

    context, gateway_ca = private_tls_server(tmp_path, "gateway")
    gw = ThreadedGateway(ssl_context=context).start()
    vendor_ca = vendor.write_ca(tmp_path / "vendor-ca.pem")
    chat = f"https://{MISTRAL}:{vendor.port}/v1/chat/completions"

    def proxy(gateway_trust, origin_trust, name):
        config = {"gateway": f"https://localhost:{gw.gateway.port}", "observe": ["mistral"],
                  "gateway_ca_file": str(gateway_trust), "origin_ca_file": str(origin_trust),
                  "auth": {"mode": "presence"}, "allowed_private_cidrs": ["127.0.0.0/8"],
                  "allowed_ports": ["1-65535"]}  # fmt: skip
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        return ProxyProcess(tmp_path / name, ["--config", str(tmp_path / f"{name}.yaml")]).start()

    swapped = proxy(vendor_ca, gateway_ca, "swapped")
    try:
        with proxy_client(swapped, ALICE) as c:
            assert c.post(chat, json={"model": "m"}).status_code == 502  # vendor: not trusted
            assert c.get("https://api.openai.com/v1/models").status_code == 502  # gateway: nor
        assert not gw.records
    finally:
        swapped.stop()
    right = proxy(gateway_ca, vendor_ca, "right")
    try:
        with proxy_client(right, ALICE) as c:
            assert c.post(chat, json={"model": "m"}).status_code == 200
            assert c.get("https://api.openai.com/v1/models").status_code == 200
    finally:
        right.stop()
        gw.stop()


def test_explain_says_what_the_proxy_does_on_an_observed_host(observing, vendor):
    """A rule on an observed host: `explain` answers as the proxy does (it once said the
    request went to the original host unchanged while the proxy refused it)."""
    config = observing.state_dir.parent / "config.yaml"
    url = f"https://{MISTRAL}:{vendor.port}/v1/chat/completions"
    for model, expected in (("mistral-large-latest", 403), ("mistral-small", 200)):
        said = cli("explain", "--config", str(config), "--model", model, url).stdout
        with proxy_client(observing) as c:
            got = c.post(url, json={"model": model}).status_code
        assert got == expected, said
        if expected == 403:
            assert said.splitlines()[0].startswith(f"{MISTRAL}: observed (observe: mistral)")
            assert "rule:     no-large-mistral (the admin's rules)" in said
            assert "answer:   403 " in said and "mistral-large is not approved here" in said
        else:
            assert "answer:" not in said and "sent to the original host unchanged" in said
