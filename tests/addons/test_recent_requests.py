"""The developer page's list in-process: per user, bounded, newest first, failures explained."""

from __future__ import annotations

from dataclasses import replace

import pytest
from mitmproxy import http

from addons.auth.token_auth import TokenAuth
from addons.core.record import RejectReason
from addons.core.record import record
from addons.observe.recent_requests import RecentRequests
from addons.routing.gateway import GatewayRouter
from addons.routing.gateway_health import GatewayHealth
from addons.routing.snapshot import Routing
from addons.rules.failure_hints import failure_hint
from tests.addons.chain import connect_flow
from tests.addons.chain import loaded
from tests.addons.chain import request_in_tunnel


@pytest.fixture
def chain():
    routing = Routing()
    auth = TokenAuth(routing)
    router = GatewayRouter(routing, GatewayHealth(routing))
    recent = RecentRequests(per_user=3, users=2)
    with loaded(routing, auth, router, recent, aibridge_auth_mode="presence"):
        yield auth, router, recent


async def finish(chain, user: str, status: int, path="/v1/chat/completions"):
    auth, router, recent = chain
    connect = connect_flow("api.openai.com", token=f"tok-{user}")
    await auth.http_connect(connect)
    auth.http_connected(connect)
    flow = request_in_tunnel(connect, path=path)
    await auth.requestheaders(flow)
    # as in validate mode, where the token names its user (tok-alice -> alice)
    entry = record(flow)
    entry.identity = replace(entry.identity, user=entry.identity.token.removeprefix("tok-"))
    await router.requestheaders(flow)
    flow.response = http.Response.make(status, b"")
    recent.response(flow)
    return flow


async def test_each_user_sees_their_own_latest_requests_only(chain):
    _, _, recent = chain
    for n in range(5):
        await finish(chain, "alice", 200, path=f"/v1/{n}")
    await finish(chain, "bob", 401)
    alice = recent.of("alice")
    assert len(alice) == 3  # the bound
    assert [e.status for e in alice] == [200, 200, 200]
    bob = recent.of("bob")
    assert len(bob) == 1 and bob[0].problem == (
        "gateway answered 401: the token is not valid for AI Bridge"
    )
    assert "tok-" not in repr(alice + bob)  # never the token
    await finish(chain, "carol", 200)  # a third user: the least recent one (alice) goes
    assert recent.of("alice") == [] and len(recent.of("carol")) == 1


@pytest.mark.parametrize(
    "status, reason, routed, problem",
    [
        (200, None, True, None),
        (403, "rule_denied", True, "a routing rule denies this request"),
        (403, "denied_host", False, "the proxy's egress policy denies this host"),
        (502, None, True, "the proxy could not reach the gateway"),
        (504, None, False, "the server did not answer in time"),
        (None, None, True, "the connection failed (reset)"),
        (418, None, False, "the server answered 418"),
        (400, "model_unreadable", True, "a routing rule needs the model, but the body has none"),
        (413, "body_too_large", True,
         "a routing rule needs the model, but the body is larger than the proxy reads"),
    ],
)  # fmt: skip
def test_failure_hints(status, reason, routed, problem):
    hint = failure_hint(status, RejectReason(reason).hint if reason else None, routed, "reset")
    assert (hint[0] if hint else None) == problem


async def test_a_refused_handshake_is_a_row_with_its_fix():
    """Copilot's editor shows nothing when it does not trust our certificate: the page does."""
    from mitmproxy.proxy.context import Context
    from mitmproxy.proxy.layers.tls import TlsFailedClientHook
    from mitmproxy.tls import TlsData

    from addons.rules.token_validation import TokenCache
    from tests.addons.chain import full_chain
    from tests.addons.test_auth import CountingValidator

    with full_chain(aibridge_observe=["proxy.individual.githubcopilot.com"]) as chain:
        chain.addons["TokenAuth"].cache = TokenCache(CountingValidator())
        connect = await chain.connect("proxy.individual.githubcopilot.com")
        client = connect.client_conn
        client.sni = "proxy.individual.githubcopilot.com"
        client.error = (
            "Client TLS handshake failed. The client does not trust the proxy's certificate"
        )
        await chain.hook(TlsFailedClientHook(TlsData(client, Context(client, chain.tctx.options))))
        (row,) = chain.addons["RecentRequests"].of("alice")
        assert row.outcome == "TLS refused" and row.host == "proxy.individual.githubcopilot.com"
        assert (
            "refused the proxy's certificate" in row.problem and "aibridge-proxy trust" in row.fix
        )
        stranger = await chain.connect("api.openai.com", token=None)  # nobody known: no row
        await chain.hook(TlsFailedClientHook(TlsData(stranger.client_conn,
                                                     Context(stranger.client_conn, chain.tctx.options))))  # fmt: skip
        assert len(chain.addons["RecentRequests"].of("alice")) == 1
