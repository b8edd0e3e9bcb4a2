"""
Where profile choices live when several replicas must share them: Redis, through its maintained
client (`profile_store: redis://host:6379/0`). Every replica keeps the choices in memory and
reads them from there on the hot path; a choice made on one replica is written to a Redis hash
and announced on a channel, so the others pick it up at once (and re-read the whole hash every
few seconds, in case an announcement was missed). Without Redis, choices are a file in the
state directory (addons/rules/profile_choices.py), shared by the workers of one replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
import redis.exceptions

from addons.rules.profile_choices import choice_key

logger = logging.getLogger(__name__)

HASH = "aibridge-proxy:profile-choices"
CHANNEL = "aibridge-proxy:profile-choices:changed"


class RedisProfileChoices:
    """The same interface as ProfileChoices: get() from memory, set() through Redis."""

    def __init__(self, url: str, refresh: float = 5.0):
        self.url = url
        self.refresh = refresh
        self._choices: dict[str, str] = {}
        self._client = aioredis.from_url(url, decode_responses=True)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    def get(self, user: str | None, workspace: str | None) -> str | None:
        return self._choices.get(choice_key(user, workspace)) if user else None

    async def set(self, user: str, workspace: str | None, profile: str | None) -> None:
        key = choice_key(user, workspace)
        if profile is None:
            await self._client.hdel(HASH, key)
            self._choices.pop(key, None)
        else:
            await self._client.hset(HASH, key, profile)
            self._choices[key] = profile
        await self._client.publish(CHANNEL, key)

    async def load(self) -> None:
        self._choices = await self._client.hgetall(HASH)

    async def _follow(self) -> None:
        while True:
            try:
                await self.load()
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=self.refresh
                        )
                        if message is not None:
                            key = message["data"]
                            value = await self._client.hget(HASH, key)
                            if value is None:
                                self._choices.pop(key, None)
                            else:
                                self._choices[key] = value
                        else:
                            await self.load()
            except (redis.exceptions.RedisError, OSError) as e:
                logger.warning("profile store unavailable (%s); retrying", type(e).__name__)
                await asyncio.sleep(2)
