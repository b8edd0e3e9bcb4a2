"""
Which destinations the proxy may dial for a client: public unicast addresses only (unless an
operator exempts a range) and allowed ports.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges refused even though Python may call some of them global.
_ALWAYS_FORBIDDEN = tuple(
    ipaddress.ip_network(n)
    for n in (
        "64:ff9b::/96",  # NAT64 (RFC 6052): reaches IPv4 through a translator
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
        "100.64.0.0/10",  # CGNAT
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
    )
)


def parse_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def is_forbidden(ip: IPAddress) -> bool:
    """True for any address that is not plain public unicast."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_forbidden(ip.ipv4_mapped)
        if ip.sixtofour is not None and is_forbidden(ip.sixtofour):
            return True
        if ip.teredo is not None:
            return True
    if any(ip in net for net in _ALWAYS_FORBIDDEN):
        return True
    return not ip.is_global or ip.is_multicast


class PortSet:
    """Ports and inclusive ranges, e.g. `443`, `80`, `8000-8999`."""

    def __init__(self, ranges: Sequence[tuple[int, int]]):
        self.ranges = tuple(ranges)

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and any(lo <= port <= hi for lo, hi in self.ranges)


def parse_ports(values: Sequence[str]) -> PortSet:
    ranges = []
    for v in values:
        text = str(v).strip()
        lo_s, sep, hi_s = text.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise ValueError(f"port {text!r} is not a number or a range like 8000-8999") from None
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"port {text!r} is out of range 1-65535")
        ranges.append((lo, hi))
    return PortSet(ranges)


def parse_cidrs(values: Sequence[str]) -> tuple[IPNetwork, ...]:
    nets = []
    for v in values:
        try:
            nets.append(ipaddress.ip_network(str(v).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{v!r} is not a CIDR range") from None
    return tuple(nets)
