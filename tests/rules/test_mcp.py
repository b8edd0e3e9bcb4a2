"""MCP governance's pure parts: server entries and their errors, JSON-RPC messages (hostile ones
refused with the right code), answers rewritten only where the policy says, SSE events cut
whole however the stream is sliced."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from addons.rules.mcp import DENIED
from addons.rules.mcp import INVALID_REQUEST
from addons.rules.mcp import MAX_MESSAGE_BYTES
from addons.rules.mcp import PARSE_ERROR
from addons.rules.mcp import TOO_LARGE
from addons.rules.mcp import Call
from addons.rules.mcp import MessageError
from addons.rules.mcp import Pending
from addons.rules.mcp import SseSplitter
from addons.rules.mcp import args_digest
from addons.rules.mcp import calls_in
from addons.rules.mcp import legacy_session
from addons.rules.mcp import parse_event
from addons.rules.mcp import parse_mcp_servers
from addons.rules.mcp import read_messages
from addons.rules.mcp import rewrite_answers
from addons.rules.policy import Facts
from addons.rules.policy import PolicyError
from addons.rules.policy import parse_policy

GITHUB = {"name": "github", "url": "https://api.githubcopilot.com/mcp/",
          "deny_tools": ["delete_*", "merge_*"]}  # fmt: skip


def test_an_entry_covers_its_host_and_path_prefix_only():
    servers = parse_mcp_servers([GITHUB, {"name": "local", "url": "https://mcp.test:8443"}])
    github = servers.lookup("API.githubcopilot.com", 443, "/mcp")
    assert github is not None and github.name == "github"
    assert servers.lookup("api.githubcopilot.com", 443, "/mcp/x?y=1").name == "github"
    assert servers.lookup("api.githubcopilot.com", 443, "/mcpx") is None
    assert servers.lookup("api.githubcopilot.com", 443, "/chat/completions") is None
    assert servers.lookup("mcp.test", 443, "/") is None  # another port
    assert servers.lookup("mcp.test", 8443, "/anything").name == "local"
    assert servers.hosts() == ["api.githubcopilot.com", "mcp.test"]


def test_deny_wins_over_allow_and_unlisted_tools_are_refused():
    (server,) = parse_mcp_servers([{**GITHUB, "allow_tools": ["search_*", "delete_*"]}]).servers
    assert server.denial("search_issues") is None
    assert "denied (deny_tools)" in server.denial("delete_repo")
    assert "not in allow_tools" in server.denial("run_sql")
    assert server.names_tool("search_*") and not server.names_tool("search_issues")


@pytest.mark.parametrize("entry, error", [
    ({"url": "https://x"}, "mcp[0]: needs a name"),
    ({"name": "a", "url": "http://x/mcp"}, "mcp[0] (a): url must be https://"),
    ({"name": "a", "url": "https://*.x/mcp"}, "mcp[0] (a): url takes no query, fragment, user or wildcard"),
    ({"name": "a", "url": "https://x/mcp", "deny_tools": "x"}, None),
    ({"name": "a", "url": "https://x/mcp", "deny_tools": [1]}, "mcp[0] (a): deny_tools must be a list"),
    ({"name": "a", "url": "https://x/mcp", "tools": []}, "mcp[0] (a): unknown key 'tools'"),
])  # fmt: skip
def test_broken_entries_name_themselves_and_the_key(entry, error):
    if error is None:
        assert parse_mcp_servers([entry]).servers[0].deny_tools == ("x",)
        return
    with pytest.raises(PolicyError) as e:
        parse_mcp_servers([entry])
    assert str(e.value).startswith(error)


def test_mcp_rules_only_deny_and_only_decide_tool_calls():
    rules = [{"name": "no-merges-for-contractors", "match": {"group": ["contractors"],
              "mcp_tool": ["merge_*"]}, "deny": {"message": "contractors may not merge"}},
             {"name": "everything", "match": {}, "origin": True}]  # fmt: skip
    policy = parse_policy(None, {"contractors": ["bob"]}, rules, None, None)
    facts = Facts(
        "api.githubcopilot.com", "/mcp", "POST", user="bob", groups=frozenset({"contractors"})
    )
    assert policy.decide(facts, None).rule.name == "everything"  # the request itself
    call = Facts(**{**facts.__dict__, "mcp_server": "github", "mcp_tool": "merge_pull_request"})
    assert policy.mcp_denial(call, None).rule.name == "no-merges-for-contractors"
    other = Facts(**{**call.__dict__, "mcp_tool": "search_issues"})
    assert policy.mcp_denial(other, None) is None
    with pytest.raises(PolicyError, match="must deny"):
        parse_policy(None, None, [{"name": "r", "match": {"mcp_tool": "x"}, "origin": True}],
                     None, None)  # fmt: skip


@pytest.mark.parametrize("body, code", [
    (b"{not json", PARSE_ERROR),
    (b"[]", INVALID_REQUEST),
    (b'"text"', INVALID_REQUEST),
    (b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}', INVALID_REQUEST),
    (b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}', INVALID_REQUEST),
    (b'{"jsonrpc": "2.0", "id": true, "method": "ping"}', INVALID_REQUEST),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}', INVALID_REQUEST),
    (b"[" * 100_000, PARSE_ERROR),
    (b" " * (MAX_MESSAGE_BYTES + 1), TOO_LARGE),
])  # fmt: skip
def test_hostile_messages_are_refused_with_the_right_code(body, code):
    with pytest.raises(MessageError) as e:
        calls_in(read_messages(body)[0])
    assert e.value.code == code


def test_a_batch_is_read_call_by_call_with_a_digest_of_the_arguments():
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
         "params": {"name": "search_issues", "arguments": {"q": "bug", "n": 2}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": "a", "result": {}},  # an answer to the server: not a call
    ]  # fmt: skip
    messages, is_batch = read_messages(json.dumps(batch).encode())
    calls = calls_in(messages, b"key")
    assert is_batch and [(c.index, c.method, c.tool) for c in calls] == [
        (0, "tools/call", "search_issues"), (1, "notifications/initialized", None)]  # fmt: skip
    same, other = args_digest({"n": 2, "q": "bug"}, b"key"), args_digest({"q": "x"}, b"key")
    assert calls[0].args_digest == same != other
    assert "bug" not in calls[0].args_digest and calls[1].is_notification
    # keyed: without the deployment's key, a guess at the arguments cannot be tested
    assert args_digest({"n": 2, "q": "bug"}, b"another deployment") != same
    canonical = json.dumps({"n": 2, "q": "bug"}, sort_keys=True, separators=(",", ":"))
    assert hashlib.sha256(canonical.encode()).hexdigest()[:16] != same


def pending(call_id, method, tool=None, denied=None) -> Pending:
    return Pending(Call(0, call_id, method, tool), 0.0, denied)


def test_a_tool_list_loses_the_denied_tools_and_the_rest_is_untouched():
    (server,) = parse_mcp_servers([GITHUB]).servers
    tools = [{"name": n, "inputSchema": {"type": "object"}} for n in
             ("search_issues", "delete_repo", "merge_pull_request", "get_me")]  # fmt: skip
    answer = {"jsonrpc": "2.0", "id": 7, "result": {"tools": tools, "nextCursor": "p2"}}
    waiting = {"7": pending(7, "tools/list")}
    out = rewrite_answers(json.dumps(answer).encode(), waiting, server)
    result = json.loads(out.data)["result"]
    assert [t["name"] for t in result["tools"]] == ["search_issues", "get_me"]
    assert result["nextCursor"] == "p2" and not waiting  # the next page is asked for, filtered too
    assert out.outcomes[0].error_code is None
    clean = json.dumps({"jsonrpc": "2.0", "id": 8, "result": {"tools": tools[:1]}}).encode()
    assert rewrite_answers(clean, {"8": pending(8, "tools/list")}, server).data is None  # as sent


def test_a_denied_calls_answer_becomes_its_refusal_and_others_pass():
    (server,) = parse_mcp_servers([GITHUB]).servers
    waiting = {'"x"': pending("x", "tools/call", "delete_repo", "no deleting"),
               "2": pending(2, "tools/call", "search_issues")}  # fmt: skip
    answers = [{"jsonrpc": "2.0", "id": "x", "result": {}},
               {"jsonrpc": "2.0", "id": 2, "error": {"code": -32601, "message": "nope"}},
               {"jsonrpc": "2.0", "id": 3, "result": {}},  # nobody waits for it
               {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}]  # fmt: skip
    out = rewrite_answers(json.dumps(answers).encode(), waiting, server)
    sent = json.loads(out.data)
    assert sent[0] == {
        "jsonrpc": "2.0",
        "id": "x",
        "error": {"code": DENIED, "message": "no deleting"},
    }
    assert sent[1:] == answers[1:]
    assert [(o.call.tool, o.error_code) for o in out.outcomes] == [
        ("delete_repo", DENIED), ("search_issues", -32601)]  # fmt: skip


EVENTS = [b"event: endpoint\ndata: /messages/?session_id=abc\n\n",
          b'id: 4\r\nevent: message\r\ndata: {"a":\r\ndata: 1}\r\n\r\n',
          b": keep-alive\n\n", b"data: x\r\rdata: y\n\n"]  # fmt: skip


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_events_come_out_whole_however_the_stream_is_sliced(cuts):
    stream = b"".join(EVENTS)
    splitter, got, at = SseSplitter(), [], 0
    for size in cuts:
        got += list(splitter.feed(stream[at : at + size]))
        at += size
    got += list(splitter.feed(stream[at:]))
    assert b"".join(got) == stream and got[:2] == EVENTS[:2]
    assert parse_event(got[1]).data == b'{"a":\n1}' and parse_event(got[1]).kind == "message"


def test_an_event_is_handed_on_the_moment_its_blank_line_arrives():
    splitter = SseSplitter()
    assert list(splitter.feed(b"data: one\n")) == []
    assert list(splitter.feed(b"\ndata: tw")) == [b"data: one\n\n"]
    assert list(splitter.feed(b"o\r")) == []  # maybe a CRLF: one more byte decides
    assert list(splitter.feed(b"\n\r\n")) == [b"data: two\r\n\r\n"]


def test_a_rewritten_event_keeps_its_id_and_type():
    event = parse_event(b"id: 9\nevent: message\ndata: {}\n\n")
    assert event.with_data(b'{"x":1}') == b'id: 9\nevent: message\ndata: {"x":1}\n\n'


def test_the_legacy_transports_session_id():
    assert legacy_session(b"/messages/?session_id=abc") == "abc"
    assert legacy_session("/message?sessionId=xyz") == "xyz"
    assert legacy_session("/mcp") is None


def test_a_definition_is_its_name_description_and_schema():
    from addons.rules.mcp_pins import changes
    from addons.rules.mcp_pins import definition_digest

    tool = {"name": "t", "description": "d", "inputSchema": {"type": "object"}, "title": "T"}
    assert definition_digest(tool) == definition_digest({**tool, "title": "other"})
    assert definition_digest(tool) != definition_digest({**tool, "description": "d2"})
    assert definition_digest(tool) != definition_digest({**tool, "inputSchema": {}})
    pinned = {"t": definition_digest(tool)}
    new, differ, fresh = changes(pinned, {}, [{**tool, "description": "x"}, {"name": "u"}])
    assert list(new) == ["u"] and differ == ["t"] and list(fresh) == ["t"]
    assert changes(pinned, fresh, [{**tool, "description": "x"}])[2] == {}  # recorded once


def test_visible_text_drops_what_a_person_does_not_see():
    from addons.rules.mcp_pins import visible_text

    assert visible_text("a\u200bb\u202ec\ufeff<!-- x -->d<!-- unterminated") == "abcd"


@pytest.mark.parametrize(
    "extra, problem",
    [({"on_tool_change": "ignore"}, "on_tool_change must be one of pass, flag, hide"),
     ({"strip_hidden_text": "yes"}, "strip_hidden_text must be true or false")],
)  # fmt: skip
def test_pinning_settings_are_checked(extra, problem):
    with pytest.raises(PolicyError, match=problem):
        parse_mcp_servers([{"name": "g", "url": "https://mcp.example.com/mcp", **extra}])
