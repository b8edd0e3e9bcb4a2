"""
`aibridge-proxy usage`: requests, tokens and bytes per user, tool, model, what the prompt
scan found (`--by dlp`; every grouping counts the requests with a credential), the limit
that refused them (`--by limit`), or the MCP server and tool of each MCP call (`--by mcp_server`,
`--by mcp_tool`: traffic `mcp`, one per JSON-RPC request), read from the
access log (JSON lines; the rotated files beside it, gzipped or not, included).

Traffic kinds are kept apart: routed (sent to a gateway), observed (an AI tool's own backend,
seen and forwarded unchanged), origin (a routed host's other paths, sent on unchanged), denied
(a host or rule refused it) and mcp (calls to governed MCP servers, whatever their outcome). Lines that are not requests, and refused CONNECTs that
were not a policy denial (a missing token, a blocked port), are not usage and are skipped.
"""

from __future__ import annotations

import csv
import datetime
import gzip
import io
import json
import re
from collections.abc import Iterable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from proxy.server.logs import printable

GROUPINGS = ("user", "tool", "model", "workspace", "provider", "dlp", "limit", "mcp_server",
             "mcp_tool", "initiator", "session", "repo")  # fmt: skip
KINDS = ("routed", "observed", "origin", "denied", "mcp")
# the access line's own numbers, summed; COUNTS adds what each line counts as one
SUMMED = ("input_tokens", "output_tokens", "cached_tokens", "bytes_in", "bytes_out")
COUNTS = ("requests", *SUMMED, "dlp_findings", "cost_usd", "unpriced")
_SPAN = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class ReportError(ValueError):
    """A bad argument or an unreadable log; the message names it and the fix."""


@dataclass
class Row:
    group: str
    traffic: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dlp_findings: int = 0  # requests in which the prompt scan found a credential
    cost_usd: float = 0.0  # what the priced requests cost (the access line's cost_usd)
    unpriced: int = 0  # requests with usage whose model has no price: not in cost_usd


