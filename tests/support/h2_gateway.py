"""
An HTTP/2-only gateway over TLS (as Coder serves), on the `h2` library's server side, that
records which connection carried which request: the pooled gateway leg's tests check
multiplexing, GOAWAY and MAX_CONCURRENT_STREAMS against it.

Paths: `/sse?events=N&interval=S` streams N events S seconds apart (the local gateway's
`/_diag/sse` shape); anything else answers JSON naming the connection, the stream and the token
the request carried.

Its own process, for benchmarks: python -m tests.support.h2_gateway PORT CERTFILE [STREAMS]
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings


@dataclass
class H2Received:
    connection: int
    stream_id: int
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class _Conn:
    number: int
    h2: h2.connection.H2Connection
    writer: asyncio.StreamWriter
    bodies: dict[int, bytearray] = field(default_factory=dict)
    heads: dict[int, list] = field(default_factory=dict)
    open_streams: int = 0
    peak_streams: int = 0
    draining: bool = False  # sent GOAWAY
    fault: str | None = None  # see H2Gateway.FAULTS


class H2Gateway:
    # How a connection can break without closing: it never sends its preface (SETTINGS); it
    # goes silent (reads and ignores everything: no answers, no PING or SETTINGS acks, as
    # behind a NAT that dropped the flow); it stops reading its socket at all; or it answers
    # PINGs but never opens a window for a request body.
    FAULTS = ("no_settings", "silent", "stop_reading", "window_closed")

    def __init__(self, ssl_context: ssl.SSLContext, max_concurrent_streams: int = 100) -> None:
        ssl_context.set_alpn_protocols(["h2"])
        self.ssl_context = ssl_context
        self.max_concurrent_streams = max_concurrent_streams
        self.records: list[H2Received] = []
        self.connections: list[_Conn] = []
        self.goaway_after: int | None = None  # after this many requests, GOAWAY (NO_ERROR)
        self.refuse_next = 0  # refuse this many new streams with REFUSED_STREAM
        self.next_fault: str | None = None  # the next connection's fault (FAULTS)
        self.every_fault: str | None = None  # every new connection's fault
        self.raw_headers: list[list] = []  # each request's header fields as h2 decoded them
        self._numbers = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    def start(self) -> H2Gateway:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close():
            assert self._server is not None
            self._server.close()
            for conn in self.connections:
                conn.writer.transport.abort()
            # every connection gone before the loop stops: a transport collected after it
            # would report itself to a server that no longer waits (an unraisable TypeError)
            await asyncio.wait_for(self._server.wait_closed(), 5)
            await asyncio.sleep(0.05)  # their readers see the close and end

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def break_connections(self, fault: str) -> None:
        """Every open connection from now on fails as `fault` says (FAULTS)."""
        assert fault in self.FAULTS

        def apply():
            for conn in self.connections:
                conn.fault = fault

        self._loop.call_soon_threadsafe(apply)

    def send_goaway(self) -> None:
        """GOAWAY (NO_ERROR) on every connection: streams under way may finish."""

        def goaway():
            for conn in self.connections:
                conn.h2.close_connection(last_stream_id=conn.h2.highest_inbound_stream_id)
                conn.writer.write(conn.h2.data_to_send())
                # as Go's server does on a graceful shutdown, the streams it took still finish
                # (h2 would refuse to send on them once it sent GOAWAY)
                conn.h2.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
                conn.draining = True

        self._loop.call_soon_threadsafe(goaway)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        conn = _Conn(next(self._numbers), h2.connection.H2Connection(config=config), writer)
        conn.fault, self.next_fault = self.next_fault or self.every_fault, None
        settings = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams}
        conn.h2.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        conn.h2.initiate_connection()
        if conn.fault in (None, "window_closed"):
            writer.write(conn.h2.data_to_send())
        self.connections.append(conn)
        try:
            while data := await reader.read(65536):
                if conn.fault == "stop_reading":
                    await asyncio.Event().wait()  # never reads again: the socket fills up
                if conn.fault not in (None, "window_closed"):
                    continue
                for event in conn.h2.receive_data(data):
                    self._handle(conn, event)
                writer.write(conn.h2.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.close()

    def _handle(self, conn: _Conn, event) -> None:
        if isinstance(event, h2.events.RequestReceived) and (conn.draining or self.refuse_next):
            self.refuse_next = max(0, self.refuse_next - 1)
            conn.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif isinstance(event, h2.events.RequestReceived):
            conn.heads[event.stream_id] = list(event.headers)
            self.raw_headers.append(list(event.headers))
            conn.bodies[event.stream_id] = bytearray()
            conn.open_streams += 1
            conn.peak_streams = max(conn.peak_streams, conn.open_streams)
        elif isinstance(event, h2.events.DataReceived):
            if conn.fault != "window_closed":  # (that one's windows never reopen)
                conn.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if event.stream_id in conn.bodies:  # (not a refused one)
                conn.bodies[event.stream_id] += event.data
        elif isinstance(event, h2.events.StreamEnded) and event.stream_id in conn.heads:
            headers = conn.heads.pop(event.stream_id)
            pseudo = {k: v for k, v in headers if k.startswith(":")}
            record = H2Received(
                connection=conn.number,
                stream_id=event.stream_id,
                method=pseudo[":method"],
                path=pseudo[":path"],
                headers={k: v for k, v in headers if not k.startswith(":")},
                body=bytes(conn.bodies.pop(event.stream_id)),
                at=time.monotonic(),
            )
            self.records.append(record)
            asyncio.get_running_loop().create_task(self._answer(conn, record))
        elif isinstance(event, h2.events.StreamReset):
            conn.open_streams -= 1

    async def _answer(self, conn: _Conn, record: H2Received) -> None:
        url = urlsplit(record.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        sid = record.stream_id
        if conn.fault not in (None, "window_closed"):
            return
        try:
            if url.path.endswith("/sse"):
                conn.h2.send_headers(
                    sid, [(":status", "200"), ("content-type", "text/event-stream")]
                )
                conn.writer.write(conn.h2.data_to_send())
                for i in range(int(query.get("events", 3))):
                    if i:  # the first at once: the stream is open end to end
                        await asyncio.sleep(float(query.get("interval", 0.05)))
                    event = json.dumps({"i": i, "sent": time.time()})  # as the local gateway's
                    conn.h2.send_data(sid, f"event: tick\ndata: {event}\n\n".encode())
                    conn.writer.write(conn.h2.data_to_send())
                conn.h2.end_stream(sid)
            else:
                body = json.dumps(
                    {
                        "connection": conn.number,
                        "stream": sid,
                        "token": record.headers.get("x-coder-ai-governance-token"),
                        "body_length": len(record.body),
                    }
                ).encode()
                conn.h2.send_headers(
                    sid,
                    [(":status", "200"), ("content-type", "application/json"),
                     ("content-length", str(len(body)))],
                )  # fmt: skip
                conn.h2.send_data(sid, body, end_stream=True)
            conn.writer.write(conn.h2.data_to_send())
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        finally:
            conn.open_streams -= 1
        if self.goaway_after is not None and len(self.records) >= self.goaway_after:
            self.goaway_after = None
            self.send_goaway()


def main() -> None:
    import sys

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[2])
    streams = int(sys.argv[3]) if len(sys.argv) > 3 else 250  # Go's (and so Coder's) default
    gateway = H2Gateway(context, max_concurrent_streams=streams)
    gateway.records = _Discard()  # keep nothing over a long run
    gateway.raw_headers = _Discard()

    async def serve() -> None:
        server = await asyncio.start_server(
            gateway._serve, "127.0.0.1", int(sys.argv[1]), ssl=context, backlog=1024
        )
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


class _Discard(list):
    def append(self, item) -> None:
        pass


if __name__ == "__main__":
    main()
