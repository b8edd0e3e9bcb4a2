"""
API dump: each routed request and its response written to `<dump_dir>/<provider>/<request id>`
(`.req.txt` and `.resp.txt`), with credentials redacted; observed ones to
`<dump_dir>/observed/<catalog entry or host pattern>/`. For debugging a client or the gateway;
a failure to write never affects the traffic.

Redacted: credential headers, credential query parameters (also OAuth's `code` and `sig`),
and in the bodies JSON string fields and form fields whose names look like credentials
(`api_key`, `refresh_token`, `access_token`, `client_secret`...). A body is redacted as it
streams, holding back its last BODY_WINDOW bytes until the next chunk: a credential value
longer than that, or one in a field with an innocent name (a prompt that quotes a key), is
written as it is.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import BinaryIO

from mitmproxy import ctx
from mitmproxy import http

from addons.core.record import route_info

logger = logging.getLogger(__name__)

REDACTED = "<redacted>"
_SECRET_NAME = re.compile(
    r"auth|key|token|secret|cookie|password|session|signature|credential", re.I
)


# query parameters that are credentials without saying so: OAuth codes, URL signatures
_SECRET_PARAMS = frozenset({"code", "sig", "assertion"})
BODY_WINDOW = 8192
_SECRET_FIELD = re.compile(
    rb'("(?:[^"\\]|\\.)*?(?:auth|key|token|secret|password|credential|assertion)'
    rb'(?:[^"\\]|\\.)*?"\s*:\s*")(?:[^"\\]|\\.)*(")'
    rb"|((?:^|[&?])[A-Za-z0-9_.-]*(?:key|token|secret|password|assertion)[A-Za-z0-9_.-]*=)[^&\s]+",
    re.I,
)


def redact_body(data: bytes) -> bytes:
    """JSON string fields and form fields whose names look like credentials, redacted."""

    def sub(m: re.Match) -> bytes:
        if m.group(1) is not None:
            return m.group(1) + REDACTED.encode() + m.group(2)
        return m.group(3) + REDACTED.encode()

    return _SECRET_FIELD.sub(sub, data)


class BodyRedactor:
    """Redacts a body chunk by chunk: each chunk is redacted with the tail held back from the
    one before, so a field split between two chunks is still found."""

    def __init__(self, write) -> None:
        self.write = write
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        text = redact_body(self.tail + chunk)
        self.tail = text[-BODY_WINDOW:]
        if len(text) > BODY_WINDOW:
            self.write(text[:-BODY_WINDOW])

    def close(self) -> None:
        if self.tail:
            self.write(redact_body(self.tail))
            self.tail = b""


def redact_headers(headers: http.Headers) -> list[tuple[str, str]]:
    return [(k, REDACTED if _SECRET_NAME.search(k) else v) for k, v in headers.items(multi=True)]


def redact_query(path: str) -> str:
    """Query parameters whose names look like credentials (`?key=`, `api_key`, `token`...)."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    parts = []
    for item in query.split("&"):
        name, eq, _ = item.partition("=")
        secret = _SECRET_NAME.search(name) or name.lower() in _SECRET_PARAMS
        parts.append(f"{name}={REDACTED}" if eq and secret else item)
    return base + "?" + "&".join(parts)


class ApiDump:
    def __init__(self) -> None:
        self.dir: Path | None = None
        self._open_files: dict[str, list[tuple[BinaryIO, BodyRedactor]]] = {}  # by flow id

    def load(self, loader):
        loader.add_option(
            "aibridge_dump_dir",
            str | None,
            None,
            "Write each routed request and response here (credentials redacted).",
        )

    def configure(self, updated):
        if "aibridge_dump_dir" in updated:
            d = ctx.options.aibridge_dump_dir
            self.dir = Path(d) if d else None

    def _open(self, flow: http.HTTPFlow, suffix: str, head: str) -> BinaryIO | None:
        info = route_info(flow)
        if self.dir is None or info is None or (info.provider or info.observed) is None:
            return None
        try:
            folder = self.dir / (info.provider or observed_folder(info.observed or ""))
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(
                folder / f"{info.request_id}.{suffix}.txt",
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                0o600,
            )
            f = os.fdopen(fd, "wb")
            f.write(head.encode("utf-8", "surrogateescape"))
            return f
        except OSError as e:
            logger.warning("dump: cannot write in %s: %s", self.dir, e)
            return None

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.dir is None or flow.response is not None or (info := route_info(flow)) is None:
            return
        r = flow.request
        head = (
            f"{r.method} {info.original_host}{redact_query(info.original_path)} {r.http_version}\n"
        )
        verb = "observed, sent on to" if info.provider is None else "routed to"
        head += f"# {verb} {redact_query(info.upstream_url)}\n"
        head += "".join(f"{k}: {v}\n" for k, v in redact_headers(r.headers)) + "\n"
        if f := self._open(flow, "req", head):
            info.request_taps.append(self._body(flow, f))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if self.dir is None or (info := route_info(flow)) is None or flow.response is None:
            return
        resp = flow.response
        head = f"{resp.http_version} {resp.status_code} {resp.reason}\n"
        head += "".join(f"{k}: {v}\n" for k, v in redact_headers(resp.headers)) + "\n"
        if f := self._open(flow, "resp", head):
            info.response_taps.append(self._body(flow, f))

    def response(self, flow: http.HTTPFlow) -> None:
        self._close(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._close(flow)

    def _body(self, flow: http.HTTPFlow, f: BinaryIO):
        """The tap that writes a body to `f`, redacted; closed with the flow."""
        redactor = BodyRedactor(_writer(f))
        self._open_files.setdefault(flow.id, []).append((f, redactor))
        return redactor.feed

    def _close(self, flow: http.HTTPFlow) -> None:
        for f, redactor in self._open_files.pop(flow.id, []):
            try:
                redactor.close()
                f.close()
            except OSError:
                pass


def observed_folder(observed: str) -> str:
    """`observed/<catalog entry>`, or the host pattern spelt as a file name."""
    return "observed/" + re.sub(r"[^a-z0-9.-]", "_", observed.replace("*", "any"))


def _writer(f: BinaryIO):
    def write(chunk: bytes) -> None:
        try:
            f.write(chunk)
        except (OSError, ValueError):
            pass  # a full disk must not break the request

    return write
