"""
Connections to a gateway, shared by every client connection of a worker.

mitmproxy opens a server connection per client connection: a CLI that starts, an IDE that
reconnects or an agent that opens a connection pays a TCP connect, a TLS handshake and then its
request to the gateway (three round trips to a gateway in another region), although the worker
already holds connections to it. A `GatewayPool` keeps them, as Go's `http.Transport` does:

- HTTP/2 (the gateway offers `h2` in ALPN, as Coder does): requests are streams multiplexed
  over a few connections, up to the gateway's MAX_CONCURRENT_STREAMS each;
- HTTP/1.1: keep-alive connections, one request at a time each.

Pure asyncio over `h2` and `h11` (both sans-I/O, and already what mitmproxy and wsproto run
on); nothing here knows mitmproxy. `addons/engine/gateway_leg.py` puts it under mitmproxy's
HTTP layer.

What it promises:
- A request is retried on another connection only when none of it reached a socket (the pooled
  connection was found closed first), when the gateway said it did not process it (h2
  REFUSED_STREAM, or a stream above GOAWAY's last stream id), or when its connection died
  silently before any answer; and only while its whole body so far is held (a streamed body
  is kept for this up to REPLAY_LIMIT). A response that started is never retried.
- Each request carries only its own headers. HPACK's table is per connection, so credentials
  are sent as never-indexed literals: one user's token never enters a table another user's
  request is compressed against.
- GOAWAY: no new stream on that connection; the streams it said it will finish, finish.
- A silent HTTP/2 connection is found out within `silence` + `ping_timeout` seconds, under
  traffic too: it is dropped, and the requests it had not answered at all go to a fresh one
  when their whole body is held (a streamed one up to REPLAY_LIMIT; a larger one fails). A stream that times out, or
  whose body the gateway does not take within `connect_timeout`, retires its connection.
- Backpressure per stream: HTTP/2 data is acknowledged (the window reopened) once the client
  has taken it, so one slow client never stalls the connection's other streams.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import logging
import re
import ssl
import time
from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h11
from hpack import NeverIndexedHeaderTuple

logger = logging.getLogger(__name__)

READ_SIZE = 65536
STREAM_WINDOW = 1 << 20  # per stream: what a stream may have in flight to a slow client
CONNECTION_WINDOW = 16 << 20
# Streams on a new connection before the gateway's SETTINGS say how many it takes (the RFC's
# "unlimited" until then is what some servers punish by closing the connection)
PROVISIONAL_STREAMS = 1
HEADER_LIST_LIMIT = 256 * 1024
# A streamed request body is also kept, up to this much, until its answer starts: a request
# whose connection died before any answer can then be sent again on a fresh one.
REPLAY_LIMIT = 1 << 20
# Request body bytes a stream may have waiting for the gateway (its window, or the socket)
# before the client's connection is read no further: an upload is held by a window, never whole.
UPLOAD_BACKLOG = 256 * 1024
# Never put into HPACK's shared table (see the module docstring).
SENSITIVE_HEADERS = frozenset(
    {
        b"authorization", b"cookie", b"x-api-key", b"proxy-authorization", b"coder-session-token",
        b"x-coder-ai-governance-token",
    }
)  # fmt: skip


@dataclass(frozen=True)
class PoolLimits:
    # Connections kept per gateway and worker. A request never waits for another's: while
    # every kept connection is busy (HTTP/1.1: a request each; HTTP/2: at the gateway's stream
    # limit) more are opened, and those close once idle. 0 turns the pool off.
    max_connections: int = 8
    idle_timeout: float = 90.0  # a connection idle this long closes, unless it keeps the pool warm
    warm: int = 1  # connections opened ahead of the first request and kept open while idle
    connect_timeout: float = 10.0
    ping_interval: float = 30.0  # warm idle HTTP/2 connections are pinged (dead ones dropped)
    # An HTTP/2 connection that carries streams (or still owes its SETTINGS) and has sent
    # nothing for `silence` seconds is asked a PING; one unanswered after `ping_timeout` is
    # dead: what a load balancer or NAT that silently dropped the flow, a gateway that never
    # finished its preface, or one that stopped reading look like from here.
    silence: float = 1.0
    ping_timeout: float = 3.0


@dataclass
class OutboundRequest:
    method: bytes
    path: bytes
    authority: bytes
    headers: list[tuple[bytes, bytes]]  # lower-case names; no hop-by-hop, no host
    body: bytes | None  # the whole body, when known up front; None: it streams (send/end)


class ResponseSink(Protocol):
    """Where one request's answer goes (the client's side). The `on_*` calls queue; `flush`
    hands over what is queued, once per read from the gateway: each hand-over is a pass
    through the client connection's layers, so one read's headers, data and end go in one."""

    def on_headers(
        self, status: int, reason: bytes, version: bytes, headers: list, ended: bool
    ) -> None: ...
    def on_data(self, data: bytes) -> None: ...
    def on_end(self, trailers: list | None) -> None: ...
    def on_error(self, message: str, connect_failed: bool) -> None: ...
    async def flush(self) -> None: ...
    def backlog(self) -> Awaitable | None:
        """Something to await while the client has not taken what it was sent, else None."""


class PoolStream:
    """One request through the pool, from submission to its last response byte."""

    __slots__ = (
        "pool", "request", "sink", "conn", "stream_id", "pending", "client_ended",
        "trailers", "sent", "responded", "finished", "attempts", "replay", "started",
    )  # fmt: skip

    def __init__(self, pool: GatewayPool, request: OutboundRequest, sink: ResponseSink):
        self.pool = pool
        self.request = request
        self.sink = sink
        self.conn: _Connection | None = None
        self.stream_id: int | None = None
        self.pending: list[bytes] = []  # streamed body not yet handed to a connection
        self.client_ended = request.body is not None
        self.trailers: list | None = None
        self.sent = False  # some of it reached a socket
        self.responded = False  # response headers arrived
        self.finished = False
        self.attempts = 0
        # the streamed body so far, while it may still be sent again (None: it may not)
        self.replay: bytearray | None = bytearray() if request.body is None else None
        self.started: asyncio.Future | None = None  # resolved once a connection takes it

    # -- from the client's side ---------------------------------------------------------------

    @property
    def replayable(self) -> bool:
        """Its whole body so far is held: it can go to another connection."""
        return not self.responded and (self.request.body is not None or self.replay is not None)

    def answered(self) -> None:
        self.responded = True
        self.replay = None

    def send(self, data: bytes) -> None:
        if self.finished or not data:
            return
        if self.replay is not None:
            if len(self.replay) + len(data) > REPLAY_LIMIT:
                self.replay = None
            else:
                self.replay += data
        if self.conn is None:
            self.pending.append(data)
        else:
            self.conn.send_body(self, data)

    def end(self, trailers: list | None = None) -> None:
        if self.finished or self.client_ended:
            return
        self.client_ended = True
        self.trailers = trailers
        if self.conn is not None:
            self.conn.end_body(self)

    def upload_backlog(self) -> Awaitable | None:
        """Something to await before more of the body is read from the client (the gateway
        has not taken what it was sent, or no connection has taken the stream yet), else None."""
        if self.finished:
            return None
        if self.conn is not None:
            return self.conn.upload_backlog(self)
        if sum(map(len, self.pending)) <= UPLOAD_BACKLOG:
            return None
        if self.started is None:
            self.started = asyncio.get_running_loop().create_future()
        return self.started

    def detach(self) -> None:
        """Its connection let it go: until `fail` decides, more body waits in `pending`."""
        self.conn = None
        self.stream_id = None

    def wake(self) -> None:
        """A connection took the stream (or it ended): a client held back may go on."""
        if self.started is not None and not self.started.done():
            self.started.set_result(None)
        self.started = None

    def cancel(self) -> None:
        """The client went away: nothing more is delivered, the gateway's stream is reset."""
        if self.finished:
            return
        self.finished = True
        if self.conn is not None:
            self.conn.cancel(self)

    # -- from the connection ------------------------------------------------------------------

    async def fail(self, message: str, *, retryable: bool = False, connect_failed=False) -> None:
        if self.finished:
            return
        self.detach()
        if retryable and self.replayable and self.attempts < 3:
            if self.request.body is None:
                assert self.replay is not None
                self.pending = [bytes(self.replay)]  # what was sent; the rest follows
            self.pool.submit(self)
            return
        self.finished = True
        self.wake()
        self.sink.on_error(message, connect_failed)
        with _client_gone():
            await self.sink.flush()


