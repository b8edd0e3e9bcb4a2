"""
HTTP/2 abuse that mitmproxy's h2 server layer lets through, stopped where it enters:

- Rapid reset (CVE-2023-44487): a client opens a stream and resets it at once, tens of
  thousands of times a second. mitmproxy neither counts resets nor cancels the work a reset
  stream started, so each one ran every request hook, opened a gateway connection and was
  sent on. Stream resets and control frames (PING, SETTINGS, PRIORITY, unknown frames) are
  counted per connection in a token bucket, as Go and nginx have done since the CVE; past it
  the connection gets GOAWAY (ENHANCE_YOUR_CALM) and is closed, and the rest of what it sent
  is never parsed.
- A stream reset in the same read as its HEADERS (the attack's pattern: both in one packet)
  never becomes a request: no hook runs for it and nothing is dialled; its reset still counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import h2.errors
import h2.events
from mitmproxy.proxy.layers.http._http2 import Http2Server
from mitmproxy.proxy.layers.http._http_h2 import BufferedH2Connection

SLICE = 8192  # bytes of one read parsed at a time

CONTROL_FRAMES = (
    h2.events.PingReceived,
    h2.events.RemoteSettingsChanged,
    h2.events.PriorityUpdated,
    h2.events.UnknownFrameReceived,
)


@dataclass
class Bucket:
    """`burst` events at once, then `rate` a second."""

    burst: float
    rate: float
    tokens: float = -1.0
    stamp: float = 0.0

    def available(self, now: float) -> float:
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens

    def take(self, now: float) -> bool:
        if self.available(now) < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class FloodLimits:
    """Per client connection. A burst of resets up to the streams a client may open at once
    (100, what mitmproxy's h2 server advertises), then 20 a second: a tool cancelling a
    completion per keystroke stays far below it."""

    resets_burst: float = 100
    resets_per_second: float = 20
    control_burst: float = 100
    control_per_second: float = 20


def without_cancelled_requests(events: list) -> list:
    """`events` less the RequestReceived of each stream that the same batch also resets."""
    reset = {e.stream_id for e in events if isinstance(e, h2.events.StreamReset)}
    if not reset:
        return events
    return [
        e for e in events if not (isinstance(e, h2.events.RequestReceived) and e.stream_id in reset)
    ]


class Http2FloodGuard:
    """Wraps `Http2Server.handle_h2_event` and `BufferedH2Connection.receive_data` (server
    side only); `limits` may be changed while running."""

    def __init__(self, limits: FloodLimits | None = None) -> None:
        self.limits = limits or FloodLimits()
        self.clock = time.monotonic
        self.on_flood = lambda client, what: None  # told once per connection it closes
        self._original = None
        self._original_receive = None

    def install(self) -> None:
        if self._original is not None:
            return
        original = self._original = Http2Server.handle_h2_event
        receive = self._original_receive = BufferedH2Connection.receive_data
        guard = self

        def receive_data(conn, data):
            if conn.config.client_side:
                return receive(conn, data)
            # Parsed a slice at a time: one read holds thousands of HEADERS+RST pairs, and
            # their header blocks are decoded before any of them is counted. Once a slice
            # takes the connection past its budget, the rest is never parsed (the connection
            # is closed as soon as its events are handled).
            events: list = []
            counted = [0, 0]  # resets, control frames in `events`
            for start in range(0, len(data), SLICE) if data else (0,):
                batch = receive(conn, data[start : start + SLICE])
                events += batch
                if guard._exhausted(conn, batch, counted):
                    break
            return without_cancelled_requests(events)

        BufferedH2Connection.receive_data = receive_data

        def handle_h2_event(server, event):
            what = guard._over_budget(server, event)
            if what is not None:
                guard.on_flood(server.context.client, what)
                yield from server.protocol_error(
                    f"HTTP/2 flood: {what}", h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
                )
                return True
            return (yield from original(server, event))

        Http2Server.handle_h2_event = handle_h2_event

    def _buckets(self, conn) -> tuple[Bucket, Bucket]:
        """The connection's (resets, control frames) buckets, kept on its h2 state."""
        buckets = conn.__dict__.get("_aibridge_buckets")
        if buckets is None:
            limits = self.limits
            buckets = conn.__dict__["_aibridge_buckets"] = (
                Bucket(limits.resets_burst, limits.resets_per_second),
                Bucket(limits.control_burst, limits.control_per_second),
            )
        return buckets

    def _exhausted(self, conn, batch: list, counted: list[int]) -> bool:
        """With `batch` added to what this read parsed so far (`counted`, updated here), the
        connection would be past one of its budgets."""
        counted[0] += sum(isinstance(e, h2.events.StreamReset) for e in batch)
        counted[1] += sum(isinstance(e, CONTROL_FRAMES) for e in batch)
        resets, control = self._buckets(conn)
        now = self.clock()
        return counted[0] > resets.available(now) or counted[1] > control.available(now)

    def _over_budget(self, server, event) -> str | None:
        resets, control = self._buckets(server.h2_conn)
        if isinstance(event, h2.events.StreamReset):
            bucket, what = resets, "too many stream resets"
        elif isinstance(event, CONTROL_FRAMES):
            bucket, what = control, "too many control frames"
        else:
            return None
        return None if bucket.take(self.clock()) else what

    def uninstall(self) -> None:
        if self._original is not None:
            Http2Server.handle_h2_event = self._original
            BufferedH2Connection.receive_data = self._original_receive
            self._original = self._original_receive = None