def parse_since(text: str, now: datetime.datetime) -> datetime.datetime:
    """`7d`, `24h`, `30m`, `2w`, or an ISO date or time (UTC unless it says otherwise)."""
    if m := _SPAN.match(text.strip()):
        return now - datetime.timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReportError(
            f"--since {text!r}: give a span such as 7d, 24h or 30m, or a date such as 2026-11-01"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def log_files(path: Path) -> list[Path]:
    """The log and its rotations (`access.log.1`, `access.log.2.gz`, `access.log-20261130`)."""
    if str(path) == "-":
        return [path]
    rotated = [
        p
        for p in path.parent.glob(f"{path.name}[.-]*")
        if p.is_file() and not p.name.endswith((".tmp", ".lock"))
    ]
    files = ([path] if path.is_file() else []) + sorted(rotated)
    if not files:
        raise ReportError(
            f"no access log at {path}: set log.access_file in the proxy's configuration "
            "(or pass --log FILE, or --log - to read standard input)"
        )
    return files


class LogReader:
    """The JSON lines of the log files, in order; `unreadable` counts the lines that looked
    like records but could not be read (broken, or nested too deep), which are skipped."""

    def __init__(self) -> None:
        self.unreadable = 0

    def lines(self, files: Iterable[Path], stdin: TextIO | None = None) -> Iterator[dict]:
        for path in files:
            if str(path) == "-":
                yield from self._records(stdin or io.StringIO())
            elif path.suffix == ".gz":
                with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
                    yield from self._records(handle)
            else:
                with path.open(encoding="utf-8", errors="replace") as handle:
                    yield from self._records(handle)

    def _records(self, handle: TextIO) -> Iterator[dict]:
        for text in handle:
            text = text.strip()
            if not text.startswith("{"):
                continue  # journald prefixes, blank lines
            try:
                record = json.loads(text)
            except (ValueError, RecursionError):
                self.unreadable += 1
                continue
            if isinstance(record, dict):
                yield record
            else:
                self.unreadable += 1


def traffic_of(record: dict) -> str | None:
    """Which kind of traffic an access line is, or None when it is not usage."""
    msg = record.get("msg")
    if msg == "mcp call":  # one per JSON-RPC request to a governed MCP server
        return "mcp" if record.get("logger", "aibridge.access") == "aibridge.access" else None
    if msg == "connect refused":
        return "denied" if record.get("outcome") == "denied" else None
    if msg != "request" or record.get("logger", "aibridge.access") != "aibridge.access":
        return None
    outcome = record.get("outcome")
    if outcome in KINDS:
        return outcome
    return "routed" if record.get("routed") else "origin"  # lines from before `outcome`


def _time_of(record: dict) -> datetime.datetime | None:
    try:
        when = datetime.datetime.fromisoformat(str(record.get("time")))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def summarize(
    records: Iterable[dict],
    by: str,
    since: datetime.datetime | None = None,
    until: datetime.datetime | None = None,
) -> list[Row]:
    """One row per (group, traffic kind), sorted, with a `total` row per kind at the end."""
    if by not in GROUPINGS:
        raise ReportError(f"--by {by!r}: choose one of {', '.join(GROUPINGS)}")
    rows: dict[tuple[str, str], Row] = {}
    totals: dict[str, Row] = {}
    records = list(records)
    # what a WebSocket session's messages said (its repository) is on its own closing line
    late = {r.get("request_id"): r for r in records if r.get("msg") == "websocket session"}
    for record in records:
        kind = traffic_of(record)
        if kind is None:
            continue
        if since is not None or until is not None:
            when = _time_of(record)
            if when is None or (since and when < since) or (until and when >= until):
                continue
        value = record.get(by) or late.get(record.get("request_id"), {}).get(by)
        group = dlp_group(record) if by == "dlp" else str(value or "-")
        found = bool(_dlp_kinds(record))
        cost = record.get("cost_usd")
        priced = isinstance(cost, int | float) and not isinstance(cost, bool)
        unpriced = record.get("price_source") == "unpriced"
        summed = {
            name: value
            for name in SUMMED
            if isinstance(value := record.get(name), int) and not isinstance(value, bool)
        }
        for target in (
            rows.setdefault((group, kind), Row(group, kind)),
            totals.setdefault(kind, Row("total", kind)),
        ):
            target.requests += 1
            target.dlp_findings += found
            target.cost_usd += cost if priced else 0.0
            target.unpriced += unpriced
            for name, value in summed.items():
                setattr(target, name, getattr(target, name) + value)
    order = {k: i for i, k in enumerate(KINDS)}
    body = sorted(rows.values(), key=lambda r: (r.group, order[r.traffic]))
    return body + sorted(totals.values(), key=lambda r: order[r.traffic])


def _dlp_kinds(record: dict) -> list[str]:
    """The kinds an access line's `dlp` field names (`block:github-pat@messages[1],...`)."""
    field = record.get("dlp")
    if not isinstance(field, str) or ":" not in field:
        return []
    found = field.split(":", 1)[1]
    return [] if found == "unscanned" else sorted({f.split("@", 1)[0] for f in found.split(",")})


def dlp_group(record: dict) -> str:
    """`block github-pat`, `flag aws-access-token+aws-secret-access-key`, `pass unscanned`,
    or `-` for a request the prompt scan had nothing to say about."""
    field = record.get("dlp")
    if not isinstance(field, str) or ":" not in field:
        return "-"
    action = field.split(":", 1)[0]
    return f"{action} {'+'.join(_dlp_kinds(record)) or 'unscanned'}"


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: a leading =, +, -, @ would make it a formula."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _shown(row: Row, column: str):
    value = getattr(row, column)
    return f"{value:.4f}" if isinstance(value, float) else value


def render(rows: list[Row], by: str, fmt: str) -> str:
    header = [by, "traffic", *COUNTS]
    table = [[printable(r.group), r.traffic, *(_shown(r, c) for c in COUNTS)] for r in rows]
    if fmt == "json":
        return json.dumps(
            [
                {by: r.group, "traffic": r.traffic,
                 **{c: round(v, 6) if isinstance(v := getattr(r, c), float) else v
                    for c in COUNTS}}
                for r in rows
            ],
            indent=2,
        )  # fmt: skip
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([spreadsheet_cell(row[0]), *row[1:]] for row in table)
        return out.getvalue().rstrip("\n")
    if not table:
        return "no usage in this period"
    cells = [header, *[[str(c) for c in row] for row in table]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
