"""
A small gateway that speaks the AI Bridge route layout, for the demo, the tests, and an admin
checking a client's set-up without spending tokens.

Routes under `<prefix>/<provider>/`:
- openai: POST /v1/chat/completions, POST /v1/responses, GET /v1/models
- anthropic: POST /v1/messages
- copilot (and copilot-business, copilot-enterprise): POST /chat/completions, GET /models
- any provider: /_diag/... (echo, sse, download, upload, slow, abort, status) for checks
and `GET /api/v2/users/me` for token validation. JSON answers, or SSE when the request asks
for `"stream": true`. Everything received is recorded in `records`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field

from aiohttp import web

REPLY = "Hello from the aibridge-proxy local gateway."
# providers whose chat completions speak OpenAI's shape (OpenRouter at /api/v1/...)
OPENAI_COMPATIBLE = frozenset({"openai", "openrouter", "xai", "deepseek", "mistral", "groq"})
COPILOT_PROVIDERS = ("copilot", "copilot-business", "copilot-enterprise")
BODY_KEEP_LIMIT = 8 * 1024 * 1024


@dataclass
class Received:
    """One request as the gateway saw it."""

    method: str
    raw_path: str  # path and query exactly as sent, percent-escapes included
    headers: list[tuple[str, str]]
    body: bytes | None  # None when larger than BODY_KEEP_LIMIT (see body_sha256)
    body_length: int
    body_sha256: str
    peer: tuple | None = None  # the proxy's side of the connection (shows keep-alive reuse)
    time: float = field(default_factory=time.time)

    @property
    def path(self) -> str:
        return self.raw_path.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.raw_path.partition("?")[2]

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": [[k, v] for k, v in self.headers],
            "body_length": self.body_length,
            "body_sha256": self.body_sha256,
        }


def _sse(event: str | None, data: Mapping | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "").encode() + f"data: {payload}\n\n".encode()


class LocalGateway:
    """An aiohttp server. `tokens` maps each accepted Coder token to its user name."""

    def __init__(
        self,
        tokens: Mapping[str, str],
        prefix: str = "/api/v2/aibridge",
        ssl_context: ssl.SSLContext | None = None,
        word_delay: float = 0.02,
        websocket: bool = True,
    ):
        self.tokens = dict(tokens)
        self.prefix = prefix.rstrip("/")
        self.ssl_context = ssl_context
        self.word_delay = word_delay
        self.websocket = websocket  # False: answer upgrades 501, as Coder's gateway does
        self.websocket_closes: list[int | None] = []  # close codes the gateway saw
        self.websocket_messages: list[str] = []  # text messages the gateway received
        self.records: list[Received] = []
        self.users_me_calls = 0
        self._runner: web.AppRunner | None = None
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self.ssl_context)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.host, self.port = sock.getsockname()[:2]
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- request handling --------------------------------------------------------------------

    async def _record(self, request: web.Request) -> Received:
        digest = hashlib.sha256()
        kept = bytearray()
        length = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            length += len(chunk)
            if length <= BODY_KEEP_LIMIT:
                kept += chunk
        rec = Received(
            method=request.method,
            raw_path=request.raw_path,
            headers=list(request.headers.items()),
            body=bytes(kept) if length <= BODY_KEEP_LIMIT else None,
            body_length=length,
            body_sha256=digest.hexdigest(),
            peer=request.transport.get_extra_info("peername") if request.transport else None,
        )
        self.records.append(rec)
        return rec

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/api/v2/users/me":
            return self._users_me(request)
        rec = await self._record(request)
        if not request.raw_path.startswith(self.prefix + "/"):
            return _error(404, f"no route for {rec.path}")
        provider, _, rest = rec.path[len(self.prefix) + 1 :].partition("/")
        rest = "/" + rest
        user = self._caller(request)
        if user is None:
            return _error(401, "a valid Coder token is required")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if not self.websocket:
                return _error(501, "WebSocket is not supported on this route")
            return await self._websocket(request, provider, rest)
        if rest.startswith("/_diag/"):
            return await self._diag(request, rec, rest[len("/_diag/") :])
        body = _json_body(rec.body)
        stream = bool(body.get("stream"))
        model = str(body.get("model") or "local-model")
        if (
            provider in OPENAI_COMPATIBLE
            and rest.endswith("/v1/chat/completions")
            and request.method == "POST"
        ):
            return await self._chat_completion(request, model, stream)
        if (
            provider in COPILOT_PROVIDERS
            and rest == "/chat/completions"
            and request.method == "POST"
        ):
            return await self._chat_completion(request, model, stream)
        if provider == "openai" and rest == "/v1/responses" and request.method == "POST":
            return await self._responses(request, model, stream)
        if provider == "anthropic" and rest == "/v1/messages" and request.method == "POST":
            return await self._messages(request, model, stream)
        if rest in ("/v1/models", "/models") and request.method == "GET":
            return web.json_response(
                {"object": "list", "data": [{"id": "local-model", "object": "model"}]}
            )
        return _error(404, f"no route for {provider} {request.method} {rest}")

    def _users_me(self, request: web.Request) -> web.Response:
        self.users_me_calls += 1
        user = self.tokens.get(request.headers.get("Coder-Session-Token", ""))
        if user is None:
            return _error(401, "invalid session token")
        return web.json_response(
            {"id": str(uuid.uuid5(uuid.NAMESPACE_DNS, user)), "username": user}
        )

    def _caller(self, request: web.Request) -> str | None:
        """The gateway's own check: governance header, then Bearer, then x-api-key."""
        candidates = [request.headers.get("X-Coder-AI-Governance-Token")]
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            candidates.append(auth[7:].strip())
        candidates.append(request.headers.get("x-api-key"))
        for token in candidates:
            if token and token in self.tokens:
                return self.tokens[token]
        return None

    async def _stream(self, request: web.Request, chunks, delay: float) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        for i, chunk in enumerate(chunks):
            if i and delay:
                await asyncio.sleep(delay)
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def _chat_completion(self, request, model: str, stream: bool) -> web.StreamResponse:
        cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        if not stream:
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": REPLY},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13},
                }
            )

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            return _sse(
                None,
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                },
            )

        words = REPLY.split(" ")
        parts = [chunk({"role": "assistant", "content": ""})]
        parts += [chunk({"content": (" " if i else "") + w}) for i, w in enumerate(words)]
        parts += [chunk({}, "stop"), b"data: [DONE]\n\n"]
        return await self._stream(request, parts, self.word_delay)

    @staticmethod
    def responses_events(model: str) -> tuple[dict, list[dict]]:
        """The Responses API stream for one text reply: (final response, events in order)."""
        rid, mid = f"resp_{uuid.uuid4().hex[:12]}", f"msg_{uuid.uuid4().hex[:12]}"
        part = {"type": "output_text", "text": REPLY, "annotations": []}
        msg = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [part],
        }
        final = {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "model": model,
            "status": "completed",
            "output": [msg],
            "usage": {
                "input_tokens": 5,
                "output_tokens": 8,
                "total_tokens": 13,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
        }
        where = {"item_id": mid, "output_index": 0, "content_index": 0}
        events: list[dict] = [
            {
                "type": "response.created",
                "response": {**final, "status": "in_progress", "output": []},
            },
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**msg, "status": "in_progress", "content": []},
            },
            {"type": "response.content_part.added", **where, "part": {**part, "text": ""}},
        ]
        events += [
            {"type": "response.output_text.delta", **where, "delta": (" " if i else "") + w}
            for i, w in enumerate(REPLY.split(" "))
        ]
        events += [
            {"type": "response.output_text.done", **where, "text": REPLY},
            {"type": "response.content_part.done", **where, "part": part},
            {"type": "response.output_item.done", "output_index": 0, "item": msg},
            {"type": "response.completed", "response": final},
        ]
        for n, event in enumerate(events):
            event["sequence_number"] = n
        return final, events

    async def _responses(self, request, model: str, stream: bool) -> web.StreamResponse:
        final, events = self.responses_events(model)
        if not stream:
            return web.json_response(final)
        return await self._stream(request, [_sse(e["type"], e) for e in events], self.word_delay)

    async def _messages(self, request, model: str, stream: bool) -> web.StreamResponse:
        mid = f"msg_{uuid.uuid4().hex[:12]}"
        usage = {"input_tokens": 5, "output_tokens": 8}
        if not stream:
            return web.json_response(
                {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": REPLY}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": usage,
                }
            )
        parts = [
            _sse(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": mid,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {**usage, "output_tokens": 0},
                    },
                },
            ),
            _sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
        ]
        for i, w in enumerate(REPLY.split(" ")):
            parts.append(
                _sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": (" " if i else "") + w},
                    },
                )
            )
        parts += [
            _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 8},
                },
            ),
            _sse("message_stop", {"type": "message_stop"}),
        ]
        return await self._stream(request, parts, self.word_delay)

    async def _websocket(
        self, request: web.Request, provider: str, rest: str
    ) -> web.StreamResponse:
        """`/_diag/ws` echoes (a text `close:<code>` closes with that code); `/v1/responses`
        answers a `response.create` message with Responses API events, one per message."""
        if rest not in ("/_diag/ws", "/v1/responses"):
            return _error(404, f"no WebSocket route for {provider} {rest}")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == web.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type == web.WSMsgType.TEXT:
                self.websocket_messages.append(msg.data)
                if msg.data.startswith("close:"):
                    await ws.close(code=int(msg.data[6:]), message=b"bye")
                    break
                if rest == "/v1/responses":
                    model = str(_json_body(msg.data.encode()).get("model") or "local-model")
                    for event in self.responses_events(model)[1]:
                        await ws.send_str(json.dumps(event))
                else:
                    await ws.send_str(msg.data)
        self.websocket_closes.append(ws.close_code)
        return ws

    # -- diagnostics: deterministic behaviours for checks and tests --------------------------

    async def _diag(self, request: web.Request, rec: Received, what: str) -> web.StreamResponse:
        q = request.query
        if what == "echo" or what == "upload":
            return web.json_response(rec.to_json())
        if what == "sse":
            # Each event carries the gateway's send time so a client can measure the delay.
            events = int(q.get("events", "5"))
            interval = float(q.get("interval", "0.1"))
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for i in range(events):
                if i:
                    await asyncio.sleep(interval)
                await resp.write(_sse("tick", {"i": i, "sent": time.time()}))
            await resp.write_eof()
            return resp
        if what == "abort":
            events = int(q.get("events", "2"))
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for i in range(events):
                await resp.write(_sse("tick", {"i": i}))
                await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.abort()  # vanish mid-stream, as a crashing gateway would
            return resp
        if what == "download":
            size = int(q.get("bytes", "1048576"))
            chunked = q.get("chunked") == "1"
            resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            if not chunked:
                resp.content_length = size
            await resp.prepare(request)
            block = hashlib.sha256(b"aibridge").digest() * 2048  # 64 KiB, deterministic
            sent = 0
            while sent < size:
                piece = block[: min(len(block), size - sent)]
                await resp.write(piece)
                sent += len(piece)
            await resp.write_eof()
            return resp
        if what == "slow":
            await asyncio.sleep(float(q.get("delay", "1")))
            return web.json_response({"slept": float(q.get("delay", "1"))})
        if what == "status":
            code = int(q.get("code", "500"))
            return _error(code, f"status {code} requested")
        return _error(404, f"unknown diagnostic {what!r}")


def download_bytes(size: int) -> bytes:
    """What `/_diag/download?bytes=size` sends, for comparing in tests."""
    block = hashlib.sha256(b"aibridge").digest() * 2048
    reps = size // len(block) + 1
    return (block * reps)[:size]


def _json_body(body: bytes | None) -> dict:
    if not body:
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "local_gateway_error"}}, status=status
    )