@contextlib.contextmanager
def _client_gone():
    """A sink whose client connection is gone raises; the pool carries on."""
    try:
        yield
    except Exception:  # the client's handler is gone: nothing left to tell
        logger.debug("response delivery failed", exc_info=True)


Dialer = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class GatewayPool:
    """The connections of one worker to one gateway address."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        limits: PoolLimits,
        dial: Dialer | None = None,
        sensitive_headers: frozenset[bytes] = SENSITIVE_HEADERS,
        on_connection: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.host, self.port, self.tls, self.limits = host, port, tls, limits
        self.sensitive_headers = sensitive_headers
        self.on_connection = on_connection  # (protocol, opened): for the metrics
        self.dial = dial or self._dial_tcp
        self.connections: set[_Connection] = set()
        self.multiplexed: list[_Http2Connection] = []  # (few: each takes many streams)
        self.idle_http1: list[_Http1Connection] = []  # kept alive, waiting for a request
        self.dialing = 0
        self.queue: collections.deque[PoolStream] = collections.deque()
        self.opened = 0  # connections opened, over the pool's life
        # what the gateway speaks, once a connection said (ALPN); None: not known yet, so one
        # dial at a time (it may take every waiting stream)
        self.http2: bool | None = None if tls is not None else False
        self.closed = False
        self.retired = False  # replaced by a reload: no warm-up, connections close when idle
        self._tasks: set[asyncio.Task] = set()
        self._maintainer: asyncio.Task | None = None
        self.last_error: str | None = None

    # -- requests -------------------------------------------------------------------------------

    def request(self, request: OutboundRequest, sink: ResponseSink) -> PoolStream:
        stream = PoolStream(self, request, sink)
        self.submit(stream)
        return stream

    def submit(self, stream: PoolStream) -> None:
        stream.attempts += 1
        self.queue.append(stream)
        self._pump()

    def _pump(self) -> None:
        while self.queue:
            stream = self.queue[0]
            if stream.finished:
                self.queue.popleft()
                continue
            conn = self._free_connection()
            if conn is None:
                self._dial_for_queue()
                return
            self.queue.popleft()
            try:
                conn.start(stream)
                stream.wake()
            except Exception as e:  # unforeseen: contained to this connection and request
                logger.exception("gateway %s:%s: starting a request failed", self.host, self.port)
                conn.close()
                self._spawn(stream.fail(f"cannot send the request: {type(e).__name__}"))

    def _free_connection(self) -> _Connection | None:
        best = None
        for conn in self.multiplexed:
            if conn.room() > 0 and (best is None or conn.active() > best.active()):
                best = conn  # the busiest with room: streams gather on few connections
        while best is None and self.idle_http1:
            conn = self.idle_http1.pop()  # the most recently used: the least likely stale
            if conn.room() > 0:
                best = conn
        return best

    def _dial_for_queue(self) -> None:
        """Enough dials for what waits: one while HTTP/2 (it will take many streams), else one
        per waiting request."""
        if self.closed:
            return
        if any(not c.settled and c.room() == 0 and not c.draining for c in self.multiplexed):
            return  # a new HTTP/2 connection takes more streams once its SETTINGS arrive
        wanted = (len(self.queue) if self.http2 is False else 1) - self.dialing
        for _ in range(max(0, wanted)):
            self._dial()

    def keeps(self, conn: _Connection) -> bool:
        """An idle connection stays in the pool while fewer than max_connections others idle."""
        if self.retired or self.closed:
            return False
        if isinstance(conn, _Http1Connection):
            return len(self.idle_http1) < self.limits.max_connections
        idle = sum(1 for c in self.multiplexed if c is not conn and c.idle_since is not None)
        return idle < self.limits.max_connections

    # -- connections ---------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Open connections until `warm` are open or opening."""
        if self.closed or self.retired:
            return
        for _ in range(self.limits.warm - len(self.connections) - self.dialing):
            self._dial()
        if self._maintainer is None and not self.closed:
            self._maintainer = asyncio.get_running_loop().create_task(self._maintain())

    async def _dial_tcp(self):
        return await asyncio.open_connection(
            self.host,
            self.port,
            ssl=self.tls,
            server_hostname=self.host if self.tls else None,
            limit=READ_SIZE,
        )

    def _dial(self) -> None:
        self.dialing += 1  # counted at once: the pump that asked must not ask again
        self._spawn(self._open())

    async def _open(self) -> None:
        try:
            reader, writer = await asyncio.wait_for(self.dial(), self.limits.connect_timeout)
        except Exception as e:  # refused, unreachable, TLS, timeout: each fails the same way
            self.dialing -= 1
            self.last_error = _describe(e)
            await self._dial_failed(self.last_error)
            return
        self.dialing -= 1
        if self.closed:
            writer.close()
            return
        lean_tls_read_buffer(writer)
        self.last_error = None
        ssl_object = writer.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        self.http2 = alpn == "h2"
        conn: _Connection
        if self.http2:
            conn = _Http2Connection(self, reader, writer)
            self.multiplexed.append(conn)
        else:
            conn = _Http1Connection(self, reader, writer)
            self.idle_http1.append(conn)
        self.opened += 1
        self.connections.add(conn)
        if self.on_connection is not None:
            self.on_connection(conn.protocol, True)
        self._spawn(conn.read_loop())
        self._pump()

    async def _dial_failed(self, error: str) -> None:
        """With nothing open or opening, every waiting request fails (the router fails over);
        over HTTP/1.1 each dial was for one request, and that one fails."""
        if self.connections and self.http2:
            return  # the open connection takes them as its streams end
        everyone = not self.connections and not self.dialing
        doomed = len(self.queue) if everyone else 1
        while doomed and self.queue:
            stream = self.queue.popleft()
            if not stream.finished:
                doomed -= 1
                await stream.fail(error, connect_failed=True)

    def forget(self, conn: _Connection) -> None:
        if conn in self.connections and self.on_connection is not None:
            self.on_connection(conn.protocol, False)
        self.connections.discard(conn)
        for kept in (self.multiplexed, self.idle_http1):
            with contextlib.suppress(ValueError):
                kept.remove(conn)  # type: ignore[arg-type]
        self._pump()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _maintain(self) -> None:
        """Close connections idle too long beyond the warm ones; ping the warm ones; re-warm."""
        interval = max(0.05, min(self.limits.idle_timeout, self.limits.ping_interval) / 2)
        while not self.closed:
            await asyncio.sleep(interval)
            now = time.monotonic()
            idle = [c for c in self.connections if c.idle_since is not None]
            idle.sort(key=lambda c: c.idle_since)  # the most recently used stay warm
            keep = max(0, self.limits.warm - (len(self.connections) - len(idle)))
            for i, conn in enumerate(idle):
                if i < len(idle) - keep and now - conn.idle_since >= self.limits.idle_timeout:
                    conn.close()
                elif now - conn.last_ping >= self.limits.ping_interval:
                    conn.ping()
            if self.last_error is None:
                self.warm_up()

    def retire(self) -> None:
        """Replaced (a reload): idle connections close now, busy ones once they are idle."""
        self.retired = True
        if self._maintainer is not None:
            self._maintainer.cancel()
        for conn in list(self.connections):
            if conn.active() == 0:
                conn.close()

    def close(self) -> None:
        self.closed = True
        if self._maintainer is not None:
            self._maintainer.cancel()
        for conn in list(self.connections):
            conn.close()
        for task in list(self._tasks):
            task.cancel()

    def stats(self) -> dict:
        return {
            "open": len(self.connections),
            "opened": self.opened,
            "streams": sum(c.active() for c in self.connections),
            "queued": len(self.queue),
        }


