"""
OpenSSL frees each connection's read and write buffers while it is idle
(SSL_MODE_RELEASE_BUFFERS): an open SSE stream holds two TLS connections that are idle most of
the time, and this saves about 30 KB per stream. mitmproxy builds its contexts in two cached
functions of `mitmproxy.net.tls`; we wrap both, before any context exists.
"""

from __future__ import annotations

import functools

from mitmproxy.net import tls as net_tls
from OpenSSL import SSL

_FACTORIES = ("create_client_proxy_context", "create_proxy_server_context")


class ReleaseIdleTlsBuffers:
    def __init__(self) -> None:
        self._originals: dict[str, object] = {}

    def install(self) -> None:
        if self._originals:
            return
        for name in _FACTORIES:
            create = getattr(net_tls, name)
            self._originals[name] = create
            setattr(net_tls, name, self._wrap(create))

    @staticmethod
    def _wrap(create):
        @functools.lru_cache(maxsize=256)
        def cached(**kwargs):
            context = create(**kwargs)
            context.set_mode(SSL.MODE_RELEASE_BUFFERS)
            return context

        return lambda **kwargs: cached(**kwargs)

    def uninstall(self) -> None:
        for name, create in self._originals.items():
            setattr(net_tls, name, create)
        self._originals.clear()
