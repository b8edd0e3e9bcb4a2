"""GatewayRouter and TokenAuth in-process: the rewrite a routed request gets, byte for byte
in its path, and the verdicts authentication gives (presence mode: no gateway call)."""

from __future__ import annotations

import pytest

from addons.auth.token_auth import TokenAuth
from addons.core.record import reject_reason
from addons.core.record import route_info
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
    with loaded(routing, auth, router, aibridge_auth_mode="presence"):
        yield auth, router


async def routed(chain, path="/v1/chat/completions", headers=(), host="api.openai.com"):
    auth, router = chain
    connect = connect_flow(host)
    await auth.http_connect(connect)
    assert connect.response is None  # accepted
    auth.http_connected(connect)  # as mitmproxy calls it for a 2xx answer
    flow = request_in_tunnel(connect, path=path, headers=headers)
    await auth.requestheaders(flow)
    await router.requestheaders(flow)
    return flow


@pytest.mark.parametrize(
    "path, upstream",
    [
        ("/v1/chat/completions", "/api/v2/aibridge/openai/v1/chat/completions"),
        ("/v1/x?b=2&a=%2F", "/api/v2/aibridge/openai/v1/x?b=2&a=%2F"),  # query kept as sent
        ("/v1/%63hat/x", "/api/v2/aibridge/openai/v1/%63hat/x"),  # escapes kept as sent
    ],
)
async def test_routed_request_is_rewritten_to_the_gateway(chain, path, upstream):
    flow = await routed(chain, path, headers=[(b"Authorization", b"Bearer sk-client")])
    req = flow.request
    assert (req.scheme, req.host, req.port, req.path) == (
        "https",
        "coder.example.com",
        443,
        upstream,
    )
    assert req.headers["Host"] == "coder.example.com"
    assert "Proxy-Authorization" not in req.headers
    assert req.headers["X-Coder-AI-Governance-Token"] == "tok-alice"
    assert req.headers["Authorization"] == "Bearer sk-client"  # the client's own key, untouched
    assert req.headers["X-Coder-AI-Governance-Request-Id"] == route_info(flow).request_id
    assert callable(req.stream) and route_info(flow).provider == "openai"


async def test_a_client_already_carrying_the_token_gets_no_extra_header(chain):
    flow = await routed(chain, headers=[(b"Authorization", b"Bearer tok-alice")])
    assert "X-Coder-AI-Governance-Token" not in flow.request.headers


async def test_unrouted_host_is_not_rewritten(chain):
    flow = await routed(chain, host="example.org", path="/a")
    assert flow.request.host == "example.org" and flow.request.path == "/a"
    assert route_info(flow).provider is None


async def test_connect_without_credentials_is_challenged(chain):
    auth, _ = chain
    connect = connect_flow("api.openai.com", token=None)
    await auth.http_connect(connect)
    assert connect.response.status_code == 407
    assert connect.response.headers["Proxy-Authenticate"] == 'Basic realm="aibridge-proxy"'
    assert reject_reason(connect) == "missing"


@pytest.mark.parametrize(
    "header, reason",
    [("Bearer abc", "malformed"), ("Basic !!!", "malformed"), ("Basic Og==", "empty_token")],
)
async def test_bad_credentials_are_challenged_with_the_reason(chain, header, reason):
    auth, _ = chain
    connect = connect_flow("api.openai.com", token=None)
    connect.request.headers["Proxy-Authorization"] = header
    await auth.http_connect(connect)
    assert connect.response.status_code == 407
    assert reject_reason(connect) == reason


async def test_a_governance_token_of_someone_else_is_refused(chain):
    flow = await routed(chain, headers=[(b"X-Coder-AI-Governance-Token", b"tok-bob")])
    assert flow.response.status_code == 400
    assert b"does not match the token in the proxy credentials" in flow.response.content
    assert flow.request.host == "api.openai.com"  # not rewritten, never sent
    same = await routed(chain, headers=[(b"X-Coder-AI-Governance-Token", b"tok-alice")])
    assert same.response is None and same.request.headers["X-Coder-AI-Governance-Token"] == (
        "tok-alice"
    )


@pytest.mark.parametrize("path", ["/v1/../../../users/me", "/v1/%2e%2e/%2E%2E/users/me"])
async def test_paths_climbing_out_of_the_provider_prefix_are_refused(chain, path):
    flow = await routed(chain, path=path)
    assert flow.response.status_code == 400 and flow.request.host == "api.openai.com"
