"""Limits end to end: the openai and anthropic SDKs (Python) and the Node openai SDK, configured
only by the environment, against a short window they wait out, and budgets they give up on at
once with the message; two replicas counting together in a real redis-server, which is stopped
and started again mid-run. What reached the gateway is checked every time."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.support import ALICE
from tests.support import NODE_BIN
from tests.support import NODE_DIR
from tests.support import ProxyProcess
from tests.support import RedisServer
from tests.support import client_env
from tests.support import metric
from tests.support import proxy_client
from tests.support import run_python


@pytest.fixture
def limited(configured_proxy):
    def start(limits: list, **extra) -> ProxyProcess:
        return configured_proxy({"limits": limits, **extra})

    return start


OPENAI_TWICE = """
import json, openai, time
client = openai.OpenAI()
out = []
for _ in range(2):
    started = time.monotonic()
    try:
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
        out.append({"ok": True, "seconds": time.monotonic() - started})
    except openai.RateLimitError as e:
        out.append({"ok": False, "seconds": time.monotonic() - started, "error": e.message,
                    "code": e.code, "retry_after": e.response.headers.get("retry-after")})
print(json.dumps(out))
"""


def test_the_openai_sdk_waits_out_a_short_window(limited, gateway):
    p = limited([{"name": "one-per-3s", "requests": 1, "per": "3s"}])
    time.sleep(3 - time.time() % 3 + 0.1)  # start at the beginning of a window
    out = run_python(OPENAI_TWICE, client_env(p, OPENAI_API_KEY="sk-personal"))
    assert out.returncode == 0, out.stderr
    first, second = json.loads(out.stdout)
    assert first["ok"] and second["ok"]  # the SDK retried after Retry-After, in the next window
    assert 1.5 < second["seconds"] < 6
    assert len(gateway.records) == 2  # the refused attempt never reached it
    refused = p.wait_for_line(lambda r: r.get("msg") == "request" and r.get("status") == 429)
    assert refused["limit"] == "one-per-3s" and refused["reason"] == "limited"


def test_the_openai_sdk_gives_up_at_once_on_a_spent_budget(limited, gateway):
    p = limited([{"name": "two-an-hour", "requests": 1, "per": "1h"}])
    out = run_python(OPENAI_TWICE, client_env(p, OPENAI_API_KEY="sk-personal"))
    assert out.returncode == 0, out.stderr
    first, second = json.loads(out.stdout)
    assert first["ok"] and not second["ok"]
    assert second["seconds"] < 2  # no retries: x-should-retry: false
    assert second["code"] == "insufficient_quota"
    # Retry-After is the true reset: the end of this clock hour (a budget's is never hidden)
    off = (int(second["retry_after"]) - (3600 - time.time() % 3600)) % 3600
    assert min(off, 3600 - off) <= 3
    assert "limit two-an-hour: 1 requests per 1h by user used (1)" in second["error"]
    assert len(gateway.records) == 1
    assert (
        metric(p.admin("/metrics").text, "aibridge_proxy_limit_refusals_total", limit="two-an-hour")
        == 1
    )


ANTHROPIC_TWICE = """
import json, anthropic, time
client = anthropic.Anthropic()
out = []
for _ in range(2):
    started = time.monotonic()
    try:
        client.messages.create(model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
        out.append({"ok": True})
    except anthropic.RateLimitError as e:
        out.append({"ok": False, "seconds": time.monotonic() - started, "error": str(e)})
print(json.dumps(out))
"""


def test_the_anthropic_sdk_stops_once_the_token_budget_is_spent(limited, gateway):
    p = limited([{"name": "ten-tokens-a-month", "tokens": 10, "per": "month",
                  "match": {"host": ["api.anthropic.com"]}}])  # fmt: skip
    out = run_python(ANTHROPIC_TWICE, client_env(p, ANTHROPIC_API_KEY="sk-ant-personal"))
    assert out.returncode == 0, out.stderr
    first, second = json.loads(out.stdout)
    assert first["ok"] and not second["ok"] and second["seconds"] < 2
    assert "ten-tokens-a-month: 10 tokens per month by user used (" in second["error"]
    assert len(gateway.records) == 1


@pytest.mark.skipif(not NODE_BIN.exists(), reason="Node clients not installed (./run setup)")
@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_the_node_sdks_show_the_budget_message(limited, gateway, sdk):
    # a month: no window boundary falls between the two runs (an hour's could)
    p = limited([{"name": "one-a-month", "requests": 1, "per": "month"}])
    env = client_env(p, OPENAI_API_KEY="sk-node-key", ANTHROPIC_API_KEY="sk-ant-node-key")
    env.pop("SSL_CERT_FILE")
    script = [str(NODE_BIN), str(NODE_DIR / f"{sdk}_client.mjs")]
    ok = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60, cwd=NODE_DIR)
    assert ok.returncode == 0, ok.stderr
    started = time.monotonic()
    refused = subprocess.run(
        script, env=env, capture_output=True, text=True, timeout=60, cwd=NODE_DIR
    )
    assert refused.returncode != 0 and time.monotonic() - started < 5
    assert "429" in refused.stderr and "limit one-a-month" in refused.stderr
    assert len(gateway.records) == 1


def test_two_replicas_count_together_in_redis_and_survive_it_going_away(limited, gateway, tmp_path):
    redis = RedisServer().start()
    try:
        limits = [{"name": "three-a-month", "requests": 3, "per": "month"}]  # no boundary mid-test
        replicas = [limited(limits, limits_store=redis.url) for _ in range(2)]

        def send(p) -> int:
            with proxy_client(p, ALICE) as c:
                return c.post("https://api.openai.com/v1/chat/completions", json={}).status_code

        assert [send(replicas[i % 2]) for i in range(4)] == [200, 200, 200, 429]  # 2 + 2
        assert len(gateway.records) == 3
        redis.stop()
        assert send(replicas[0]) == 200  # limits_on_store_error: allow (the default)
        line = replicas[0].wait_for_line(
            lambda r: "limits store is unavailable" in r.get("msg", "")
        )
        assert line["level"] == "warning"
        redis.proc = None
        restarted = RedisServer()
        restarted.port = redis.port
        redis = restarted.start()
        # counting resumes in the new (empty) store: three more, then refused again
        assert [send(replicas[i % 2]) for i in range(4)] == [200, 200, 200, 429]
    finally:
        redis.stop()


OBSERVED = "chat.limits-observed.test"


def test_an_observed_tool_is_held_to_a_token_budget(limited, tmp_path):
    from tests.support.vendor_origin import VendorOrigin
    from tests.support.vendor_origin import hosts_resolve_to_loopback

    with hosts_resolve_to_loopback([OBSERVED]):
        vendor = VendorOrigin([OBSERVED]).start(tmp_path)
        try:
            p = limited([{"name": "observed-tokens", "tokens": 10, "per": "month", "match": {"host": [OBSERVED]}}],
                        observe=[OBSERVED], origin_ca_file=str(vendor.write_ca(tmp_path / "v.pem")),
                        allowed_private_cidrs=["127.0.0.0/8"], allowed_ports=["1-65535"])  # fmt: skip
            url = f"https://{OBSERVED}:{vendor.port}/v1/chat/completions"
            with proxy_client(p, ALICE) as c:
                first = c.post(url, json={"model": "codestral-latest", "messages": []})
                assert first.status_code == 200 and first.json()["usage"]["total_tokens"] == 18
                sent, deadline = 1, time.monotonic() + 5
                # the ledger counts just after the answer is over: a request sent in between is
                # in flight, and overshoots (documented)
                while (
                    second := c.post(url, json={"model": "codestral-latest"})
                ).status_code == 200:
                    assert time.monotonic() < deadline, "the budget was never enforced"
                    sent += 1
                    time.sleep(0.1)
            assert second.status_code == 429 and second.headers["x-should-retry"] == "false"
            assert "observed-tokens: 10 tokens per month by user used (18)" in second.text
            assert len(vendor.records) == sent <= 2  # the refused one never reached the vendor
        finally:
            vendor.stop()


@pytest.mark.parametrize("tool", ["codex", "claude"])
def test_the_real_clis_stop_promptly_on_a_spent_budget_and_show_it(
    limited, gateway, tmp_path, tool
):
    from tests.e2e.test_real_clients import CLAUDE
    from tests.e2e.test_real_clients import CODEX
    from tests.e2e.test_real_clients import run
    from tests.e2e.test_real_clients import tool_env

    exe = CODEX if tool == "codex" else CLAUDE
    if not exe.exists():
        pytest.skip(f"{tool} not installed (./run setup)")
    p = limited([{"name": "no-more-today", "requests": 1, "per": "1d"}])
    with proxy_client(p, ALICE) as c:  # the one request of the day
        assert c.post("https://api.openai.com/v1/chat/completions", json={}).status_code == 200
        assert c.post("https://api.anthropic.com/v1/messages", json={}).status_code == 429
    before = len(gateway.records)
    if tool == "codex":
        env = tool_env(p, tmp_path, CODEX_CA_CERTIFICATE=str(p.ca_path), OPENAI_API_KEY=ALICE)
        cmd = [str(exe), "exec", "--skip-git-repo-check", "say hi"]
    else:
        env = tool_env(p, tmp_path, NODE_EXTRA_CA_CERTS=str(p.ca_path), ANTHROPIC_API_KEY="sk-ant-personal",
                       CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")  # fmt: skip
        cmd = [str(exe), "-p", "say hi"]
    r, elapsed = run(cmd, env, tmp_path, timeout=120)
    said = r.stdout + r.stderr
    # Claude Code shows our message; Codex shows its own words for OpenAI's insufficient_quota
    shown = "no-more-today" if tool == "claude" else "Quota exceeded"
    assert shown in said, said[-2000:]
    assert elapsed < 30, f"{tool} took {elapsed:.1f} s to stop"
    assert len(gateway.records) == before  # nothing refused reached the gateway
    print(f"{tool} stopped after {elapsed:.1f} s")


async def test_the_redis_store_is_all_or_nothing_and_a_dead_workers_lease_expires(monkeypatch):
    import asyncio

    from addons.govern import limit_store
    from addons.govern.limit_store import Ask
    from addons.govern.limit_store import RedisLimitStore

    monkeypatch.setattr(limit_store, "LEASE_TTL", 0.5)  # a worker that dies: no heartbeat
    redis = RedisServer().start()
    store = RedisLimitStore(redis.url)
    try:
        end = time.time() + 60
        asks = [
            Ask("requests", "w", 2, end),
            Ask("tokens", "t", 10, end),
            Ask("concurrent", "c", 1, None, "a"),
        ]
        assert (await store.check_all(asks)).refused is None
        second = await store.check_all(
            [Ask("requests", "w", 2, end), Ask("concurrent", "c", 1, None, "b")]
        )
        assert second.refused == 1 and second.reset_at is not None
        assert await store.used("w") == 1  # refused as a whole: the window counted nothing
        await store.settle([("t", 12, end)], ["w"], [])
        assert (await store.used("w"), await store.used("t"), await store.held("c")) == (0, 12, 1)
        assert (await store.check_all([Ask("tokens", "t", 10, end)])).refused == 0  # spent
        # what the usage gauges read: every live counter under a prefix, one SCAN and pipeline
        assert await store.usage("t", leases=False) == {"t": 12}
        assert await store.usage("c", leases=True) == {"c": 1}
        await asyncio.sleep(0.6)  # lease "a" was never released nor renewed
        assert (await store.check_all([Ask("concurrent", "c", 1, None, "d")])).refused is None
    finally:
        await store.close()
        redis.stop()


def test_the_admin_page_shows_who_hits_which_limit(limited, gateway):
    p = limited([{"name": "one-a-day", "requests": 1, "per": "1d"}], metrics={"user_labels": True})
    with proxy_client(p, ALICE) as c:
        statuses = [c.post("https://api.openai.com/v1/chat/completions", json={}).status_code
                    for _ in range(3)]  # fmt: skip
    assert statuses == [200, 429, 429]
    page = p.admin("/").text
    table = page.split('<table id="limit-refusals">', 1)[1].split("</table>", 1)[0]
    assert "<td>one-a-day</td><td>all users</td><td>2</td>" in table
    assert "<td>one-a-day</td><td>alice</td><td>2</td>" in table


def test_an_open_stream_holds_its_lease_until_the_client_goes_away(limited, gateway):
    p = limited([{"name": "one-open", "concurrent": 1}])
    url = "https://api.openai.com/_diag/sse?events=100&interval=0.1"
    with proxy_client(p, ALICE) as c, proxy_client(p, ALICE) as other:
        with c.stream("GET", url) as stream:
            lines = stream.iter_lines()  # kept: a dropped iterator closes the stream
            next(lines)  # the stream is open: its lease is held
            refused = other.get(url)
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
            assert "one-open: 1 open requests at once by user" in refused.text
        # the client went away mid-stream: the lease is released (the proxy's error hook)
        deadline = time.monotonic() + 5
        while (again := other.get("https://api.openai.com/v1/models")).status_code == 429:
            assert time.monotonic() < deadline, "the lease was never released"
            time.sleep(0.1)
        assert again.status_code == 200


async def test_a_paused_redis_costs_requests_little_and_the_store_heals(monkeypatch):
    """Redis stopped with SIGSTOP (it accepts and never answers): after BREAKER_FAILURES
    timeouts the store decides at once without touching Redis, and once Redis answers again
    the background probe closes the breaker."""
    import asyncio
    import signal

    from addons.govern import limit_store
    from addons.govern.limit_store import Ask
    from addons.govern.limit_store import RedisLimitStore
    from addons.govern.limit_store import StoreUnavailable

    monkeypatch.setattr(limit_store, "BREAKER_PROBE", 0.2)
    redis = RedisServer().start()
    store = RedisLimitStore(redis.url)
    asks = [Ask("requests", "w", 100, time.time() + 60)]
    try:
        assert (await store.check_all(asks)).refused is None
        redis.proc.send_signal(signal.SIGSTOP)
        for _ in range(limit_store.BREAKER_FAILURES):
            with pytest.raises(StoreUnavailable):
                await store.check_all(asks)
        assert store.breaker_open
        tried = store.attempts
        for _ in range(50):  # every request decides at once: Redis is not asked
            with pytest.raises(StoreUnavailable, match="retried in the background"):
                await store.check_all(asks)
        assert store.attempts == tried
        redis.proc.send_signal(signal.SIGCONT)
        for _ in range(50):
            if not store.breaker_open:
                break
            await asyncio.sleep(0.1)
        assert not store.breaker_open
        assert (await store.check_all(asks)).refused is None
        # commands that timed out were still in Redis's socket: it ran them when it resumed
        assert await store.used("w") >= 2
    finally:
        redis.proc.send_signal(signal.SIGCONT)
        await store.close()
        redis.stop()


async def test_a_corrupt_counter_starts_again_instead_of_an_outage(caplog):
    import redis.asyncio as aioredis

    from addons.govern.limit_store import KEY_PREFIX
    from addons.govern.limit_store import Ask
    from addons.govern.limit_store import RedisLimitStore

    redis = RedisServer().start()
    store = RedisLimitStore(redis.url)
    raw = aioredis.from_url(redis.url)
    end = time.time() + 60
    try:
        await raw.set(KEY_PREFIX + "w", "lots")
        await raw.set(KEY_PREFIX + "t", "lots")
        await raw.rpush(KEY_PREFIX + "c", "not a lease set")
        asks = [Ask("requests", "w", 3, end), Ask("tokens", "t", 10, end),
                Ask("concurrent", "c", 1, None, "a")]  # fmt: skip
        assert (await store.check_all(asks)).refused is None
        assert await store.used("w") == 1 and await store.held("c") == 1
        assert 0 < await raw.pttl(KEY_PREFIX + "w") <= 120_000  # it expires with its window
        await raw.set(KEY_PREFIX + "t", "lots")
        await store.settle([("t", 5, end)], [], [])
        assert await store.used("t") == 5
        assert sum("held no count" in r.getMessage() for r in caplog.records) == 3  # once each
        assert store.failures == 0 and not store.breaker_open
    finally:
        await raw.aclose()
        await store.close()
        redis.stop()


OPENAI_STREAMS = """
import json, openai
client = openai.OpenAI(max_retries=0)
out = []
for _ in range(3):
    try:
        stream = client.chat.completions.create(model="gpt-test", stream=True,
                                                messages=[{"role": "user", "content": "hi"}])
        out.append({"ok": True, "text": "".join(c.choices[0].delta.content or "" for c in stream if c.choices)})
    except openai.RateLimitError as e:
        out.append({"ok": False, "error": e.message})
print(json.dumps(out))
"""


def test_a_stream_that_reports_no_usage_still_spends_the_budget(limited, gateway):
    """The openai SDK streaming chat without stream_options.include_usage: the gateway reports
    no usage, so the proxy estimates it from the answer (marked so) instead of counting zero."""
    p = limited([{"name": "small-budget", "tokens": 10, "per": "1h"}])
    out = run_python(OPENAI_STREAMS, client_env(p, OPENAI_API_KEY="sk-personal"))
    assert out.returncode == 0, out.stderr
    first, second, third = json.loads(out.stdout)
    assert first["ok"] and first["text"]
    assert not second["ok"] and "small-budget" in second["error"]
    assert not third["ok"]
    line = p.wait_for_line(lambda r: r.get("msg") == "request" and r.get("status") == 200)
    assert line["tokens_estimated"] is True
    assert line["output_tokens"] == -(-len(first["text"]) // 4) and line["input_tokens"] > 0
    assert len(gateway.records) == 1


async def _responses_session(p, sends: int) -> list:
    """One Codex-like WebSocket session: `sends` response.create messages, one after another's
    completion; what each got (its text), then the close (code and reason)."""
    import ssl

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    ctx = ssl.create_default_context(cafile=str(p.ca_path))
    got: list = []
    async with connect("wss://api.openai.com/v1/responses", proxy=p.url(ALICE), ssl=ctx,
                       open_timeout=10) as ws:  # fmt: skip
        try:
            for _ in range(sends):
                await ws.send(json.dumps({"type": "response.create", "model": "m", "input": "hi"}))
                text = ""
                while True:
                    event = json.loads(await ws.recv())
                    if event["type"] == "response.completed":
                        got.append(("ok", text))
                        break
                    text += event.get("delta", "")
            await ws.recv()
        except ConnectionClosed as e:
            got.append(("closed", e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else ""))
    return got


async def test_each_response_create_in_a_websocket_session_counts_as_a_request(limited, gateway):
    p = limited([{"name": "three-a-minute", "requests": 3, "per": "1m"}])
    got = await _responses_session(p, 5)
    assert [kind for kind, *_ in got[:3]] == ["ok", "ok", "ok"], got
    kind, code, reason = got[3]
    assert (kind, code) == ("closed", 1008) and "three-a-minute" in reason
    assert len(gateway.gateway.websocket_messages) == 3  # the refused one never reached it


async def test_a_websocket_sessions_answers_spend_the_token_budget(limited, gateway):
    p = limited([{"name": "ws-budget", "tokens": 10, "per": "1h"}])
    got = await _responses_session(p, 3)
    assert got[0][0] == "ok"
    kind, code, reason = got[1]
    assert (kind, code) == ("closed", 1008) and "ws-budget" in reason


def test_a_dollar_budget_holds_across_two_replicas_with_alerts_once_and_an_audit(limited, gateway):
    """Two replicas counting in one Redis: requests priced at $0.01 each (a `prices:`
    override), a $0.03 budget per day refuses the fourth in the openai SDK's own shape, its
    alerts at 50 % and 100 % are said once each across both replicas, and a $0.015 budget in
    audit mode refuses nothing and records what it would have refused."""
    redis = RedisServer().start()
    try:
        limits = [
            {"name": "daily-dollars", "usd": 0.03, "per": "day", "alerts": [0.5, 1.0]},
            {"name": "audit-dollars", "usd": 0.015, "per": "day", "mode": "audit"},
        ]
        extra = {"limits_store": redis.url, "prices": [{"match": "openai/*", "per_request": 0.01}]}
        replicas = [limited(limits, **extra) for _ in range(2)]
        statuses, errors = [], []
        for i in range(4):
            with proxy_client(replicas[i % 2], ALICE) as c:
                r = c.post("https://api.openai.com/v1/chat/completions",
                           json={"model": "gpt-4o", "messages": []})  # fmt: skip
            statuses.append(r.status_code)
            errors.append(r.json().get("error") if r.status_code != 200 else None)
            time.sleep(0.3)  # the spend is settled once the answer is over
        assert statuses == [200, 200, 200, 429]
        assert errors[3]["code"] == "insufficient_quota" and "daily-dollars" in errors[3]["message"]
        assert "$0.03 per day by user used ($0.03)" in errors[3]["message"]
        assert len(gateway.records) == 3
        said = [ln for p in replicas for ln in p.json_lines() if "reached" in ln.get("msg", "")]
        assert sorted(ln["msg"].split(" reached ")[1].split(" of ")[0] for ln in said) == [
            "100%", "50%"]  # fmt: skip
        alerts = sum(metric(p.admin("/metrics").text, "aibridge_proxy_limit_alerts_total",
                            limit="daily-dollars", share=share)
                     for p in replicas for share in ("0.5", "1"))  # fmt: skip
        assert alerts == 2
        audited = sum(metric(p.admin("/metrics").text, "aibridge_proxy_limit_audit_refusals_total",
                             limit="audit-dollars") for p in replicas)  # fmt: skip
        # the third request (with $0.02 spent, past $0.015) would have been refused, and went
        # through; the fourth was refused by the enforced budget before the audit was asked
        assert audited == 1
    finally:
        redis.stop()
