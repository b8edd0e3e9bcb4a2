"""
Where limits are counted: in this process's memory (one replica, one worker), or in one Redis
that every replica and worker shares, with atomic scripts so that two replicas count exactly
together (four requests split 2 + 2 against a limit of 3: the fourth is refused).

- `check_all`: every limit a request counts against, in one call (one Lua script in Redis),
  all or nothing: window counters (requests) incremented, token budgets read, a lease added
  per open-request cap; or, if one does not fit, nothing taken at all. A window's key expires
  on its own shortly after the window ends.
- `settle`, once a request is over, in one round trip: a token budget's use added, the counts
  of a request the proxy refused after all given back (a rule's deny, a bad path), its leases
  released. `renew`: a heartbeat renews the open leases, so a worker that dies leaks nothing
  for longer than LEASE_TTL.
- `used` / `held`: what the developer page shows; `usage`: every counter of one limit, for the
  usage gauges in /metrics (bounded: at most USAGE_KEYS subjects a limit).

Redis trouble costs a request little: each command has a short timeout, and after
BREAKER_FAILURES failures in a row the store is taken as unavailable at once (no request waits
on it) until a background PING answers again, tried every BREAKER_PROBE seconds. A counter
that holds something else than a number (a wrong type, garbage) is corrupt, not an outage: it
starts again at zero with its window's expiry, logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

logger = logging.getLogger(__name__)

LEASE_TTL = 30.0  # seconds a lease lives without a heartbeat (a dead worker's are gone by then)
KEY_PREFIX = "aibridge:limit:"
USAGE_KEYS = 10_000  # counters read per limit for the usage gauges (the rest are not shown)
_SLACK = 60  # seconds a window's key outlives its window (clock skew between replicas)
COMMAND_TIMEOUT = 0.25  # seconds one Redis command may take (Redis answers in well under 1 ms)
BREAKER_FAILURES = 3  # failures in a row that open the breaker
BREAKER_PROBE = 1.0  # seconds between the background PINGs while it is open


class StoreUnavailable(RuntimeError):
    """The shared store cannot be reached (limits.on_store_error decides)."""


@dataclass(frozen=True)
class Ask:
    """One counter a request must fit in: a window (requests), a budget (tokens, read only
    here) or a lease set (open requests, `lease` the new one's id)."""

    kind: str  # requests, tokens or concurrent
    key: str
    amount: int
    expires: float | None  # when a window's counter goes; None for leases
    lease: str = ""


@dataclass(frozen=True)
class Fit:
    refused: int | None  # the index of the first ask that does not fit; None: all taken
    used: int = 0  # what that one had used
    reset_at: float | None = None  # for a lease set: when its oldest lease expires


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

    async def check_all(self, asks: list[Ask]) -> Fit:
        """All of them or none: the first that does not fit refuses, and nothing is taken."""
        now = time.time()
        for i, ask in enumerate(asks):
            if ask.kind == "concurrent":
                held = [exp for exp in self._leases.get(ask.key, {}).values() if exp > now]
                if len(held) >= ask.amount:
                    return Fit(i, len(held), min(held))
            elif (used := self._live(ask.key, now)) >= ask.amount:
                return Fit(i, used)
        self._sweep(now)
        for ask in asks:
            if ask.kind == "requests":
                self._counters[ask.key] = (self._live(ask.key, now) + 1, ask.expires)
            elif ask.kind == "concurrent":
                held = {k: e for k, e in self._leases.get(ask.key, {}).items() if e > now}
                held[ask.lease] = now + LEASE_TTL
                self._leases[ask.key] = held
        return Fit(None)

    async def settle(self, adds: list[tuple[str, int, float]], give_backs: list[str],
                     releases: list[tuple[str, str]]) -> dict[str, int]:  # fmt: skip
        """A request is over: tokens (or micro-dollars) added, a refused request's counts
        given back, leases released. The budgets' totals after the adds."""
        now = time.time()
        totals = {}
        for key, amount, expires in adds:
            self._counters[key] = (self._live(key, now) + amount, expires)
            totals[key] = self._counters[key][0]
        for key in give_backs:
            found = self._counters.get(key)
            if found is not None and found[0] > 0:
                self._counters[key] = (found[0] - 1, found[1])
        for key, lease in releases:
            held = self._leases.get(key)
            if held is not None:
                held.pop(lease, None)
                if not held:
                    del self._leases[key]
        return totals

    async def used(self, key: str) -> int:
        return self._live(key, time.time())

    async def held(self, key: str) -> int:
        now = time.time()
        return sum(1 for exp in self._leases.get(key, {}).values() if exp > now)

    async def usage(self, prefix: str, leases: bool) -> dict[str, int]:
        """Every live counter (or lease set) whose key starts with `prefix`, with its use."""
        now = time.time()
        if leases:
            counts = ((k, sum(1 for e in held.values() if e > now))
                      for k, held in self._leases.items() if k.startswith(prefix))  # fmt: skip
        else:
            counts = ((k, c) for k, (c, exp) in self._counters.items()
                      if exp > now and k.startswith(prefix))  # fmt: skip
        return dict(itertools.islice(((k, n) for k, n in counts if n), USAGE_KEYS))

    async def renew(self, leases: list[tuple[str, str]]) -> None:
        expires = time.time() + LEASE_TTL
        for key, lease in leases:
            if lease in self._leases.get(key, {}):
                self._leases[key][lease] = expires

    async def close(self) -> None:
        pass


# All of a request's asks at once, atomically. KEYS: the counters; ARGV: now (ms), lease ttl
# (ms), then per key: kind (r, t, c), amount, expiry (unix ms, windows), lease id (leases).
_CHECK_ALL = """
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local reset = {}
for i = 1, #KEYS do
  local kind, amount = ARGV[4 * i - 1], tonumber(ARGV[4 * i])
  if kind == 'c' then
    local swept = redis.pcall('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    if type(swept) == 'table' and swept.err then  -- not a lease set: corrupt, start again
      redis.call('DEL', KEYS[i])
      table.insert(reset, KEYS[i])
    end
    local held = redis.call('ZCARD', KEYS[i])
    if held >= amount then
      local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
      return {i, held, tonumber(first[2]), reset}
    end
  else
    local raw = redis.pcall('GET', KEYS[i])
    local used = tonumber(raw or '0')
    if (type(raw) == 'table' and raw.err) or used == nil then  -- corrupt: start again
      redis.call('DEL', KEYS[i])
      table.insert(reset, KEYS[i])
      used = 0
    end
    if used >= amount then return {i, used, 0, reset} end
  end
end
for i = 1, #KEYS do
  local kind = ARGV[4 * i - 1]
  if kind == 'r' then
    redis.call('INCR', KEYS[i])
    redis.call('PEXPIREAT', KEYS[i], ARGV[4 * i + 1])
  elseif kind == 'c' then
    redis.call('ZADD', KEYS[i], now + ttl, ARGV[4 * i + 2])
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return {0, 0, 0, reset}
"""
_GIVE_BACK = """
local used = tonumber(redis.pcall('GET', KEYS[1]) or '0')
if used ~= nil and used > 0 then redis.call('DECR', KEYS[1]) end
return 0
"""
# A budget's use added: a corrupt counter (not a number) starts again from this amount.
_ADD = """
local total = redis.pcall('INCRBY', KEYS[1], ARGV[1])
if type(total) == 'table' and total.err then
  redis.call('DEL', KEYS[1])
  total = redis.call('INCRBY', KEYS[1], ARGV[1])
end
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return total
"""


class RedisLimitStore:
    """Counts in Redis: every replica and worker that names the same store counts together."""

    def __init__(self, url: str):
        self.url = url
        # one retry on a fresh connection: after Redis restarts, pooled connections are stale
        self.client = aioredis.from_url(
            url,
            socket_timeout=COMMAND_TIMEOUT,
            socket_connect_timeout=COMMAND_TIMEOUT,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[redis.exceptions.ConnectionError],
        )
        self._give_back = self.client.register_script(_GIVE_BACK)
        self._check_all = self.client.register_script(_CHECK_ALL)
        self._add = self.client.register_script(_ADD)
        self.failures = 0  # in a row
        self.attempts = 0  # commands tried (what the breaker spares Redis, in tests)
        self._probe: asyncio.Task | None = None
        self._reported: set[str] = set()  # corrupt counters already logged

    @property
    def breaker_open(self) -> bool:
        return self._probe is not None

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        """Any failure to reach Redis is StoreUnavailable (limits_on_store_error decides); so
        is every call while the breaker is open, at once."""
        if self._probe is not None:
            raise StoreUnavailable("the limits store is failing (retried in the background)")
        self.attempts += 1
        try:
            yield
        except (redis.exceptions.RedisError, OSError) as e:
            self.failures += 1
            if self.failures >= BREAKER_FAILURES and self._probe is None:
                logger.warning("limits store %s failed %d times in a row (%s): deciding at "
                               "once until it answers", self._safe_url(), self.failures,
                               type(e).__name__)  # fmt: skip
                self._probe = asyncio.get_running_loop().create_task(self._probe_until_back())
            raise StoreUnavailable(type(e).__name__) from None
        self.failures = 0

    async def _probe_until_back(self) -> None:
        while True:
            await asyncio.sleep(BREAKER_PROBE)
            try:
                await self.client.ping()
            except (redis.exceptions.RedisError, OSError):
                continue
            logger.info("limits store %s answers again", self._safe_url())
            self.failures = 0
            self._probe = None
            return

    def _safe_url(self) -> str:
        return self.url.split("@")[-1]  # never a password

    def _corrupt(self, keys) -> None:
        for key in keys or ():
            key = key.decode() if isinstance(key, bytes) else key
            if key not in self._reported:
                self._reported.add(key)
                logger.warning("limits store: the counter %s held no count; started again "
                               "from zero", key.removeprefix(KEY_PREFIX))  # fmt: skip

    async def check_all(self, asks: list[Ask]) -> Fit:
        """One round trip for all of a request's limits, all or nothing."""
        args: list = [int(time.time() * 1000), int(LEASE_TTL * 1000)]
        for ask in asks:
            expiry = int((ask.expires + _SLACK) * 1000) if ask.expires is not None else 0
            args += [ask.kind[0], ask.amount, expiry, ask.lease or "-"]
        with self._unavailable():
            keys = [KEY_PREFIX + a.key for a in asks]
            index, used, first, reset = await self._check_all(keys=keys, args=args)
        self._corrupt(reset)
        if not index:
            return Fit(None)
        return Fit(int(index) - 1, int(used), int(first) / 1000 if first else None)

    async def settle(self, adds: list[tuple[str, int, float]], give_backs: list[str],
                     releases: list[tuple[str, str]]) -> dict[str, int]:  # fmt: skip
        """One round trip, once a request is over; the budgets' totals after the adds (each
        INCRBY's own answer: two replicas never see the same total)."""
        with self._unavailable():
            async with self.client.pipeline(transaction=False) as pipe:
                for key, amount, expires in adds:
                    expiry = int((expires + _SLACK) * 1000)
                    await self._add(keys=[KEY_PREFIX + key], args=[amount, expiry], client=pipe)
                for key in give_backs:
                    await self._give_back(keys=[KEY_PREFIX + key], client=pipe)
                for key, lease in releases:
                    pipe.zrem(KEY_PREFIX + key, lease)
                answers = await pipe.execute()
        return {key: _count(total) for (key, _, _), total in zip(adds, answers, strict=False)}

    async def used(self, key: str) -> int:
        with self._unavailable():
            raw = await self.client.get(KEY_PREFIX + key)
        return _count(raw)

    async def held(self, key: str) -> int:
        with self._unavailable():
            return int(await self.client.zcount(KEY_PREFIX + key, time.time() * 1000, "+inf"))

    async def usage(self, prefix: str, leases: bool) -> dict[str, int]:
        """SCAN for the prefix (names hold no glob characters), then one pipeline of reads."""
        now_ms = time.time() * 1000
        with self._unavailable():
            keys = []
            async for key in self.client.scan_iter(match=f"{KEY_PREFIX}{prefix}*", count=1000):
                keys.append(key.decode() if isinstance(key, bytes) else key)
                if len(keys) >= USAGE_KEYS:
                    break
            if not keys:
                return {}
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    if leases:
                        pipe.zcount(key, now_ms, "+inf")
                    else:
                        pipe.get(key)
                values = await pipe.execute()
        counts = {
            key.removeprefix(KEY_PREFIX): _count(v) for key, v in zip(keys, values, strict=True)
        }
        return {key: n for key, n in counts.items() if n}

    async def renew(self, leases: list[tuple[str, str]]) -> None:
        if not leases:
            return
        expires = int((time.time() + LEASE_TTL) * 1000)
        with self._unavailable():
            async with self.client.pipeline(transaction=False) as pipe:
                for key, lease in leases:
                    pipe.zadd(KEY_PREFIX + key, {lease: expires}, xx=True)
                    pipe.pexpire(KEY_PREFIX + key, int(LEASE_TTL * 1000))
                await pipe.execute()

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self.client.aclose()


def _count(raw) -> int:
    """A counter's value; a corrupt one (the next check resets it) counts as nothing."""
    try:
        return int(raw or 0)
    except (TypeError, ValueError):
        return 0
