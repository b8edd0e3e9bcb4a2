"""
GitHub Copilot's own meter, as its answers carry it: every successful chat, responses and
messages answer has `x-quota-snapshot-<quota>` headers (before the first byte, streamed answers
too) with the user's entitlement, what is left, the overage and when the quota resets, in a
query string: `ent=300&rem=70.6&ov=0.0&ovPerm=false&rst=2026-12-01T00:00:00Z`. And a request's
`X-Initiator: user|agent` says whether a person or an agent's follow-up sent it. Pure parsing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import parse_qs

PREFIX = "x-quota-snapshot-"
_QUOTA_ID = re.compile(r"[a-z0-9_.-]{1,64}")
INITIATORS = ("user", "agent")


@dataclass(frozen=True)
class QuotaSnapshot:
    quota: str  # e.g. premium_interactions, chat, completions
    entitlement: float | None  # -1 (or none): unlimited
    remaining: float | None
    overage: float | None
    overage_permitted: bool | None
    resets: str | None  # as Copilot says it (an ISO date-time)

    @property
    def unlimited(self) -> bool:
        return self.entitlement is not None and self.entitlement < 0

    def describe(self) -> str:
        name = self.quota.replace("_", " ")
        if self.unlimited:
            return f"Copilot {name}: unlimited"
        left = "?" if self.remaining is None else f"{self.remaining:g}"
        of = "" if self.entitlement is None else f" of {self.entitlement:g}"
        when = f", resets {self.resets}" if self.resets else ""
        over = f", {self.overage:g} over" if self.overage else ""
        return f"Copilot {name}: {left}{of} left{over}{when}"


def quota_snapshots(headers: list[tuple[bytes, bytes]]) -> list[QuotaSnapshot]:
    """The quota snapshots among an answer's header fields (unreadable ones skipped)."""
    out = []
    for name, value in headers:
        key = name.decode("latin-1").lower()
        if not key.startswith(PREFIX) or not _QUOTA_ID.fullmatch(quota := key[len(PREFIX) :]):
            continue
        fields = {k: v[0] for k, v in parse_qs(value.decode("latin-1")).items() if v}
        out.append(
            QuotaSnapshot(
                quota,
                _number(fields.get("ent")),
                _number(fields.get("rem")),
                _number(fields.get("ov")),
                {"true": True, "false": False}.get(fields.get("ovPerm", "").lower()),
                fields.get("rst", "")[:40] or None,
            )
        )
    return out


def initiator_of(value: str | None) -> str | None:
    value = (value or "").strip().lower()
    return value if value in INITIATORS else None


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None
