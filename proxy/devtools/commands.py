"""The local gateway and the demo (the `demo` extra)."""

from __future__ import annotations

import argparse
import asyncio

from proxy.command_args import UsageError


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.devtools.demo import run_demo

    return asyncio.run(run_demo(keep=args.keep))


def cmd_gateway(args: argparse.Namespace) -> int:
    from proxy.devtools.localgateway import LocalGateway
    from proxy.server.settings import parse_listen

    try:
        host, port = parse_listen(args.listen)
    except ValueError as e:
        raise UsageError(f"--listen: {args.listen!r} {e}") from None
    tokens = {}
    for item in args.token:
        token, _, user = item.partition("=")
        tokens[token] = user or "user"
    if not tokens:
        raise UsageError("--token: give at least one token the gateway should accept")

    async def run() -> None:
        gateway = LocalGateway(tokens, websocket=not args.no_websocket)
        url = await gateway.start(host or "0.0.0.0", port)
        print(f"local gateway listening on {url} (target {url}/api/v2/aibridge)", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0
