"""
Whether a Coder token is valid: a cache that never holds raw tokens, and the failure limiter.

`TokenCache` is the only thing the auth addon talks to: it answers from memory when it can,
and makes concurrent first checks of one token share a single request to the gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenVerdict:
    """The outcome of checking one token. `user` is the gateway's name for its owner."""

    valid: bool
    user: str | None = None


class ValidationUnavailable(Exception):
    """The validation service could not give an answer (unreachable, timeout, 5xx)."""


def token_fingerprint(token: str) -> str:
    """The cache key: SHA-256 of the token, so a heap dump holds no usable secret."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


TokenValidator = Callable[[str], Awaitable[TokenVerdict]]


@dataclass
class _Entry:
    verdict: TokenVerdict
    expires: float


class TokenCache:
    """Bounded LRU of verdicts keyed by token fingerprint, with separate TTLs for valid and
    invalid tokens, and one in-flight check per token."""

    def __init__(
        self,
        validator: TokenValidator,
        positive_ttl: float = 300.0,
        negative_ttl: float = 30.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.validator = validator
        self.positive_ttl = positive_ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[TokenVerdict]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def cached(self, token: str) -> TokenVerdict | None:
        """A fresh verdict from memory, or None. Never calls the validator."""
        key = token_fingerprint(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self.clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.verdict

    async def check(self, token: str) -> tuple[TokenVerdict, bool]:
        """Return (verdict, from_cache). Raises ValidationUnavailable; failures are not cached."""
        if (verdict := self.cached(token)) is not None:
            self.hits += 1
            return verdict, True
        self.misses += 1
        key = token_fingerprint(token)
        if fut := self._inflight.get(key):
            return await asyncio.shield(fut), False
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            verdict = await self.validator(token)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        else:
            fut.set_result(verdict)
            self._store(key, verdict)
            return verdict, False
        finally:
            del self._inflight[key]

    def _store(self, key: str, verdict: TokenVerdict) -> None:
        ttl = self.positive_ttl if verdict.valid else self.negative_ttl
        if ttl <= 0:
            return
        self._entries[key] = _Entry(verdict, self.clock() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class FailureLimiter:
    """Counts failures per key in a sliding window (authentication failures per client address;
    connections closed for an HTTP/2 flood per user); once over the threshold the key is
    refused until the window has passed without new failures."""

    def __init__(
        self,
        max_failures: int = 10,
        window: float = 60.0,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_failures = max_failures
        self.window = window
        self.max_clients = max_clients
        self.clock = clock
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def _recent(self, address: str) -> list[float]:
        now = self.clock()
        stamps = [t for t in self._failures.get(address, ()) if now - t < self.window]
        if stamps:
            self._failures[address] = stamps
        else:
            self._failures.pop(address, None)
        return stamps

    def is_blocked(self, address: str) -> bool:
        return self.max_failures > 0 and len(self._recent(address)) >= self.max_failures

    def record_failure(self, address: str) -> None:
        stamps = self._recent(address)
        stamps.append(self.clock())
        self._failures[address] = stamps[-max(self.max_failures, 1) :]
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)
