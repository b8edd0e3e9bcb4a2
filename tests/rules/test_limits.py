"""Limits' pure part: parsing (a broken entry names itself and the key), fixed and calendar
windows, whose count a request goes to, and what a refusal tells the client."""

from __future__ import annotations

import calendar

import pytest

from addons.rules.limits import Period
from addons.rules.limits import Refusal
from addons.rules.limits import applicable
from addons.rules.limits import parse_limits
from addons.rules.policy import Facts
from addons.rules.policy import PolicyError


def facts(**kw) -> Facts:
    base = dict(host="api.openai.com", path="/v1/chat/completions", method="POST", user="alice",
                workspace="ws1", groups=frozenset({"eng", "ml"}), client="10.0.0.7")  # fmt: skip
    return Facts(**{**base, **kw})


def one(**entry):
    return parse_limits([{"name": "l", **entry}])[0]


def test_a_limit_reads_like_a_rule():
    (limit,) = parse_limits([{"name": "three-a-minute", "match": {"host": ["api.openai.com"]},
                              "requests": 3, "per": "1m"}])  # fmt: skip
    assert (limit.kind, limit.amount, limit.per.seconds, limit.by) == ("requests", 3, 60, "user")
    assert applicable([limit], facts()) == [limit]
    assert applicable([limit], facts(host="api.anthropic.com")) == []


@pytest.mark.parametrize(
    "entry, problem",
    [
        ({"requests": 3}, "limits[0] (l): requests needs per"),
        ({"requests": 3, "tokens": 5, "per": "1m"}, "needs exactly one of requests, tokens, usd, concurrent"),
        ({"requests": 0, "per": "1m"}, "requests must be a whole number of at least 1"),
        ({"requests": 3, "per": "30d!"}, "per must be like 30s, 1m, 2h, 1d, or day, week, month"),
        ({"concurrent": 2, "per": "1m"}, "concurrent takes no per"),
        ({"requests": 3, "per": "1m", "by": "team"}, "by must be one of user, workspace, group"),
        ({"requests": 3, "per": "1m", "match": {"colour": ["red"]}}, "match.colour is not a condition"),
        ({"requests": 3, "per": "1m", "burst": 5}, "unknown key 'burst'"),
    ],
)  # fmt: skip
def test_a_broken_limit_names_itself_and_the_key(entry, problem):
    with pytest.raises(PolicyError) as e:
        parse_limits([{"name": "l", **entry}])
    assert problem in str(e.value) and str(e.value).startswith("limits[0] (l)")


def test_names_are_required_and_unique():
    with pytest.raises(PolicyError, match="needs a name"):
        parse_limits([{"requests": 1, "per": "1m"}])
    with pytest.raises(PolicyError, match=r"limits\[1\] \(a\): the name is used twice"):
        parse_limits([{"name": "a", "requests": 1, "per": "1m"}] * 2)


def test_fixed_windows_end_on_the_clock():
    assert Period.parse("1m", "x").window(125.0) == (2, 180.0)
    assert Period.parse("2h", "x").window(7300.0) == (1, 14400.0)


def test_a_month_is_the_calendar_month_in_utc():
    period = Period.parse("month", "x")
    jan31 = calendar.timegm((2026, 1, 31, 23, 0, 0))
    number, end = period.window(jan31)
    assert end == calendar.timegm((2026, 2, 1, 0, 0, 0))
    feb = period.window(end)
    assert feb[0] == number + 1 and feb[1] == calendar.timegm((2026, 3, 1, 0, 0, 0))
    dec = period.window(calendar.timegm((2026, 12, 15, 0, 0, 0)))
    assert dec[1] == calendar.timegm((2027, 1, 1, 0, 0, 0))


def test_whose_count_a_request_goes_to():
    f = facts()
    assert one(requests=1, per="1m").subjects(f) == ["alice"]
    assert one(requests=1, per="1m", by="workspace").subjects(f) == ["ws1"]
    assert one(requests=1, per="1m", by="group").subjects(f) == ["eng", "ml"]
    assert one(requests=1, per="1m", by="group", match={"group": ["ml"]}).subjects(f) == ["ml"]
    assert one(requests=1, per="1m", by="client").subjects(f) == ["10.0.0.7"]
    assert one(requests=1, per="1m", by="all").subjects(f) == ["*"]
    assert one(requests=1, per="1m", by="workspace").subjects(facts(workspace=None)) == []


def test_keys_change_with_the_window():
    limit = one(requests=1, per="1m")
    assert limit.key("alice", 10.0)[0] != limit.key("alice", 70.0)[0]
    assert limit.key("alice", 10.0) == ("l:user:alice:0", 60.0)
    assert one(concurrent=2).key("alice", 10.0) == ("l:user:alice", None)


def test_a_window_refusal_says_when_and_a_spent_budget_says_stop():
    window = Refusal(one(requests=3, per="1m"), 3, reset_at=120.0, now=100.2)
    assert (window.status, window.code, window.retry_after, window.is_budget) == (
        429, "rate_limit_exceeded", 20, False)  # fmt: skip
    assert (
        "limit l: 3 requests per 1m by user used (3); resets at 1970-01-01 00:02:00 UTC"
        in window.message
    )
    budget = Refusal(one(tokens=1000, per="month"), 1200, reset_at=5000.0, now=1000.0)
    assert (budget.code, budget.retry_after, budget.is_budget) == ("insufficient_quota", 4000, True)
    assert Refusal(one(requests=100, per="1h"), 100, 3600.0, 0.0).is_budget  # a long window
