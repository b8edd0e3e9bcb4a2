"""The pure parts of the HTTP/2 flood guard: the token bucket and the same-batch filter."""

from __future__ import annotations

import h2.events

from addons.engine.h2_abuse import Bucket
from addons.engine.h2_abuse import without_cancelled_requests


def test_a_bucket_allows_its_burst_then_its_rate():
    bucket = Bucket(burst=3, rate=2)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)  # one token back after half a second
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


def _event(kind, stream_id):
    try:
        return kind(stream_id=stream_id)
    except TypeError:  # h2 versions differ in what their events require
        event = kind.__new__(kind)
        event.stream_id = stream_id
        return event


def test_a_request_reset_in_the_same_read_is_never_started():
    opened, reset = _event(h2.events.RequestReceived, 1), _event(h2.events.StreamReset, 1)
    kept = _event(h2.events.RequestReceived, 3)
    late = _event(h2.events.StreamReset, 5)  # a stream from an earlier read: reset it normally
    events = [opened, kept, reset, late]
    assert without_cancelled_requests(events) == [kept, reset, late]
    assert without_cancelled_requests([kept]) == [kept]
