"""The local gateway over TLS for benchmarks, in its own process (several with SO_REUSEPORT):
python -m tests.benchmarks.gateway_server PORT CERTFILE TOKEN"""

from __future__ import annotations

import asyncio
import ssl
import sys

from aiohttp import web

from proxy.devtools.localgateway import LocalGateway


async def main(port: int, certfile: str, token: str) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile)
    gw = LocalGateway({token: "bench"}, ssl_context=ctx, word_delay=0.0)
    gw.records = _Discard()  # keep nothing: memory must not grow over long runs
    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/{tail:.*}", gw._dispatch)
    runner = web.AppRunner(app, access_log=None, handle_signals=True)
    await runner.setup()
    await web.TCPSite(
        runner, "127.0.0.1", port, ssl_context=ctx, reuse_port=True, backlog=1024
    ).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


class _Discard(list):
    def append(self, item) -> None:
        pass


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
    except KeyboardInterrupt:
        pass
