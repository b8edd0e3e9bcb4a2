"""/proxy.pac is built from configuration only: a crafted Host header never reaches the script,
and the configured address cannot carry script either."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry

from addons.rules.providers import ProviderTable
from proxy.server.admin import AdminServer
from proxy.server.admin import AdminState
from proxy.server.admin import pac_file
from proxy.server.settings import SettingsError
from proxy.server.settings import load_settings

CRAFTED = 'x"; return "PROXY attacker.example:3128'


async def test_pac_without_a_configured_address_is_refused_whatever_the_host_header():
    state = AdminState(listening=True, table=ProviderTable.defaults(), proxy_address=None)
    admin = AdminServer(state, CollectorRegistry)
    host, port = await admin.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(trust_env=False) as c:
            crafted = await c.get(f"http://{host}:{port}/proxy.pac", headers={"Host": CRAFTED})
            r = await c.get(f"http://{host}:{port}/proxy.pac")
    finally:
        await admin.stop()
    assert crafted.status_code == 421 and "attacker" not in crafted.text
    assert r.status_code == 503 and "admin.proxy_address" in r.text
    assert "attacker" not in r.text


@pytest.mark.parametrize("path", ["/", "/metrics", "/readyz", "/healthz", "/ca.pem"])
async def test_a_dns_rebinding_page_cannot_read_the_admin_listener(path):
    state = AdminState(listening=True, table=ProviderTable.defaults(), ca_pem=b"pem",
                       allowed_hosts=frozenset({"proxy.internal.example"}))  # fmt: skip
    admin = AdminServer(state, CollectorRegistry)
    host, port = await admin.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(trust_env=False) as c:
            url = f"http://{host}:{port}{path}"
            rebound = await c.get(url, headers={"Host": f"rebind.attacker.example:{port}"})
            bare = await asyncio.open_connection(host, port)  # a health check naming no host
            bare[1].write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            no_host = await bare[0].readline()
            bare[1].close()
            answered = [
                (await c.get(url, headers={"Host": h})).status_code
                for h in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}",
                          "10.1.2.3:8889", f"proxy.internal.example:{port}")
            ]  # fmt: skip
    finally:
        await admin.stop()
    assert rebound.status_code == 421 and "admin.allowed_hosts" in rebound.text
    assert 421 not in answered and b" 421 " not in no_host


def test_pac_quotes_the_address_as_a_string_literal():
    pac = pac_file(ProviderTable.defaults(), 'p.example.com:8888"; alert(1); "')
    assert 'return "PROXY p.example.com:8888\\"; alert(1); \\"";' in pac


@pytest.mark.parametrize("value", [CRAFTED, "evil host:8888", ":8888", "proxy.example.com"])
def test_proxy_address_setting_must_be_a_host_and_port(value, tmp_path):
    with pytest.raises(SettingsError, match="admin.proxy_address"):
        load_settings({"admin.proxy_address": value, "state_dir": str(tmp_path)}, environ={})


def test_proxy_address_setting_takes_names_and_addresses(tmp_path):
    for value in ("proxy.example.com:8888", "10.0.0.5:8888", "[fd00::5]:8888"):
        s = load_settings({"admin.proxy_address": value, "state_dir": str(tmp_path)}, environ={})
        assert s.admin_proxy_address == value
