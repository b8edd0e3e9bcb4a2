"""The gateway leg is shared: client connections, whoever they belong to, reuse the worker's
connections to the gateway (HTTP/2 streams multiplexed, HTTP/1.1 kept alive), and nothing of
one user's request reaches another's. Asserted on what the gateways recorded per connection."""

from __future__ import annotations

import threading

import pytest

from tests.support import ALICE
from tests.support import BOB
from tests.support import ThreadedGateway
from tests.support import metric
from tests.support import private_tls_server
from tests.support import proxy_client
from tests.support.h2_gateway import H2Gateway


@pytest.fixture
def h2_gateway(tmp_path):
    context, ca_file = private_tls_server(tmp_path, "gateway")
    started: list[H2Gateway] = []

    def start(**kw) -> tuple[H2Gateway, object]:
        gw = H2Gateway(context, **kw).start()
        started.append(gw)
        return gw, ca_file

    yield start
    for gw in started:
        gw.stop()


def _proxy_for(make_proxy, gw: H2Gateway, ca_file, *args):
    return make_proxy(
        "--auth-mode", "presence", "--gateway-ca-file", str(ca_file), *args,
        gateway=f"https://localhost:{gw.port}",
    )  # fmt: skip


def _stream(p, token: str, results: dict, key, events: int = 4, interval: float = 0.1):
    """One SSE request on a client connection of its own; its events as the client got them."""
    with proxy_client(p, token=token) as c:
        url = f"https://api.openai.com/v1/sse?events={events}&interval={interval}&k={key}"
        with c.stream("GET", url) as r:
            results[key] = (r.status_code, [x for x in r.iter_lines() if x.startswith("data:")])