TLS_READ_BUFFER = 16 * 1024  # one TLS record


def lean_tls_read_buffer(writer: asyncio.StreamWriter) -> None:
    """asyncio's SSL transport reads into a 256 KiB buffer of its own per connection
    (`SSLProtocol.max_size`, a class attribute): 290 KB of RSS for each pooled HTTP/1.1
    connection, one per open stream, measured. A record at a time is enough; the buffer is
    swapped while no read is under way (between the handshake and our first read)."""
    protocol = getattr(writer.transport, "_ssl_protocol", None)
    if protocol is None or not hasattr(protocol, "_ssl_buffer_view"):
        return
    protocol.max_size = TLS_READ_BUFFER
    protocol._ssl_buffer = bytearray(TLS_READ_BUFFER)
    protocol._ssl_buffer_view = memoryview(protocol._ssl_buffer)


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "connect timed out"
    return str(e) or type(e).__name__


class _Connection(abc.ABC):
    """What the pool asks of a connection, whichever protocol it speaks."""

    protocol = ""

    def __init__(self, pool: GatewayPool, reader, writer) -> None:
        self.pool = pool
        self.reader: asyncio.StreamReader = reader
        self.writer: asyncio.StreamWriter = writer
        self.idle_since: float | None = time.monotonic()
        self.last_ping = time.monotonic()
        self.closed = False

    @abc.abstractmethod
    def room(self) -> int:
        """How many more requests it takes now."""

    @abc.abstractmethod
    def active(self) -> int:
        """How many requests it carries now."""

    @abc.abstractmethod
    def start(self, stream: PoolStream) -> None:
        """Send the request (and whatever of its body is known)."""

    @abc.abstractmethod
    def send_body(self, stream: PoolStream, data: bytes) -> None: ...

    @abc.abstractmethod
    def end_body(self, stream: PoolStream) -> None: ...

    @abc.abstractmethod
    def cancel(self, stream: PoolStream) -> None:
        """The client went away: stop the request (HTTP/1.1: the connection goes)."""

    @abc.abstractmethod
    def upload_backlog(self, stream: PoolStream) -> Awaitable | None:
        """While more than UPLOAD_BACKLOG of the stream's body waits here: what resolves once
        it has gone out (or the stream ended)."""

    @abc.abstractmethod
    async def read_loop(self) -> None:
        """Read answers until the connection ends; then fail what it still carried."""

    def writable(self) -> bool:
        return not self.closed and not self.writer.is_closing()

    def retire(self) -> None:
        """No new request here (a stream timed out on it): closed once idle."""
        if self.active() == 0:
            self.close()

    def ping(self) -> None:
        self.last_ping = time.monotonic()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()
        self.pool.forget(self)


