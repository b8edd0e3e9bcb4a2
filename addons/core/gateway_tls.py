"""The TLS client context for the proxy's own calls to the gateway (token checks, health)."""

from __future__ import annotations

import ssl


def verifying_context(cafile: str | None) -> ssl.SSLContext:
    """TLS client context for calls to the gateway: the given bundle, else the system roots."""
    return ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
