"""Limits in the whole chain, hooks in their real order: each kind refuses in the API's shape with
`Retry-After`, a refused request never counts nor is sent, tokens are counted from the usage
the response reported, leases are released when a request ends however it ends, and a store
that cannot be reached is a decision (allow or refuse)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from mitmproxy.proxy.layers import http as http_layer

from addons.core.record import RejectReason
from addons.core.record import existing_record
from addons.govern.limit_store import RedisLimitStore
from addons.rules.token_validation import TokenCache
from tests.addons.chain import full_chain
from tests.addons.test_auth import CountingValidator

JSON = (b"Content-Type", b"application/json")
USAGE = json.dumps({"usage": {"prompt_tokens": 8, "completion_tokens": 5}}).encode()


@pytest.fixture
def limits():
    return []


@pytest.fixture
async def chain(limits):
    with full_chain(aibridge_limits=json.dumps(limits)) as c:
        c.addons["TokenAuth"].cache = TokenCache(CountingValidator())
        yield c


async def settled() -> None:
    """The ledger counts in the background: let it run."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize("limits", [[{"name": "three-a-minute", "match": {"host": ["api.openai.com"]},
                                      "requests": 3, "per": "1m"}]])  # fmt: skip
async def test_the_fourth_request_in_a_minute_is_refused_with_retry_after(chain, caplog):
    caplog.set_level(logging.INFO)
    connect = await chain.connect("api.openai.com")
    sent = [await chain.send(connect, content=b"{}") for _ in range(4)]
    assert [f.response for f in sent[:3]] == [None] * 3  # sent on
    refused = sent[3].response
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "x-should-retry" not in refused.headers  # a short window: SDKs wait it out
    error = json.loads(refused.content)["error"]
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "requests")
    assert "limit three-a-minute: 3 requests per 1m by user used (3)" in error["message"]
    assert sent[3].request.host == "api.openai.com"  # never rewritten to the gateway
    await chain.answer(sent[3])
    line = [r.fields for r in caplog.records if r.name == "aibridge.access"][-1]
    assert (line["reason"], line["limit"], line["outcome"]) == (
        RejectReason.LIMITED,
        "three-a-minute",
        "denied",
    )
    # another user has a count of his own
    other = await chain.send(await chain.connect("api.openai.com", token="tok-bob"), content=b"{}")
    assert other.response is None


@pytest.mark.parametrize("limits", [[
    {"name": "five-a-minute", "requests": 5, "per": "1m"},
    {"name": "one-response", "match": {"path": ["/v1/responses"]}, "requests": 1, "per": "1m"},
]])  # fmt: skip
async def test_a_refused_request_does_not_count_against_the_other_limits(chain):
    connect = await chain.connect("api.openai.com")
    for _ in range(3):
        await chain.send(connect, path="/v1/responses", content=b"{}")  # 1 sent, 2 refused
    sent = [await chain.send(connect, content=b"{}") for _ in range(5)]
    assert [f.response for f in sent[:4]] == [None] * 4  # 1 + 4 = five-a-minute
    assert sent[4].response.status_code == 429
    assert "five-a-minute" in json.loads(sent[4].response.content)["error"]["message"]


@pytest.mark.parametrize("limits", [[{"name": "monthly-tokens", "tokens": 10, "per": "month"}]])
async def test_a_spent_token_budget_says_stop_in_the_anthropic_shape(chain):
    connect = await chain.connect("api.anthropic.com")
    first = await chain.send(connect, path="/v1/messages", content=b"{}")
    assert first.response is None
    await chain.answer(first, body=USAGE, headers=[JSON])
    await settled()
    second = await chain.send(connect, path="/v1/messages", content=b"{}")
    refused = second.response
    assert refused.status_code == 429 and refused.headers["x-should-retry"] == "false"
    assert int(refused.headers["Retry-After"]) > 3600  # the true reset: the next month
    body = json.loads(refused.content)
    assert body["error"]["type"] == "rate_limit_error"
    assert "monthly-tokens: 10 tokens per month by user used (13)" in body["error"]["message"]


