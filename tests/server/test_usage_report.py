"""The usage report's arithmetic, periods, rotated files and formats; its CLI errors."""

from __future__ import annotations

import datetime
import gzip
import json

import pytest

from proxy.server.usage_report import LogReader
from proxy.server.usage_report import ReportError
from proxy.server.usage_report import log_files
from proxy.server.usage_report import parse_since
from proxy.server.usage_report import render
from proxy.server.usage_report import summarize
from tests.support import assert_one_line_error
from tests.support import cli

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)


def line(when: str, **fields) -> dict:
    return {"time": when, "logger": "aibridge.access", "msg": "request", **fields}


LINES = [
    line("2026-12-01T11:00:00+00:00", user="alice", outcome="routed", model="gpt",
         input_tokens=10, output_tokens=2, bytes_in=5, bytes_out=7),
    line("2026-12-01T11:30:00+00:00", user="alice", outcome="observed", tool="Cursor",
         bytes_in=1, bytes_out=1),
    line("2026-11-20T00:00:00+00:00", user="alice", outcome="routed", input_tokens=1000),
    line("2026-12-01T10:00:00+00:00", user="bob", routed=True, input_tokens=3, output_tokens=4,
         cached_tokens=1),  # a line written before `outcome` existed
    line("2026-12-01T10:00:00+00:00", user="bob", routed=False),  # likewise: origin
    {"time": "2026-12-01T10:00:00+00:00", "msg": "connect refused", "user": "bob",
     "outcome": "denied", "tool": "Windsurf"},
    {"time": "2026-12-01T10:00:00+00:00", "msg": "connect refused", "status": 407},  # no usage
    {"time": "2026-12-01T10:00:00+00:00", "msg": "configuration reloaded"},
]  # fmt: skip


def test_rows_per_group_and_traffic_kind_with_totals():
    rows = summarize(LINES, "user", since=parse_since("7d", NOW))
    got = {(r.group, r.traffic): (r.requests, r.input_tokens, r.output_tokens) for r in rows}
    assert got == {
        ("alice", "routed"): (1, 10, 2),
        ("alice", "observed"): (1, 0, 0),
        ("bob", "routed"): (1, 3, 4),
        ("bob", "origin"): (1, 0, 0),
        ("bob", "denied"): (1, 0, 0),
        ("total", "routed"): (2, 13, 6),
        ("total", "observed"): (1, 0, 0),
        ("total", "origin"): (1, 0, 0),
        ("total", "denied"): (1, 0, 0),
    }
    assert [r.group for r in rows][-4:] == ["total"] * 4


def test_by_tool_and_model_and_the_period():
    by_tool = {(r.group, r.traffic) for r in summarize(LINES, "tool")}
    assert ("Cursor", "observed") in by_tool and ("Windsurf", "denied") in by_tool
    old = summarize(LINES, "model", since=parse_since("2026-11-01", NOW),
                    until=parse_since("2026-11-21", NOW))  # fmt: skip
    assert [(r.group, r.input_tokens) for r in old] == [("-", 1000), ("total", 1000)]


@pytest.mark.parametrize("text", ["7 days", "yesterday", "-3d", "1y"])
def test_bad_periods_say_what_to_give(text):
    with pytest.raises(ReportError, match="give a span such as 7d"):
        parse_since(text, NOW)


def test_rotated_and_gzipped_files_are_read(tmp_path):
    log = tmp_path / "access.log"
    log.write_text(json.dumps(LINES[0]) + "\nnot json\n")
    (tmp_path / "access.log.1").write_text(json.dumps(LINES[1]) + "\n")
    (tmp_path / "access.log.2.gz").write_bytes(gzip.compress(json.dumps(LINES[3]).encode()))
    (tmp_path / "other.log").write_text(json.dumps(LINES[4]) + "\n")
    files = log_files(log)
    assert [f.name for f in files] == ["access.log", "access.log.1", "access.log.2.gz"]
    assert [r["user"] for r in LogReader().lines(files)] == ["alice", "alice", "bob"]


