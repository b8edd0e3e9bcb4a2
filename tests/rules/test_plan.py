"""plan(): the one decision the router applies and `explain` prints."""

from __future__ import annotations

from addons.rules.plan import Plan
from addons.rules.plan import decide
from addons.rules.plan import plan
from addons.rules.policy import NEEDS_MODEL
from addons.rules.policy import Facts
from addons.rules.policy import parse_policy

GATEWAYS = {"a": {"url": "https://a.example.com"}, "b": {"url": "https://b.example.com"}}
RULES = [
    {"name": "deny-o1", "match": {"model": ["o1*"]}, "deny": {"status": 403, "message": "no"}},
    {"name": "files-home", "match": {"path": ["/v1/files*"]}, "origin": True},
]
PROFILES = {
    "failover": [{"name": "both", "match": {"host": ["*"]}, "route": {"gateway": ["b", "a"],
                                                                       "provider": "openai"}}],
    "cheap": [{"name": "mini", "match": {"host": ["*"]},
               "route": {"provider": "openai", "model": "gpt-4o-mini"}}],
}  # fmt: skip


def policy(default=None):
    return parse_policy(GATEWAYS, {}, RULES, PROFILES, default)


def facts(**kw):
    base = {"host": "api.openai.com", "path": "/v1/chat/completions", "method": "POST"}
    return Facts(**{"model_known": True, **base, **kw})


def test_no_rule_leaves_the_provider_table_in_charge():
    assert decide(facts(), policy(), None) == (None, None)
    assert plan(None, "openai", policy()) == Plan(None, provider="openai")
    assert plan(None, None, policy()) == Plan(None)  # outside the host's paths: its origin


def test_a_deny_keeps_the_table_provider_for_the_error_shape():
    _, d = decide(facts(model="o1-mini"), policy(), None)
    p = plan(d, "anthropic", policy())
    assert (p.deny.status, p.deny_message, p.provider) == (403, "no (rule deny-o1)", "anthropic")


def test_origin_sends_the_request_on_unchanged():
    _, d = decide(facts(path="/v1/files/1"), policy(), None)
    assert plan(d, "openai", policy()) == Plan(d)


def test_gateways_in_failover_order_and_the_default_when_a_rule_names_none():
    _, d = decide(facts(), policy(), "failover")
    assert plan(d, "openai", policy()).gateways == ("b", "a")
    _, d = decide(facts(), policy(), "cheap")
    p = plan(d, "openai", policy())
    assert (p.model, p.gateways) == ("gpt-4o-mini", ("a",))  # `a`: the first is the default


def test_an_unknown_profile_gives_way_to_the_default_one():
    profile, d = decide(facts(), policy(default="cheap"), "nosuch")
    assert profile == "cheap" and d.rule.name == "mini" and d.profile == "cheap"
    assert decide(facts(), policy(), "nosuch") == (None, None)


def test_a_model_rule_waits_for_the_model():
    assert decide(facts(model_known=False), policy(), None) == (None, NEEDS_MODEL)
