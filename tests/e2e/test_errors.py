"""Upstream failures: 502 naming the gateway when it is unreachable, 504 when it is too slow
(without cutting streams that keep sending), always short plain text."""

from __future__ import annotations

import json
import time

import httpx

from tests.support import free_port
from tests.support import proxy_client


def test_gateway_unreachable_is_502_naming_it(make_proxy):
    dead = f"http://127.0.0.1:{free_port()}"
    p = make_proxy("--auth-mode", "presence", gateway=dead)
    with proxy_client(p) as c:
        r = c.post("https://api.openai.com/v1/chat/completions", json={"model": "m"})
    assert r.status_code == 502
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text == f"502 Bad Gateway: cannot reach the gateway {dead}: connection refused\n"
    assert "mitmproxy" not in r.text and "Errno" not in r.text
    line = p.wait_for_line(lambda rec: rec.get("logger") == "aibridge.access")
    assert line["upstream"] == f"{dead}/api/v2/aibridge/openai/v1/chat/completions"
    assert "refused" in line["error"] or "failed" in line["error"]


def test_gateway_too_slow_is_504_but_streams_are_not_cut(make_proxy, gateway):
    p = make_proxy("--gateway-timeout", "0.5")
    with proxy_client(p) as c:
        started = time.monotonic()
        r = c.get("https://api.openai.com/_diag/slow?delay=3")
        elapsed = time.monotonic() - started
        assert r.status_code == 504
        assert r.text.startswith("504 Gateway Timeout: the gateway http://127.0.0.1:")
        assert "did not answer within 0.5s" in r.text
        assert elapsed < 2.5
        # a stream that outlives the timeout but keeps sending is delivered whole
        with c.stream("GET", "https://api.openai.com/_diag/sse?events=5&interval=0.3") as s:
            events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
        assert [e["i"] for e in events] == [0, 1, 2, 3, 4]
        # and the connection still serves requests after a timeout
        assert c.get("https://api.openai.com/v1/models").status_code == 200


def test_gateway_closes_mid_stream(proxy, gateway):
    """The client sees the stream end early; the proxy logs it and keeps serving."""
    with proxy_client(proxy) as c:
        events = []
        try:
            with c.stream("GET", "https://api.openai.com/_diag/abort?events=3") as s:
                for line in s.iter_lines():
                    if line.startswith("data: "):
                        events.append(line)
        except httpx.HTTPError:
            pass
        assert len(events) == 3
        assert c.get("https://api.openai.com/v1/models").status_code == 200
    proxy.wait_for_line(lambda r: r.get("path") == "/_diag/abort" and r.get("error"))


def test_validation_service_down_fails_closed_with_503(make_proxy):
    dead = f"http://127.0.0.1:{free_port()}"
    p = make_proxy(gateway=dead)
    with proxy_client(p) as c:
        try:
            c.get("https://api.openai.com/v1/models")
        except httpx.ProxyError as e:
            assert "503" in str(e)
        else:
            raise AssertionError("CONNECT should have been refused")
