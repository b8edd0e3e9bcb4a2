"""
Which profile each (user, workspace) chose: kept in one JSON file in the state directory, so
that a choice survives restarts and every worker process sees it (each re-reads the file when
it changes; writes are atomic renames).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

CHOICES_FILE = "profiles.json"


def choice_key(user: str, workspace: str | None) -> str:
    """A user's choice for one workspace, or for no workspace: nobody else's key."""
    return f"{user.lower()}/{workspace or ''}"


class ProfileChoices:
    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._choices: dict[str, str] = {}

    def _fresh(self) -> dict[str, str]:
        if self.path is None:
            return self._choices
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._choices = None, {}
            return self._choices
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                data = {}
            self._choices = {k: v for k, v in data.items() if isinstance(v, str)}
            self._stamp = stamp
        return self._choices

    def get(self, user: str | None, workspace: str | None) -> str | None:
        if not user:
            return None
        return self._fresh().get(choice_key(user, workspace))

    async def set(self, user: str, workspace: str | None, profile: str | None) -> None:
        self.write(user, workspace, profile)

    def write(self, user: str, workspace: str | None, profile: str | None) -> None:
        with self._lock:
            choices = dict(self._fresh())
            key = choice_key(user, workspace)
            if profile is None:
                choices.pop(key, None)
            else:
                choices[key] = profile
            self._choices = choices
            if self.path is not None:
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
                tmp.write_text(json.dumps(choices, sort_keys=True))
                os.replace(tmp, self.path)
                self._stamp = None  # re-read: another worker may write next
