"""HTTP/2 clients: bodies without content-length arrive intact, many concurrent streams on one
connection are not serialised, large bodies go through flow control both ways."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time

import pytest

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


def _goaway_after(tunnel: H2Tunnel, frames: bytes | None = None, resets: int = 0) -> int | None:
    """Send `resets` HEADERS+RST_STREAM pairs (or raw `frames`), then read until the proxy
    ends the connection: the GOAWAY's error code, or None if it never sent one."""
    import h2.errors
    import h2.events

    if resets:
        headers = [(":method", "POST"), (":path", "/v1/chat/completions"),
                   (":scheme", "https"), (":authority", tunnel.host)]  # fmt: skip
        for _ in range(resets):
            sid = tunnel.conn.get_next_available_stream_id()
            tunnel.conn.send_headers(sid, headers)
            tunnel.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        try:
            tunnel.flush()
        except OSError:
            pass
    if frames:
        try:
            tunnel.sock.sendall(frames)
        except OSError:
            pass
    tunnel.sock.settimeout(10)
    try:
        while True:
            for event in tunnel.pump_once():
                if isinstance(event, h2.events.ConnectionTerminated):
                    return event.error_code
    except (ConnectionError, OSError):
        return None


def test_rapid_reset_ends_in_goaway_and_reaches_no_gateway(make_proxy, gateway):
    """CVE-2023-44487: streams opened and reset at once. None of them becomes a request (the
    gateway sees nothing), the connection gets GOAWAY ENHANCE_YOUR_CALM, others go on."""
    import h2.errors

    proxy = make_proxy()  # its own: floods count against the user
    before = len(gateway.records)
    code = _goaway_after(H2Tunnel(proxy.port, proxy.ca_path, ALICE), resets=2000)
    assert code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    honest = H2Tunnel(proxy.port, proxy.ca_path, ALICE)
    (result,) = honest.collect({honest.request("GET", "/_diag/echo")}).values()
    assert result["status"] == 200
    assert len(gateway.records) == before + 1  # the honest request only
    proxy.wait_for_line(lambda r: "too many stream resets" in r.get("msg", ""))


def test_a_client_cancelling_a_few_streams_is_not_a_flood(proxy, gateway):
    import h2.errors

    tunnel = H2Tunnel(proxy.port, proxy.ca_path, ALICE)
    for _ in range(30):  # a tool cancelling completions as the developer types
        sid = tunnel.request("GET", "/_diag/sse?events=50&interval=0.05")
        tunnel.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        tunnel.flush()
    (result,) = tunnel.collect({tunnel.request("GET", "/_diag/echo")}).values()
    assert result["status"] == 200


@pytest.mark.parametrize(
    "frame",
    [b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",  # SETTINGS
     b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"\x00" * 8],  # PING
    ids=["settings", "ping"],
)  # fmt: skip
def test_control_frame_floods_end_in_goaway(make_proxy, frame):
    import h2.errors

    proxy = make_proxy()
    code = _goaway_after(H2Tunnel(proxy.port, proxy.ca_path, ALICE), frames=frame * 5000)
    assert code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def test_a_client_that_keeps_flooding_is_refused_new_connections(make_proxy):
    """Each flood costs the attacker a connection; after three in a minute, new CONNECTs get
    429 at once, without a TLS handshake, and the refusals are counted."""
    import h2.errors

    from tests.support import BOB
    from tests.support import connect_through
    from tests.support import metric
    from tests.support import proxy_basic

    proxy = make_proxy()
    flood = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"\x00" * 8
    for _ in range(3):
        code = _goaway_after(H2Tunnel(proxy.port, proxy.ca_path, BOB), frames=flood * 5000)
        assert code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    status, answer = connect_through(proxy.port, "api.openai.com:443", proxy_basic(BOB))
    assert status == 429 and b"flooding HTTP/2" in answer
    # another user from the same address is not affected (a NAT may hide many developers)
    assert connect_through(proxy.port, "api.openai.com:443", proxy_basic(ALICE))[0] == 200
    text = proxy.admin("/metrics").text
    assert metric(text, "aibridge_proxy_http2_floods_total", what="control frames") >= 3