@pytest.mark.parametrize("limits", [[{"name": "one-at-once", "concurrent": 1}]])
async def test_open_requests_are_leased_and_released_however_they_end(chain):
    connect = await chain.connect("api.openai.com")
    first = await chain.send(connect, content=b"{}")
    second = await chain.send(connect, content=b"{}")
    assert first.response is None and second.response.status_code == 429
    assert second.response.headers["Retry-After"] == "1"
    await chain.answer(first)
    await settled()
    third = await chain.send(connect, content=b"{}")
    assert third.response is None
    from mitmproxy import flow as mitm_flow

    third.error = mitm_flow.Error("client disconnected")
    await chain.hook(http_layer.HttpErrorHook(third))
    await settled()
    assert (await chain.send(connect, content=b"{}")).response is None


@pytest.mark.parametrize("limits", [[{"name": "three-a-minute", "requests": 3, "per": "1m"}]])
@pytest.mark.parametrize("on_error, status", [("allow", None), ("refuse", 503)])
async def test_a_store_that_cannot_be_reached_is_a_decision(chain, caplog, on_error, status):
    caplog.set_level(logging.WARNING)
    chain.tctx.options.update(aibridge_limits_on_store_error=on_error)
    guard = chain.addons["LimitGuard"]
    guard.state.replace_store(RedisLimitStore("redis://127.0.0.1:1/0"))  # nothing listens there
    connect = await chain.connect("api.openai.com")
    flows = [await chain.send(connect, content=b"{}") for _ in range(2)]
    assert [f.response.status_code if f.response else None for f in flows] == [status] * 2
    warnings = [
        r.getMessage() for r in caplog.records if "limits store is unavailable" in r.getMessage()
    ]
    assert len(warnings) == 1  # once per outage


@pytest.mark.parametrize(
    "limits", [[{"name": "no-o1-burst", "match": {"model": ["o1*"]}, "requests": 1, "per": "1h"}]]
)
async def test_a_limit_on_the_model_reads_the_body(chain):
    connect = await chain.connect("api.openai.com")
    body = json.dumps({"model": "o1-preview"}).encode()
    assert (await chain.send(connect, content=body, headers=[JSON])).response is None
    refused = (await chain.send(connect, content=body, headers=[JSON])).response
    assert (
        refused.status_code == 429 and refused.headers["x-should-retry"] == "false"
    )  # 1h: a budget
    other = await chain.send(
        connect, content=json.dumps({"model": "gpt-4o"}).encode(), headers=[JSON]
    )
    assert other.response is None
    assert existing_record(other).limit is None


async def test_my_limits_on_the_developer_page(tmp_path):
    from certs.authority import engine_confdir
    from certs.authority import generate_ca
    from tests.addons.test_self_service import ask

    limits = [{"name": "three-a-minute", "match": {"host": ["api.openai.com"]}, "requests": 3, "per": "1m"},
              {"name": "bobs-only", "match": {"user": ["bob"]}, "requests": 1, "per": "1d"},
              {"name": "two-at-once", "concurrent": 2}]  # fmt: skip
    confdir = engine_confdir(generate_ca(), tmp_path / "engine")
    with full_chain(aibridge_limits=json.dumps(limits), confdir=str(confdir)) as chain:
        chain.addons["TokenAuth"].cache = TokenCache(CountingValidator())
        connect = await chain.connect("api.openai.com")
        await chain.send(connect, content=b"{}")
        open_one = await chain.send(connect, content=b"{}")
        page = (await ask(chain, "GET", "/")).response.text
        assert "My limits" in page and "bobs-only" not in page  # only mine
        rows = page.split('<table id="limits">', 1)[1].split("</table>", 1)[0]
        assert (
            "<td>three-a-minute</td><td>3 requests per 1m by user</td><td>2</td><td>1</td>" in rows
        )
        assert (
            "<td>two-at-once</td><td>2 open requests at once by user</td><td>2</td><td>0</td>"
            in rows
        )
        await chain.answer(open_one)


@pytest.mark.parametrize("limits", [[{"name": "two-a-minute", "requests": 2, "per": "1m"}]])
async def test_a_request_the_router_refuses_gives_its_count_back(chain):
    connect = await chain.connect("api.openai.com")
    bad = await chain.send(connect, path="/v1/../v1/chat/completions", content=b"{}")
    assert bad.response.status_code == 400  # the router's refusal, after the limits took
    await chain.answer(bad)
    await settled()
    sent = [await chain.send(connect, content=b"{}") for _ in range(3)]
    assert [f.response.status_code if f.response else None for f in sent] == [None, None, 429]


