"""
Which profile each (user, workspace) chose, in one of two stores behind one interface
(`ProfileStore`): a JSON file in the state directory (`ProfileChoices`), so that a choice
survives restarts and every worker process sees it (each re-reads the file when it changes;
writes are atomic renames); or, where several replicas must share them, Redis, through its
maintained client (`profile_store: redis://host:6379/0`). Every replica keeps the choices in memory and
reads them from there on the hot path; a choice made on one replica is written to a Redis hash
and announced on a channel, so the others pick it up at once (and re-read the whole hash every
few seconds, in case an announcement was missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Protocol

import redis.asyncio as aioredis
import redis.exceptions

from addons.rules.profile_choices import check_room
from addons.rules.profile_choices import choice_key

logger = logging.getLogger(__name__)

HASH = "aibridge-proxy:profile-choices"
CHANNEL = "aibridge-proxy:profile-choices:changed"


class ProfileStore(Protocol):
    def get(self, user: str | None, workspace: str | None) -> str | None: ...

    async def set(self, user: str, workspace: str | None, profile: str | None) -> None: ...


class ProfileChoices:
    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._choices: dict[str, str] = {}

    def _fresh(self) -> dict[str, str]:
        if self.path is None:
            return self._choices
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._choices = None, {}
            return self._choices
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                data = {}
            self._choices = {k: v for k, v in data.items() if isinstance(v, str)}
            self._stamp = stamp
        return self._choices

    def get(self, user: str | None, workspace: str | None) -> str | None:
        if not user:
            return None
        return self._fresh().get(choice_key(user, workspace))

    async def set(self, user: str, workspace: str | None, profile: str | None) -> None:
        self.write(user, workspace, profile)

    def write(self, user: str, workspace: str | None, profile: str | None) -> None:
        with self._lock:
            choices = dict(self._fresh())
            key = choice_key(user, workspace)
            if profile is None:
                choices.pop(key, None)
            else:
                check_room(choices, user, workspace)
                choices[key] = profile
            self._choices = choices
            if self.path is not None:
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
                tmp.write_text(json.dumps(choices, sort_keys=True))
                os.replace(tmp, self.path)
                self._stamp = None  # re-read: another worker may write next


class RedisProfileChoices:
    """The same interface as ProfileChoices: get() from memory, set() through Redis."""

    def __init__(self, url: str, refresh: float = 5.0):
        self.url = url
        self.refresh = refresh
        self._choices: dict[str, str] = {}
        # bytes, decoded entry by entry: one value that is not UTF-8 must not stop following
        self._client = aioredis.from_url(url)
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
            check_room(self._choices, user, workspace)
            await self._client.hset(HASH, key, profile)
            self._choices[key] = profile
        await self._client.publish(CHANNEL, key)

    async def load(self) -> None:
        choices = {}
        for raw_key, raw_value in (await self._client.hgetall(HASH)).items():
            key, value = _text(raw_key), _text(raw_value)
            if key is not None and value is not None:
                choices[key] = value
        self._choices = choices

    async def _update(self, raw_key: bytes) -> None:
        key = _text(raw_key)
        if key is None:
            return
        value = _text(await self._client.hget(HASH, key))
        if value is None:
            self._choices.pop(key, None)
        else:
            self._choices[key] = value

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
                            await self._update(message["data"])
                        else:
                            await self.load()
            except (redis.exceptions.RedisError, OSError) as e:
                logger.warning("profile store unavailable (%s); retrying", type(e).__name__)
                await asyncio.sleep(2)
            except asyncio.CancelledError:
                raise
            except Exception:  # never stop following: say why, and start over
                logger.exception("profile store: following Redis failed; retrying")
                await asyncio.sleep(2)


def _text(raw: bytes | str | None) -> str | None:
    """A Redis value as text, or None when it is absent or not UTF-8 (skipped)."""
    if raw is None or isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        logger.warning("profile store: skipped an entry that is not UTF-8")
        return None
