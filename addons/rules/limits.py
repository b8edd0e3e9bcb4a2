"""
Limits and budgets: how many requests, tokens or open streams a user (workspace, group, client
address, everyone) may use, written in the routing rules' own match language. Pure logic:
parsed once from the configuration; the counting lives in addons/govern/limit_store.py.

    limits:
      - name: three-a-minute
        match: {host: [api.openai.com]}
        requests: 3            # or tokens: N, usd: 50 (US dollars), or concurrent: N
        per: 1m                # s, m, h, d (fixed windows, aligned to the epoch), or the
                               # calendar's day, week (from Monday) or month, in UTC
        by: user               # user (default), workspace, group, client, all
        mode: enforce          # or audit: record what would be refused, refuse nothing
        alerts: [0.85, 1.0]    # budgets: say so once per subject and window at these shares

Windows are fixed: a limit of 3 per minute allows 3 in each clock minute (up to 6 across one
minute boundary), and says exactly when the next window starts. `month` is the calendar month
in UTC (30d is not a month). `tokens` are the input and output tokens the responses reported,
`usd` what they cost (addons/rules/prices.py, counted in micro-dollars), both checked before a
request is sent and counted once its response is over: requests already in flight when a
budget runs out overshoot it by their own size.
"""

from __future__ import annotations

import calendar
import datetime
import re
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from addons.rules.policy import MCP_CONDITIONS
from addons.rules.policy import Facts
from addons.rules.policy import Patterns
from addons.rules.policy import PolicyError
from addons.rules.policy import parse_conditions

