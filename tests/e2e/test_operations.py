"""Running it as a service: admin endpoints, metrics, reload on SIGHUP without dropping
anyone, graceful stop on SIGTERM, and systemd's notify protocol."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
import warnings
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.support import ALICE
from tests.support import ProxyProcess
from tests.support import free_port
from tests.support import metric
from tests.support import proxy_client


def test_health_ready_ca_and_bundle(proxy, gateway):
    assert proxy.admin("/healthz").text == "ok\n"
    r = proxy.admin("/readyz")
    assert r.status_code == 200 and r.json() == {"ready": True, "problems": []}
    ca = proxy.admin("/ca.pem")
    assert ca.headers["content-type"] == "application/x-pem-file"
    assert ca.content == proxy.ca_path.read_bytes()
    assert b"PRIVATE KEY" not in ca.content
    bundle = proxy.admin("/ca-bundle.pem").content
    with warnings.catch_warnings():  # some system roots have non-positive serials
        warnings.simplefilter("ignore")
        certs = x509.load_pem_x509_certificates(bundle)
    assert len(certs) > 10 and b"PRIVATE KEY" not in bundle
    assert bundle.endswith(proxy.ca_path.read_bytes())


def test_readyz_reports_unreachable_gateway(make_proxy):
    p = make_proxy("--auth-mode", "presence", gateway=f"http://127.0.0.1:{free_port()}")
    r = p.admin("/readyz")
    assert r.status_code == 503
    assert r.json()["ready"] is False and "unreachable" in r.json()["problems"][0]


def test_pac_file(make_proxy):
    p = make_proxy(
        "--provider", "*.openai.azure.com=azure", "--admin-proxy-address", "proxy.example.com:8888"
    )
    r = p.admin("/proxy.pac")
    assert r.headers["content-type"].startswith("application/x-ns-proxy-autoconfig")
    pac = r.text
    assert '"api.openai.com"' in pac and '"api.business.githubcopilot.com"' in pac
    assert 'return "PROXY proxy.example.com:8888"' in pac and 'return "DIRECT"' in pac
    node = os.environ.get("NODE", "node")
    script = (
        pac
        + """
    const cases = ["api.openai.com", "API.ANTHROPIC.COM", "east.openai.azure.com", "a.b.openai.azure.com", "github.com", "openai.com"];
    console.log(JSON.stringify(cases.map(h => FindProxyForURL("https://" + h + "/", h))));
    """
    )
    import subprocess

    out = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    via = "PROXY proxy.example.com:8888"
    assert json.loads(out.stdout) == [via, via, via, "DIRECT", "DIRECT", "DIRECT"]


def test_metrics_count_what_happened(make_proxy, gateway):
    p = make_proxy()
    with proxy_client(p) as c:
        assert c.get("https://api.openai.com/v1/models").status_code == 200
        assert c.get("https://api.anthropic.com/_diag/status?code=429").status_code == 429
        with c.stream("GET", "https://api.openai.com/_diag/abort?events=2") as s:
            try:
                for _ in s.iter_lines():
                    pass
            except httpx.HTTPError:
                pass
    with httpx.Client(proxy=p.url("tok-bad"), trust_env=False) as c:
        with pytest.raises(httpx.ProxyError):
            c.get("https://api.openai.com/v1/models")
    text = p.admin("/metrics").text
    assert metric(text, "aibridge_proxy_requests_total", provider="openai", code="200") >= 1
    assert metric(text, "aibridge_proxy_requests_total", provider="anthropic", code="429") == 1
    assert metric(text, "aibridge_proxy_connects_total", outcome="intercepted", reason="") >= 2
    assert (
        metric(text, "aibridge_proxy_connects_total", outcome="rejected", reason="invalid_token")
        == 1
    )
    assert metric(text, "aibridge_proxy_auth_failures_total", reason="invalid_token") == 1
    assert metric(text, "aibridge_proxy_token_cache_misses_total") >= 2
    assert metric(text, "aibridge_proxy_token_cache_hits_total") >= 1
    assert metric(text, "aibridge_proxy_time_to_first_byte_seconds_count", provider="openai") >= 1
    assert metric(text, "aibridge_proxy_request_duration_seconds_count", provider="anthropic") == 1
    assert metric(text, "aibridge_proxy_response_bytes_total", provider="openai") > 0
    assert metric(text, "aibridge_proxy_ca_expiry_timestamp_seconds") > time.time() + 300 * 86400
    # in-flight gauges return to zero however the requests ended
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = p.admin("/metrics").text
        if all(
            metric(text, "aibridge_proxy_inflight_requests", provider=pr) == 0
            for pr in ("openai", "anthropic")
        ):
            break
        time.sleep(0.1)
    assert metric(text, "aibridge_proxy_inflight_requests", provider="openai") == 0
    assert ALICE not in text and "tok-bad" not in text
    assert "alice" not in text  # no user labels unless enabled


def test_user_labels_when_enabled(make_proxy, gateway):
    p = make_proxy("--metrics-user-labels")
    with proxy_client(p) as c:
        c.get("https://api.openai.com/v1/models")
    assert (
        metric(
            p.admin("/metrics").text,
            "aibridge_proxy_user_requests_total",
            user="alice",
            provider="openai",
        )
        == 1
    )


def _stream_in_background(p, events: int, interval: float) -> dict:
    """Open an SSE stream through the proxy on a thread; returns a dict filled as it goes."""
    result: dict = {"events": [], "error": None}
    started = threading.Event()

    def run():
        try:
            with proxy_client(p) as c:
                with c.stream(
                    "GET", f"https://api.openai.com/_diag/sse?events={events}&interval={interval}"
                ) as s:
                    for line in s.iter_lines():
                        if line.startswith("data: "):
                            result["events"].append(json.loads(line[6:])["i"])
                            started.set()
        except Exception as e:  # reported through the dict
            result["error"] = repr(e)
        finally:
            started.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    started.wait(10)
    result["thread"] = t
    return result


def test_reload_keeps_streams_and_applies_new_settings(make_proxy, gateway, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("providers:\n  api.example-ai.com: example\n")
    p = make_proxy("--config", str(config))
    stream = _stream_in_background(p, events=20, interval=0.1)
    # a broken configuration is rejected and the old one stays
    config.write_text("providers: [[[\n")
    p.signal(signal.SIGHUP)
    p.wait_for_line(lambda r: "reload rejected" in r.get("msg", ""))
    with proxy_client(p) as c:
        assert c.get("https://api.example-ai.com/v1/x").status_code == 404  # still routed
    assert gateway.last().path == "/api/v2/aibridge/example/v1/x"
    # a good one takes effect for new requests
    config.write_text("providers:\n  api.example-ai.com: renamed\n")
    p.signal(signal.SIGHUP)
    p.wait_for_line(lambda r: r.get("msg") == "configuration reloaded")
    with proxy_client(p) as c:
        c.get("https://api.example-ai.com/v1/x")
    assert gateway.last().path == "/api/v2/aibridge/renamed/v1/x"
    stream["thread"].join(15)
    assert stream["error"] is None and stream["events"] == list(range(20))
    text = p.admin("/metrics").text
    assert metric(text, "aibridge_proxy_config_reloads_total", result="success") == 1
    assert metric(text, "aibridge_proxy_config_reloads_total", result="failure") == 1
    assert (
        metric(text, "aibridge_proxy_config_last_reload_success_timestamp_seconds")
        > time.time() - 60
    )


def test_open_tunnel_follows_the_new_table(make_proxy, gateway, tmp_path):
    """A connection opened under the old table is judged request by request under the new one."""
    config = tmp_path / "config.yaml"
    config.write_text("providers:\n  api.example-ai.com: first\n")
    p = make_proxy("--config", str(config))
    with proxy_client(p) as c:
        c.get("https://api.example-ai.com/a")
        config.write_text("providers:\n  api.example-ai.com: {provider: second, paths: [/v1/]}\n")
        p.signal(signal.SIGHUP)
        p.wait_for_line(lambda r: r.get("msg") == "configuration reloaded")
        c.get("https://api.example-ai.com/v1/b")  # same kept-alive tunnel
    assert [r.path for r in gateway.records] == [
        "/api/v2/aibridge/first/a",
        "/api/v2/aibridge/second/v1/b",
    ]
    lines = [r for r in p.access_lines() if r.get("host") == "api.example-ai.com"]
    assert len({r["connect_id"] for r in lines}) == 1


def test_sigterm_drains_streams_then_exits_zero(make_proxy, gateway):
    p = make_proxy("--grace-period", "10")
    stream = _stream_in_background(p, events=30, interval=0.1)
    p.signal(signal.SIGTERM)
    refused = False
    deadline = time.monotonic() + 5
    while not refused and time.monotonic() < deadline:  # no longer accepting, soon
        try:
            socket.create_connection(("127.0.0.1", p.port), timeout=2).close()
            time.sleep(0.05)
        except OSError:
            refused = True
    assert refused
    assert stream["thread"].is_alive()  # while the stream still runs
    stream["thread"].join(15)
    assert stream["error"] is None and stream["events"] == list(range(30))
    assert p.proc.wait(15) == 0


def test_sigterm_cuts_streams_after_the_grace_period(make_proxy, gateway):
    p = make_proxy("--grace-period", "0.5")
    stream = _stream_in_background(p, events=100, interval=0.1)
    started = time.monotonic()
    p.signal(signal.SIGTERM)
    assert p.proc.wait(15) == 0
    assert time.monotonic() - started < 5
    stream["thread"].join(5)
    assert len(stream["events"]) < 100


def test_systemd_notify_protocol(make_proxy, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    p = make_proxy(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    messages = [sock.recv(4096).decode() for _ in range(3)]
    assert messages[0].startswith("READY=1\nSTATUS=proxy on 127.0.0.1:")
    assert messages[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
    p.signal(signal.SIGTERM)
    rest = []
    while "STOPPING=1" not in rest:
        rest.append(sock.recv(4096).decode())
    assert p.proc.wait(10) == 0
    sock.close()


def test_dump_dir_writes_requests_and_responses(make_proxy, gateway, tmp_path):
    dump = tmp_path / "dump"
    p = make_proxy("--dump-dir", str(dump))
    with proxy_client(p) as c:
        r = c.post(
            "https://api.openai.com/v1/chat/completions?api_key=sk-q",
            json={"model": "m", "stream": True},
            headers={"Authorization": "Bearer sk-own"},
        )
        assert r.status_code == 200
    rid = gateway.last().header("X-Coder-AI-Governance-Request-Id")
    req = (dump / "openai" / f"{rid}.req.txt").read_text()
    resp = (dump / "openai" / f"{rid}.resp.txt").read_text()
    assert req.startswith("POST api.openai.com/v1/chat/completions?api_key=<redacted> HTTP/1.1\n")
    assert "Authorization: <redacted>" in req and "sk-own" not in req and "sk-q" not in req
    assert req.endswith('{"model":"m","stream":true}')
    assert resp.startswith("HTTP/1.1 200 OK\n") and "data: [DONE]" in resp
    assert oct((dump / "openai" / f"{rid}.req.txt").stat().st_mode & 0o777) == "0o600"


def test_one_structured_line_per_request(proxy, gateway):
    with proxy_client(proxy) as c:
        c.post(
            "https://api.openai.com/v1/chat/completions?x=secret-ish",
            json={"model": "m"},
            headers={"Authorization": "Bearer sk-own"},
        )
    rid = gateway.last().header("X-Coder-AI-Governance-Request-Id")
    line = proxy.wait_for_line(lambda r: r.get("request_id") == rid)
    assert line["logger"] == "aibridge.access" and line["level"] == "info"
    assert line["user"] == "alice" and line["provider"] == "openai" and line["method"] == "POST"
    assert line["host"] == "api.openai.com" and line["path"] == "/v1/chat/completions"
    assert line["upstream"] == f"{gateway.url}/api/v2/aibridge/openai/v1/chat/completions"
    assert (
        line["status"] == 200
        and line["bytes_in"] == len(b'{"model":"m"}')
        and line["bytes_out"] > 100
    )
    assert line["duration_ms"] >= line["ttfb_ms"] > 0
    assert (
        line["connect_id"]
        and line["client"].startswith("127.0.0.1:")
        and line["time"].endswith("+00:00")
    )
    assert "secret-ish" not in json.dumps(line)  # queries (which may hold keys) are not logged


def test_text_log_format(make_proxy, gateway):
    p = make_proxy("--log-format", "text")
    with proxy_client(p) as c:
        c.get("https://api.openai.com/v1/models")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "aibridge.access" not in p.output:
        time.sleep(0.05)
    line = next(x for x in p.output.splitlines() if "aibridge.access" in x)
    assert " info    aibridge.access: request connect_id=" in line
    assert "provider=openai" in line and "status=200" in line and "path=/v1/models" in line


def test_the_open_file_limit_is_raised_to_what_the_system_grants(gateway_server, tmp_path):
    """With the soft limit at 1,024 a proxy stops near 500 streams: it raises it to the hard
    limit (systemd's LimitNOFILE=) itself, and says so."""
    import shutil
    import sys

    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux)")
    p = ProxyProcess(
        tmp_path / "state",
        ["--gateway", gateway_server.url],
        command=["prlimit", "--nofile=1024:8192", sys.executable, "-m", "proxy"],
    ).start()
    try:
        line = p.wait_for_line(lambda r: r.get("msg") == "proxy listening")
        assert line["open_files"] == 8192
        limits = Path(f"/proc/{p.proc.pid}/limits").read_text()
        assert re.search(r"^Max open files\s+8192\s+8192\s", limits, re.M), limits
    finally:
        p.stop()
