"""
Where limits are counted: in this process's memory (one replica, one worker), or in one Redis
that every replica and worker shares, with atomic scripts so that two replicas count exactly
together (four requests split 2 + 2 against a limit of 3: the fourth is refused).

Three operations, one per kind of limit:
- `take`: a window counter (requests), incremented only while under the limit; a window's key
  expires on its own shortly after the window ends;
- `used` / `add`: a token budget, read before a request is sent and added to after it;
- `acquire` / `release` / `renew`: leases for open requests and streams, each with an expiry
  that a heartbeat renews, so that a worker that dies leaks nothing for longer than LEASE_TTL.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

LEASE_TTL = 30.0  # seconds a lease lives without a heartbeat (a dead worker's are gone by then)
KEY_PREFIX = "aibridge:limit:"
_SLACK = 60  # seconds a window's key outlives its window (clock skew between replicas)


class StoreUnavailable(RuntimeError):
    """The shared store cannot be reached (limits.on_store_error decides)."""


@dataclass(frozen=True)
class Count:
    allowed: bool
    used: int  # after this request, if allowed; what was already used, if not
    reset_at: float | None = None  # when the counter goes (None: a lease set, no window)


class MemoryLimitStore:
    """Counts in this process: exact for one worker of one replica."""

    def __init__(self) -> None:
        self._counters: dict[str, tuple[int, float]] = {}  # key -> (count, expires)
        self._leases: dict[str, dict[str, float]] = {}  # key -> {lease id: expires}

    def _live(self, key: str, now: float) -> int:
        found = self._counters.get(key)
        if found is None or found[1] <= now:
            self._counters.pop(key, None)
            return 0
        return found[0]

    def _sweep(self, now: float) -> None:
        if len(self._counters) > 10_000:  # old windows: drop what expired
            for key in [k for k, (_, exp) in self._counters.items() if exp <= now]:
                del self._counters[key]

    async def take(self, key: str, limit: int, expires: float) -> Count:
        now = time.time()
        used = self._live(key, now)
        if used >= limit:
            return Count(False, used, expires)
        self._sweep(now)
        self._counters[key] = (used + 1, expires)
        return Count(True, used + 1, expires)

    async def give_back(self, key: str) -> None:
        found = self._counters.get(key)
        if found is not None and found[0] > 0:
            self._counters[key] = (found[0] - 1, found[1])

    async def used(self, key: str) -> int:
        return self._live(key, time.time())

    async def add(self, key: str, amount: int, expires: float) -> None:
        used = self._live(key, time.time())
        self._counters[key] = (used + amount, expires)

    async def acquire(self, key: str, limit: int, lease: str) -> Count:
        now = time.time()
        held = {k: exp for k, exp in self._leases.get(key, {}).items() if exp > now}
        if len(held) >= limit:
            self._leases[key] = held
            return Count(False, len(held), min(held.values()))
        held[lease] = now + LEASE_TTL
        self._leases[key] = held
        return Count(True, len(held))

    async def held(self, key: str) -> int:
        now = time.time()
        return sum(1 for exp in self._leases.get(key, {}).values() if exp > now)

    async def release(self, key: str, lease: str) -> None:
        held = self._leases.get(key)
        if held is not None:
            held.pop(lease, None)
            if not held:
                del self._leases[key]

    async def renew(self, leases: list[tuple[str, str]]) -> None:
        expires = time.time() + LEASE_TTL
        for key, lease in leases:
            if lease in self._leases.get(key, {}):
                self._leases[key][lease] = expires

    async def close(self) -> None:
        pass


# KEYS[1] the window's counter; ARGV: limit, expiry (unix ms)
_TAKE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then return {0, used} end
used = redis.call('INCR', KEYS[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return {1, used}
"""
# KEYS[1] the tokens counter; ARGV: amount, expiry (unix ms)
_ADD = """
local used = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return used
"""
# KEYS[1] the lease set; ARGV: limit, now (ms), lease id, ttl (ms)
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[1]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, held, tonumber(first[2])}
end
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[4]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, held + 1, 0}
"""
_GIVE_BACK = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used > 0 then redis.call('DECR', KEYS[1]) end
return 0
"""


class RedisLimitStore:
    """Counts in Redis: every replica and worker that names the same store counts together."""

    def __init__(self, url: str):
        import redis.asyncio as aioredis
        import redis.exceptions
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        # one retry on a fresh connection: after Redis restarts, pooled connections are stale
        self.client = aioredis.from_url(
            url,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[redis.exceptions.ConnectionError],
        )
        self._take = self.client.register_script(_TAKE)
        self._add = self.client.register_script(_ADD)
        self._acquire = self.client.register_script(_ACQUIRE)
        self._give_back = self.client.register_script(_GIVE_BACK)

    async def _call(self, script, keys, args):
        import redis.exceptions

        try:
            return await script(keys=[KEY_PREFIX + k for k in keys], args=args)
        except (redis.exceptions.RedisError, OSError) as e:
            raise StoreUnavailable(f"{type(e).__name__}") from None

    async def take(self, key: str, limit: int, expires: float) -> Count:
        ms = int((expires + _SLACK) * 1000)
        allowed, used = await self._call(self._take, [key], [limit, ms])
        return Count(bool(allowed), int(used), expires)

    async def give_back(self, key: str) -> None:
        await self._call(self._give_back, [key], [])

    async def used(self, key: str) -> int:
        import redis.exceptions

        try:
            value = await self.client.get(KEY_PREFIX + key)
        except (redis.exceptions.RedisError, OSError) as e:
            raise StoreUnavailable(type(e).__name__) from None
        return int(value or 0)

    async def add(self, key: str, amount: int, expires: float) -> None:
        await self._call(self._add, [key], [amount, int((expires + _SLACK) * 1000)])

    async def acquire(self, key: str, limit: int, lease: str) -> Count:
        now_ms = int(time.time() * 1000)
        allowed, held, first = await self._call(
            self._acquire, [key], [limit, now_ms, lease, int(LEASE_TTL * 1000)]
        )
        return Count(bool(allowed), int(held), (int(first) / 1000) if not allowed else None)

    async def held(self, key: str) -> int:
        import redis.exceptions

        try:
            return int(await self.client.zcount(KEY_PREFIX + key, time.time() * 1000, "+inf"))
        except (redis.exceptions.RedisError, OSError) as e:
            raise StoreUnavailable(type(e).__name__) from None

    async def release(self, key: str, lease: str) -> None:
        import redis.exceptions

        try:
            await self.client.zrem(KEY_PREFIX + key, lease)
        except (redis.exceptions.RedisError, OSError) as e:
            raise StoreUnavailable(type(e).__name__) from None

    async def renew(self, leases: list[tuple[str, str]]) -> None:
        import redis.exceptions

        if not leases:
            return
        expires = int((time.time() + LEASE_TTL) * 1000)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, lease in leases:
                    pipe.zadd(KEY_PREFIX + key, {lease: expires}, xx=True)
                    pipe.pexpire(KEY_PREFIX + key, int(LEASE_TTL * 1000))
                await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as e:
            raise StoreUnavailable(type(e).__name__) from None

    async def close(self) -> None:
        await self.client.aclose()
