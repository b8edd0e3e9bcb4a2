"""The gateway pool on its own (no mitmproxy): reuse, the retry rule, GOAWAY, stale
connections and HPACK, against real sockets on loopback."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from hpack import NeverIndexedHeaderTuple

from addons.engine.gateway_pool import REPLAY_LIMIT
from addons.engine.gateway_pool import UPLOAD_BACKLOG
from addons.engine.gateway_pool import GatewayPool
from addons.engine.gateway_pool import OutboundRequest
from addons.engine.gateway_pool import PoolLimits
from tests.support import private_tls_server
from tests.support.h2_gateway import H2Gateway


class Answer:
    """A sink that keeps what the pool delivered."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.body = b""
        self.error: str | None = None
        self.connect_failed = False
        self.ended = False
        self.flushes = 0  # hand-overs: one per read, not one per event
        self.done = asyncio.Event()

    def on_headers(self, status, reason, version, headers, ended):
        self.status = status

    def on_data(self, data):
        self.body += data

    def on_end(self, trailers):
        self.ended = True

    def on_error(self, message, connect_failed):
        self.error, self.connect_failed = message, connect_failed
        self.ended = True

    async def flush(self):
        self.flushes += 1
        if self.ended:
            self.done.set()

    def backlog(self):
        return None


def post(body: bytes | None = b'{"model":"m"}', path=b"/v1/x", token=b"tok") -> OutboundRequest:
    headers = [(b"content-type", b"application/json"), (b"x-coder-ai-governance-token", token)]
    return OutboundRequest(b"POST", path, b"localhost", headers, body)


async def ask(pool: GatewayPool, request: OutboundRequest | None = None) -> Answer:
    answer = Answer()
    pool.request(request or post(), answer)
    await asyncio.wait_for(answer.done.wait(), 10)
    return answer


class Http1Gateway:
    """An HTTP/1.1 server that counts connections; `mode` says how it answers."""

    def __init__(self, mode: str = "keep-alive", delay: float = 0.0) -> None:
        self.mode, self.delay = mode, delay
        self.connections = 0
        self.requests = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.server = server
        return server.sockets[0].getsockname()[1]

    async def serve(self, reader, writer) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                self.requests += 1
                if self.mode == "drop":  # read the request, answer nothing, close
                    writer.close()
                    return
                await asyncio.sleep(self.delay)
                close = b"Connection: close\r\n" if self.mode == "close" else b""
                answer = b"HTTP/1.1 200 OK\r\n" + close + b"Content-Length: 2\r\n\r\nok"
                if self.mode == "second-answer":  # a whole second answer behind the first
                    answer += b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra"
                elif self.mode == "short-length":  # a body longer than its Content-Length
                    answer += b"-and-more"
                writer.write(answer)
                if self.mode == "unsolicited":  # an answer no request asked for, while idle
                    await asyncio.sleep(0.1)
                    writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
                if close:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass


def test_http1_connection_is_kept_alive_between_requests():
    async def main():
        gw = Http1Gateway()
        pool = GatewayPool("127.0.0.1", await gw.start(), None, PoolLimits(warm=0))
        answers = [await ask(pool) for _ in range(3)]
        assert [(a.status, a.body) for a in answers] == [(200, b"ok")] * 3
        assert [a.flushes for a in answers] == [1] * 3  # one read, one hand-over
        assert gw.connections == 1 and pool.opened == 1
        pool.close()

    asyncio.run(main())


def test_connection_close_is_respected():
    async def main():
        gw = Http1Gateway("close")
        pool = GatewayPool("127.0.0.1", await gw.start(), None, PoolLimits(warm=0))
        assert [(await ask(pool)).body for _ in range(2)] == [b"ok", b"ok"]
        assert gw.connections == 2
        pool.close()

    asyncio.run(main())


