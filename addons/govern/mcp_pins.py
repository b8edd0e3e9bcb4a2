"""
The pins of governed MCP servers' tool definitions (addons/rules/mcp_pins.py says what they are
for), kept in one JSON file (the state directory's `mcp-pins.json`), written whole and
atomically under a lock, so the workers of one service and `aibridge-proxy mcp accept` share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from addons.rules.mcp_pins import changes

PINS_FILE = "mcp-pins.json"


class PinBook:
    """The pinned and the changed definitions of every server entry's tools."""

    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: kept in memory only (a test, stock mitmdump without a state dir)
        self._memory: dict[str, Any] = {}
        self._seen: tuple[int, int, int] | None = None
        self._cache: dict[str, Any] = {}

    def held(self, server: str, tool: str) -> bool:
        """The tool changed since it was approved, and nobody accepted the change yet."""
        return tool in self._read().get(server, {}).get("changed", {})

    def observe(self, server: str, tools: list[dict]) -> tuple[list[str], list[str]]:
        """Pin the tools seen for the first time; (the names of those whose definition differs
        from their pin, those of them seen changed for the first time: recorded once)."""
        known = self._read().get(server, {})
        new, differ, fresh = changes(known.get("pinned", {}), known.get("changed", {}), tools)
        if new or fresh:
            with self._editing() as book:
                entry = book.setdefault(server, {"pinned": {}, "changed": {}})
                for name, digest in new.items():
                    entry["pinned"].setdefault(name, digest)
                entry["changed"].update(fresh)
        return differ, sorted(fresh)

    def accept(self, server: str) -> list[str]:
        """The changed definitions become the pinned ones; the names accepted."""
        with self._editing() as book:
            entry = book.get(server)
            if not entry or not entry.get("changed"):
                return []
            names = sorted(entry["changed"])
            entry["pinned"].update(entry["changed"])
            entry["changed"] = {}
            return names

    def summary(self) -> dict[str, Any]:
        return self._read()

    # -- the file --------------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        if self.path is None:
            return self._memory
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)  # each write is a new file
        if seen != self._seen:  # re-read only when it changed (another worker, the CLI)
            try:
                self._cache = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self._cache = {}
            self._seen = seen
        return self._cache

    @contextlib.contextmanager
    def _editing(self) -> Iterator[dict[str, Any]]:
        if self.path is None:
            yield self._memory
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._seen = None
            book = dict(self._read())
            yield book
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".mcp-pins.")
            with os.fdopen(fd, "w") as out:
                json.dump(book, out, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
            self._seen = None
