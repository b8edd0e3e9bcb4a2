"""A remote MCP server made with the official MCP Python SDK, served over TLS by uvicorn, as the
MCP governance tests reach it through the proxy. One app serves every transport at once:
Streamable HTTP with SSE answers at /mcp, with JSON answers at /json/mcp, and the legacy
HTTP+SSE transport at /legacy/sse (its messages at /legacy/messages/).

    python -m tests.support.mcp_server --port P --cert PEM [--slow-events N]

Each tool says in its answer that it ran, and the server appends every tool it ran to
--ran FILE, so a test can prove a denied tool never ran.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import anyio
import uvicorn
from mcp.server.mcpserver import Context
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import Mount

OPEN = TransportSecuritySettings(enable_dns_rebinding_protection=False)  # named hosts, via a proxy


def make_server(ran: Path) -> MCPServer:
    server = MCPServer("repo-tools")

    def note(tool: str) -> None:
        with ran.open("a") as f:
            f.write(tool + "\n")

    @server.tool()
    def search_issues(query: str) -> str:
        """Search the issues."""
        note("search_issues")
        return f"ran search_issues: 3 issues match {query!r}"

    @server.tool()
    def delete_repo(name: str) -> str:
        """Delete a repository."""
        note("delete_repo")
        return f"ran delete_repo: {name} deleted"

    @server.tool()
    def merge_pull_request(number: int) -> str:
        """Merge a pull request."""
        note("merge_pull_request")
        return f"ran merge_pull_request: #{number} merged"

    @server.tool()
    async def slow_count(n: int, ctx: Context) -> str:
        """Counts to n, one progress event every 0.3 s."""
        note("slow_count")
        for i in range(n):
            await ctx.report_progress(i + 1, n, f"step {i + 1}")
            await anyio.sleep(0.3)
        return f"ran slow_count: counted to {n}"

    return server


def make_app(ran: Path) -> Starlette:
    sse_server, json_server, legacy_server = (make_server(ran) for _ in range(3))
    sse_app = sse_server.streamable_http_app(transport_security=OPEN)
    json_app = json_server.streamable_http_app(json_response=True, transport_security=OPEN)
    legacy_app = legacy_server.sse_app(transport_security=OPEN)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with contextlib.AsyncExitStack() as stack:
            for sub in (sse_app, json_app):
                await stack.enter_async_context(sub.router.lifespan_context(sub))
            yield

    return Starlette(
        routes=[
            Mount("/json", app=json_app),
            Mount("/legacy", app=legacy_app),
            Mount("/", app=sse_app),
        ],  # fmt: skip
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--ran", type=Path, required=True)
    args = parser.parse_args()
    uvicorn.run(make_app(args.ran), host="127.0.0.1", port=args.port, log_level="warning",
                ssl_certfile=str(args.cert), ssl_keyfile=str(args.cert))  # fmt: skip


if __name__ == "__main__":
    main()
