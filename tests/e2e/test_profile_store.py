"""Profile choices shared by two replicas through a real Redis: a developer switches through
one replica, and the next request through the other follows it, also after a restart."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from tests.support import ALICE
from tests.support import RedisServer
from tests.support import ThreadedGateway
from tests.support import base_env
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
        r = subprocess.run(
            [sys.executable, "-m", "proxy", "profile", "use", "elsewhere"],
            env={**base_env(), "HTTPS_PROXY": url, "HTTP_PROXY": url},
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
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