class _GracefulH2(h2.connection.H2Connection):
    """h2 closes its state machine on any GOAWAY, and then refuses the frames of the streams
    the gateway promised to finish. A graceful one (NO_ERROR) leaves it open here; we start
    no stream on it again (`_Http2Connection.draining`)."""

    def _receive_goaway_frame(self, frame):
        state = self.state_machine.state
        frames, events = super()._receive_goaway_frame(frame)
        if frame.error_code == h2.errors.ErrorCodes.NO_ERROR:
            self.state_machine.state = state
        return frames, events


class _Http2Connection(_Connection):
    protocol = "h2"
    CONFIG = h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_inbound_headers=True,
        normalize_inbound_headers=False,
    )

    def __init__(self, pool, reader, writer) -> None:
        super().__init__(pool, reader, writer)
        self.h2 = _GracefulH2(config=self.CONFIG)
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: HEADER_LIST_LIMIT,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.streams: dict[int, PoolStream] = {}
        self.outbox: dict[int, bytearray] = {}  # body bytes waiting for the gateway's window
        self.ended: set[int] = set()  # streams whose request end we sent
        self.draining = False  # GOAWAY received, or retired: no new streams
        self.settled = False  # the gateway's first SETTINGS arrived
        self.awaiting_ping: bytes | None = None
        self.ping_sent = 0.0
        self.last_received = time.monotonic()
        self.blocked: dict[int, float] = {}  # stream id -> since when its body waits for a window
        self.drained: dict[int, asyncio.Future] = {}  # stream id -> resolved below UPLOAD_BACKLOG
        self._watch: asyncio.TimerHandle | None = None
        self._flush()
        self._arm()  # the gateway owes its SETTINGS

    def room(self) -> int:
        if self.draining or not self.writable():
            return 0
        limit = self.h2.remote_settings.max_concurrent_streams if self.settled else None
        return min(limit or PROVISIONAL_STREAMS, 1000) - len(self.streams)

    def active(self) -> int:
        return len(self.streams)

    def _flush(self) -> None:
        if data := self.h2.data_to_send():
            if self.writable():
                self.writer.write(data)

    def start(self, stream: PoolStream) -> None:
        request = stream.request
        try:
            stream_id = self.h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            self.draining = True
            self.pool.submit(stream)
            return
        headers = [
            (b":method", request.method),
            (b":scheme", b"https" if self.pool.tls else b"http"),
            (b":authority", request.authority),
            (b":path", request.path),
        ]
        sensitive = self.pool.sensitive_headers
        headers += [
            NeverIndexedHeaderTuple(k, v) if k in sensitive else (k, v)
            for k, v in ((k, v.strip(b" \t")) for k, v in request.headers)
        ]
        body = request.body if request.body is not None else b"".join(stream.pending)
        stream.pending = []
        ended = stream.client_ended and not body and not stream.trailers
        if problem := _not_for_http2(headers):
            # refused before h2 sees it: HPACK's table is the connection's, and an encoder
            # that fails halfway would leave it out of step for every stream that follows
            self.pool._spawn(stream.fail(f"cannot send the request over HTTP/2: {problem}"))
            return
        try:
            self.h2.send_headers(stream_id, headers, end_stream=ended)
        except Exception as e:  # unforeseen: this connection's HPACK state is unknown now
            self.pool._spawn(stream.fail(f"cannot send the request over HTTP/2: {e}"))
            self.close()
            return
        if ended:
            self.ended.add(stream_id)
        stream.conn, stream.stream_id, stream.sent = self, stream_id, True
        self.streams[stream_id] = stream
        self.idle_since = None
        if body:
            self.outbox[stream_id] = bytearray(body)
        self._send_pending(stream_id)
        self._flush()
        self._arm()

    def send_body(self, stream: PoolStream, data: bytes) -> None:
        assert stream.stream_id is not None
        self.outbox.setdefault(stream.stream_id, bytearray()).extend(data)
        self._send_pending(stream.stream_id)
        self._flush()

    def end_body(self, stream: PoolStream) -> None:
        assert stream.stream_id is not None
        self._send_pending(stream.stream_id)
        self._flush()

    def _send_pending(self, stream_id: int) -> None:
        """As much of the stream's body as the gateway's windows allow; then its end."""
        stream = self.streams.get(stream_id)
        if stream is None:
            self.outbox.pop(stream_id, None)
            return
        buffer = self.outbox.get(stream_id)
        try:
            while buffer:
                window = self.h2.local_flow_control_window(stream_id)
                size = min(window, self.h2.max_outbound_frame_size, len(buffer))
                if size <= 0:
                    self.blocked.setdefault(stream_id, time.monotonic())
                    return  # WindowUpdated brings us back
                self.h2.send_data(stream_id, bytes(buffer[:size]))
                del buffer[:size]
                if len(buffer) <= UPLOAD_BACKLOG:
                    self._drained(stream_id)
            self.outbox.pop(stream_id, None)
            self.blocked.pop(stream_id, None)
            self._drained(stream_id)
            if stream.client_ended and stream_id not in self.ended:
                self.ended.add(stream_id)
                if stream.trailers:
                    self.h2.send_headers(stream_id, stream.trailers, end_stream=True)
                else:
                    self.h2.end_stream(stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.outbox.pop(stream_id, None)

    def cancel(self, stream: PoolStream) -> None:
        if stream.stream_id is None:
            return
        self._forget(stream.stream_id)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.reset_stream(stream.stream_id, h2.errors.ErrorCodes.CANCEL)
        self._flush()

    def upload_backlog(self, stream: PoolStream) -> Awaitable | None:
        buffer = self.outbox.get(stream.stream_id) if stream.stream_id is not None else None
        if buffer is None or len(buffer) <= UPLOAD_BACKLOG:
            return None
        assert stream.stream_id is not None
        waiting = self.drained.get(stream.stream_id)
        if waiting is None:
            waiting = self.drained[stream.stream_id] = asyncio.get_running_loop().create_future()
        return waiting

    def _release_uploads(self) -> None:
        """The connection is gone: no body waits here, no client is held back for it."""
        self.outbox.clear()
        self.blocked.clear()
        for stream_id in list(self.drained):
            self._drained(stream_id)

    def _drained(self, stream_id: int) -> None:
        waiting = self.drained.pop(stream_id, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    def _forget(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        self.outbox.pop(stream_id, None)
        self.blocked.pop(stream_id, None)
        self._drained(stream_id)
        self.ended.discard(stream_id)
        if not self.streams:
            self.idle_since = time.monotonic()
            if self.draining or not self.pool.keeps(self):
                self.close()
                return
        self.pool._pump()

    def ping(self) -> None:
        """The maintainer's ping of a warm idle connection; the watch drops it unanswered."""
        super().ping()
        if self.awaiting_ping is None:
            self._send_ping()
        self._arm()

    def retire(self) -> None:
        self.draining = True
        super().retire()

    def _send_ping(self) -> None:
        self.awaiting_ping = time.monotonic_ns().to_bytes(8, "big")
        self.ping_sent = time.monotonic()
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.ping(self.awaiting_ping)
            self._flush()

    # -- liveness ------------------------------------------------------------------------------

    def _arm(self) -> None:
        if self._watch is None and not self.closed:
            delay = self.pool.limits.silence
            self._watch = asyncio.get_running_loop().call_later(delay, self._check)

    def _check(self) -> None:
        """While the gateway owes us something: a PING after `silence`, death after
        `ping_timeout` unanswered; a body that waits for a window too long retires us."""
        self._watch = None
        if self.closed:
            return
        limits, now = self.pool.limits, time.monotonic()
        if self.awaiting_ping is not None and now - self.ping_sent >= limits.ping_timeout:
            self._die(f"the gateway stopped answering (no PING answer in {limits.ping_timeout:g}s)")
            return
        for stream_id, since in list(self.blocked.items()):
            if now - since >= limits.connect_timeout and (stream := self.streams.get(stream_id)):
                self.draining = True  # the gateway takes no data here: nothing new either
                self.cancel(stream)
                stream.detach()  # what the client sends meanwhile waits for fail's decision
                self.pool._spawn(stream.fail(
                    f"the gateway did not take the request body in {limits.connect_timeout:g}s",
                    retryable=True,
                ))  # fmt: skip
        owed = bool(self.streams) or not self.settled
        if self.awaiting_ping is None and not owed:
            return  # idle: the maintainer's pings take over
        if self.awaiting_ping is None and now - self.last_received >= limits.silence:
            self._send_ping()
        due = (
            self.ping_sent + limits.ping_timeout
            if self.awaiting_ping is not None
            else self.last_received + limits.silence
        )
        self._watch = asyncio.get_running_loop().call_later(max(0.01, due - now), self._check)

    def _die(self, reason: str) -> None:
        """Dropped at once (no flush: a gateway that stopped reading would hold it); what it
        had not answered at all goes to a fresh connection when its whole body is held."""
        streams, self.streams = self.streams, {}
        self._release_uploads()
        logger.warning("gateway %s:%s: %s; dropping the connection (%d streams)",
                       self.pool.host, self.pool.port, reason, len(streams))  # fmt: skip
        self.closed = True
        self.writer.transport.abort()
        self.pool.forget(self)
        for stream in streams.values():  # (fail sends again only what it may)
            stream.detach()
            self.pool._spawn(stream.fail(reason, retryable=True))

    async def read_loop(self) -> None:
        reason = "the gateway closed the connection"
        try:
            while True:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                self.last_received = time.monotonic()
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as e:
                    reason = f"HTTP/2 protocol error from the gateway: {e}"
                    break
                touched: dict[PoolStream, None] = {}
                acks: list[tuple[PoolStream, int, int]] = []
                for event in events:
                    await self._handle(event, touched, acks)
                for stream in touched:
                    with _client_gone():
                        await stream.sink.flush()
                for stream, stream_id, length in acks:
                    self._acknowledge(stream, stream_id, length)
                self._flush()
        except (OSError, ssl.SSLError) as e:
            reason = _describe(e)
        finally:
            self.close()
            if self._watch is not None:
                self._watch.cancel()
                self._watch = None
            self._release_uploads()
            streams, self.streams = self.streams, {}
            for stream in streams.values():
                await stream.fail(reason)

    async def _handle(self, event: h2.events.Event, touched: dict, acks: list) -> None:
        """One h2 event: answers are queued on their stream's sink (`touched`), flushed after
        the read; window acknowledgements wait for that too (`acks`)."""
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if stream is not None:
            touched[stream] = None
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            status, headers = 0, []
            for name, value in event.headers:
                if name == b":status":
                    status = int(value)
                elif not name.startswith(b":"):
                    headers.append((name, value))
            stream.answered()
            ended = event.stream_ended is not None
            stream.sink.on_headers(status, b"", b"HTTP/2.0", headers, ended)
            if ended:
                self._end(stream, None)
                stream.sink.on_end(None)
        elif isinstance(event, h2.events.DataReceived) and stream is not None:
            stream.sink.on_data(event.data)
            acks.append((stream, event.stream_id, event.flow_controlled_length))
            if event.stream_ended is not None:
                self._end(stream, None)
                stream.sink.on_end(None)
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived) and stream is not None:
            self._end(stream, None)
            stream.sink.on_end(list(event.headers))
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            self._end(stream, None)  # ended after headers or data already delivered
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            self._forget(event.stream_id)
            refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
            await stream.fail(
                f"the gateway reset the stream ({_code_name(event.error_code)})",
                retryable=refused,
            )
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.settled = True
            self.pool._pump()
        elif isinstance(event, h2.events.WindowUpdated):
            for stream_id in [event.stream_id] if event.stream_id else list(self.outbox):
                self._send_pending(stream_id)
        elif isinstance(event, h2.events.PingAckReceived):
            self.awaiting_ping = None
        elif isinstance(event, h2.events.ConnectionTerminated):
            await self._goaway(event)

    def _end(self, stream: PoolStream, _trailers) -> None:
        if stream.stream_id is not None and stream.stream_id in self.streams:
            stream.finished = True
            self._forget(stream.stream_id)

    def _acknowledge(self, stream: PoolStream, stream_id: int, length: int) -> None:
        """Reopen the window once the client took the data: at once unless it is behind."""
        if length == 0:
            return
        waiting = stream.sink.backlog()
        if waiting is None:
            self._ack(stream_id, length)
            return

        async def later():
            with contextlib.suppress(Exception):
                await waiting
            self._ack(stream_id, length)
            self._flush()

        self.pool._spawn(later())

    def _ack(self, stream_id: int, length: int) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
            self.h2.acknowledge_received_data(length, stream_id)

    async def _goaway(self, event: h2.events.ConnectionTerminated) -> None:
        """No new streams here. Those above the last id were never processed: they go to
        another connection. With NO_ERROR, the rest finish here, otherwise they fail."""
        self.draining = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        graceful = event.error_code == h2.errors.ErrorCodes.NO_ERROR
        for stream_id, stream in sorted(self.streams.items()):
            if stream_id > last:
                self.streams.pop(stream_id)
                self.outbox.pop(stream_id, None)
                await stream.fail("the gateway is going away", retryable=True)
            elif not graceful:
                self.streams.pop(stream_id)
                await stream.fail(
                    f"the gateway closed the connection ({_code_name(event.error_code)})"
                )
        if not self.streams or not graceful:
            self.close()
        self.pool._pump()


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")


def _not_for_http2(headers: list) -> str | None:
    """Why HTTP/2 cannot carry these header fields (RFC 9113 8.2.1), or None."""
    for name, value in headers[4:]:  # (after the four pseudo-headers we made)
        if not _TOKEN.fullmatch(name):
            return f"the header name {name[:40]!r} is not a lower-case token"
        if _BAD_VALUE.search(value):
            return f"the value of {name.decode()} holds NUL, CR or LF"
    return None


def _code_name(code) -> str:
    return getattr(code, "name", str(code))


class _Http1Connection(_Connection):
    """One request at a time, kept alive between them (h11 says when it may not be)."""

    protocol = "http/1.1"

    def __init__(self, pool, reader, writer) -> None:
        super().__init__(pool, reader, writer)
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEADER_LIST_LIMIT)
        self.stream: PoolStream | None = None
        self.answering: PoolStream | None = None  # whose answer this read queued
        self.chunked = False

    def room(self) -> int:
        usable = self.writable() and self.stream is None and self.h11.our_state is h11.IDLE
        return 1 if usable else 0

    def active(self) -> int:
        return 0 if self.stream is None else 1

    def start(self, stream: PoolStream) -> None:
        request = stream.request
        headers = [(b"host", request.authority)]
        headers += [(k, v) for k, v in request.headers if k not in (b"content-length",)]
        length = dict(request.headers).get(b"content-length")
        if request.body is not None:
            if request.body or length is not None or request.method in (b"POST", b"PUT", b"PATCH"):
                headers.append((b"content-length", b"%d" % len(request.body)))
            self.chunked = False
        elif length is not None:
            headers.append((b"content-length", length))
            self.chunked = False
        else:
            headers.append((b"transfer-encoding", b"chunked"))
            self.chunked = True
        if self.h11.our_state is not h11.IDLE or self.h11.their_state is not h11.IDLE:
            # framing in doubt (the gateway sent what no request asked for): this connection
            # goes, and the request, of which nothing was sent, takes a fresh one
            self.close()
            self.pool.submit(stream)
            return
        try:
            out = self.h11.send(
                h11.Request(method=request.method, target=request.path, headers=headers)
            )
        except h11.LocalProtocolError as e:
            self.pool._spawn(stream.fail(f"cannot send the request: {e}"))
            return
        stream.conn, self.stream, self.idle_since = self, stream, None
        stream.sent = True
        body = request.body if request.body is not None else b"".join(stream.pending)
        stream.pending = []
        if body:
            out += self.h11.send(h11.Data(data=body))
        if stream.client_ended:
            out += self.h11.send(h11.EndOfMessage())
        self.writer.write(out)

    def send_body(self, stream: PoolStream, data: bytes) -> None:
        with contextlib.suppress(h11.LocalProtocolError):
            self.writer.write(self.h11.send(h11.Data(data=data)))

    def end_body(self, stream: PoolStream) -> None:
        with contextlib.suppress(h11.LocalProtocolError):
            self.writer.write(self.h11.send(h11.EndOfMessage()))

    def upload_backlog(self, stream: PoolStream) -> Awaitable | None:
        if self.closed or self.writer.transport.get_write_buffer_size() <= UPLOAD_BACKLOG:
            return None
        return self.writer.drain()  # (raises once the connection is lost: callers suppress)

    def cancel(self, stream: PoolStream) -> None:
        # an HTTP/1.1 response cannot be abandoned half read: the connection goes
        self.stream = None
        self.close()

    async def read_loop(self) -> None:
        reason = "the gateway closed the connection"
        try:
            while not self.closed:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    await self._flush_answer()
                    data = await self.reader.read(READ_SIZE)
                    if self.stream is None:
                        # closed while idle (a stale keep-alive connection), or bytes no
                        # request asked for: either way its framing is done, so it goes
                        if data:
                            logger.warning("gateway %s:%s sent %d bytes on an idle connection; "
                                           "closing it", self.pool.host, self.pool.port,
                                           len(data))  # fmt: skip
                        break
                    self.h11.receive_data(data)
                    continue
                if event is h11.PAUSED:
                    # the answer ended before our request did (or an upgrade, which never
                    # comes through the pool): this connection is not reused
                    break
                if isinstance(event, h11.ConnectionClosed):
                    break
                await self._handle(event)
        except h11.RemoteProtocolError as e:
            reason = f"bad HTTP/1.1 from the gateway: {e}"
        except (OSError, ssl.SSLError) as e:
            reason = _describe(e)
        finally:
            await self._flush_answer()
            stream, self.stream = self.stream, None
            self.close()
            if stream is not None:
                await stream.fail(reason)

    async def _flush_answer(self) -> None:
        """Hand over what this read queued, then wait while the client is behind (this
        connection carries only its stream)."""
        stream, self.answering = self.answering, None
        if stream is None:
            return
        with _client_gone():
            await stream.sink.flush()
        if (waiting := stream.sink.backlog()) is not None:
            with contextlib.suppress(Exception):
                await waiting

    async def _handle(self, event) -> None:
        stream = self.stream
        if isinstance(event, h11.InformationalResponse) or stream is None:
            return
        self.answering = stream
        if isinstance(event, h11.Response):
            stream.answered()
            stream.sink.on_headers(
                event.status_code, event.reason, b"HTTP/1.1", list(event.headers), False
            )
        elif isinstance(event, h11.Data):
            stream.sink.on_data(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            stream.finished = True
            self.stream = None
            stream.sink.on_end(list(event.headers) or None)
            await self._flush_answer()  # before this connection takes another request
            self._next_cycle()

    def _next_cycle(self) -> None:
        """Kept alive when both sides are done, neither said close (`Connection: close`,
        HTTP/1.0, a body read to EOF) and nothing came after the answer (a second answer, a
        body longer than its Content-Length: the framing is in doubt); otherwise it goes."""
        extra, _closed = self.h11.trailing_data
        if (
            self.h11.our_state is h11.DONE
            and self.h11.their_state is h11.DONE
            and not extra
            and self.pool.keeps(self)
        ):
            self.h11.start_next_cycle()
            self.idle_since = time.monotonic()
            self.pool.idle_http1.append(self)
            self.pool._pump()
        else:
            self.close()
