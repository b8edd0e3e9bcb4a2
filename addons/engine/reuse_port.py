"""
SO_REUSEPORT for worker processes: every worker binds the same address and the kernel spreads
new connections over them. mitmproxy binds its listeners with `asyncio.start_server` through
the module `mitmproxy.proxy.mode_servers`; in a worker, that module sees an asyncio whose
`start_server` passes `reuse_port=True`.
"""

from __future__ import annotations

import asyncio

from mitmproxy.proxy import mode_servers


class _AsyncioWithReusePort:
    """mitmproxy binds its listeners with `asyncio.start_server`; in a worker, the same call
    with SO_REUSEPORT, so that every worker can bind the shared port."""

    def __getattr__(self, name):
        return getattr(asyncio, name)

    @staticmethod
    async def start_server(*args, **kwargs):
        kwargs.setdefault("reuse_port", True)
        return await asyncio.start_server(*args, **kwargs)


def enable_reuse_port() -> None:
    mode_servers.asyncio = _AsyncioWithReusePort()  # type: ignore[attr-defined]
