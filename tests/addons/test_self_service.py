"""The reserved host in-process, through the whole chain: a profile switch with a body of the
wrong shape is refused and never dialled, the page's notice names only configured profiles,
and the reserved name itself is never dialled, whatever went wrong before."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from mitmproxy import connection
from mitmproxy import http
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.test import tflow

from addons.developer.pages import RESERVED_HOST
from addons.rules.profile_choices import MAX_CHOICES_PER_USER
from addons.rules.proxy_authorization import basic_credentials
from addons.rules.token_validation import TokenCache
from certs.authority import engine_confdir
from certs.authority import generate_ca
from tests.addons.chain import full_chain
from tests.addons.test_auth import CountingValidator

PROFILES = {
    "profiles": {"fast": [], "careful": []},
    "default_profile": "careful",
}


@pytest.fixture
async def chain(tmp_path):
    confdir = engine_confdir(generate_ca(), tmp_path / "engine")
    with full_chain(aibridge_policy=json.dumps(PROFILES), confdir=str(confdir)) as c:
        c.addons["TokenAuth"].cache = TokenCache(CountingValidator())
        yield c


async def ask(chain, method: str, path: str, body: bytes = b"", user="laptop", **headers):
    request = http.Request.make(method, f"http://{RESERVED_HOST}{path}", body, headers)
    request.headers["Proxy-Authorization"] = basic_credentials(user, "tok-alice")
    flow = tflow.tflow(req=request)
    await chain.hook(http_layer.HttpRequestHeadersHook(flow))
    if flow.response is None:
        await chain.hook(http_layer.HttpRequestHook(flow))
    return flow


@pytest.mark.parametrize(
    "body",
    [b'{"profile": []}', b'{"profile": {"a": 1}}', b'{"profile": 3}', b"[1, 2]",
     b'{"profile": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", b"not json"],
)  # fmt: skip
async def test_a_switch_with_a_body_of_the_wrong_shape_is_refused(chain, body):
    flow = await ask(chain, "PUT", "/profile", body, **{"content-type": "application/json"})
    assert flow.response is not None and flow.response.status_code == 400
    assert b"profile" in flow.response.content


async def test_a_valid_switch_still_works(chain):
    flow = await ask(
        chain, "PUT", "/profile", b'{"profile": "fast"}', **{"content-type": "application/json"}
    )
    assert flow.response.status_code == 200
    assert json.loads(flow.response.content)["active"] == "fast"


async def test_a_failure_while_answering_answers_500_and_never_dials(chain, monkeypatch):
    async def broken(flow):
        raise RuntimeError("a bug")

    monkeypatch.setattr(chain.addons["SelfService"], "_profile", broken)
    flow = await ask(chain, "GET", "/profile")
    assert flow.response.status_code == 500


def test_the_reserved_name_is_never_dialled(chain):
    server = connection.Server(address=(RESERVED_HOST, 80))
    chain.addons["SelfService"].server_connect(SimpleNamespace(server=server))
    assert server.error and "never dialled" in server.error
    other = connection.Server(address=("api.openai.com", 443))
    chain.addons["SelfService"].server_connect(SimpleNamespace(server=other))
    assert other.error is None


@pytest.mark.parametrize(
    "switched, shown",
    [
        ("fast", "Switched to the profile fast."),
        ("", "Switched back to the default profile."),
        ("Your Coder token has expired: paste a new one at https://evil.example", None),
    ],
)
async def test_the_pages_notice_names_only_a_configured_profile(chain, switched, shown):
    from urllib.parse import quote

    flow = await ask(chain, "GET", "/?switched=" + quote(switched))
    assert flow.response.status_code == 200
    page = flow.response.text
    assert "evil.example" not in page
    if shown:
        assert shown in page
    else:
        assert "Switched" not in page


async def test_choices_per_user_are_capped(chain):
    for n in range(MAX_CHOICES_PER_USER):
        flow = await ask(
            chain, "PUT", "/profile", b'{"profile": "fast"}', user=f"ws{n}",
            **{"content-type": "application/json"},
        )  # fmt: skip
        assert flow.response.status_code == 200
    flow = await ask(
        chain, "PUT", "/profile", b'{"profile": "fast"}', user="one-more",
        **{"content-type": "application/json"},
    )  # fmt: skip
    assert flow.response.status_code == 409
    assert b"switch one of them back" in flow.response.content
    flow = await ask(  # changing an existing choice always fits
        chain, "PUT", "/profile", b'{"profile": "careful"}', user="ws0",
        **{"content-type": "application/json"},
    )  # fmt: skip
    assert flow.response.status_code == 200
