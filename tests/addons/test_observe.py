"""Observe mode and token usage in-process: an observed request leaves unchanged, and the
usage read from its streamed answer reaches the access line; bad observe entries are
refused when the options are set."""

from __future__ import annotations

import json
import re

import pytest
from mitmproxy import exceptions
from mitmproxy import http

from addons.auth.token_auth import TokenAuth
from addons.connection.deadlines import ConnectionDeadlines
from addons.core.record import route_info
from addons.egress.intercept import InterceptPolicy
from addons.engine.header_limit import HeaderSizeLimit
from addons.observe.access_log import access_fields
from addons.observe.token_usage import TokenUsage
from addons.routing.gateway import GatewayRouter
from addons.routing.gateway_health import GatewayHealth
from addons.routing.snapshot import Routing
from tests.addons.chain import connect_flow
from tests.addons.chain import loaded
from tests.addons.chain import request_in_tunnel


@pytest.fixture
def chain():
    routing = Routing()
    auth = TokenAuth(routing)
    router = GatewayRouter(routing, GatewayHealth(routing))
    intercept = InterceptPolicy(routing, ConnectionDeadlines(HeaderSizeLimit()))
    usage = TokenUsage()
    with loaded(routing, auth, intercept, router, usage, aibridge_auth_mode="presence",
                aibridge_observe=["cursor", "*.observed.example"]):  # fmt: skip
        yield auth, intercept, router, usage


async def observed(chain, host="api2.cursor.sh", path="/aiserver.v1.Chat/Stream"):
    auth, intercept, router, _ = chain
    connect = connect_flow(host)
    await auth.http_connect(connect)
    intercept.http_connect(connect)
    assert connect.response.status_code == 200  # answered by us: the origin is dialled later
    auth.http_connected(connect)
    flow = request_in_tunnel(connect, path=path, headers=[(b"Authorization", b"Bearer own")])
    await auth.requestheaders(flow)
    await router.requestheaders(flow)
    return flow


async def test_an_observed_request_is_sent_on_unchanged(chain):
    flow = await observed(chain)
    req = flow.request
    assert (req.scheme, req.host, req.port, req.path) == (
        "https", "api2.cursor.sh", 443, "/aiserver.v1.Chat/Stream",
    )  # fmt: skip
    assert req.headers["Authorization"] == "Bearer own"
    assert "X-Coder-AI-Governance-Token" not in req.headers
    info = route_info(flow)
    assert info.provider is None and info.observed == "cursor"


async def test_a_pattern_without_an_entry_is_observed_under_its_pattern(chain):
    flow = await observed(chain, host="models.observed.example")
    assert route_info(flow).observed == "*.observed.example"


async def test_usage_streams_through_untouched_and_reaches_the_access_line(chain):
    auth, _, router, usage = chain
    flow = await observed(chain, host="api.eu.observed.example", path="/v1/messages")
    flow.response = http.Response.make(200, b"", {"Content-Type": "text/event-stream"})
    router.responseheaders(flow)
    usage.responseheaders(flow)
    events = [
        {"type": "message_start", "message": {"model": "claude-x", "usage": {"input_tokens": 3}}},
        {"type": "message_delta", "usage": {"output_tokens": 9}},
    ]
    body = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events)
    relayed = b"".join(flow.response.stream(body[i : i + 5]) for i in range(0, len(body), 5))
    assert relayed == body  # every byte as it came
    usage.response(flow)
    fields = access_fields(flow)
    assert (fields["model"], fields["input_tokens"], fields["output_tokens"]) == ("claude-x", 3, 9)
    assert fields["outcome"] == "observed" and "cached_tokens" not in fields


async def test_dump_dir_writes_observed_traffic_redacted(tmp_path):
    from addons.observe.dump import ApiDump

    routing = Routing()
    auth = TokenAuth(routing)
    router = GatewayRouter(routing, GatewayHealth(routing))
    dump = ApiDump()
    with loaded(routing, auth, router, dump, aibridge_auth_mode="presence",
                aibridge_observe=["cursor"], aibridge_dump_dir=str(tmp_path)):  # fmt: skip
        connect = connect_flow("api2.cursor.sh")
        await auth.http_connect(connect)
        auth.http_connected(connect)
        flow = request_in_tunnel(connect, headers=[(b"Authorization", b"Bearer cursor-secret")])
        await auth.requestheaders(flow)
        await router.requestheaders(flow)
        dump.requestheaders(flow)
        flow.request.stream(b'{"prompt": "hello"}')
        dump.response(flow)
    (written,) = (tmp_path / "observed" / "cursor").glob("*.req.txt")
    text = written.read_text()
    assert "# observed, sent on to https://api2.cursor.sh/v1/chat/completions" in text
    assert "cursor-secret" not in text and text.endswith('{"prompt": "hello"}')


@pytest.mark.parametrize(
    "value, message",
    [
        (["cursr"], "'cursr' is not in the AI host catalog (did you mean 'cursor'?)"),
        (["*.*.example.com"], "neither a catalog entry nor a host name"),
    ],
)
def test_bad_observe_entries_are_refused(value, message):
    routing = Routing()
    with loaded(routing) as tctx:
        with pytest.raises(exceptions.OptionsError, match=re.escape(message)):
            tctx.options.update(aibridge_observe=value)