KINDS = ("requests", "tokens", "usd", "concurrent")
SPENT = ("tokens", "usd")  # counted once the response is over (budgets)
MODES = ("enforce", "audit")
MICRO = 1_000_000  # usd limits count micro-dollars
SUBJECTS = ("user", "workspace", "group", "client", "all")
_PERIOD = re.compile(r"^([1-9][0-9]*)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
WEEK = 7 * 86400
MONDAY_SHIFT = 3 * 86400  # from 1970-01-01 (a Thursday) back to Monday 1969-12-29
# A window longer than this is a budget: once spent, clients are told to stop, not to retry.
BUDGET_SECONDS = 300


@dataclass(frozen=True)
class Period:
    seconds: int | None  # None: the calendar month
    text: str

    @classmethod
    def parse(cls, raw: Any, where: str) -> Period:
        text = str(raw).strip().lower() if isinstance(raw, str | int) else ""
        if text == "month":
            return cls(None, "month")
        if text in ("day", "week"):  # the calendar's, in UTC
            return cls(86400 if text == "day" else WEEK, text)
        m = _PERIOD.match(text)
        if not m:
            raise PolicyError(f"{where}: per must be like 30s, 1m, 2h, 1d, or day, week, month")
        return cls(int(m.group(1)) * _SECONDS[m.group(2)], text)

    def window(self, now: float) -> tuple[int, float]:
        """The window `now` falls in: (its number, when it ends)."""
        if self.text == "week":  # Monday to Monday (the epoch was a Thursday)
            number = int((now + MONDAY_SHIFT) // WEEK)
            return number, number * WEEK - MONDAY_SHIFT + WEEK
        if self.seconds is not None:
            number = int(now // self.seconds)
            return number, (number + 1) * self.seconds
        day = datetime.datetime.fromtimestamp(now, datetime.UTC)
        number = day.year * 12 + day.month - 1
        year, month = divmod(number + 1, 12)
        end = calendar.timegm((year, month + 1, 1, 0, 0, 0))
        return number, float(end)

    @property
    def is_budget(self) -> bool:
        return self.seconds is None or self.seconds > BUDGET_SECONDS


@dataclass(frozen=True)
class Limit:
    name: str
    conditions: Mapping[str, Patterns]
    kind: str  # requests, tokens, usd or concurrent
    amount: int  # usd: micro-dollars
    per: Period | None  # None for concurrent
    by: str
    mode: str = "enforce"  # audit: refusals are recorded, never made
    alerts: tuple[float, ...] = ()  # shares of the amount said once per subject and window

    def matches(self, facts: Facts) -> bool:
        return all(p.matches(facts.values(k), k) for k, p in self.conditions.items())

    def subjects(self, facts: Facts) -> list[str]:
        """Whose count this request goes to: one key per subject (a user in two matching
        groups counts against both groups)."""
        if self.by == "all":
            return ["*"]
        if self.by == "group":
            wanted = self.conditions.get("group")
            groups = sorted(
                g for g in facts.groups if wanted is None or wanted.matches([g], "group")
            )
            return groups
        value = getattr(facts, self.by)
        return [value.lower() if self.by == "user" else value] if value else []

    def key(self, subject: str, now: float) -> tuple[str, float | None]:
        """The counter's name for `subject` now, and when it expires (None: a lease set)."""
        if self.per is None:
            return f"{self.name}:{self.by}:{subject}", None
        number, end = self.per.window(now)
        return f"{self.name}:{self.by}:{subject}:{number}", end

    def prefix(self) -> str:
        """What every counter key of this limit starts with (names hold no ':')."""
        return f"{self.name}:{self.by}:"

    def subject_of(self, key: str, now: float) -> str | None:
        """Whose counter `key` is, if it is one of this limit's in the window `now` falls in
        (None: another limit's, or a window that is over)."""
        if not key.startswith(self.prefix()):
            return None
        rest = key[len(self.prefix()) :]
        if self.per is None:
            return rest
        subject, _, number = rest.rpartition(":")
        return subject if subject and number == str(self.per.window(now)[0]) else None

    def describe(self) -> str:
        if self.per is None:
            return f"{self.amount} open requests at once by {self.by}"
        if self.kind == "usd":
            return f"{dollars(self.amount)} per {self.per.text} by {self.by}"
        return f"{self.amount} {self.kind} per {self.per.text} by {self.by}"

    def used_text(self, used: int) -> str:
        return dollars(used) if self.kind == "usd" else str(used)


def dollars(micro: int) -> str:
    return f"${micro / MICRO:,.2f}"


def parse_limits(raw: Any) -> tuple[Limit, ...]:
    """Each entry checked now; a broken one names itself and the key, as the rules' do."""
    if raw in (None, ""):
        return ()
    if not isinstance(raw, list):
        raise PolicyError("limits: must be a list of limits")
    out, names = [], set()
    for i, entry in enumerate(raw):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        label = f"limits[{i}]" + (f" ({name})" if name else "")
        if not isinstance(entry, Mapping):
            raise PolicyError(f"{label}: must be a mapping with name, match, a kind and per")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", name):
            raise PolicyError(f"{label}: needs a name of letters, digits, '.', '_' and '-'")
        if name in names:
            raise PolicyError(f"{label}: the name is used twice")
        names.add(name)
        unknown = set(entry) - {"name", "match", "per", "by", "mode", "alerts", *KINDS}
        if unknown:
            raise PolicyError(f"{label}: unknown key {sorted(unknown)[0]!r}")
        kinds = [k for k in KINDS if k in entry]
        if len(kinds) != 1:
            raise PolicyError(f"{label}: needs exactly one of requests, tokens, usd, concurrent")
        kind = kinds[0]
        amount = entry[kind]
        if kind == "usd":
            if isinstance(amount, bool) or not isinstance(amount, int | float) or amount <= 0:
                raise PolicyError(f"{label}: usd must be a number of US dollars above 0")
            amount = round(amount * MICRO)
        elif not isinstance(amount, int) or isinstance(amount, bool) or amount < 1:
            raise PolicyError(f"{label}: {kind} must be a whole number of at least 1")
        mode = entry.get("mode", "enforce")
        if mode not in MODES:
            raise PolicyError(f"{label}: mode must be enforce or audit")
        alerts = entry.get("alerts", [])
        if not isinstance(alerts, list) or not all(
            isinstance(a, int | float) and not isinstance(a, bool) and 0 < a <= 10 for a in alerts
        ):
            raise PolicyError(f"{label}: alerts must be a list of shares, e.g. [0.85, 1.0]")
        if alerts and kind not in SPENT:
            raise PolicyError(f"{label}: alerts are for budgets (tokens or usd)")
        if kind == "concurrent":
            if "per" in entry:
                raise PolicyError(f"{label}: concurrent takes no per (it counts open requests)")
            per = None
        elif "per" not in entry:
            raise PolicyError(f"{label}: {kind} needs per (30s, 1m, 1h, 1d or month)")
        else:
            per = Period.parse(entry["per"], label)
        by = entry.get("by", "user")
        if by not in SUBJECTS:
            raise PolicyError(f"{label}: by must be one of {', '.join(SUBJECTS)}")
        conditions = parse_conditions(entry.get("match"), label)
        if mcp := [k for k in MCP_CONDITIONS if k in conditions]:
            raise PolicyError(f"{label}: match.{mcp[0]} is for rules that deny MCP tools")
        out.append(Limit(name, conditions, kind, amount, per, by, mode,
                         tuple(sorted(float(a) for a in alerts))))  # fmt: skip
    return tuple(out)


def applicable(limits: Iterable[Limit], facts: Facts) -> list[Limit]:
    return [limit for limit in limits if limit.matches(facts)]


def needs_model(limits: Iterable[Limit]) -> bool:
    return any("model" in limit.conditions for limit in limits)


@dataclass(frozen=True)
class LimitUsage:
    """One subject's use of one limit in its current window (or its open requests)."""

    limit: Limit
    subject: str
    used: int


@dataclass(frozen=True)
class Refusal:
    """A limit said no: what the client is told, and how it is told."""

    limit: Limit
    used: int
    reset_at: float  # when the window (or a lease) frees what was asked for
    now: float

    @property
    def retry_after(self) -> int:
        """Whole seconds, at least 1: the true wait (a budget's reset is never hidden)."""
        return max(1, int(-(-(self.reset_at - self.now) // 1)))

    @property
    def is_budget(self) -> bool:
        """Spent for a long while: clients must stop, not retry."""
        limit = self.limit
        return limit.kind in SPENT or (limit.per is not None and limit.per.is_budget)

    @property
    def status(self) -> int:
        return 429

    @property
    def code(self) -> str:
        return "insufficient_quota" if self.is_budget else "rate_limit_exceeded"

    @property
    def message(self) -> str:
        limit = self.limit
        when = datetime.datetime.fromtimestamp(self.reset_at, datetime.UTC)
        resets = when.strftime("%Y-%m-%d %H:%M:%S UTC")
        if limit.kind == "concurrent":
            return f"limit {limit.name}: {limit.describe()}; retry when one finishes"
        return (f"limit {limit.name}: {limit.describe()} used ({limit.used_text(self.used)}); "
                f"resets at {resets} (in {self.retry_after} s)")  # fmt: skip


def crossed(limit: Limit, before: int, after: int) -> list[float]:
    """The alert shares a spend from `before` to `after` went past: each is crossed by exactly
    one spend (the store adds atomically), so each alert is said once per subject and window."""
    return [share for share in limit.alerts if before < share * limit.amount <= after]
