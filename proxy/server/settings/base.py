"""Where a value came from, the error every bad setting raises, and how a value is shown
in it (credentials hidden)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "AIBRIDGE_PROXY_"


class SettingsError(Exception):
    """A bad setting. str() is the one line the CLI prints."""


@dataclass(frozen=True)
class Source:
    """Where a value came from, for error messages."""

    kind: str  # default | file | env | flag
    name: str  # the file path, variable or flag

    def __str__(self) -> str:
        return {
            "default": "built-in default",
            "file": f"config file {self.name}",
            "env": f"environment variable {self.name}",
            "flag": f"flag {self.name}",
        }[self.kind]


def shown(raw: Any) -> Any:
    """A value as it may appear in an error: credentials in URLs hidden, long text cut."""
    if not isinstance(raw, str):
        return raw
    raw = re.sub(r"//[^/@\s]*@", "//***@", raw)
    return raw if len(raw) < 200 else raw[:200] + "..."