@pytest.mark.parametrize("limits", [[{"name": "one-a-day", "requests": 1, "per": "1d"}]])
async def test_a_refused_websocket_upgrade_is_426_so_codex_falls_back_to_https(chain):
    from tests.addons.test_full_chain import UPGRADE

    connect = await chain.connect("api.openai.com")
    assert (await chain.send(connect, content=b"{}")).response is None
    upgrade = await chain.send(
        connect, method="GET", path="/v1/responses", headers=UPGRADE, content=b""
    )
    assert (
        upgrade.response.status_code == 426 and upgrade.response.headers["Upgrade"] == "websocket"
    )
    post = await chain.send(connect, path="/v1/responses", content=b"{}")
    assert post.response.status_code == 429
    assert json.loads(post.response.content)["error"]["code"] == "insufficient_quota"


def gauge(chain, name: str) -> dict[tuple, float]:
    registry = chain.addons["Metrics"].registry
    return {tuple(s.labels.values()): s.value for m in registry.collect() if m.name == name
            for s in m.samples}  # fmt: skip


async def test_the_usage_gauges_follow_the_store(tmp_path):
    limits = [{"name": "two-a-day", "requests": 2, "per": "1d"},
              {"name": "team-tokens", "tokens": 100, "per": "month", "by": "all"},
              {"name": "one-open", "concurrent": 1}]  # fmt: skip
    with full_chain(aibridge_limits=json.dumps(limits), aibridge_metrics_user_labels=True) as chain:
        chain.addons["TokenAuth"].cache = TokenCache(CountingValidator())
        alice = await chain.connect("api.openai.com")
        bob = await chain.connect("api.openai.com", token="tok-bob")
        first = await chain.send(alice, content=b"{}")
        await chain.answer(first, body=USAGE, headers=[JSON])
        await settled()
        still_open = await chain.send(alice, content=b"{}")  # alice's 2nd: her day is spent
        await chain.answer(await chain.send(bob, content=b"{}"), body=USAGE, headers=[JSON])
        await settled()
        state = chain.addons["LimitGuard"].state
        uses = await state.sample()
        assert {(u.limit.name, u.subject, u.used) for u in uses} == {
            ("two-a-day", "alice", 2), ("two-a-day", "bob", 1),
            ("team-tokens", "*", 26), ("one-open", "alice", 1)}  # fmt: skip
        assert gauge(chain, "aibridge_proxy_limit_used") == {
            ("two-a-day",): 3, ("team-tokens",): 26, ("one-open",): 1}  # fmt: skip
        assert gauge(chain, "aibridge_proxy_limit_exhausted_subjects") == {
            ("two-a-day",): 1, ("team-tokens",): 0, ("one-open",): 1}  # fmt: skip
        assert gauge(chain, "aibridge_proxy_user_limit_left") == {
            ("alice", "two-a-day"): 0, ("bob", "two-a-day"): 1, ("alice", "one-open"): 0}  # fmt: skip
        await chain.answer(still_open)  # her lease goes: the next sample drops her series
        await settled()
        await state.sample()
        assert gauge(chain, "aibridge_proxy_limit_used")[("one-open",)] == 0
        assert ("alice", "one-open") not in gauge(chain, "aibridge_proxy_user_limit_used")
        chain.tctx.options.update(aibridge_metrics_user_labels=False)
        await state.sample()
        assert gauge(chain, "aibridge_proxy_user_limit_used") == {}  # no user, no series


async def test_the_sampler_zeroes_the_gauges_when_a_reload_takes_every_limit(monkeypatch):
    from addons.govern import limits as limits_module

    monkeypatch.setattr(limits_module, "USAGE_EVERY", 0.01)
    with full_chain(
        aibridge_limits=json.dumps([{"name": "two-a-day", "requests": 2, "per": "1d"}])
    ) as chain:
        chain.addons["TokenAuth"].cache = TokenCache(CountingValidator())
        state = chain.addons["LimitGuard"].state
        await chain.send(await chain.connect("api.openai.com"), content=b"{}")
        sampler = asyncio.get_running_loop().create_task(state.sampler())
        try:
            await asyncio.sleep(0.05)
            assert gauge(chain, "aibridge_proxy_limit_used") == {("two-a-day",): 1}
            chain.tctx.options.update(aibridge_limits="[]")
            await asyncio.sleep(0.05)
            assert gauge(chain, "aibridge_proxy_limit_used") == {("two-a-day",): 0}
        finally:
            sampler.cancel()
