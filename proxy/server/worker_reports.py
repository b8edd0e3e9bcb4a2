"""
What a worker tells its supervisor, on a pipe of its own (not its log): that it is ready, and
how each reload went. The supervisor's verdict on a reload waits for every worker's, so a
change one worker refuses (a new `upstream_proxy` needs a restart) is reported as refused,
in that worker's words, and not as applied.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass

READY = "ready"
RELOAD = "reload"


@dataclass(frozen=True)
class WorkerReport:
    kind: str  # READY or RELOAD
    ok: bool = True
    message: str = ""


class ReportWriter:
    """The worker's end: one JSON line per report, written whole (a pipe write of under
    PIPE_BUF bytes is atomic)."""

    def __init__(self, fd: int):
        self.fd = fd

    def send(self, report: WorkerReport) -> None:
        line = json.dumps({"kind": report.kind, "ok": report.ok, "message": report.message[:2000]})
        try:
            os.write(self.fd, line.encode() + b"\n")
        except OSError:
            pass  # the supervisor is gone: the worker notices and stops on its own


async def read_reports(fd: int):
    """The supervisor's end: the reports of one worker until it closes its pipe."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        async for line in reader:
            try:
                raw = json.loads(line)
                yield WorkerReport(str(raw["kind"]), bool(raw["ok"]), str(raw["message"]))
            except (ValueError, KeyError, TypeError):
                continue  # not ours: ignored
    finally:
        transport.close()
