"""An agent's side of MCP, with the official MCP Python SDK's client, configured only by the
environment a user sets (HTTPS_PROXY, SSL_CERT_FILE): it lists the server's tools, calls each
tool named on the command line, and prints one JSON line of what it saw.

    python -m tests.support.mcp_client URL streamable|legacy|stateless TOOL=ARGS_JSON ...

A tool's refusal is printed as the error text the SDK raised, which is what an agent shows.
"""

from __future__ import annotations

import json
import sys
import time

import anyio
from mcp import Client
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


async def run(url: str, transport: str, calls: list[tuple[str, dict]]) -> dict:
    if transport == "stateless":
        return await run_stateless(url, calls)
    opened = streamable_http_client(url) if transport == "streamable" else sse_client(url)
    out: dict = {"calls": {}}
    async with opened as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as session:
            await session.initialize()
            listed = await session.list_tools()
            out["tools"] = sorted(t.name for t in listed.tools)
            for name, arguments in calls:
                started = time.monotonic()
                progress: list[float] = []

                async def on_progress(done, total, message, progress=progress, started=started):
                    progress.append(round(time.monotonic() - started, 3))

                try:
                    result = await session.call_tool(name, arguments, progress_callback=on_progress)
                    text = " ".join(getattr(c, "text", "") for c in result.content)
                    out["calls"][name] = {"error": result.is_error, "text": text}
                except MCPError as e:
                    out["calls"][name] = {"error": True, "text": str(e), "code": e.error.code}
                out["calls"][name]["seconds"] = round(time.monotonic() - started, 2)
                out["calls"][name]["progress"] = progress
    return out


async def run_stateless(url: str, calls: list[tuple[str, dict]]) -> dict:
    """The stateless revision (2026-07-28): no initialize, no session; each request alone,
    its protocol version and client info in `_meta`."""
    out: dict = {"calls": {}}
    async with Client(url, mode="2026-07-28") as client:
        listed = await client.list_tools()
        out["tools"] = sorted(t.name for t in listed.tools)
        for name, arguments in calls:
            started = time.monotonic()
            try:
                result = await client.call_tool(name, arguments)
                text = " ".join(getattr(c, "text", "") for c in result.content)
                out["calls"][name] = {"error": result.is_error, "text": text}
            except MCPError as e:
                out["calls"][name] = {"error": True, "text": str(e), "code": e.error.code}
            out["calls"][name]["seconds"] = round(time.monotonic() - started, 2)
    return out


def main() -> None:
    url, transport, *specs = sys.argv[1:]
    calls = [(name, json.loads(args)) for name, _, args in (s.partition("=") for s in specs)]
    print(json.dumps(anyio.run(run, url, transport, calls)))


if __name__ == "__main__":
    main()