def test_busy_connections_never_make_a_request_wait_and_only_max_stay_idle():
    async def main():
        gw = Http1Gateway(delay=0.2)
        limits = PoolLimits(max_connections=2, warm=0)
        pool = GatewayPool("127.0.0.1", await gw.start(), None, limits)
        answers = await asyncio.gather(*(ask(pool) for _ in range(5)))
        assert all(a.status == 200 for a in answers)
        assert gw.connections == 5  # none waited for another's answer
        assert len(pool.connections) == 2  # the rest closed once idle
        pool.close()

    asyncio.run(main())


def test_a_connection_closed_while_idle_is_dropped_not_used():
    async def main():
        gw = Http1Gateway()
        pool = GatewayPool("127.0.0.1", await gw.start(), None, PoolLimits(warm=0))
        assert (await ask(pool)).status == 200
        gw.writers[0].close()  # the gateway's idle timeout
        await asyncio.sleep(0.1)
        answer = await ask(pool)
        assert answer.status == 200 and answer.error is None
        assert gw.connections == 2 and gw.requests == 2
        pool.close()

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["second-answer", "short-length", "unsolicited"])
def test_a_connection_whose_framing_is_in_doubt_is_closed_and_the_next_request_served(mode):
    """Bytes past an answer's end, or an answer nobody asked for: that connection is never
    used again, and the next user's request is answered on a fresh one."""

    async def main():
        gw = Http1Gateway(mode=mode)
        pool = GatewayPool("127.0.0.1", await gw.start(), None, PoolLimits(warm=0))
        first = await ask(pool)
        assert (first.status, first.body) == (200, b"ok")
        await asyncio.sleep(0.3)  # (the unsolicited answer arrives while idle)
        second = await ask(pool)
        assert (second.status, second.body) == (200, b"ok")
        assert gw.connections == 2 and gw.requests == 2
        pool.close()

    asyncio.run(main())


def test_a_request_that_reached_the_gateway_is_never_sent_again():
    async def main():
        gw = Http1Gateway("drop")
        pool = GatewayPool("127.0.0.1", await gw.start(), None, PoolLimits(warm=0))
        answer = await ask(pool)
        assert answer.status is None and answer.error and not answer.connect_failed
        assert gw.requests == 1  # the gateway saw it once: it was not retried
        pool.close()

    asyncio.run(main())


def test_an_unreachable_gateway_fails_the_request_as_a_connect_failure():
    async def main():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        pool = GatewayPool("127.0.0.1", port, None, PoolLimits(warm=0))
        answer = await ask(pool)
        assert answer.connect_failed and answer.status is None
        pool.close()

    asyncio.run(main())


@pytest.fixture
def h2_gateway(tmp_path):
    context, ca_file = private_tls_server(tmp_path, "gateway")
    gw = H2Gateway(context).start()
    client = ssl.create_default_context(cafile=str(ca_file))
    client.set_alpn_protocols(["h2", "http/1.1"])
    yield gw, client
    gw.stop()


def test_http2_streams_share_a_connection_and_tokens_stay_out_of_hpack(h2_gateway):
    gw, tls = h2_gateway

    async def main():
        pool = GatewayPool("localhost", gw.port, tls, PoolLimits(warm=0))
        answers = await asyncio.gather(*(ask(pool, post(token=b"tok-%d" % i)) for i in range(6)))
        assert all(a.status == 200 for a in answers)
        assert len(gw.connections) == 1 and pool.opened == 1
        pool.close()

    asyncio.run(main())
    for fields in gw.raw_headers:
        token = [f for f in fields if f[0] == "x-coder-ai-governance-token"]
        assert token and isinstance(token[0], NeverIndexedHeaderTuple)
        content_type = [f for f in fields if f[0] == "content-type"][0]
        assert not isinstance(content_type, NeverIndexedHeaderTuple)


