"""A company proxy that signs in with NTLM or Negotiate: a real squid from the Debian package,
and for Kerberos a real MIT KDC. Tunnels and pass-through traffic go through it, signed in over
the connection-based handshake (a second CONNECT on the same connection where the 407 asks for
one); routed requests still go straight to the gateway."""

from __future__ import annotations

import ssl

import httpx
import pytest

from tests.support import ALICE
from tests.support import LOOPBACK_INTERNET
from tests.support import assert_one_line_error
from tests.support import cli
from tests.support import proxy_client
from tests.support.kerberos import REALM
from tests.support.kerberos import KerberosRealm
from tests.support.squid import SquidProxy

pytestmark = pytest.mark.skipif(not SquidProxy.available(), reason="squid is not installed")


@pytest.fixture(params=["ntlm", "negotiate"])
def squid(request):
    s = SquidProxy(auth=request.param).start()
    yield s
    s.stop()


def signed_in_as_alice(line: list[str]) -> bool:
    """squid logs the user its helper read from our NTLM message. ntlm_fake_auth reads the
    UTF-16 names pyspnego sends as C strings: it logs the first letter of the domain and of
    the user (CORP\\alice.w -> C\\a); "-" would mean nobody signed in."""
    return line[7].replace("\\\\", "\\") == "C\\a"


def through_squid(make_proxy, squid, *extra):
    return make_proxy(
        "--upstream-proxy", f"http://CORP%5Calice.w:s3cret@127.0.0.1:{squid.port}",
        "--upstream-proxy-auth", squid.auth, *LOOPBACK_INTERNET, *extra,
    )  # fmt: skip


def test_a_tunnel_signs_in_to_the_company_proxy(make_proxy, squid, origin, gateway, tmp_path):
    p = through_squid(make_proxy, squid)
    origin_ca = ssl.create_default_context(cafile=str(origin.write_ca(tmp_path / "o.pem")))
    with httpx.Client(proxy=p.url(ALICE), verify=origin_ca, trust_env=False) as c:
        for _ in range(2):  # and again, on a new tunnel each time
            r = c.get(f"https://localhost:{origin.port}/through")
            assert r.text == "origin saw GET /through HTTP/1.1 body=0"
            c.close()
            c = httpx.Client(proxy=p.url(ALICE), verify=origin_ca, trust_env=False)
    tunnels = squid.tunnels(2)
    assert len(tunnels) == 2, squid.access_lines()
    assert all(f[6] == f"localhost:{origin.port}" and signed_in_as_alice(f) for f in tunnels)
    # each tunnel was refused once (the challenge) and then signed in on the same connection
    assert [f[3] for f in squid.access_lines()].count("TCP_DENIED/407") == 2
    # routed traffic does not touch the company proxy
    with proxy_client(p) as c:
        assert c.get("https://api.openai.com/v1/models").status_code == 200
    assert gateway.last().path == "/api/v2/aibridge/openai/v1/models"
    assert len(squid.tunnels(3, timeout=1)) == 2
    assert "s3cret" not in p.output


def test_pass_through_signs_in_to_the_company_proxy(make_proxy, squid, origin, tmp_path):
    p = through_squid(
        make_proxy, squid, "--provider", "localhost=openai@/v1/",
        "--origin-ca-file", str(origin.write_ca(tmp_path / "o.pem")),
    )  # fmt: skip
    with proxy_client(p) as c:  # decrypted by us, then sent on to the origin through squid
        r = c.post(f"https://localhost:{origin.port}/api/settings", content=b"12345")
    assert r.text == "origin saw POST /api/settings HTTP/1.1 body=5"
    p.stop()  # squid logs a tunnel when it closes
    (tunnel,) = squid.tunnels(1)
    assert tunnel[6] == f"localhost:{origin.port}" and signed_in_as_alice(tunnel)


def test_ntlm_without_credentials_is_a_config_error(tmp_path):
    r = cli(
        "serve", "--gateway", "http://127.0.0.1:1", "--upstream-proxy", "http://127.0.0.1:3128",
        "--upstream-proxy-auth", "ntlm", "--state-dir", str(tmp_path / "s"),
        "--admin-listen", "off", "--listen", "127.0.0.1:0",
    )  # fmt: skip
    assert_one_line_error(r, "upstream_proxy_auth", "needs a user name and password")


def test_plain_http_through_an_ntlm_proxy_is_refused_in_words(make_proxy, squid):
    p = through_squid(make_proxy, squid)
    with httpx.Client(proxy=p.url(ALICE), trust_env=False) as c:
        r = c.get("http://localhost:9/plain")
    assert r.status_code == 502
    assert "plain http:// cannot pass the upstream proxy's" in r.text and "use https://" in r.text


@pytest.fixture
def realm():
    if not KerberosRealm.available():
        pytest.skip(
            "the MIT Kerberos KDC (krb5-kdc, krb5-admin-server, krb5-user) is not installed"
        )
    r = KerberosRealm().start()
    yield r
    r.stop()


@pytest.fixture
def kerberos_squid(realm):
    s = SquidProxy(auth="negotiate", keytab=realm.keytab, env=realm.env).start()
    yield s
    s.stop()


@pytest.mark.parametrize("credentials", ["cache", "keytab", "password"])
def test_negotiate_signs_in_with_kerberos_against_a_real_kdc(
    make_proxy, realm, kerberos_squid, origin, tmp_path, credentials
):
    """The service's own Kerberos identity: a credential cache (kinit), a client keytab
    (KRB5_CLIENT_KTNAME, as a service account would have), or a principal and its password."""
    env = dict(realm.env)
    userinfo = ""
    if credentials == "cache":
        env["KRB5CCNAME"] = f"FILE:{realm.sign_in()}"
    elif credentials == "keytab":
        env["KRB5_CLIENT_KTNAME"] = str(realm.client_keytab("alice"))
        env["KRB5CCNAME"] = f"FILE:{tmp_path / 'empty-cache'}"
    else:
        userinfo = "alice%40AIBRIDGE.TEST:alice-password@"
        env["KRB5CCNAME"] = f"FILE:{tmp_path / 'empty-cache'}"
    p = make_proxy(
        "--upstream-proxy", f"http://{userinfo}localhost:{kerberos_squid.port}",
        "--upstream-proxy-auth", "negotiate", *LOOPBACK_INTERNET, env=env,
    )  # fmt: skip
    origin_ca = ssl.create_default_context(cafile=str(origin.write_ca(tmp_path / "o.pem")))
    with httpx.Client(proxy=p.url(ALICE), verify=origin_ca, trust_env=False) as c:
        r = c.get(f"https://localhost:{origin.port}/kerberos")
    assert r.text == "origin saw GET /kerberos HTTP/1.1 body=0"
    p.stop()
    (tunnel,) = kerberos_squid.tunnels(1)
    assert tunnel[7] == f"alice@{REALM}"  # the KDC's principal, read from the ticket by squid
    assert "alice-password" not in p.output
