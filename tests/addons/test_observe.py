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


def test_model_labels_are_what_was_sent_or_answered_and_capped():
    """A rewrite rule turns any name a client sends into one model: labelled with the client's
    words, 3,000 requests made 12,000 series."""
    from addons.core.record import RouteInfo
    from addons.observe.metrics import MODEL_LABEL_VALUES
    from addons.observe.metrics import Metrics
    from addons.routing.snapshot import Routing
    from addons.rules.token_usage import Usage

    metrics = Metrics(Routing())
    for n in range(300):
        info = RouteInfo("openai", "api.openai.com", "/", "https://gw/", f"r{n}", 0.0)
        info.model, info.model_sent = f"client-words-{n}", "gpt-4o-mini"
        info.usage = Usage(input_tokens=1, output_tokens=1)  # the answer names no model
        metrics._count_tokens("openai", info, None)
    models = {
        s.labels["model"] for m in metrics.registry.collect() if m.name.endswith("tokens")
        for s in m.samples
    }  # fmt: skip
    assert models == {"gpt-4o-mini"}
    for n in range(300):  # a vendor answering with a new model name each time
        info = RouteInfo(None, "x.observed.example", "/", "https://x/", f"o{n}", 0.0)
        info.usage = Usage(model=f"vendor-{n}", input_tokens=1)
        metrics._count_tokens("observed", info, None)
    models = {
        s.labels["model"] for m in metrics.registry.collect() if m.name.endswith("tokens")
        for s in m.samples
    }  # fmt: skip
    assert len(models) == MODEL_LABEL_VALUES + 1 and "other" in models


@pytest.mark.parametrize(
    "body, secret",
    [
        (b'{"model": "m", "api_key": "sk-dumped-1", "n": 1}', b"sk-dumped-1"),
        (b"grant_type=refresh_token&refresh_token=rt-dumped-2&client_id=x", b"rt-dumped-2"),
        (b'{"access_token": "at-dumped-3", "id_token": "it-dumped-3"}', b"dumped-3"),
        (b'{"pad": "' + b"x" * 20_000 + b'", "client_secret": "cs-dumped-4"}', b"cs-dumped-4"),
    ],
)
def test_dumped_bodies_lose_credential_fields_even_split_across_chunks(body, secret):
    from addons.observe.dump import BodyRedactor

    sizes = (1, 7, 4096, len(body)) if len(body) < 1000 else (997, len(body))
    for size in sizes:
        out: list[bytes] = []
        redactor = BodyRedactor(out.append)
        for i in range(0, len(body), size):
            redactor.feed(body[i : i + size])
        redactor.close()
        written = b"".join(out)
        assert secret not in written and b"<redacted>" in written
        assert len(written) > len(body) - 40  # everything else is still there


def test_dumped_oauth_query_parameters_are_redacted():
    from addons.observe.dump import redact_query

    path = redact_query("/callback?code=oc-1&state=s&sig=sg-2&next=/x")
    assert "oc-1" not in path and "sg-2" not in path and "state=s" in path