def test_http2_refused_stream_is_retried_when_the_body_is_whole(h2_gateway):
    gw, tls = h2_gateway
    gw.refuse_next = 1

    async def main():
        pool = GatewayPool("localhost", gw.port, tls, PoolLimits(warm=0))
        answer = await ask(pool)
        assert answer.status == 200 and answer.error is None
        gw.refuse_next = 1
        streamed = Answer()
        stream = pool.request(post(body=None), streamed)
        stream.send(b'{"model":"m"}')
        stream.end()
        await asyncio.wait_for(streamed.done.wait(), 10)
        # a small streamed body is held until its answer starts, so it is sent again too
        assert streamed.status == 200 and b'"body_length": 13' in streamed.body
        gw.refuse_next = 1
        large = Answer()
        stream = pool.request(post(body=None), large)
        stream.send(b"x" * (REPLAY_LIMIT + 1))
        stream.end()
        await asyncio.wait_for(large.done.wait(), 10)
        # one larger than the pool holds is not
        assert large.status is None and "REFUSED_STREAM" in (large.error or "")
        pool.close()

    asyncio.run(main())
    assert len(gw.records) == 2


def test_http2_goaway_new_requests_go_to_a_new_connection(h2_gateway):
    gw, tls = h2_gateway

    async def main():
        pool = GatewayPool("localhost", gw.port, tls, PoolLimits(warm=0))
        assert (await ask(pool)).status == 200
        gw.send_goaway()
        await asyncio.sleep(0.2)
        answer = await ask(pool)
        assert answer.status == 200
        assert b'"connection": 2' in answer.body
        pool.close()

    asyncio.run(main())


def test_warm_connections_open_before_the_first_request(h2_gateway):
    gw, tls = h2_gateway

    async def main():
        pool = GatewayPool("localhost", gw.port, tls, PoolLimits(warm=2))
        pool.warm_up()
        await asyncio.sleep(0.5)
        assert len(gw.connections) == 2 and not gw.records
        pool.close()

    asyncio.run(main())


def test_a_header_http2_refuses_fails_that_request_only(h2_gateway):
    gw, tls = h2_gateway

    async def main():
        pool = GatewayPool("localhost", gw.port, tls, PoolLimits(warm=0))
        odd = post()
        odd.headers.append((b"", b"x"))  # no name: h2's encoder would fail halfway
        answer = await ask(pool, odd)
        assert answer.status is None and "cannot send the request" in (answer.error or "")
        assert (await ask(pool)).status == 200
        pool.close()

    asyncio.run(main())


def test_pooled_tls_connections_read_a_record_at_a_time_and_large_answers_arrive_whole(tmp_path):
    import hashlib

    server_context, ca_file = private_tls_server(tmp_path, "gateway")
    body = bytes(range(256)) * 4096  # 1 MiB

    async def answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(13)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await asyncio.sleep(10)  # the connection stays open (kept alive)

    async def main():
        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        tls = ssl.create_default_context(cafile=str(ca_file))
        pool = GatewayPool("localhost", port, tls, PoolLimits(warm=0))
        got = await ask(pool)
        assert (
            got.status == 200 and hashlib.sha256(got.body).digest() == hashlib.sha256(body).digest()
        )
        (conn,) = pool.connections
        assert len(conn.writer.transport._ssl_protocol._ssl_buffer) == 16 * 1024
        pool.close()
        server.close()

    asyncio.run(main())


@pytest.mark.parametrize("fault", ["no_settings", "silent", "stop_reading"])
def test_a_silent_connection_is_dropped_and_steady_traffic_moves_to_a_fresh_one(h2_gateway, fault):
    """A connection that never finishes its preface, goes silent after answering, or stops
    reading: under steady traffic, found out by an unanswered PING, and every request it held
    or would have taken is answered by a fresh connection (none waits for gateway_timeout)."""
    gw, tls = h2_gateway
    limits = PoolLimits(warm=0, silence=0.2, ping_timeout=0.4)

    async def main():
        pool = GatewayPool("localhost", gw.port, tls, limits)
        if fault == "no_settings":
            gw.next_fault = fault
        else:
            assert b'"connection": 1' in (await ask(pool)).body
            gw.break_connections(fault)
            await asyncio.sleep(0.05)
        waiting = []
        for _ in range(12):  # a request every 0.1 s
            waiting.append(asyncio.ensure_future(ask(pool)))
            await asyncio.sleep(0.1)
        answers = await asyncio.gather(*waiting)
        assert [a.status for a in answers] == [200] * 12, [a.error for a in answers]
        assert all(b'"connection": 2' in a.body for a in answers)
        assert pool.opened == 2 and len(pool.connections) == 1
        pool.close()

    asyncio.run(main())


