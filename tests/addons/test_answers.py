"""What the proxy answers itself, in-process: the remembered 426 for routes without WebSocket,
upstream failures in our words, and in-flight gauges released however a request ends."""

from __future__ import annotations

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from addons.auth.token_auth import TokenAuth
from addons.engine.error_rendering import ProtocolErrorRendering
from addons.engine.gateway_leg import PooledGatewayLeg
from addons.engine.websocket_cap import WebSocketMessageCap
from addons.observe.metrics import Metrics
from addons.routing.gateway import GatewayRouter
from addons.routing.gateway_health import GatewayHealth
from addons.routing.snapshot import Routing
from addons.routing.upstream_errors import UpstreamErrors
from addons.routing.upstream_errors import classify
from addons.routing.websocket import WebSocketFallback
from tests.addons.chain import connect_flow
from tests.addons.chain import loaded
from tests.addons.chain import request_in_tunnel

UPGRADE = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]


@pytest.fixture
def chain():
    routing = Routing()
    auth = TokenAuth(routing)
    router = GatewayRouter(routing, GatewayHealth(routing))
    addons = [
        routing,
        auth,
        router,
        WebSocketFallback(WebSocketMessageCap()),
        UpstreamErrors(ProtocolErrorRendering(), PooledGatewayLeg()),
    ]
    addons.append(Metrics(routing))
    with loaded(*addons, aibridge_auth_mode="presence"):
        yield {type(a).__name__: a for a in addons}


async def request(chain, path="/v1/responses", headers=()):
    connect = connect_flow("api.openai.com")
    await chain["TokenAuth"].http_connect(connect)
    chain["TokenAuth"].http_connected(connect)
    flow = request_in_tunnel(connect, method="GET", path=path, headers=headers, content=b"")
    await chain["TokenAuth"].requestheaders(flow)
    await chain["GatewayRouter"].requestheaders(flow)
    for name in ("WebSocketFallback", "Metrics"):
        chain[name].requestheaders(flow)
    return flow


async def test_a_refused_websocket_route_is_answered_426_and_remembered(chain):
    ws = chain["WebSocketFallback"]
    first = await request(chain, headers=UPGRADE)
    assert first.response is None  # goes to the gateway
    first.response = http.Response.make(404, b"no route")
    ws.responseheaders(first)
    ws.response(first)
    assert first.response.status_code == 426 and first.response.headers["Upgrade"] == "websocket"
    second = await request(chain, headers=UPGRADE)
    assert second.response.status_code == 426  # answered here, no gateway round trip
    other = await request(chain, path="/v1/other", headers=UPGRADE)
    assert other.response is None  # remembered per route


async def test_an_auth_failure_on_upgrade_reaches_the_client_unchanged(chain):
    ws = chain["WebSocketFallback"]
    flow = await request(chain, headers=UPGRADE)
    flow.response = http.Response.make(401, b"bad token")
    ws.responseheaders(flow)
    ws.response(flow)
    assert flow.response.status_code == 401


@pytest.mark.parametrize(
    "error, text",
    [
        ("[Errno 111] Connect call failed (10.0.0.1)", "connection refused"),
        (
            "certificate verify failed",
            "TLS handshake failed (is the certificate trusted? see gateway_ca_file)",
        ),
        ("Name or service not known", "host name does not resolve"),
    ],
)
async def test_upstream_failures_name_the_gateway_without_detail(chain, error, text):
    flow = await request(chain)
    flow.error = tflow.terr(error)
    response = chain["UpstreamErrors"].render(flow)
    assert response.status_code == 502
    body = response.get_text()
    assert body == f"502 Bad Gateway: cannot reach the gateway https://coder.example.com: {text}\n"
    assert "Errno" not in body


async def test_inflight_gauge_returns_to_zero_on_response_error_and_disconnect(chain):
    metrics = chain["Metrics"]
    gauge = metrics.inflight.labels(provider="openai")
    flows = [await request(chain) for _ in range(3)]
    assert gauge._value.get() == 3
    flows[0].response = http.Response.make(200)
    metrics.response(flows[0])
    flows[1].error = tflow.terr("boom")
    metrics.error(flows[1])
    assert gauge._value.get() == 1
    metrics.client_disconnected(flows[2].client_conn)
    assert gauge._value.get() == 0


@pytest.mark.parametrize(
    "engine_error, said",
    [
        ("the gateway reset the stream (REFUSED_STREAM)",
         "the gateway refused the request's stream without processing it (REFUSED_STREAM)"),
        ("the gateway reset the stream (INTERNAL_ERROR)", "the gateway reset the request's stream"),
        ("the gateway stopped answering (no PING answer in 3s)",
         "the gateway stopped answering (no PING answer in 3s)"),
        ("[Errno 111] Connect call failed ('127.0.0.1', 1)", "connection refused"),
    ],
)  # fmt: skip
def test_a_refused_stream_is_not_called_a_refused_connection(engine_error, said):
    assert classify(engine_error) == said
