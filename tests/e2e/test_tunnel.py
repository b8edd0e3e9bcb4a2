"""Intercept only what we route: other hosts are tunnelled as raw bytes (the client sees the
real server's certificate), and routed hosts are never contacted."""

from __future__ import annotations

import ssl

import httpx
import pytest

from tests.support import ALICE
from tests.support import LOOPBACK_INTERNET


def only_trusts(path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(path))


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_non_routed_host_is_tunnelled_undecrypted(proxy, gateway, origin, tmp_path, host):
    origin_ca = origin.write_ca(tmp_path / "origin-ca.pem")
    # This client trusts the origin's own CA and not ours: it can only succeed if the proxy
    # passes the TLS bytes through untouched.
    with httpx.Client(proxy=proxy.url(ALICE), verify=only_trusts(origin_ca), trust_env=False) as c:
        r = c.post(f"https://{host}:{origin.port}/hello?q=1", content=b"abc")
    assert r.status_code == 200
    assert r.text == "origin saw POST /hello?q=1 HTTP/1.1 body=3"
    assert not gateway.records
    # and a client that only trusts our CA is refused by the real certificate
    with httpx.Client(
        proxy=proxy.url(ALICE), verify=only_trusts(proxy.ca_path), trust_env=False
    ) as c:
        with pytest.raises(httpx.ConnectError):
            c.get(f"https://{host}:{origin.port}/")


def test_routed_host_is_never_contacted(make_proxy, gateway, origin):
    """`localhost` routed to openai: the request reaches the gateway, and the server that really
    listens on localhost:<port> sees no connection at all."""
    p = make_proxy("--provider", "localhost=openai", *LOOPBACK_INTERNET)
    with httpx.Client(proxy=p.url(ALICE), verify=only_trusts(p.ca_path), trust_env=False) as c:
        r = c.get(f"https://localhost:{origin.port}/v1/models")
    assert r.status_code == 200
    assert gateway.last().path == "/api/v2/aibridge/openai/v1/models"
    assert origin.connections == 0


def test_unresolvable_provider_host_works(proxy, gateway):
    """api.openai.com does not resolve on this machine: success proves no lookup was needed."""
    with httpx.Client(
        proxy=proxy.url(ALICE), verify=only_trusts(proxy.ca_path), trust_env=False
    ) as c:
        assert c.get("https://api.openai.com:8443/v1/models").status_code == 200
    assert gateway.last().path == "/api/v2/aibridge/openai/v1/models"
