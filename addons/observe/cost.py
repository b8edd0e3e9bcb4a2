"""
What each routed or observed request cost, in US dollars, once its usage is known: the admin's
`prices:` over the price database (addons/rules/prices.py). The access log, the metrics and the
audit trail read it from the request's record (RouteInfo.cost); a model with no price is
counted as unpriced, never as $0.
"""

from __future__ import annotations

import json

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http

from addons.core.record import route_info
from addons.rules.prices import PriceBook
from addons.rules.prices import PriceError
from addons.rules.prices import parse_prices


class RequestCost:
    """Prices a request once its answer is over (after TokenUsage has read the usage)."""

    def __init__(self) -> None:
        self.prices = PriceBook()

    def load(self, loader):
        loader.add_option("aibridge_prices", str, "[]",
                          "Price overrides as JSON: [{match: provider/model, input, output, "
                          "cache_read | per_request}] (manual, Limits and budgets).")  # fmt: skip

    def configure(self, updated):
        if "aibridge_prices" not in updated:
            return
        try:
            self.prices = PriceBook(parse_prices(json.loads(ctx.options.aibridge_prices or "[]")))
        except PriceError as e:
            raise exceptions.OptionsError(str(e)) from None
        except ValueError:
            raise exceptions.OptionsError("aibridge_prices is not JSON") from None

    def response(self, flow: http.HTTPFlow) -> None:
        self._price(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._price(flow)  # a stream cut short still cost what it reported

    def _price(self, flow: http.HTTPFlow) -> None:
        info = route_info(flow)
        if info is None or info.usage is None or info.cost is not None:
            return
        model = info.usage.model or info.model_sent or info.model
        info.cost = self.prices.cost(info.provider or info.observed, model, info.usage)
