"""Log formatting: one JSON object (or one key=value line) per record, on stderr; and what no
record may carry out of the engine: request bytes, which hold credentials."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import re
import sys
import time
from pathlib import Path
from typing import TextIO

from proxy.server.settings import SettingsError

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _UtcTimestamps:
    """ISO 8601 UTC with milliseconds, as `datetime.isoformat` writes it; the part up to the
    second is built once per second (the access log writes a line per request)."""

    def __init__(self) -> None:
        self._second, self._prefix = -1, ""

    def __call__(self, created: float) -> str:
        second = int(created)
        micro = round((created - second) * 1e6)  # rounded to the microsecond, as datetime does
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{micro // 1000:03d}+00:00"


_timestamp = _UtcTimestamps()


def _record_fields(record: logging.LogRecord) -> dict:
    fields = {
        "time": _timestamp(record.created),
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


_JSON = json.JSONEncoder(default=str, separators=(",", ":"))  # built once: a line per request


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _JSON.encode(_record_fields(record))


class BatchedStreamHandler(logging.StreamHandler):
    """A StreamHandler that writes the lines of one event-loop iteration in one write: the
    access log has a line per request, and a write and a flush per line were a tenth of
    the log's cost. Outside a running loop (start-up, threads, shutdown) it writes at once;
    `flush` and `close` write what is pending."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._scheduled_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pending.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_pending()  # no loop in this thread: now
            return
        if loop is not self._scheduled_on:  # else a write is already due in this iteration
            self._scheduled_on = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_pending()
        finally:
            self.release()

    def close(self) -> None:
        self.flush()
        super().close()

    def _write_pending(self) -> None:
        self._scheduled_on = None
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stream loses these lines, never the request


# what must not reach a text line as it is: line breaks (a forged line for journald and
# `usage`), ESC (terminal sequences), other controls
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# a value that would not read back as one `key=value` pair
_NEEDS_QUOTES = re.compile(r'[\s="]')


def printable(text: str) -> str:
    """`text` with control characters shown as escapes: what clients name (models, users,
    workspaces) must not move the cursor or forge a line, in a log line or a report."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _text_value(value: object) -> str:
    """A field's value on a text line: control characters escaped, and quoted (JSON style)
    when it holds spaces, `=` or quotes, so a value can never pose as another field."""
    text = str(value)
    if _NEEDS_QUOTES.search(text) or not text:
        return printable(json.dumps(text, ensure_ascii=False))
    return printable(text)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        f = _record_fields(record)
        msg = printable(str(f.pop("msg")))
        head = f"{f.pop('time')} {f.pop('level'):<7} {f.pop('logger')}: {msg}"
        exc = f.pop("exception", None)
        tail = " ".join(f"{k}={_text_value(v)}" for k, v in f.items() if v is not None)
        return head + (" " + tail if tail else "") + ("\n" + exc if exc else "")


# A Python bytes literal, as mitmproxy writes raw request data into its messages
# ("client disconnected before completing request headers: b'GET ... Proxy-Authorization: ...'")
_BYTES_LITERAL = re.compile(r"(?<!\w)b'(?:[^'\\]|\\.)*'" + r'|(?<!\w)b"(?:[^"\\]|\\.)*"')
_CREDENTIAL_HEADER = re.compile(
    r"(?i)\b(proxy-authorization|authorization|x-api-key|api-key|cookie|set-cookie|"
    r"coder-session-token|x-coder-ai-governance-token)(\s*[:=]\s*|'\s*,\s*')[^\r\n'\",)]*"
)
# libraries below mitmproxy that log protocol frames and header blocks as they pass
_FRAME_LOGGERS = ("hpack", "h2", "h11", "wsproto")


class EngineRecordFilter(logging.Filter):
    """Engine records may echo what a client sent: HTTP/2 header blocks (the `hpack` logger
    prints a client's `Authorization`), partial request heads of connections that closed or
    timed out, invalid header lines. Frame loggers are dropped; mitmproxy's own records keep
    their words with the bytes and credential values replaced. At every level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in _FRAME_LOGGERS:
            return False
        if record.name.startswith("mitmproxy"):
            message = record.getMessage()
            cleaned = redact_request_bytes(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


def redact_request_bytes(text: str) -> str:
    text = _BYTES_LITERAL.sub(lambda m: f"<{len(m.group(0))} bytes withheld>", text)
    return _CREDENTIAL_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}<withheld>", text)


def configure_logging(
    level: str, fmt: str, stream: TextIO | None = None, access_file: Path | None = None
) -> None:
    """Logs to standard error (journald under systemd); access lines also to `access_file`,
    as JSON whatever `fmt` says (the usage report reads them)."""
    access = logging.getLogger("aibridge.access")
    for old in list(access.handlers):
        access.removeHandler(old)
        old.close()
    if access_file is not None:
        try:
            to_file = logging.handlers.WatchedFileHandler(access_file, encoding="utf-8")
        except OSError as e:
            raise SettingsError(
                f"log.access_file {str(access_file)!r} cannot be opened ({e.strerror}): "
                "give a writable path"
            ) from None
        to_file.setFormatter(JsonFormatter())
        access.addHandler(to_file)
    handler = BatchedStreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(EngineRecordFilter())
    # Records carry none of these, and our formatters print none: not looked up per record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.logAsyncioTasks = False
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, BatchedStreamHandler):
            old.close()  # writes what it holds
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    # mitmproxy logs every client and server connection at INFO: keep that for debug level.
    logging.getLogger("mitmproxy").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # pyspnego logs the NTLM and Kerberos messages it exchanges at debug level: never ours
    logging.getLogger("spnego").setLevel(logging.WARNING)
