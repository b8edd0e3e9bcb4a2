"""The log formatter's timestamps: what datetime.isoformat writes, built once per second."""

from __future__ import annotations

import datetime

import pytest

from proxy.server.logs import _UtcTimestamps


@pytest.mark.parametrize(
    "created",
    [0.0, 1.0005, 323588022.636, 1764650000.9999996, 1764650000.0004999, 1999999999.999],
)
def test_timestamps_match_datetime_to_the_millisecond(created):
    expected = datetime.datetime.fromtimestamp(created, datetime.UTC).isoformat(
        timespec="milliseconds"
    )
    assert _UtcTimestamps()(created) == expected


def test_the_cached_second_follows_the_clock():
    stamp = _UtcTimestamps()
    assert stamp(1764650000.1).endswith("04:33:20.100+00:00")
    assert stamp(1764650001.2).endswith("04:33:21.200+00:00")
    assert stamp(1764650000.3).endswith("04:33:20.300+00:00")  # an earlier second again
