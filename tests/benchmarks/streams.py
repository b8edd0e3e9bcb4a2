"""
Many open SSE streams through a proxy, from one lean asyncio client: CONNECT, TLS with the
proxy's leaf, GET, then read events. httpx costs too much per connection to hold ten thousand
of them on the same two cores as the proxy; this client is a socket, a TLS object and a line
reader per stream, so the figures are the proxy's.

Every stream is counted: opened, failed while opening (with the error's type), or dropped once
open. Delays (gateway send time to client arrival) are taken only while every stream is open.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import ssl
import time
from collections import Counter
from dataclasses import dataclass
from dataclasses import field
from urllib.parse import urlsplit


@dataclass
class StreamCounts:
    wanted: int
    opened: int = 0
    failed: int = 0  # never opened
    dropped: int = 0  # opened, then ended before we closed it
    errors: Counter = field(default_factory=Counter)
    delays_ms: list[float] = field(default_factory=list)
    client_lag_ms: list[float] = field(default_factory=list)  # this client's own loop, late
    open_s: float = 0.0  # until every stream had opened or failed
    observed: object = None  # what `at_end` returned

    @property
    def settled(self) -> bool:
        return self.opened + self.failed >= self.wanted


class StreamClient:
    """Streams from `/_diag/sse` through the proxy at `proxy_url` (http://user:token@host:port)."""

    def __init__(self, proxy_url: str, host: str, token: str, ca_file: str) -> None:
        proxy = urlsplit(proxy_url)
        self.proxy = (proxy.hostname, proxy.port)
        creds = base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode()
        self.host = host
        self.token = token
        self.connect = (
            f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n"
            f"Proxy-Authorization: Basic {creds}\r\n\r\n"
        ).encode()
        self.tls = ssl.create_default_context(cafile=ca_file)

    def request(self, events: int, interval: float) -> bytes:
        return (
            f"GET /_diag/sse?events={events}&interval={interval} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()

    async def hold(
        self,
        count: int,
        *,
        interval: float,
        measure: float,
        at_start=None,
        at_end=None,
        open_timeout: float = 600,
        opening_at_once: int = 200,
    ) -> StreamCounts:
        """Open `count` streams (at most `opening_at_once` handshakes in flight), wait until each
        has opened or failed, call `at_start()`, record delays for `measure` seconds, call
        `at_end()` (its result is kept, while the streams are still open), then close them all."""
        counts = StreamCounts(count)
        settled = asyncio.Event()
        measuring = False
        gate = asyncio.Semaphore(opening_at_once)
        request = self.request(events=1_000_000, interval=interval)
        writers: list[asyncio.StreamWriter] = []

        def settle() -> None:
            if counts.settled:
                settled.set()

        async def one() -> None:
            opened = False
            try:
                async with gate:
                    reader, writer = await asyncio.wait_for(self._open(request), 120)
                    writers.append(writer)
                opened = True
                counts.opened += 1
                settle()
                while True:
                    line = await reader.readline()
                    if not line:
                        raise ConnectionResetError("the stream ended")
                    if measuring and line.startswith(b"data: "):
                        sent = json.loads(line[6:])["sent"]
                        counts.delays_ms.append((time.time() - sent) * 1000)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # every failure is counted, none stops the run
                counts.errors[type(e).__name__] += 1
                if opened:
                    counts.dropped += 1
                else:
                    counts.failed += 1
                    settle()

        started = time.monotonic()
        tasks = [asyncio.create_task(one()) for _ in range(count)]
        try:
            await asyncio.wait_for(settled.wait(), open_timeout)
        except TimeoutError:
            counts.errors["not open in time"] += count - counts.opened - counts.failed
        counts.open_s = time.monotonic() - started
        if at_start:
            at_start()
        # This client's own cyclic collector, walking ten thousand streams' objects, paused
        # its loop for up to 100 ms and put those pauses into the delays: while measuring it
        # is off (the streams make little cyclic garbage), so the delays are the proxy's.
        gc.collect()
        gc.disable()
        measuring = True
        lag = asyncio.create_task(self._lag(counts.client_lag_ms))
        try:
            await asyncio.sleep(measure)
        finally:
            measuring = False
            lag.cancel()
            gc.enable()
        counts.observed = at_end() if at_end else None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in writers:
            writer.transport.abort()
        return counts

    @staticmethod
    async def _lag(lags: list[float]) -> None:
        """How late this client's loop runs a 5 ms timer: a delay it adds to what it measures
        (it shares the machine with the proxy and the gateway)."""
        loop = asyncio.get_running_loop()
        while True:
            planned = loop.time() + 0.005
            await asyncio.sleep(0.005)
            lags.append((loop.time() - planned) * 1000)

    async def _open(self, request: bytes):
        reader, writer = await asyncio.open_connection(*self.proxy)
        writer.write(self.connect)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionRefusedError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        await writer.start_tls(self.tls, server_hostname=self.host)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionRefusedError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        while not (await reader.readline()).startswith(b"data: "):
            pass  # the first event: the stream is open end to end
        return reader, writer
