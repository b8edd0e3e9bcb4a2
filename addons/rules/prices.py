"""
What a request cost, in US dollars, from the tokens its answer reported: the admin's `prices:`
first, then pydantic's maintained price database (`genai-prices`, whose data ships inside the
package: nothing is fetched at run time; new prices come with the lock). A model neither names
is *unpriced*, never $0.

    prices:
      - {match: "copilot/*", per_request: 0.04}              # a subscription tool: flat
      - {match: "openai/gpt-4o*", input: 2.5, output: 10}   # US$ per million tokens
      - {match: "*/my-finetune", input: 3, output: 12, cache_read: 0.3}

`match` is `provider/model` with globs; the first entry that matches wins. The provider is the
routed provider or the observed tool's catalog entry (cursor, windsurf, ...).
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from typing import Any

from addons.rules.policy import PolicyError
from addons.rules.token_usage import Usage

# Our provider names, where the price database calls them something else
PROVIDER_IDS = {
    "copilot": "github-copilot",
    "copilot-completions": "github-copilot",
    "gemini": "google",
    "xai": "x-ai",
    "bedrock": "aws",
}
PER_MILLION = 1_000_000
PRICE_KEYS = ("input", "output", "cache_read")
DATABASE, OVERRIDE, UNPRICED = "database", "override", "unpriced"


class PriceError(PolicyError):
    """A `prices:` entry that cannot be used (the message names it)."""


@dataclass(frozen=True)
class PriceOverride:
    provider: str  # glob
    model: str  # glob
    per_million: tuple[float | None, ...] = (None, None, None)  # PRICE_KEYS, US$
    per_request: float | None = None

    def matches(self, provider: str, model: str) -> bool:
        return fnmatch.fnmatchcase(provider, self.provider) and fnmatch.fnmatchcase(
            model, self.model
        )

    def cost(self, usage: Usage) -> float:
        if self.per_request is not None:
            return self.per_request
        input_, output, cache_read = self.per_million
        cached = usage.cached_tokens or 0  # (part of the input tokens)
        fresh = max(0, (usage.input_tokens or 0) - cached)
        read = input_ if cache_read is None else cache_read
        total = (
            fresh * (input_ or 0)
            + cached * (read or 0)
            + (usage.output_tokens or 0) * (output or 0)
        )
        return total / PER_MILLION


@dataclass(frozen=True)
class Cost:
    usd: float | None  # None: unpriced
    source: str  # override, database or unpriced


def parse_prices(raw: Any) -> tuple[PriceOverride, ...]:
    if raw in (None, ""):
        return ()
    if not isinstance(raw, list):
        raise PriceError("prices: must be a list of {match, input, output, ...} entries")
    out = []
    for i, entry in enumerate(raw):
        label = f"prices[{i}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("match"), str):
            raise PriceError(f"{label}: needs match: provider/model (globs allowed)")
        unknown = set(entry) - {"match", "per_request", *PRICE_KEYS}
        if unknown:
            raise PriceError(f"{label}: unknown key {sorted(unknown)[0]!r}")
        provider, sep, model = entry["match"].partition("/")
        if not sep or not provider or not model:
            raise PriceError(f"{label}: match must be provider/model, e.g. openai/gpt-4o*")
        numbers = {}
        for key in ("per_request", *PRICE_KEYS):
            value = entry.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise PriceError(f"{label}: {key} must be a number of US dollars, 0 or more")
            numbers[key] = None if value is None else float(value)
        flat = numbers.pop("per_request")
        if flat is None and numbers["input"] is None and numbers["output"] is None:
            raise PriceError(f"{label}: give input and output (per million tokens) or per_request")
        if flat is not None and any(v is not None for v in numbers.values()):
            raise PriceError(f"{label}: per_request is a flat price: no per-token prices beside it")
        out.append(PriceOverride(provider, model, tuple(numbers[k] for k in PRICE_KEYS), flat))
    return tuple(out)


class PriceBook:
    """Prices requests: overrides, then the database. A model's prices are looked up once a
    day; where they are plain rates (or tiers the request stays below) the cost is a few float
    operations, else the database's own calculation (about 0.1 ms) prices it."""

    def __init__(self, overrides: tuple[PriceOverride, ...] = ()) -> None:
        self.overrides = overrides
        self._found: dict[tuple[str, str], tuple[Any, Any] | None] = {}
        self._rates: dict[tuple[str, str, int], _Rates] = {}

    def cost(self, provider: str | None, model: str | None, usage: Usage) -> Cost:
        provider, model = provider or "", model or ""
        for override in self.overrides:
            if override.matches(provider, model):
                return Cost(round(override.cost(usage), 9), OVERRIDE)
        if not model or not usage.known:
            return Cost(None, UNPRICED)
        key = (provider, model, int(time.time() // 86400))  # the UTC day: prices are dated
        rates = self._rates.get(key)
        if rates is None:
            now = datetime.now(UTC)
            found = self._found.get((provider, model), False)
            if found is False:
                found = self._found[(provider, model)] = _find(
                    PROVIDER_IDS.get(provider, provider), model
                )
            if found is None:
                return Cost(None, UNPRICED)
            if len(self._rates) > 10_000:
                self._rates.clear()  # yesterday's, and models a client made up
            rates = self._rates[key] = _Rates(*found, now)
        try:
            return Cost(round(rates.cost(usage), 9), DATABASE)
        except Exception:  # a price the database cannot apply to this usage
            return Cost(None, UNPRICED)


class _Rates:
    """One model's prices on one day."""

    def __init__(self, provider, info, when: datetime) -> None:
        self.prices = info.get_prices(when)
        self.plain: tuple[float, float, float] | None = None
        self.below: int | None = None  # the plain rates hold for fewer input tokens than this
        rates, starts = [], []
        for name in ("input_mtok", "cache_read_mtok", "output_mtok"):
            price = getattr(self.prices, name, None)
            if price is None:
                rates.append(None)
            elif hasattr(price, "base") and hasattr(price, "tiers"):  # tiered by input tokens
                rates.append(float(price.base))
                starts += [tier.start for tier in price.tiers]
            else:
                rates.append(float(price))
        if rates[0] is not None and rates[2] is not None:
            cached = rates[0] if rates[1] is None else rates[1]
            self.plain = (rates[0], cached, rates[2])
            self.below = min(starts) if starts else None

    def cost(self, usage: Usage) -> float:
        tokens = usage.input_tokens or 0
        if self.plain is None or (self.below is not None and tokens >= self.below):
            return float(self.prices.calc_price(_PriceUsage(usage))["total_price"])
        input_, cached_rate, output = self.plain
        cached = usage.cached_tokens or 0
        fresh = max(0, tokens - cached)
        total = fresh * input_ + cached * cached_rate + (usage.output_tokens or 0) * output
        return total / PER_MILLION


def _find(provider_id: str, model: str):
    """(provider, model) from the database: under this provider, else wherever the model is
    (an observed tool that uses another vendor's model); None when it has no price."""
    from genai_prices import data_snapshot  # ~0.2 s to load: only once something is priced

    snapshot = data_snapshot.get_snapshot()
    for provider in (provider_id or None, None):
        try:
            return snapshot.find_provider_model(model, None, provider, None)
        except LookupError:
            if provider is None:
                return None
    return None


class _PriceUsage:
    """Our usage, in the database's terms (input tokens include the cached ones in both)."""

    def __init__(self, usage: Usage) -> None:
        self.input_tokens = usage.input_tokens or 0
        self.output_tokens = usage.output_tokens or 0
        self.cache_read_tokens = usage.cached_tokens or 0
        self.cache_write_tokens = 0
        self.input_audio_tokens = 0
        self.cache_audio_read_tokens = 0
        self.output_audio_tokens = 0
