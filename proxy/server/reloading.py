"""
`aibridge-proxy reload`: ask the running service to re-read its configuration, and say whether
it took it.

A SIGHUP alone cannot answer: the service keeps its old settings when the new ones are broken,
and `kill -HUP` has already succeeded by then (and minimal systems have no /bin/kill at all). So
the service records the outcome of each reload in its state directory, and this command sends
the signal, waits for a newer record from that process, and exits 0 or 1 with the service's
own words. The unit's `ExecReload=` runs it, which makes `systemctl reload` report a broken file
as a failed reload.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path

STATUS_FILE = "reload-status.json"


@dataclass(frozen=True)
class ReloadOutcome:
    pid: int
    generation: int  # 0 for the start-up load, then one more for each reload
    ok: bool
    message: str


class ReloadRecorder:
    """The service side: one atomic write per outcome, readable by the same (dynamic) user."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / STATUS_FILE
        self.generation = -1

    def record(self, ok: bool, message: str) -> None:
        self.generation += 1
        outcome = ReloadOutcome(os.getpid(), self.generation, ok, message)
        tmp = self.path.with_name(f".{STATUS_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(asdict(outcome)))
        os.replace(tmp, self.path)


def read_outcome(path: Path) -> ReloadOutcome | None:
    try:
        return ReloadOutcome(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


class ReloadError(Exception):
    """The reload was refused or could not be asked for; the message says which and why."""


def request_reload(pid: int, state_dir: Path, timeout: float = 30.0) -> str:
    """Signal `pid` and wait for its verdict. Returns the service's message on success."""
    path = state_dir / STATUS_FILE
    before = read_outcome(path)
    if before is None or before.pid != pid:
        raise ReloadError(
            f"no running aibridge-proxy with pid {pid} records its state in {state_dir} "
            "(is --state-dir the service's?)"
        )
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ReloadError(f"no process {pid}") from None
    except PermissionError:
        raise ReloadError(
            f"not allowed to signal process {pid}; run as the service's user"
        ) from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = read_outcome(path)
        if now is not None and now.pid == pid and now.generation > before.generation:
            if not now.ok:
                raise ReloadError(now.message)
            return now.message
        time.sleep(0.05)
    raise ReloadError(f"process {pid} did not report a reload within {timeout:g}s")