def _in_threads(calls) -> None:
    threads = [threading.Thread(target=fn, args=args) for fn, *args in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def test_streams_of_many_clients_and_users_share_one_http2_connection(make_proxy, h2_gateway):
    gw, ca = h2_gateway()
    p = _proxy_for(make_proxy, gw, ca)
    results: dict = {}
    users = {f"alice-{i}": ALICE for i in range(3)} | {f"bob-{i}": BOB for i in range(3)}
    _in_threads([(_stream, p, token, results, key) for key, token in users.items()])

    assert len(gw.connections) == 1  # six client connections, one gateway connection
    assert gw.connections[0].peak_streams >= 2  # they were open at the same time
    assert len(gw.records) == 6
    for key, token in users.items():
        status, events = results[key]
        assert status == 200 and len(events) == 4, (key, results[key])
        (record,) = [r for r in gw.records if f"k={key}" in r.path]
        # each stream carries its own user's token and request id, and nobody else's
        assert record.headers["x-coder-ai-governance-token"] == token
        assert record.path.startswith("/api/v2/aibridge/openai/v1/sse?")
    assert len({r.headers["x-coder-ai-governance-request-id"] for r in gw.records}) == 6
    assert all("proxy-authorization" not in r.headers for r in gw.records)


def test_max_concurrent_streams_opens_more_connections(make_proxy, h2_gateway):
    gw, ca = h2_gateway(max_concurrent_streams=2)
    p = _proxy_for(make_proxy, gw, ca)
    results: dict = {}
    _in_threads([(_stream, p, ALICE, results, i, 3, 0.2) for i in range(5)])

    assert all(results[i][0] == 200 and len(results[i][1]) == 3 for i in range(5)), results
    assert all(c.peak_streams <= 2 for c in gw.connections)
    assert len(gw.connections) >= 3


def test_goaway_lets_streams_under_way_finish_and_new_ones_use_a_new_connection(
    make_proxy, h2_gateway
):
    gw, ca = h2_gateway()
    p = _proxy_for(make_proxy, gw, ca)
    results: dict = {}
    slow = threading.Thread(target=_stream, args=(p, ALICE, results, "slow", 8, 0.15))
    slow.start()
    while not gw.records:
        threading.Event().wait(0.02)
    gw.send_goaway()
    slow.join(30)
    assert results["slow"][0] == 200 and len(results["slow"][1]) == 8

    with proxy_client(p, token=BOB) as c:
        r = c.post("https://api.openai.com/v1/chat/completions", content=b'{"model":"m"}')
    assert r.status_code == 200, r.text
    assert r.json()["connection"] == 2 and r.json()["token"] == BOB
    assert r.json()["body_length"] == len(b'{"model":"m"}')


def _chat(p, token: str) -> int:
    with proxy_client(p, token=token) as c:
        r = c.post(
            "https://api.openai.com/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
    return r.status_code


def test_http1_gateway_connection_is_kept_alive_across_clients(make_proxy, gateway):
    p = make_proxy()
    statuses = [_chat(p, ALICE if i % 2 else BOB) for i in range(6)]
    assert statuses == [200] * 6
    assert len({rec.peer for rec in gateway.records}) == 1  # six clients, one connection
    tokens = [rec.header("X-Coder-AI-Governance-Token") for rec in gateway.records]
    assert tokens == [BOB, ALICE] * 3  # each request carried its own user's token
    text = p.admin("/metrics").text
    labels = {"gateway": gateway.url, "protocol": "http/1.1"}
    assert metric(text, "aibridge_proxy_gateway_connections_opened_total", **labels) == 1
    assert metric(text, "aibridge_proxy_gateway_connections", **labels) == 1


def test_without_the_pool_each_client_connection_dials_the_gateway(make_proxy, gateway):
    p = make_proxy("--gateway-pool-max-connections", "0")
    assert [_chat(p, ALICE) for _ in range(3)] == [200] * 3
    assert len({rec.peer for rec in gateway.records}) == 3


def test_a_pooled_connection_the_gateway_closed_is_not_used(make_proxy):
    gw = ThreadedGateway().start()
    port = gw.gateway.port
    try:
        p = make_proxy(gateway=gw.url)
        assert _chat(p, ALICE) == 200
        gw.stop()  # closes the kept-alive connection while it is idle
        gw = ThreadedGateway().start(port)
        assert _chat(p, ALICE) == 200
        assert gw.last().path == "/api/v2/aibridge/openai/v1/chat/completions"
    finally:
        gw.stop()


@pytest.mark.parametrize("fault", ["no_settings", "silent", "stop_reading"])
def test_a_silent_gateway_connection_heals_under_steady_traffic(make_proxy, h2_gateway, fault):
    """The proxy with its default PING bounds: a gateway connection that never finishes its
    preface, goes silent, or stops reading is dropped, and the requests a client keeps making
    are answered through a fresh connection, never a 504 after gateway_timeout."""
    import time

    gw, ca = h2_gateway()
    p = _proxy_for(make_proxy, gw, ca, "--gateway-timeout", "60")
    with proxy_client(p, token=ALICE, timeout=30) as c:
        url = "https://api.openai.com/v1/chat/completions"
        if fault == "no_settings":
            gw.next_fault = fault
            gw.break_connections("silent")  # the warm connection too: the next one is faulty
        else:
            assert c.post(url, json={"model": "m"}).json()["connection"] == 1
            gw.break_connections(fault)
        broke = time.monotonic()
        statuses, served_by, healed = [], [], None
        for _ in range(8):  # steady traffic: one request after another
            r = c.post(url, json={"model": "m"})
            statuses.append(r.status_code)
            served_by.append(r.json().get("connection") if r.status_code == 200 else None)
            healed = healed or time.monotonic() - broke
    assert statuses == [200] * 8, statuses
    assert all(n is not None and n > 1 for n in served_by), served_by
    print(f"\n{fault}: served again {healed:.1f} s after the connection broke")


def test_an_upload_the_gateway_does_not_take_holds_the_client_back(make_proxy, h2_gateway):
    """The gateway's flow-control window never reopens: the proxy stops reading the client's
    body (as mitmproxy does for its own sockets) instead of taking the whole upload into
    memory; the client's sends block on the socket."""
    import time

    gw, ca = h2_gateway()
    gw.every_fault = "window_closed"
    p = _proxy_for(make_proxy, gw, ca)
    sent = [0]
    chunk = b"u" * 65536

    def body():
        for _ in range(1024):  # 64 MiB, if nothing held it back
            sent[0] += len(chunk)
            yield chunk

    def upload():
        try:
            with proxy_client(p, token=ALICE, timeout=30) as c:
                c.post("https://api.openai.com/v1/files", content=body())
        except Exception:
            pass  # the proxy answers 502 once the stream gives up; or the test ends first

    worker = threading.Thread(target=upload, daemon=True)
    worker.start()
    time.sleep(4)
    held = sent[0]
    rss_kb = int(next(line.split()[1] for line in open(f"/proc/{p.proc.pid}/status")
                      if line.startswith("VmRSS")))  # fmt: skip
    assert held < 16 * 1024 * 1024, held  # socket buffers' worth, not the upload
    print(f"\nclient had sent {held / 2**20:.1f} MiB after 4 s; proxy RSS {rss_kb / 1024:.0f} MiB")