def test_formats():
    rows = summarize(LINES[:2], "user")
    table = render(rows, "user", "table").splitlines()
    assert table[0].split() == ["user", "traffic", "requests", "input_tokens", "output_tokens",
                                "cached_tokens", "bytes_in", "bytes_out", "dlp_findings",
                                "cost_usd", "unpriced"]  # fmt: skip
    assert table[2].split() == [
        "alice",
        "routed",
        "1",
        "10",
        "2",
        "0",
        "5",
        "7",
        "0",
        "0.0000",
        "0",
    ]
    assert render(rows, "user", "csv").splitlines()[1] == "alice,routed,1,10,2,0,5,7,0,0.0000,0"
    assert json.loads(render(rows, "user", "json"))[0] == {
        "user": "alice", "traffic": "routed", "requests": 1, "input_tokens": 10,
        "output_tokens": 2, "cached_tokens": 0, "bytes_in": 5, "bytes_out": 7, "dlp_findings": 0,
        "cost_usd": 0.0, "unpriced": 0,
    }  # fmt: skip


def test_cost_is_summed_and_unpriced_requests_counted_apart():
    lines = [
        line("2026-12-01T11:00:00+00:00", user="alice", outcome="routed", cost_usd=0.25,
             price_source="database"),
        line("2026-12-01T11:05:00+00:00", user="alice", outcome="routed", cost_usd=0.5,
             price_source="override"),
        line("2026-12-01T11:10:00+00:00", user="alice", outcome="routed", cost_usd=None,
             price_source="unpriced"),
        line("2026-12-01T11:15:00+00:00", user="bob", outcome="observed", cost_usd=1.0,
             price_source="database"),
    ]  # fmt: skip
    got = {(r.group, r.traffic): (r.cost_usd, r.unpriced) for r in summarize(lines, "user")}
    assert got[("alice", "routed")] == (0.75, 1) and got[("bob", "observed")] == (1.0, 0)
    assert got[("total", "routed")] == (0.75, 1)
    assert render([], "user", "table") == "no usage in this period"


def test_by_dlp_and_the_requests_with_a_credential_per_user():
    lines = [
        line("2026-12-01T11:00:00+00:00", user="alice", outcome="denied",
             dlp="block:github-pat@messages[1],github-pat@messages[3]"),
        line("2026-12-01T11:00:00+00:00", user="alice", outcome="routed",
             dlp="flag:aws-secret-access-key@system,aws-access-token@system"),
        line("2026-12-01T11:00:00+00:00", user="bob", outcome="observed", dlp="pass:unscanned"),
        line("2026-12-01T11:00:00+00:00", user="bob", outcome="routed"),
    ]  # fmt: skip
    got = {(r.group, r.traffic): r.requests for r in summarize(lines, "dlp") if r.group != "total"}
    assert got == {
        ("block github-pat", "denied"): 1,
        ("flag aws-access-token+aws-secret-access-key", "routed"): 1,
        ("pass unscanned", "observed"): 1,
        ("-", "routed"): 1,
    }
    per_user = {(r.group, r.traffic): r.dlp_findings for r in summarize(lines, "user")}
    assert per_user[("alice", "denied")] == 1 and per_user[("alice", "routed")] == 1
    assert per_user[("bob", "observed")] == 0  # unscanned is not a finding


def test_refusals_by_limit():
    lines = [
        line("2026-12-01T11:00:00+00:00", user="alice", outcome="denied", reason="limited",
             limit="three-a-minute"),
        line("2026-12-01T11:00:01+00:00", user="bob", outcome="denied", reason="limited",
             limit="three-a-minute"),
        line("2026-12-01T11:00:02+00:00", user="bob", outcome="routed"),
    ]  # fmt: skip
    got = {
        (r.group, r.traffic): r.requests for r in summarize(lines, "limit") if r.group != "total"
    }
    assert got == {("three-a-minute", "denied"): 2, ("-", "routed"): 1}


