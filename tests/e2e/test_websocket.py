"""WebSocket on routed hosts, with a real WebSocket client (websockets): carried to a gateway
that speaks it, frames both ways, close codes through; 426 from one that does not."""

from __future__ import annotations

import asyncio
import json
import ssl
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.exceptions import InvalidStatus

from tests.support import ALICE
from tests.support import ThreadedGateway


def ws_connect(p, url: str, token: str = ALICE, headers=None):
    ctx = ssl.create_default_context(cafile=str(p.ca_path))
    return connect(
        url, proxy=p.url(token), ssl=ctx, additional_headers=headers or {}, open_timeout=10
    )


async def test_frames_both_ways_and_close_code(proxy, gateway):
    async with ws_connect(
        proxy, "wss://api.openai.com/_diag/ws?x=1", headers={"Authorization": "Bearer sk-own"}
    ) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01binary")
        assert await ws.recv() == b"\x00\x01binary"
        started = time.monotonic()
        for i in range(20):  # each message crosses on its own, not batched
            await ws.send(f"m{i}")
            assert await ws.recv() == f"m{i}"
        assert time.monotonic() - started < 5
        await ws.send("close:4321")
        with pytest.raises(ConnectionClosed) as e:
            await ws.recv()
    assert e.value.rcvd.code == 4321 and e.value.rcvd.reason == "bye"
    rec = gateway.records[0]
    assert rec.path == "/api/v2/aibridge/openai/_diag/ws" and rec.query == "x=1"
    assert rec.header("Authorization") == "Bearer sk-own"
    assert rec.header("X-Coder-AI-Governance-Token") == ALICE
    assert rec.header("X-Coder-AI-Governance-Request-Id")


async def test_client_close_code_reaches_the_gateway(proxy, gateway):
    async with ws_connect(proxy, "wss://api.openai.com/_diag/ws") as ws:
        await ws.send("ping")
        await ws.recv()
        await ws.close(code=4000, reason="client done")
    for _ in range(100):
        if 4000 in gateway.gateway.websocket_closes:
            break
        await asyncio.sleep(0.05)
    assert 4000 in gateway.gateway.websocket_closes


async def test_responses_over_websocket(proxy, gateway):
    async with ws_connect(proxy, "wss://api.openai.com/v1/responses") as ws:
        await ws.send(json.dumps({"type": "response.create", "model": "m", "input": "hi"}))
        text = ""
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == "response.completed":
                break
            text += event.get("delta", "")
    assert text == "Hello from the aibridge-proxy local gateway."


@pytest.fixture
def refusing_gateway():
    gw = ThreadedGateway(websocket=False).start()
    yield gw
    gw.stop()


async def test_gateway_without_websocket_gives_426_then_remembers(make_proxy, refusing_gateway):
    p = make_proxy(gateway=refusing_gateway.url)
    for _ in range(3):
        with pytest.raises(InvalidStatus) as e:
            async with ws_connect(p, "wss://api.openai.com/v1/responses"):
                pass
        assert e.value.response.status_code == 426
        assert b"use HTTPS" in e.value.response.body
    # only the first upgrade reached the gateway; the others were answered from memory
    upgrades = [r for r in refusing_gateway.records if r.header("Upgrade")]
    assert len(upgrades) == 1
    # other routes are still tried, and plain HTTPS still works
    with pytest.raises(InvalidStatus):
        async with ws_connect(p, "wss://api.openai.com/_diag/ws"):
            pass
    assert len([r for r in refusing_gateway.records if r.header("Upgrade")]) == 2


async def test_auth_failures_pass_through_unchanged(make_proxy, gateway):
    p = make_proxy("--auth-mode", "presence")
    for _ in range(2):
        with pytest.raises(InvalidStatus) as e:
            async with ws_connect(p, "wss://api.openai.com/_diag/ws", token="not-a-coder-token"):
                pass
        assert e.value.response.status_code == 401  # the gateway's answer, not 426
    assert len(gateway.records) == 2  # and never remembered as "no WebSocket"


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_a_message_over_the_cap_closes_with_1009_even_in_fragments(make_proxy, gateway):
    p = make_proxy("--websocket-max-message", "65536")
    async with ws_connect(p, "wss://api.openai.com/_diag/ws") as ws:
        await ws.send(b"x" * 60000)  # under the cap: relayed
        assert len(await ws.recv()) == 60000
        await ws.send([b"y" * 40000, b"y" * 40000])  # fragments adding up past it
        with pytest.raises(ConnectionClosed) as e:
            await ws.recv()
    assert e.value.rcvd.code == 1009
    for _ in range(100):
        if 1009 in gateway.gateway.websocket_closes:
            break
        await asyncio.sleep(0.05)
    assert 1009 in gateway.gateway.websocket_closes  # the gateway was told too


async def test_memory_stays_flat_over_a_long_websocket_session(make_proxy, gateway):
    p = make_proxy()
    message = b"z" * (1024 * 1024)
    async with ws_connect(p, "wss://api.openai.com/_diag/ws") as ws:
        for _ in range(10):  # warm up: buffers, caches
            await ws.send(message)
            await ws.recv()
        before = rss_mb(p.proc.pid)
        for _ in range(120):  # 120 MB each way; the proxy used to keep all of it
            await ws.send(message)
            assert len(await ws.recv()) == len(message)
        after = rss_mb(p.proc.pid)
    assert after - before < 40, (before, after)