def test_a_streamed_body_on_a_silent_connection_moves_or_fails_at_once(h2_gateway):
    """A streamed body the pool still holds goes to a fresh connection; one larger than it
    holds cannot be sent again and fails within the PING bound, naming why."""
    gw, tls = h2_gateway

    async def main():
        limits = PoolLimits(warm=0, silence=0.2, ping_timeout=0.4)
        pool = GatewayPool("localhost", gw.port, tls, limits)
        assert (await ask(pool)).status == 200
        gw.break_connections("silent")
        await asyncio.sleep(0.05)
        small, large = Answer(), Answer()
        for answer, body in ((small, b'{"model":"m"}'), (large, b"x" * (REPLAY_LIMIT + 1))):
            stream = pool.request(post(body=None), answer)
            stream.send(body)
            stream.end()
        await asyncio.wait_for(asyncio.gather(small.done.wait(), large.done.wait()), 5)
        assert small.status == 200 and b'"connection": 2' in small.body
        assert large.status is None and "stopped answering" in (large.error or "")
        pool.close()

    asyncio.run(main())


def test_a_body_the_gateway_never_takes_moves_on_within_the_connect_deadline(h2_gateway):
    """The gateway answers PINGs but never opens a window for the body: after connect_timeout
    (not gateway_timeout) the stream leaves that connection, which takes no new stream, and
    its held body is answered by a fresh one."""
    gw, tls = h2_gateway
    gw.next_fault = "window_closed"

    async def main():
        limits = PoolLimits(warm=0, silence=0.2, ping_timeout=0.4, connect_timeout=0.6)
        pool = GatewayPool("localhost", gw.port, tls, limits)
        answer = await ask(pool, post(body=b"x" * 200_000))
        assert answer.status == 200, answer.error
        assert b'"connection": 2' in answer.body and b'"body_length": 200000' in answer.body
        assert b'"connection": 2' in (await ask(pool)).body
        pool.close()

    asyncio.run(main())


def test_an_upload_the_gateway_does_not_take_waits_for_it_instead_of_filling_memory(h2_gateway):
    """The gateway's window never reopens: the pool holds at most UPLOAD_BACKLOG of the body
    beyond it, and asks the client to wait (as the leg does after each read of the client);
    once the stream gives up (connect_timeout), the wait ends too."""
    gw, tls = h2_gateway
    gw.every_fault = "window_closed"

    async def main():
        limits = PoolLimits(warm=0, silence=0.2, ping_timeout=0.4, connect_timeout=0.5)
        pool = GatewayPool("localhost", gw.port, tls, limits)
        answer = Answer()
        stream = pool.request(post(body=None), answer)
        accepted, chunk = 0, b"u" * 65536
        for _ in range(400):  # a 25 MiB upload, read chunk by chunk as the client sends it
            if stream.finished:
                break
            stream.send(chunk)
            accepted += len(chunk)
            while (waiting := stream.upload_backlog()) is not None:
                await asyncio.wait_for(waiting, 5)
            held = sum(len(b) for c in pool.connections for b in getattr(c, "outbox", {}).values())
            assert held <= UPLOAD_BACKLOG + len(chunk)
        assert accepted < 2 * 1024 * 1024  # not 25 MiB: the client was held back
        await asyncio.wait_for(answer.done.wait(), 5)
        assert "did not take the request body" in (answer.error or "")
        pool.close()

    asyncio.run(main())
