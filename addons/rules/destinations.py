"""
Which destinations the proxy may dial for a client: public unicast addresses only (unless an
operator exempts a range) and allowed ports.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Every range the proxy refuses to dial for a client, with what lives there and an address
# in it. The security model's destination table (docs/security.md) and the tests are made from this one list. Python's
# `is_global` covers most of it already; the list makes the policy explicit, and adds what it
# calls global (CGNAT, NAT64, the Azure host agent, IPv4-compatible and site-local IPv6).
REFUSED_DESTINATIONS: tuple[tuple[str, str, str], ...] = (
    ("0.0.0.0/8", "this network", "0.0.0.1"),
    ("10.0.0.0/8", "private (RFC 1918)", "10.1.2.3"),
    ("100.64.0.0/10", "carrier-grade NAT", "100.64.0.1"),
    ("127.0.0.0/8", "loopback", "127.0.0.2"),
    ("168.63.129.16/32", "Azure WireServer (host agent, metadata)", "168.63.129.16"),
    ("169.254.0.0/16", "link-local, cloud metadata (169.254.169.254)", "169.254.169.254"),
    ("172.16.0.0/12", "private (RFC 1918)", "172.31.255.254"),
    ("192.0.0.0/24", "IETF protocol assignments", "192.0.0.8"),
    ("192.0.2.0/24", "documentation", "192.0.2.1"),
    ("192.168.0.0/16", "private (RFC 1918)", "192.168.1.1"),
    ("198.18.0.0/15", "benchmarking", "198.18.0.1"),
    ("198.51.100.0/24", "documentation", "198.51.100.1"),
    ("203.0.113.0/24", "documentation", "203.0.113.1"),
    ("224.0.0.0/4", "multicast", "239.1.1.1"),
    ("240.0.0.0/4", "reserved, broadcast", "255.255.255.255"),
    ("::/96", "IPv4-compatible IPv6 (deprecated) and unspecified", "::a9fe:a9fe"),
    ("::1/128", "IPv6 loopback", "::1"),
    ("::ffff:0:0/96", "IPv4-mapped IPv6 (judged as its IPv4 address)", "::ffff:10.0.0.1"),
    ("64:ff9b::/96", "NAT64 (RFC 6052): reaches IPv4 through a translator", "64:ff9b::a00:1"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)", "64:ff9b:1::1"),
    ("100::/64", "discard-only", "100::1"),
    ("2001::/32", "Teredo", "2001::1"),
    ("2001:db8::/32", "documentation", "2001:db8::1"),
    ("2002::/16", "6to4 (refused when it wraps a refused IPv4 address)", "2002:a00:1::1"),
    ("fc00::/7", "unique local", "fd00::1"),
    ("fe80::/10", "link-local", "fe80::1"),
    ("fec0::/10", "site-local (deprecated)", "fec0::1"),
    ("ff00::/8", "multicast", "ff02::1"),
)

# refused outright (the IPv4-mapped and 6to4 rows are judged by the IPv4 address inside)
_ALWAYS_FORBIDDEN = tuple(
    ipaddress.ip_network(net)
    for net, _, _ in REFUSED_DESTINATIONS
    if net not in ("::ffff:0:0/96", "2002::/16")
)


def parse_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


# what a resolver (inet_aton) takes for an IPv4 address: 2130706453, 0x7f000015, 127.0.21
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$", re.I)


def is_ip_literal(host: str) -> bool:
    """An address rather than a name, in any spelling a resolver accepts: a host policy on
    names cannot say where it goes."""
    host = host.strip().rstrip(".")
    if parse_ip(host) is not None:
        return True
    labels = host.split(".")
    return 0 < len(labels) <= 4 and all(_NUMERIC_LABEL.match(label) for label in labels)


def host_key(name: str) -> str:
    """One spelling of a host name for matching: lower case, no trailing dot, each label in
    its IDNA ASCII form (mitmproxy hands us `bücher.example` for a CONNECT to
    `xn--bcher-kva.example`; a pattern may be written either way)."""
    labels = name.strip().lower().rstrip(".").split(".")
    out = []
    for label in labels:
        if label.isascii() or "*" in label:
            out.append(label)
            continue
        try:
            out.append(label.encode("idna").decode("ascii"))
        except UnicodeError:
            out.append(label)  # not a valid IDNA label: matched as written
    return ".".join(out)


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


class HostPolicy:
    """Which host names a client may reach: `deny` patterns always refuse; with `allow`
    patterns, only those hosts (and the intercepted ones) are reached. Glob patterns, matched
    case-insensitively on the whole name (`*.example.com` does not match example.com). Each
    pattern may come with the catalog entry it was expanded from, named in the refusal."""

    def __init__(
        self,
        deny: Sequence[tuple[str, str | None]] = (),
        allow: Sequence[tuple[str, str | None]] = (),
    ):
        self.deny = tuple((host_key(p), e) for p, e in deny if p.strip())
        self.allow = tuple(host_key(p) for p, _ in allow if p.strip())

    @property
    def active(self) -> bool:
        return bool(self.deny or self.allow)

    def literal_refusal(self, host: str) -> str | None:
        """With a host policy set, an IP address cannot be checked against it (a denied
        host's address, in any spelling, would pass): refused, naming why."""
        if not self.active or not is_ip_literal(host):
            return None
        which = "egress.deny_hosts" if self.deny else "egress.allow_hosts"
        return (
            f"{host} is an IP address: with {which} set, connect by host name "
            "(an address cannot be checked against host names)"
        )

    def refusal(self, host: str, intercepted: bool) -> str | None:
        """Why `host` is refused, naming the setting, or None."""
        name = host_key(host)
        for pattern, entry in self.deny:
            if fnmatch.fnmatchcase(name, pattern):
                why = f"egress.deny_hosts: {entry}" if entry else "egress.deny_hosts"
                return f"{name} is denied by the proxy's egress policy ({why})"
        if (
            self.allow
            and not intercepted
            and not any(fnmatch.fnmatchcase(name, p) for p in self.allow)
        ):
            return f"{name} is not in the proxy's egress policy (egress.allow_hosts)"
        return None
