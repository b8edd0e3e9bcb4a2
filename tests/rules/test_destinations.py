from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from addons.rules.destinations import is_forbidden
from addons.rules.destinations import parse_cidrs
from addons.rules.destinations import parse_ports


@pytest.mark.parametrize(
    "ip, forbidden",
    [
        ("8.8.8.8", False),
        ("1.1.1.1", False),
        ("2606:4700:4700::1111", False),
        ("127.0.0.1", True),
        ("10.0.0.1", True),
        ("172.31.255.255", True),
        ("192.168.0.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("100.127.255.255", True),
        ("0.0.0.0", True),
        ("255.255.255.255", True),
        ("224.0.0.1", True),
        ("198.18.0.1", True),
        ("192.0.2.1", True),
        ("::1", True),
        ("::", True),
        ("fe80::1", True),
        ("fc00::1", True),
        ("fd12:3456::1", True),
        ("64:ff9b::808:808", True),
        ("64:ff9b:1::1", True),
        ("::ffff:10.0.0.1", True),
        ("::ffff:8.8.8.8", False),
        ("2002:0a00:0001::1", True),
        ("2001:0::1", True),
        ("ff02::1", True),
    ],
)
def test_is_forbidden(ip, forbidden):
    assert is_forbidden(ipaddress.ip_address(ip)) is forbidden


@given(st.ip_addresses(v=4))
def test_ipv4_mapped_matches_ipv4(ip):
    mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
    assert is_forbidden(mapped) == is_forbidden(ip)


def test_ports():
    ports = parse_ports(["443", "80", "8000-8009"])
    assert 443 in ports and 80 in ports and 8005 in ports
    assert 8010 not in ports and 22 not in ports and "443" not in ports
    for bad in (["0"], ["65536"], ["x"], ["10-5"], ["1-"]):
        with pytest.raises(ValueError):
            parse_ports(bad)


@given(st.integers(1, 65535), st.integers(1, 65535), st.integers(0, 70000))
def test_port_ranges(a, b, port):
    lo, hi = min(a, b), max(a, b)
    assert (port in parse_ports([f"{lo}-{hi}"])) == (lo <= port <= hi)


def test_cidrs():
    assert parse_cidrs(["10.0.0.0/8", "fd00::/8", "127.0.0.1"])[2] == ipaddress.ip_network(
        "127.0.0.1/32"
    )
    with pytest.raises(ValueError):
        parse_cidrs(["10.0.0.0/33"])


@pytest.mark.parametrize(
    "host, literal",
    [("127.0.0.21", True), ("2130706453", True), ("0x7f000015", True), ("127.0.21", True),
     ("0177.0.0.1", True), ("::1", True), ("[::1]", True), ("denied.example", False),
     ("1.example", False), ("123", True), ("a.b.c.d.e", False)],
)  # fmt: skip
def test_every_spelling_of_an_address_is_an_ip_literal(host, literal):
    from addons.rules.destinations import is_ip_literal

    assert is_ip_literal(host) is literal


def test_patterns_and_hosts_meet_in_one_idna_spelling():
    from addons.rules.destinations import HostPolicy

    for pattern in ("xn--bcher-kva.example", "bücher.example", "*.XN--BCHER-KVA.example"):
        policy = HostPolicy(deny=[(pattern, None)])
        hosts = ("bücher.example", "xn--bcher-kva.example", "BÜCHER.example.")
        if pattern.startswith("*"):
            hosts = tuple("api." + h for h in hosts)
        for host in hosts:
            assert policy.refusal(host, False) is not None, (pattern, host)
    assert HostPolicy().literal_refusal("127.0.0.1") is None  # no policy: addresses are fine
    assert "connect by host name" in HostPolicy(allow=[("a.example", None)]).literal_refusal(
        "2130706433"
    )
