"""Profile choices shared by two replicas through a real Redis: a developer switches through
one replica, and the next request through the other follows it, also after a restart."""

from __future__ import annotations

import time

import pytest
import yaml

from tests.support import ALICE
from tests.support import RedisServer
from tests.support import ThreadedGateway
from tests.support import cli
from tests.support import proxy_client


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


def test_two_replicas_share_a_profile_choice(make_proxy, gateway, redis_server, tmp_path):
    other = ThreadedGateway().start()
    try:
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({
            "gateways": {"coder": {"url": gateway.url}, "other": {"url": other.url}},
            "profiles": {"elsewhere": [{"name": "to-other", "match": {},
                                        "route": {"gateway": "other", "provider": "openai"}}]},
        }))  # fmt: skip
        args = ("--config", str(config), "--profile-store", redis_server.url)
        a, b = make_proxy(*args, gateway=""), make_proxy(*args, gateway="")
        url = a.url(ALICE, user="ws-1")
        r = cli("profile", "use", "elsewhere", env={"HTTPS_PROXY": url, "HTTP_PROXY": url})
        assert r.returncode == 0, r.stderr
        deadline, routed = time.monotonic() + 5, False
        while not routed and time.monotonic() < deadline:
            with proxy_client(b, user="ws-1") as c:
                c.post("https://api.openai.com/v1/chat/completions", json={"model": "m"})
            routed = bool(other.records)
            time.sleep(0.1)
        assert routed  # replica b follows the choice made through replica a
        with proxy_client(b, user="ws-2") as c:  # another workspace is not affected
            c.post("https://api.openai.com/v1/chat/completions", json={"model": "m"})
        assert gateway.last().path == "/api/v2/aibridge/openai/v1/chat/completions"
        b.stop()
        b.start()
        count = len(other.records)
        with proxy_client(b, user="ws-1") as c:
            c.post("https://api.openai.com/v1/chat/completions", json={"model": "m"})
        assert len(other.records) == count + 1  # kept in Redis, not in the replica
    finally:
        other.stop()


async def test_a_value_that_is_not_utf8_is_skipped_and_following_goes_on(redis_server, caplog):
    """One bad entry in the choices hash killed the follower task silently: the replica
    stopped following, with no log line and no recovery."""
    import asyncio

    import redis.asyncio as aioredis

    from addons.routing.profile_store import CHANNEL
    from addons.routing.profile_store import HASH
    from addons.routing.profile_store import RedisProfileChoices

    writer = aioredis.from_url(redis_server.url)
    await writer.hset(HASH, "mallory/ws", b"\xff\xfe not text")
    await writer.hset(HASH, "alice/ws", "fast")
    replica = RedisProfileChoices(redis_server.url, refresh=0.2)
    replica.start()
    try:
        for _ in range(50):
            if replica.get("alice", "ws") == "fast":
                break
            await asyncio.sleep(0.05)
        assert replica.get("alice", "ws") == "fast"  # the good entry is read
        assert replica.get("mallory", "ws") is None  # the bad one skipped
        await writer.hset(HASH, "bob/ws", b"\xc3\x28")  # another bad one, announced
        await writer.publish(CHANNEL, "bob/ws")
        await writer.hset(HASH, "carol/ws", "careful")
        await writer.publish(CHANNEL, "carol/ws")
        for _ in range(50):
            if replica.get("carol", "ws") == "careful":
                break
            await asyncio.sleep(0.05)
        assert replica.get("carol", "ws") == "careful"  # still following
        assert "not UTF-8" in caplog.text
    finally:
        await replica.close()
        await writer.aclose()
