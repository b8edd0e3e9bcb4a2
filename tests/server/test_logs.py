"""The log formatter's timestamps: what datetime.isoformat writes, built once per second."""

from __future__ import annotations

import datetime
import json

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


async def test_lines_of_one_loop_iteration_are_written_together_and_none_is_lost():
    import asyncio
    import io
    import logging

    from proxy.server.logs import BatchedStreamHandler
    from proxy.server.logs import JsonFormatter

    class CountingStream(io.StringIO):
        writes = 0

        def write(self, text):
            self.writes += 1
            return super().write(text)

    stream = CountingStream()
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test.batched")
    log.propagate, log.level = False, logging.INFO
    log.addHandler(handler)
    try:
        for i in range(50):
            log.info("request", extra={"fields": {"i": i}})
        assert stream.getvalue() == ""  # not yet: at the end of this iteration
        await asyncio.sleep(0)
        lines = stream.getvalue().splitlines()
        assert [json.loads(line)["i"] for line in lines] == list(range(50))
        assert stream.writes == 1
        log.info("request", extra={"fields": {"i": 50}})
        handler.close()  # shutdown writes what is pending
        assert json.loads(stream.getvalue().splitlines()[-1])["i"] == 50
    finally:
        log.removeHandler(handler)


def test_outside_a_running_loop_lines_are_written_at_once():
    import io
    import logging

    from proxy.server.logs import BatchedStreamHandler

    stream = io.StringIO()
    handler = BatchedStreamHandler(stream)
    handler.emit(logging.makeLogRecord({"msg": "starting"}))
    assert stream.getvalue() == "starting\n"


def test_text_lines_escape_what_a_client_could_write_into_them():
    """A model name with newlines (through a rewrite rule) wrote whole lines of its own, which
    `journalctl -o cat | aibridge-proxy usage --log -` then counted."""
    import logging

    from proxy.server.logs import TextFormatter

    forged = 'x\n{"msg":"request","user":"bob","input_tokens":123456789}'
    record = logging.LogRecord("aibridge.access", logging.INFO, "f", 1, "request\x1b[2J", (), None)
    record.fields = {"user": "alice", "model": forged, "note": "a b=c", "empty": ""}
    text = TextFormatter().format(record)
    assert "\n" not in text and "\x1b" not in text
    assert "user=alice" in text
    assert 'model="x\\n{\\"msg\\"' in text  # quoted: it cannot pose as other fields
    assert 'note="a b=c"' in text and 'empty=""' in text
