"""Prices: the admin's overrides over the price database, checked entries, the fast path
against the database's own calculation, and no price meaning unpriced, never $0."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime

import pytest

from addons.rules.prices import PROVIDER_IDS
from addons.rules.prices import PriceBook
from addons.rules.prices import PriceError
from addons.rules.prices import _find
from addons.rules.prices import _PriceUsage
from addons.rules.prices import parse_prices
from addons.rules.token_usage import Usage

USAGE = Usage("m", input_tokens=1000, output_tokens=500, cached_tokens=100)


def database(provider: str, model: str, usage: Usage) -> float:
    found, info = _find(PROVIDER_IDS.get(provider, provider), model)
    return float(info.calc_price(_PriceUsage(usage), found,
                                 genai_request_timestamp=datetime.now(UTC)).total_price)  # fmt: skip


@pytest.mark.parametrize(
    "provider, model",
    [("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-5"), ("gemini", "gemini-2.5-pro"),
     ("copilot", "claude-sonnet-4"), ("mistral", "mistral-small-latest")],
)  # fmt: skip
@pytest.mark.parametrize("tokens", [10, 1000, 300_000])  # below and above 200k-token tiers
def test_the_database_prices_as_its_own_calculation_does(provider, model, tokens):
    usage = Usage(model, input_tokens=tokens, output_tokens=500, cached_tokens=tokens // 10)
    cost = PriceBook().cost(provider, model, usage)
    assert cost.source == "database"
    assert cost.usd == pytest.approx(database(provider, model, usage), abs=1e-9)


def test_an_override_wins_and_a_model_without_a_price_is_unpriced():
    book = PriceBook(parse_prices([
        {"match": "copilot/*", "per_request": 0.04},
        {"match": "openai/my-finetune*", "input": 3, "output": 12, "cache_read": 0.3},
    ]))  # fmt: skip
    assert (book.cost("copilot", "gpt-4o", USAGE).usd, book.cost("copilot", "x", USAGE).source) == (
        0.04,
        "override",
    )
    tuned = book.cost("openai", "my-finetune-2", USAGE)
    assert tuned.usd == pytest.approx((900 * 3 + 100 * 0.3 + 500 * 12) / 1e6)
    unpriced = book.cost("openai", "gpt-test", USAGE)
    assert (unpriced.usd, unpriced.source) == (None, "unpriced")  # never $0
    assert book.cost("openai", None, USAGE).source == "unpriced"


def test_an_observed_tool_is_priced_by_its_model_where_the_vendor_has_no_price():
    cost = PriceBook().cost("cursor", "gpt-5", USAGE)
    assert cost.source == "database" and cost.usd == pytest.approx(
        database("openai", "gpt-5", USAGE)
    )


@pytest.mark.parametrize(
    "raw, problem",
    [
        ({"prices": 1}, "must be a list"),
        ([{"input": 1}], "prices[0]: needs match"),
        ([{"match": "gpt-4o", "input": 1, "output": 1}], "match must be provider/model"),
        ([{"match": "a/b", "input": -1, "output": 1}], "input must be a number of US dollars"),
        ([{"match": "a/b", "input": True, "output": 1}], "input must be a number"),
        ([{"match": "a/b"}], "give input and output"),
        ([{"match": "a/b", "per_request": 1, "input": 1}], "per_request is a flat price"),
        ([{"match": "a/b", "price": 1}], "unknown key 'price'"),
    ],
)
def test_a_broken_entry_names_itself(raw, problem):
    with pytest.raises(PriceError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_prices(raw)
