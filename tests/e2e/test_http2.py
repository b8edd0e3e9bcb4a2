"""HTTP/2 clients: bodies without content-length arrive intact, many concurrent streams on one
connection are not serialised, large bodies go through flow control both ways."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time

from proxy.devtools.localgateway import download_bytes
from tests.support import ALICE
from tests.support import H2Tunnel
from tests.support import client_env


def test_upload_without_content_length_curl(proxy, gateway, tmp_path):
    data = bytes(range(256)) * 4096  # 1 MiB
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--http2",
            "-T",
            "-",
            "https://api.openai.com/_diag/upload",
            "-w",
            "\n%{http_version}",
        ],
        input=data,
        env=client_env(proxy),
        capture_output=True,
        timeout=30,
    )
    body, _, version = out.stdout.rpartition(b"\n")
    assert version == b"2", out.stderr
    got = json.loads(body)
    assert (
        got["body_length"] == len(data) and got["body_sha256"] == hashlib.sha256(data).hexdigest()
    )


def test_twenty_concurrent_sse_streams_are_not_serialised(proxy, gateway):
    tunnel = H2Tunnel(proxy.port, proxy.ca_path, ALICE)
    started = time.monotonic()
    one = tunnel.collect({tunnel.request("GET", "/_diag/sse?events=5&interval=0.2")})
    single = time.monotonic() - started
    started = time.monotonic()
    ids = {tunnel.request("GET", "/_diag/sse?events=5&interval=0.2") for _ in range(20)}
    results = tunnel.collect(ids)
    twenty = time.monotonic() - started
    assert all(
        r["status"] == 200 and r["body"].count(b"data: ") == 5
        for r in [*one.values(), *results.values()]
    )
    # with a 5-connection cap this would take four rounds (~4x); allow scheduling slack
    assert twenty < single * 2, (single, twenty)


def test_large_bodies_through_flow_control(proxy, gateway):
    tunnel = H2Tunnel(proxy.port, proxy.ca_path, ALICE)
    size = 20 * 1024 * 1024
    down = tunnel.collect({tunnel.request("GET", f"/_diag/download?bytes={size}")})
    assert (
        hashlib.sha256(next(iter(down.values()))["body"]).digest()
        == hashlib.sha256(download_bytes(size)).digest()
    )
    payload = b"u" * size
    up = tunnel.collect({tunnel.request("POST", "/_diag/upload", body=payload)})
    got = json.loads(next(iter(up.values()))["body"])
    assert got["body_length"] == size and got["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert gateway.last().header("Transfer-Encoding") == "chunked"
