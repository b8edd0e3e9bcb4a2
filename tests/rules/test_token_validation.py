from __future__ import annotations

import asyncio

import pytest

from addons.rules.token_validation import FailureLimiter
from addons.rules.token_validation import TokenCache
from addons.rules.token_validation import TokenVerdict
from addons.rules.token_validation import ValidationUnavailable
from addons.rules.token_validation import token_fingerprint


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class FakeValidator:
    def __init__(self, valid=("good",), delay=0.0, fail=False):
        self.valid = set(valid)
        self.calls = []
        self.delay = delay
        self.fail = fail

    async def __call__(self, token):
        self.calls.append(token)
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ValidationUnavailable("down")
        return TokenVerdict(token in self.valid, "alice" if token in self.valid else None)


async def test_positive_and_negative_ttl():
    clock, v = Clock(), FakeValidator()
    cache = TokenCache(v, positive_ttl=300, negative_ttl=30, clock=clock)
    assert (await cache.check("good")) == (TokenVerdict(True, "alice"), False)
    assert (await cache.check("good")) == (TokenVerdict(True, "alice"), True)
    assert (await cache.check("bad"))[0].valid is False
    clock.now += 31
    await cache.check("bad")
    await cache.check("good")
    assert v.calls == ["good", "bad", "bad"]
    clock.now += 300
    await cache.check("good")
    assert v.calls[-1] == "good" and cache.hits == 2


async def test_no_raw_tokens_kept():
    cache = TokenCache(FakeValidator(valid=("s3cret-token",)))
    await cache.check("s3cret-token")
    assert list(cache._entries) == [token_fingerprint("s3cret-token")]
    assert "s3cret-token" not in repr(cache.__dict__)


async def test_lru_bound():
    v = FakeValidator(valid=[f"t{i}" for i in range(10)])
    cache = TokenCache(v, max_entries=3)
    for i in range(5):
        await cache.check(f"t{i}")
    assert len(cache) == 3
    await cache.check("t4")  # still cached
    await cache.check("t0")  # evicted earlier
    assert v.calls.count("t0") == 2 and v.calls.count("t4") == 1


async def test_concurrent_checks_share_one_call():
    v = FakeValidator(delay=0.05)
    cache = TokenCache(v)
    results = await asyncio.gather(*(cache.check("good") for _ in range(50)))
    assert v.calls == ["good"]
    assert all(r[0].valid for r in results)


async def test_failures_are_not_cached_and_reach_every_waiter():
    v = FakeValidator(delay=0.02, fail=True)
    cache = TokenCache(v)
    results = await asyncio.gather(*(cache.check("good") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, ValidationUnavailable) for r in results)
    v.fail = False
    assert (await cache.check("good"))[0].valid
    assert len(v.calls) == 2


def test_failure_limiter():
    clock = Clock()
    lim = FailureLimiter(max_failures=3, window=60, clock=clock)
    for _ in range(3):
        assert not lim.is_blocked("10.0.0.1")
        lim.record_failure("10.0.0.1")
    assert lim.is_blocked("10.0.0.1")
    assert not lim.is_blocked("10.0.0.2")
    clock.now += 61
    assert not lim.is_blocked("10.0.0.1")
    assert FailureLimiter(max_failures=0).is_blocked("x") is False


def test_failure_limiter_is_bounded():
    lim = FailureLimiter(max_failures=2, max_clients=100)
    for i in range(1000):
        lim.record_failure(f"10.0.{i // 256}.{i % 256}")
    assert len(lim._failures) == 100


@pytest.mark.parametrize("ttl", [0])
async def test_zero_ttl_disables_caching(ttl):
    v = FakeValidator()
    cache = TokenCache(v, positive_ttl=ttl, negative_ttl=ttl)
    await cache.check("good")
    await cache.check("good")
    assert v.calls == ["good", "good"]
