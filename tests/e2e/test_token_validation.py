"""Token validation at the proxy: against the gateway's /users/me, cached by fingerprint,
failing closed, and throttling addresses that keep failing."""

from __future__ import annotations

import ssl
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.support import ALICE
from tests.support import BOB
from tests.support import connect_through
from tests.support import proxy_basic
from tests.support import raw_request


def connect_status(port: int, token: str, source: str = "127.0.0.1") -> int:
    return connect_through(port, "api.openai.com:443", proxy_basic(token), source)[0]


def test_valid_invalid_and_cached(make_proxy, gateway):
    p = make_proxy()
    calls = gateway.gateway.users_me_calls
    for _ in range(5):
        assert connect_status(p.port, ALICE) == 200
    assert gateway.gateway.users_me_calls == calls + 1  # one check, then the cache
    for _ in range(3):
        assert connect_status(p.port, "tok-unknown") == 407
    assert gateway.gateway.users_me_calls == calls + 2  # invalid tokens are cached too


def test_concurrent_first_checks_share_one_request(make_proxy, gateway):
    p = make_proxy()
    calls = gateway.gateway.users_me_calls
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: connect_status(p.port, BOB), range(20)))
    assert results == [200] * 20
    assert gateway.gateway.users_me_calls == calls + 1


def test_cache_entries_expire(make_proxy, gateway):
    p = make_proxy("--auth-cache-ttl", "1", "--auth-negative-ttl", "1")
    calls = gateway.gateway.users_me_calls
    assert connect_status(p.port, ALICE) == 200
    time.sleep(1.3)
    assert connect_status(p.port, ALICE) == 200
    assert gateway.gateway.users_me_calls == calls + 2


def test_validation_5xx_fails_closed_or_open(make_proxy, gateway):
    gateway.gateway.fail_users_me = 500
    p = make_proxy()
    req = f"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {proxy_basic(ALICE)}\r\n\r\n"
    resp = raw_request(p.port, req.encode())
    assert resp.startswith(b"HTTP/1.1 503 ")
    assert resp.endswith(b"\r\n\r\n503 Service Unavailable: token validation service unavailable\n")
    open_proxy = make_proxy("--auth-fail-open")
    assert connect_status(open_proxy.port, ALICE) == 200
    gateway.gateway.fail_users_me = 403
    assert connect_status(make_proxy().port, ALICE) == 407


def test_presence_mode_leaves_checking_to_the_gateway(make_proxy, gateway):
    p = make_proxy("--auth-mode", "presence")
    calls = gateway.gateway.users_me_calls
    assert connect_status(p.port, "not-a-real-token") == 200
    assert gateway.gateway.users_me_calls == calls
    ctx = ssl.create_default_context(cafile=str(p.ca_path))
    with httpx.Client(proxy=p.url("not-a-real-token"), verify=ctx, trust_env=False) as c:
        assert c.get("https://api.openai.com/v1/models").status_code == 401  # the gateway's answer


def test_custom_validation_url_and_header(make_proxy, gateway):
    # any URL that answers 200/401 works; here the gateway's own route under another header name
    p = make_proxy(
        "--auth-url", f"{gateway.url}/api/v2/users/me", "--auth-header", "Coder-Session-Token"
    )
    assert connect_status(p.port, ALICE) == 200
    p2 = make_proxy("--auth-header", "X-Other-Header")
    assert connect_status(p2.port, ALICE) == 407  # the gateway did not see the token


def test_repeated_failures_are_throttled_per_address(make_proxy, gateway):
    p = make_proxy("--auth-max-failures", "3", "--auth-lockout", "60")
    assert connect_status(p.port, ALICE) == 200  # known good before the attack
    for i in range(3):
        assert connect_status(p.port, f"guess-{i}") == 407
    assert connect_status(p.port, "guess-4") == 429
    assert connect_status(p.port, BOB) == 429  # an unknown token from the throttled address
    assert connect_status(p.port, ALICE) == 200  # a token already known good still gets in
    assert connect_status(p.port, BOB, source="127.0.0.2") == 200  # other addresses unaffected
