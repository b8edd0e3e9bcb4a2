"""
Checking a Coder token against the gateway, with a cache that never holds raw tokens.

`TokenCache` is the only thing the auth addon talks to: it answers from memory when it can,
and makes concurrent first checks of one token share a single request to the gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one token. `user` is the gateway's name for its owner."""

    valid: bool
    user: str | None = None


class ValidationUnavailable(Exception):
    """The validation service could not give an answer (unreachable, timeout, 5xx)."""


def verifying_context(cafile: str | None) -> ssl.SSLContext:
    """TLS client context for calls to the gateway: the given bundle, else the system roots."""
    return ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()


def token_fingerprint(token: str) -> str:
    """The cache key: SHA-256 of the token, so a heap dump holds no usable secret."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class GatewayTokenValidator:
    """Asks `GET <url>` with `<header>: <token>`: 200 = valid, 401/403 = invalid.

    Everything else (refused, timeout, 5xx, 429) is `ValidationUnavailable`: the caller
    decides whether that fails closed (default) or open.
    """

    def __init__(
        self,
        url: str,
        header: str,
        ssl_context: ssl.SSLContext | None,
        timeout: float = 10.0,
    ):
        self.url = url
        self.header = header
        self.ssl_context = ssl_context
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                trust_env=False,  # never through environment proxies
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(ssl=self.ssl_context or True, limit=32),
            )
        return self._session

    async def __call__(self, token: str) -> Verdict:
        try:
            async with self._get_session().get(
                self.url, headers={self.header: token}, allow_redirects=False
            ) as resp:
                if resp.status == 200:
                    body = await resp.read()
                    return Verdict(True, _username_from(body))
                if resp.status in (401, 403):
                    return Verdict(False)
                raise ValidationUnavailable(f"{self.url} answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise ValidationUnavailable(f"{self.url} unreachable: {type(e).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _username_from(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict):
        name = data.get("username") or data.get("name")
        if isinstance(name, str) and name.isprintable() and len(name) <= 128:
            return name
    return None


Validator = Callable[[str], Awaitable[Verdict]]


@dataclass
class _Entry:
    verdict: Verdict
    expires: float


class TokenCache:
    """Bounded LRU of verdicts keyed by token fingerprint, with separate TTLs for valid and
    invalid tokens, and one in-flight check per token."""

    def __init__(
        self,
        validator: Validator,
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
        self._inflight: dict[str, asyncio.Future[Verdict]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def cached(self, token: str) -> Verdict | None:
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

    async def check(self, token: str) -> tuple[Verdict, bool]:
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

    def _store(self, key: str, verdict: Verdict) -> None:
        ttl = self.positive_ttl if verdict.valid else self.negative_ttl
        if ttl <= 0:
            return
        self._entries[key] = _Entry(verdict, self.clock() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class FailureLimiter:
    """Counts authentication failures per client address in a sliding window; once over the
    threshold the address is refused until the window has passed without new failures."""

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
