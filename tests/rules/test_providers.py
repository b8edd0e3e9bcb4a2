from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from addons.rules.providers import DEFAULT_PROVIDERS
from addons.rules.providers import ProviderSpecError
from addons.rules.providers import ProviderTable
from addons.rules.providers import gateway_path
from addons.rules.providers import make_route
from addons.rules.providers import parse_route_spec


def table(*specs: str) -> ProviderTable:
    return ProviderTable.from_specs(specs)


def test_defaults():
    t = ProviderTable.defaults()
    assert {h: t.lookup(h).provider for h in DEFAULT_PROVIDERS} == dict(DEFAULT_PROVIDERS)
    assert t.lookup("api.individual.githubcopilot.com").provider == "copilot"
    assert t.lookup("api.enterprise.githubcopilot.com").provider == "copilot-enterprise"
    assert t.lookup("github.com") is None
    assert t.lookup("evilapi.openai.com") is None


@pytest.mark.parametrize("host", ["API.OpenAI.com", "api.openai.com.", "  api.openai.com "])
def test_host_normalisation(host):
    assert ProviderTable.defaults().lookup(host).provider == "openai"


def test_wildcards_match_one_label_and_exact_wins():
    t = table(
        "*.openai.azure.com=azure",
        "special.openai.azure.com=special",
        "bedrock-runtime.*.amazonaws.com=bedrock",
    )
    assert t.lookup("east.openai.azure.com").provider == "azure"
    assert t.lookup("special.openai.azure.com").provider == "special"
    assert t.lookup("a.b.openai.azure.com") is None
    assert t.lookup("openai.azure.com") is None
    assert t.lookup("bedrock-runtime.us-east-1.amazonaws.com").provider == "bedrock"
    assert t.lookup("bedrock.us-east-1.amazonaws.com") is None


def test_more_specific_wildcard_wins():
    t = table("*.*.ghe.com=broad", "copilot-api.*.ghe.com=copilot")
    assert t.lookup("copilot-api.acme.ghe.com").provider == "copilot"
    assert t.lookup("other.acme.ghe.com").provider == "broad"


def test_path_scope():
    t = table("chatgpt.com=chatgpt@/backend-api/codex/")
    assert t.route("chatgpt.com", "/backend-api/codex/responses?x=1").provider == "chatgpt"
    assert t.route("chatgpt.com", "/backend-api/other") is None
    assert t.lookup("chatgpt.com") is not None  # still intercepted: other paths go to origin


@pytest.mark.parametrize(
    "spec",
    [
        "nohost",
        "=openai",
        "api.x.com=",
        "api.x.com=Bad Name",
        "*.com=x",
        "*=x",
        "1.2.3.4=x",
        "[::1]=x",
        "api.x.com=x@nopath",
        "api.x.com=x@/a?b",
        "a..b.com=x",
        "-a.com=x",
    ],
)
def test_bad_specs(spec):
    with pytest.raises(ProviderSpecError):
        parse_route_spec(spec)


def test_spec_round_trip():
    t = table("chatgpt.com=chatgpt@/backend-api/codex/,/x/", "*.openai.azure.com=azure")
    assert ProviderTable.from_specs(t.to_specs()) == t


@pytest.mark.parametrize(
    "target, provider, path, expected",
    [
        (
            "/api/v2/aibridge",
            "openai",
            "/v1/chat/completions",
            "/api/v2/aibridge/openai/v1/chat/completions",
        ),
        ("/api/v2/aibridge/", "openai", "/v1/x?a=1%2F2", "/api/v2/aibridge/openai/v1/x?a=1%2F2"),
        ("", "anthropic", "/v1//a%2Fb", "/anthropic/v1//a%2Fb"),
        ("/gw", "copilot", "/", "/gw/copilot/"),
    ],
)
def test_gateway_path(target, provider, path, expected):
    assert gateway_path(target, provider, path) == expected


labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
tlds = st.from_regex(r"[a-z]{2,6}", fullmatch=True)
hosts = st.builds(
    lambda ls, tld: ".".join([*ls, tld]), st.lists(labels, min_size=1, max_size=4), tlds
)


@given(hosts, hosts)
def test_lookup_is_exact_or_wildcard_only(routed, other):
    t = table(f"{routed}=p")
    assert t.lookup(routed).provider == "p"
    assert t.lookup(routed.upper()).provider == "p"
    if other != routed:
        assert t.lookup(other) is None
    # a subdomain or a suffix trick never matches an exact entry
    assert t.lookup("x." + routed) is None
    assert t.lookup(routed + ".evil.com") is None


@given(hosts, labels)
def test_wildcard_matches_exactly_one_label(base, label):
    t = table(f"*.{base}=p")
    assert t.lookup(f"{label}.{base}").provider == "p"
    assert t.lookup(f"{label}.{label}.{base}") is None
    assert t.lookup(base) is None


@given(st.text(max_size=40))
def test_arbitrary_specs_never_crash(spec):
    try:
        route = parse_route_spec(spec)
    except ProviderSpecError:
        return
    assert route == make_route(route.host, route.provider, route.paths)
