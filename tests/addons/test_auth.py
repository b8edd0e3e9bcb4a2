"""TokenAuth in-process (validate mode against a counting validator): identity comes only from
the request's own credentials or from a CONNECT that succeeded, and the failure limit holds when
valid tokens are interleaved with guesses."""

from __future__ import annotations

import pytest
from mitmproxy import http

from addons.auth.token_auth import TokenAuth
from addons.core.record import existing_record
from addons.routing.snapshot import Routing
from addons.rules.proxy_authorization import basic_credentials
from addons.rules.token_validation import TokenCache
from addons.rules.token_validation import TokenVerdict
from tests.addons.chain import connect_flow
from tests.addons.chain import loaded
from tests.addons.chain import request_in_tunnel

USERS = {"tok-alice": "alice", "tok-bob": "bob"}


class CountingValidator:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, token: str) -> TokenVerdict:
        self.asked.append(token)
        return TokenVerdict(token in USERS, USERS.get(token))


def identity_of(flow: http.HTTPFlow):
    return existing_record(flow).identity if existing_record(flow) else None


@pytest.fixture
def auth():
    routing = Routing()
    addon = TokenAuth(routing)
    with loaded(routing, addon, aibridge_auth_max_failures=3, aibridge_auth_lockout=60):
        addon.cache = TokenCache(validator := CountingValidator())
        addon.validator_calls = validator.asked
        yield addon


def plain_request(connect: http.HTTPFlow, token: str | None) -> http.HTTPFlow:
    flow = request_in_tunnel(connect, method="GET", path="/", content=b"")
    flow.request.scheme, flow.request.port = "http", 80
    if token is not None:
        flow.request.headers["Proxy-Authorization"] = basic_credentials("coder", token)
    return flow


@pytest.mark.parametrize("refusal", [403, 502])
async def test_a_refused_connect_lends_no_identity_to_the_connection(auth, refusal):
    connect = connect_flow("10.1.2.3", token="tok-alice")
    await auth.http_connect(connect)
    assert connect.response is None and identity_of(connect).user == "alice"
    connect.response = http.Response.make(refusal)  # egress refused it, or the dial failed
    # (mitmproxy calls http_connect_error, not http_connected, for a non-2xx answer)
    for token, expected in [("garbage", 407), (None, 407), ("tok-bob", None)]:
        later = plain_request(connect, token)
        await auth.requestheaders(later)
        if expected is None:
            assert later.response is None and identity_of(later).user == "bob"
        else:
            assert later.response.status_code == expected and identity_of(later) is None


async def test_a_successful_connect_lends_its_identity_to_the_tunnel(auth):
    connect = connect_flow("api.openai.com", token="tok-alice")
    await auth.http_connect(connect)
    auth.http_connected(connect)
    inner = request_in_tunnel(connect)
    await auth.requestheaders(inner)
    assert inner.response is None and identity_of(inner).user == "alice"


async def test_valid_tokens_interleaved_with_guesses_do_not_lift_the_limit(auth):
    statuses = []
    for i in range(20):
        token = "tok-alice" if i % 2 == 0 else f"guess-{i}"
        flow = connect_flow("api.openai.com", token=token)
        await auth.http_connect(flow)
        statuses.append((token, flow.response.status_code if flow.response else 200))
    guesses = [s for t, s in statuses if t.startswith("guess")]
    assert guesses[:3] == [407, 407, 407] and set(guesses[3:]) == {429}
    assert {s for t, s in statuses if t == "tok-alice"} == {200}  # NAT'd colleagues still pass
    # a blocked address's guesses never reach the gateway
    assert [t for t in auth.validator_calls if t.startswith("guess")] == [
        "guess-1",
        "guess-3",
        "guess-5",
    ]
