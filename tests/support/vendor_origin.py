"""
Stand-ins for AI vendors' own backends (the hosts no gateway serves), for observe-mode tests:
a TLS server on a test CA of its own, whose certificate names the vendor hosts, and an
/etc/hosts entry per name pointing at loopback for the length of a test.

It answers in the providers' shapes, with usage the tests know, and records what it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from pathlib import Path

from aiohttp import WSMsgType
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from certs.authority import generate_ca
from certs.authority import issue_leaf
from certs.authority import key_pem
from tests.support import BackgroundLoop

HOSTS_FILE = Path("/etc/hosts")
EVENT_SPACING = 0.2  # seconds between the streamed events
BLOB = bytes(range(256)) * 4096  # 1 MiB, every byte value


@contextlib.contextmanager
def hosts_resolve_to_loopback(names: list[str]):
    """Add `127.0.0.1 name` lines to /etc/hosts for the test, and take exactly them out again."""
    marker = f"# aibridge-proxy test {time.monotonic_ns()}"
    added = "".join(f"127.0.0.1 {name} {marker}\n" for name in names)
    before = HOSTS_FILE.read_text()
    HOSTS_FILE.write_text(before + ("" if before.endswith("\n") else "\n") + added)
    try:
        yield
    finally:
        now = HOSTS_FILE.read_text()
        HOSTS_FILE.write_text("".join(line for line in now.splitlines(True) if marker not in line))


def _sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


class VendorOrigin:
    def __init__(self, names: list[str]):
        self.names = names
        self.ca = generate_ca("test vendor CA", 30, permitted_domains=None)
        self.records: list[dict] = []
        self.sent_at: list[float] = []  # when each streamed event left this server
        self.bg: BackgroundLoop | None = None
        self.port = 0

    def write_ca(self, path: Path) -> Path:
        path.write_bytes(self.ca.cert_pem())
        return path

    def start(self, tmp: Path) -> VendorOrigin:
        cert, key = issue_leaf(self.ca, self.names)
        pem = tmp / "vendor-cert.pem"
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key_pem(key))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pem)
        self.bg = BackgroundLoop()
        self.port = self.bg.run(self._serve(context))
        return self

    async def _serve(self, context: ssl.SSLContext) -> int:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self.bg is not None:
            self.bg.run(self._runner.cleanup())
            self.bg.close()
            self.bg = None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._echo(request)
        body = await request.read()
        self.records.append(
            {
                "method": request.method,
                "host": request.host,
                "path": request.raw_path,
                "headers": dict(request.headers),
                "body": body,
            }
        )
        path = request.path
        if path == "/blob":
            return web.Response(body=BLOB, content_type="application/octet-stream")
        data = json.loads(body) if body.startswith(b"{") else {}
        model = data.get("model", "vendor-model")
        if path == "/v1/chat/completions":
            if data.get("stream"):
                return await self._stream(request, self._chat_events(model))
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                    "usage": {"prompt_tokens": 13, "completion_tokens": 5, "total_tokens": 18},
                }
            )
        if path == "/v1/messages":
            return await self._stream(request, self._anthropic_events(model))
        if path.startswith("/v1/engines/") and path.endswith("/completions"):  # Copilot's FIM
            engine = path.split("/")[3]
            chunks = [{"id": "cmpl-1", "model": engine, "choices": [{"index": 0, "text": t}]}
                      for t in ("return ", "a + b")]  # fmt: skip
            chunks.append({"id": "cmpl-1", "model": engine, "choices": [],
                           "usage": {"prompt_tokens": 21, "completion_tokens": 4}})  # fmt: skip
            return await self._stream(request, [_sse(c) for c in chunks] + [_sse("[DONE]")])
        if path.startswith("/v1beta/models/") and path.endswith(":streamGenerateContent"):
            return await self._stream(request, self._gemini_events(path))
        return web.Response(text=f"vendor saw {request.method} {request.raw_path} body={len(body)}")

    async def _stream(self, request: web.Request, events: list[bytes]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, event in enumerate(events):
            if i:
                await asyncio.sleep(EVENT_SPACING)
            self.sent_at.append(time.time())
            await resp.write(event)
        await resp.write_eof()
        return resp

    @staticmethod
    def _chat_events(model: str) -> list[bytes]:
        def chunk(delta: dict, usage=None) -> bytes:
            return _sse(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}]
                    if delta
                    else [],
                    "usage": usage,
                }
            )

        usage = {
            "prompt_tokens": 11,
            "completion_tokens": 7,
            "total_tokens": 18,
            "prompt_tokens_details": {"cached_tokens": 3},
            "completion_tokens_details": {"reasoning_tokens": 2},
        }
        words = [chunk({"role": "assistant", "content": ""})]
        words += [chunk({"content": w}) for w in ("one ", "two ", "three")]
        return [*words, chunk({}, usage), _sse("[DONE]")]

    @staticmethod
    def _anthropic_events(model: str) -> list[bytes]:
        def event(name: str, data: dict) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        return [
            event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_1",
                        "model": model,
                        "usage": {
                            "input_tokens": 10,
                            "cache_read_input_tokens": 4,
                            "output_tokens": 1,
                        },
                    },
                },
            ),  # fmt: skip
            event(
                "content_block_delta",
                {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "hi"}},
            ),
            event("message_delta", {"type": "message_delta", "usage": {"output_tokens": 6}}),
            event("message_stop", {"type": "message_stop"}),
        ]

    @staticmethod
    def _gemini_events(path: str) -> list[bytes]:
        model = path.split("/")[-1].split(":")[0]

        def chunk(text: str, prompt: int, out: int, thoughts: int) -> bytes:
            return _sse(
                {
                    "candidates": [{"content": {"parts": [{"text": text}]}}],
                    "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": out,
                                      "thoughtsTokenCount": thoughts},
                    "modelVersion": model,
                }
            )  # fmt: skip

        return [chunk("a", 20, 1, 4), chunk("b", 20, 9, 4)]

    async def _echo(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str("echo " + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws
