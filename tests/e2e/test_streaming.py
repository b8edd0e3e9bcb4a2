"""Streaming and bodies: SSE event by event, large uploads and downloads byte-exact, chunked
and content-length bodies, keep-alive on both sides."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from proxy.devtools.localgateway import download_bytes
from tests.support import proxy_client

MB = 1024 * 1024


def test_sse_events_arrive_as_sent(proxy, gateway):
    interval = 0.25
    with proxy_client(proxy) as c:
        with c.stream("GET", f"https://api.openai.com/_diag/sse?events=5&interval={interval}") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            arrivals = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    arrivals.append((time.time(), json.loads(line[6:])))
    assert [e["i"] for _, e in arrivals] == [0, 1, 2, 3, 4]
    for got, event in arrivals:
        # each event reaches the client right after the gateway sent it, not at stream end
        assert got - event["sent"] < interval / 2, got - event["sent"]
    first = arrivals[0][0]
    assert arrivals[-1][0] - first > 3 * interval


def test_large_download_byte_exact(proxy, gateway):
    size = 100 * MB
    expected = hashlib.sha256(download_bytes(size)).hexdigest()
    for chunked in ("0", "1"):
        digest, n = hashlib.sha256(), 0
        with proxy_client(proxy) as c:
            url = f"https://api.openai.com/_diag/download?bytes={size}&chunked={chunked}"
            with c.stream("GET", url) as r:
                assert r.status_code == 200
                for chunk in r.iter_raw():
                    digest.update(chunk)
                    n += len(chunk)
        assert n == size
        assert digest.hexdigest() == expected


def _payload(size: int):
    block = hashlib.sha256(b"upload").digest() * 2048
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        sent += len(piece)
        yield piece


def test_large_upload_byte_exact_chunked_and_length(proxy, gateway):
    size = 100 * MB
    expected = hashlib.sha256(b"".join(_payload(size))).hexdigest()
    with proxy_client(proxy) as c:
        # generator body: chunked transfer-encoding
        r = c.post("https://api.openai.com/_diag/upload", content=_payload(size))
        assert r.status_code == 200
        assert r.json()["body_length"] == size and r.json()["body_sha256"] == expected
        assert gateway.last().header("Transfer-Encoding") == "chunked"
        # known length: content-length
        r = c.post(
            "https://api.openai.com/_diag/upload",
            content=_payload(size),
            headers={"Content-Length": str(size)},
        )
        assert r.json()["body_length"] == size and r.json()["body_sha256"] == expected
        assert gateway.last().header("Content-Length") == str(size)


def test_keep_alive_on_both_sides(proxy, gateway):
    with proxy_client(proxy) as c:
        for _ in range(4):
            assert c.get("https://api.openai.com/v1/models").status_code == 200
    peers = {rec.peer for rec in gateway.records}
    assert len(gateway.records) == 4
    assert len(peers) == 1, "the proxy reused one gateway connection"
    request_ids = {rec.header("X-Coder-AI-Governance-Request-Id") for rec in gateway.records}
    lines = [proxy.wait_for_line(lambda r, i=i: r.get("request_id") == i) for i in request_ids]
    assert len({line["connect_id"] for line in lines}) == 1, "the client reused one CONNECT tunnel"


@pytest.mark.parametrize("size", [0, 1, 65536 + 7])
def test_small_bodies_both_framings(proxy, gateway, size):
    body = b"x" * size
    with proxy_client(proxy) as c:
        r = c.post("https://api.openai.com/_diag/echo", content=body)
        assert r.json()["body_length"] == size
        r = c.post("https://api.openai.com/_diag/echo", content=iter([body]) if size else b"")
        assert r.json()["body_length"] == size
