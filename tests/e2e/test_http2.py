"""HTTP/2 clients: bodies without content-length arrive intact, many concurrent streams on one
connection are not serialised, large bodies go through flow control both ways."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.events

from proxy.localgateway import download_bytes
from tests.support import ALICE
from tests.support import client_env
from tests.support import proxy_basic


class H2Tunnel:
    """An HTTP/2 client connection through the proxy's CONNECT tunnel (ALPN h2 only)."""

    def __init__(self, proxy, host: str = "api.openai.com"):
        raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
        raw.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nProxy-Authorization: {proxy_basic(ALICE)}\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
        ctx.set_alpn_protocols(["h2"])
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.host = host
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(2**30)
        self.flush()
        self.lock = threading.Lock()

    def flush(self) -> None:
        if data := self.conn.data_to_send():
            self.sock.sendall(data)

    def request(self, method: str, path: str, body: bytes | None = None) -> int:
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":path", path), (":scheme", "https"), (":authority", self.host)]
        self.conn.send_headers(sid, headers, end_stream=body is None)
        if body is not None:
            offset = 0
            while offset < len(body):
                window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                if window <= 0:
                    self.pump_once()
                    continue
                self.conn.send_data(sid, body[offset : offset + window])
                offset += window
                self.flush()
            self.conn.end_stream(sid)
        self.flush()
        return sid

    def pump_once(self) -> list:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("closed")
        events = self.conn.receive_data(data)
        for e in events:
            if isinstance(e, h2.events.DataReceived):
                self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        self.flush()
        return events

    def collect(self, stream_ids: set[int]) -> dict[int, dict]:
        out = {sid: {"status": None, "body": bytearray(), "ended": None, "events": []} for sid in stream_ids}
        open_ids = set(stream_ids)
        while open_ids:
            for e in self.pump_once():
                r = out.get(getattr(e, "stream_id", None))
                if r is None:
                    continue
                if isinstance(e, h2.events.ResponseReceived):
                    r["status"] = int(dict(e.headers)[b":status"])
                elif isinstance(e, h2.events.DataReceived):
                    r["body"] += e.data
                    r["events"].append(time.monotonic())
                elif isinstance(e, h2.events.StreamEnded | h2.events.StreamReset):
                    r["ended"] = time.monotonic()
                    open_ids.discard(e.stream_id)
        return out


def test_upload_without_content_length_curl(proxy, gateway, tmp_path):
    data = bytes(range(256)) * 4096  # 1 MiB
    out = subprocess.run(
        ["curl", "-sS", "--http2", "-T", "-", "https://api.openai.com/_diag/upload", "-w", "\n%{http_version}"],
        input=data, env=client_env(proxy), capture_output=True, timeout=30,
    )
    body, _, version = out.stdout.rpartition(b"\n")
    assert version == b"2", out.stderr
    got = json.loads(body)
    assert got["body_length"] == len(data) and got["body_sha256"] == hashlib.sha256(data).hexdigest()


def test_twenty_concurrent_sse_streams_are_not_serialised(proxy, gateway):
    tunnel = H2Tunnel(proxy)
    started = time.monotonic()
    one = tunnel.collect({tunnel.request("GET", "/_diag/sse?events=5&interval=0.2")})
    single = time.monotonic() - started
    started = time.monotonic()
    ids = {tunnel.request("GET", "/_diag/sse?events=5&interval=0.2") for _ in range(20)}
    results = tunnel.collect(ids)
    twenty = time.monotonic() - started
    assert all(r["status"] == 200 and r["body"].count(b"data: ") == 5 for r in [*one.values(), *results.values()])
    # with a 5-connection cap this would take four rounds (~4x); allow scheduling slack
    assert twenty < single * 2, (single, twenty)


def test_large_bodies_through_flow_control(proxy, gateway):
    tunnel = H2Tunnel(proxy)
    size = 20 * 1024 * 1024
    down = tunnel.collect({tunnel.request("GET", f"/_diag/download?bytes={size}")})
    assert hashlib.sha256(next(iter(down.values()))["body"]).digest() == hashlib.sha256(download_bytes(size)).digest()
    payload = b"u" * size
    up = tunnel.collect({tunnel.request("POST", "/_diag/upload", body=payload)})
    got = json.loads(next(iter(up.values()))["body"])
    assert got["body_length"] == size and got["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert gateway.last().header("Transfer-Encoding") == "chunked"
