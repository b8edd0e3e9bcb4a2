from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from addons.rules.policy import NEEDS_MODEL
from addons.rules.policy import Deny
from addons.rules.policy import Facts
from addons.rules.policy import Origin
from addons.rules.policy import PolicyError
from addons.rules.policy import Route
from addons.rules.policy import parse_policy
from addons.rules.policy import workspace_of

GATEWAYS = {
    "coder": {"url": "https://coder.example.com"},
    "standalone": {"target": "https://aigw.example.com/api/v2/ai-gateway"},
}
RULES = [
    {
        "name": "fast-workspaces",
        "match": {"workspace": ["fast-*"], "host": ["api.openai.com", "api.*.githubcopilot.com"]},
        "route": {"gateway": "standalone", "provider": "openrouter", "model": "qwen/qwen3-coder"},
    },
    {
        "name": "no-reasoning-models",
        "match": {"model": ["o1*", "o3*"], "group": ["!ml-team"]},
        "deny": {"status": 403, "message": "reasoning models need the ml-team group"},
    },
    {"name": "office", "match": {"client": ["10.0.0.0/8"], "path": ["/v1/files"]}, "origin": True},
]


def policy(**kw):
    return parse_policy(
        GATEWAYS, {"ml-team": ["alice", "Carol"]}, RULES, kw.get("profiles"), kw.get("default")
    )


def facts(**kw):
    base = {"host": "api.openai.com", "path": "/v1/chat/completions", "method": "POST"}
    return Facts(**{**base, **kw})


def test_first_matching_rule_decides():
    p = policy()
    d = p.decide(facts(workspace="fast-1", model_known=True, model="gpt-4o"), None)
    assert d.rule.name == "fast-workspaces"
    assert d.rule.action == Route("openrouter", ("standalone",), "qwen/qwen3-coder")
    assert p.gateway("standalone").url == "https://aigw.example.com/api/v2/ai-gateway"
    assert p.gateway(None).url == "https://coder.example.com/api/v2/aibridge"  # the first


def test_model_rules_ask_for_the_model_only_when_the_rest_matches():
    p = policy()
    assert p.decide(facts(workspace="slow-1"), None) == NEEDS_MODEL
    assert p.decide(facts(host="example.org", workspace="slow-1", groups=frozenset()), None) == (
        NEEDS_MODEL  # the model rule has no host condition
    )
    known = facts(workspace="slow-1", model="o3-mini", model_known=True)
    assert p.decide(known, None).rule.action == Deny(403, "reasoning models need the ml-team group")
    alice = facts(
        workspace="slow-1", model="o3-mini", model_known=True, groups=p.groups_of("ALICE")
    )
    assert p.decide(alice, None) is None  # excluded by !ml-team; nothing else matches


def test_client_and_path_conditions():
    p = policy()
    office = facts(client="10.2.3.4", path="/v1/files/abc", model_known=True)
    assert isinstance(p.decide(office, None).rule.action, Origin)
    assert p.decide(facts(client="192.0.2.1", path="/v1/files", model_known=True), None) is None


def test_profiles_come_after_the_admins_rules():
    profiles = {
        "careful": [{"name": "all-anthropic", "match": {}, "route": {"provider": "anthropic"}}]
    }
    p = policy(profiles=profiles, default="careful")
    denied = facts(model="o1", model_known=True)
    assert p.decide(denied, "careful").rule.name == "no-reasoning-models"  # no profile lifts it
    d = p.decide(facts(model="gpt-4o", model_known=True), "careful")
    assert (d.rule.name, d.profile) == ("all-anthropic", "careful")


@pytest.mark.parametrize(
    "rules, message",
    [
        ([{"match": {}, "origin": True}], "rules[0]: needs a name"),
        (
            [{"name": "r", "match": {"colour": "x"}, "origin": True}],
            "rules[0] (r): match.colour is not a condition",
        ),
        (
            [{"name": "r", "route": {"provider": "p", "gateway": "nope"}}],
            "rules[0] (r): route.gateway 'nope' is not one of gateways",
        ),
        (
            [{"name": "r", "deny": {"status": 200}}],
            "rules[0] (r): deny.status must be a 4xx status",
        ),
        (
            [{"name": "r", "origin": True, "deny": {}}],
            "rules[0] (r): needs exactly one of route, origin, deny",
        ),
        (
            [{"name": "r", "match": {"client": ["nonsense"]}, "origin": True}],
            "match.client: 'nonsense' is not a CIDR range",
        ),
        (
            [{"name": "r", "origin": True}, {"name": "r", "origin": True}],
            "rules[1] (r): the name is used twice",
        ),
    ],
)
def test_broken_rules_name_the_rule_and_the_key(rules, message):
    with pytest.raises(PolicyError) as e:
        parse_policy(GATEWAYS, {}, rules, None, None)
    assert message in str(e.value)


def test_workspace_of_the_proxy_user_name():
    assert workspace_of("fast-1") == "fast-1"
    assert workspace_of("coder") is None and workspace_of("") is None


@given(st.sampled_from(["fast-1", "fast-x", "slow", "FAST-2"]))
def test_exclusion_wins_over_inclusion(workspace):
    p = parse_policy(
        {},
        {},
        [{"name": "r", "match": {"workspace": ["fast-*", "!fast-x"]}, "origin": True}],
        None,
        None,
    )
    d = p.decide(facts(workspace=workspace, model_known=True), None)
    assert (d is not None) == (workspace.lower().startswith("fast-") and workspace != "fast-x")
