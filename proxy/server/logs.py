"""Log formatting: one JSON object (or one key=value line) per record, on stderr."""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import TextIO

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _record_fields(record: logging.LogRecord) -> dict:
    fields = {
        "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
            timespec="milliseconds"
        ),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    extra = getattr(record, "fields", None)
    if isinstance(extra, dict):
        fields.update(extra)
    if record.exc_info and record.exc_info[0] is not None:
        fields["exception"] = logging.Formatter().formatException(record.exc_info)
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_record_fields(record), default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        f = _record_fields(record)
        head = f"{f.pop('time')} {f.pop('level'):<7} {f.pop('logger')}: {f.pop('msg')}"
        exc = f.pop("exception", None)
        tail = " ".join(f"{k}={v}" for k, v in f.items() if v is not None)
        return head + (" " + tail if tail else "") + ("\n" + exc if exc else "")


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    # mitmproxy logs every client and server connection at INFO: keep that for debug level.
    logging.getLogger("mitmproxy").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
