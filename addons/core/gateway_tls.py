"""The trust for the gateway leg: the TLS client context for the proxy's own calls to the
gateway (token checks, health), and the bundle routed requests are verified against."""

from __future__ import annotations

import ssl


def gateway_cafile(options) -> str | None:
    """The gateway leg's bundle: its own when configured (`serve` always writes one), else
    mitmproxy's upstream bundle (stock `mitmdump -s`)."""
    return options.aibridge_gateway_trusted_ca or options.ssl_verify_upstream_trusted_ca


def verifying_context(cafile: str | None) -> ssl.SSLContext:
    """TLS client context for calls to the gateway: the given bundle, else the system roots."""
    return ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