def test_mcp_calls_by_server_and_tool():
    def mcp(tool, outcome, server="github"):
        return {"time": "2026-12-01T11:00:00+00:00", "logger": "aibridge.access",
                "msg": "mcp call", "user": "alice", "mcp_server": server, "mcp_method":
                "tools/call", "mcp_tool": tool, "outcome": outcome}  # fmt: skip

    lines = [mcp("search_issues", "ok"), mcp("delete_repo", "denied"), mcp("delete_repo", "denied"),
             mcp("run_sql", "ok", server="db"), line("2026-12-01T11:00:02+00:00", outcome="routed")]  # fmt: skip
    by_tool = {(r.group, r.traffic): r.requests for r in summarize(lines, "mcp_tool")}
    assert by_tool == {("search_issues", "mcp"): 1, ("delete_repo", "mcp"): 2, ("run_sql", "mcp"): 1,
                       ("-", "routed"): 1, ("total", "mcp"): 4, ("total", "routed"): 1}  # fmt: skip
    by_server = {(r.group, r.traffic): r.requests for r in summarize(lines, "mcp_server")}
    assert by_server[("github", "mcp")] == 3 and by_server[("db", "mcp")] == 1


def test_cli_errors_are_one_line(tmp_path):
    assert_one_line_error(
        cli("usage", "--log", str(tmp_path / "missing.log")),
        "no access log at", "set log.access_file",
    )  # fmt: skip
    (tmp_path / "a.log").write_text("")
    assert_one_line_error(
        cli("usage", "--log", str(tmp_path / "a.log"), "--since", "last week"), "--since"
    )
    assert_one_line_error(cli("usage", "--log", str(tmp_path / "a.log"), "--by", "colour"), "--by")
    config = tmp_path / "c.yaml"
    config.write_text("listen: 127.0.0.1:0\n")
    assert_one_line_error(cli("usage", "--config", str(config)), "set log.access_file")


def test_an_access_file_that_cannot_be_opened_stops_serve_with_one_line(tmp_path):
    result = cli(
        "serve", "--gateway", "http://127.0.0.1:9", "--state-dir", str(tmp_path / "state"),
        "--listen", "127.0.0.1:0", "--admin-listen", "off",
        "--log-access-file", str(tmp_path / "no-such-dir" / "access.log"),
    )  # fmt: skip
    assert_one_line_error(result, "log.access_file", "cannot be opened", "writable path")


def test_names_from_clients_cannot_move_the_cursor_or_forge_rows():
    records = [line("2026-12-01T11:00:00+00:00", user="a\nbob  routed  999", model="\x1b[2Jx",
                    outcome="routed")]  # fmt: skip
    for by in ("user", "model"):
        table = render(summarize(records, by), by, "table")
        assert "\x1b" not in table and len(table.splitlines()) == 4  # header, rule, row, total
        assert "\\x0a" in table or "\\x1b" in table


@pytest.mark.parametrize("name", ['=HYPERLINK("http://evil")', "+1", "-2+3", "@SUM(A1)"])
def test_csv_cells_never_start_a_formula(name):
    records = [line("2026-12-01T11:00:00+00:00", user=name, outcome="routed")]
    csv_text = render(summarize(records, "user"), "user", "csv")
    cell = csv_text.splitlines()[1].split(",", 1)[0].strip('"')
    assert cell.startswith("'") and cell[1:].replace('""', '"') == name


def test_unreadable_lines_are_skipped_and_counted(tmp_path):
    log = tmp_path / "access.log"
    deep = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    good = json.dumps(line("2026-12-01T11:00:00+00:00", user="alice", outcome="routed"))
    log.write_text("\n".join([deep, good, "{broken", good]) + "\n")
    result = cli("usage", "--log", str(log), "--since", "2026-11-01")
    assert result.returncode == 0, result.stderr
    assert "alice" in result.stdout
    assert "skipped 2 unreadable log lines" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_websocket_sessions_repository_comes_from_its_closing_line():
    lines = [
        line("2026-12-01T11:00:00+00:00", user="alice", outcome="routed", request_id="r1",
             status=101, session="s1"),
        {"time": "2026-12-01T11:09:00+00:00", "logger": "aibridge.access", "msg": "websocket session",
         "request_id": "r1", "repo": "github.com/acme/widgets", "session": "s1"},
        line("2026-12-01T11:10:00+00:00", user="bob", outcome="routed", request_id="r2",
             repo="github.com/acme/other"),
    ]  # fmt: skip
    got = {(r.group, r.traffic): r.requests for r in summarize(lines, "repo") if r.group != "total"}
    assert got == {("github.com/acme/widgets", "routed"): 1, ("github.com/acme/other", "routed"): 1}
