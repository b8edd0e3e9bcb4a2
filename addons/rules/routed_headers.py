"""
The header block of a request rewritten to the gateway, built in one pass over the client's
fields: mitmproxy's `Headers` rescans and rebuilds its field tuple on every set and pop, and a
routed request had five of them.
"""

from __future__ import annotations

_HOP_TO_PROXY = (b"host", b"proxy-authorization", b"proxy-connection")


def routed_header_fields(
    fields: tuple[tuple[bytes, bytes], ...], host: str, added: dict[str, str]
) -> tuple[tuple[bytes, bytes], ...]:
    """`Host: host` first, then the client's fields in their order without Host, the
    Proxy-* credentials and any header named in `added`, then `added`'s headers."""
    drop = {*_HOP_TO_PROXY, *(name.lower().encode() for name in added)}
    kept = tuple((k, v) for k, v in fields if k.lower() not in drop)
    extra = tuple((_bytes(name), _bytes(value)) for name, value in added.items())
    return ((b"Host", _bytes(host)), *kept, *extra)


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # as mitmproxy's Headers encodes a str
