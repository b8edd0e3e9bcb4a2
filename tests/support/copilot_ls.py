"""GitHub Copilot's language server (`@github/copilot-language-server` from npm), driven over stdio
as an IDE drives it (LSP: Content-Length framed JSON-RPC), and a stand-in for GitHub's API on
loopback (a GitHub Enterprise Server URL, so it can sit on any port) that hands out Copilot
tokens whose endpoints point at the hosts the proxy handles."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from certs.authority import generate_ca
from certs.authority import issue_leaf
from certs.authority import key_pem
from tests.support import NODE_BIN
from tests.support import NODE_TOOLS
from tests.support import BackgroundLoop

LANGUAGE_SERVER = (
    NODE_TOOLS.parent / "@github" / "copilot-language-server" / "dist" / "language-server.js"
)


class FakeGitHub:
    """GitHub's API for a GitHub Enterprise URL `https://<host>`: the language server asks
    `https://api.<host>` (on 443, as for GHE.com) for the user and for a Copilot token whose
    endpoints say where the API (`api`) and the completions (`proxy`) are."""

    def __init__(self, host: str, endpoints: dict[str, str]):
        self.host = host
        self.endpoints = endpoints
        self.ca = generate_ca("test GitHub CA", 30, permitted_domains=None)
        self.paths: list[str] = []
        self.bg: BackgroundLoop | None = None
        self.port = 0

    def start(self, tmp: Path, port: int = 0) -> FakeGitHub:
        cert, key = issue_leaf(self.ca, [self.host, f"api.{self.host}"])  # GHE.com: api.<host>
        pem = tmp / "github.pem"
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key_pem(key))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pem)
        self.bg = BackgroundLoop()
        self.port = self.bg.run(self._serve(context, port))
        return self

    @property
    def url(self) -> str:
        return f"https://{self.host}" + (f":{self.port}" if self.port != 443 else "")

    async def _serve(self, context, port: int) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=context)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    async def _answer(self, request: web.Request) -> web.Response:
        answer = await self._route(request)
        answer.headers["X-GitHub-Request-Id"] = f"TEST:{len(self.paths)}"  # as GitHub's own
        return answer

    async def _route(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        path = request.path.removeprefix("/api/v3")
        if path == "/copilot_internal/v2/token":
            now = int(time.time())
            proxy_host = self.endpoints["proxy"].split("//", 1)[1]
            return web.json_response({
                "token": f"tid=test;exp={now + 1800};sku=free_educational;proxy-ep={proxy_host}",
                "expires_at": now + 1800, "refresh_in": 1500,
                "endpoints": self.endpoints, "chat_enabled": True, "sku": "free_educational",
            })  # fmt: skip
        if path == "/user":
            return web.json_response({"login": "alice-gh", "id": 1, "type": "User"})
        if path.startswith("/copilot_internal/user"):
            return web.json_response({"login": "alice-gh", "copilot_plan": "individual",
                                      "chat_enabled": True, "endpoints": self.endpoints})  # fmt: skip
        return web.json_response({"message": "Not Found"}, status=404)

    def stop(self) -> None:
        if self.bg is not None:
            self.bg.run(self._runner.cleanup())
            self.bg.close()
            self.bg = None


class LanguageServer:
    """The language server over stdio; answers the server's own requests as an IDE would."""

    def __init__(self, env: dict[str, str], settings: dict):
        self.settings = settings
        self.proc = subprocess.Popen(
            [str(NODE_BIN), str(LANGUAGE_SERVER), "--stdio"], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.messages: list[dict] = []
        self.lock = threading.Lock()
        self._next = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            headers = {}
            while True:
                line = out.readline()
                if not line:
                    return
                text = line.decode().strip()
                if not text:
                    break
                name, _, value = text.partition(":")
                headers[name.lower()] = value.strip()
            message = json.loads(out.read(int(headers["content-length"])))
            if "method" in message and "id" in message:  # the server asks the IDE something
                self._answer_server(message)
            with self.lock:
                self.messages.append(message)

    def _answer_server(self, message: dict) -> None:
        result = None
        if message["method"] == "workspace/configuration":
            result = [self._section(item.get("section")) for item in message["params"]["items"]]
        self._send({"jsonrpc": "2.0", "id": message["id"], "result": result})

    def _section(self, section: str | None):
        if not section:
            return self.settings
        found = self.settings
        for part in section.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        return found

    def _send(self, message: dict) -> None:
        body = json.dumps(message).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def notify(self, method: str, params: dict) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method: str, params: dict, timeout: float = 30) -> dict:
        self._next += 1
        ident = self._next
        self._send({"jsonrpc": "2.0", "id": ident, "method": method, "params": params})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for m in self.messages:
                    if m.get("id") == ident and "method" not in m:
                        return m
            time.sleep(0.05)
        raise AssertionError(f"no answer to {method} in {timeout} s; said: {self.log()[-3000:]}")

    def progress(self, token: str) -> list[dict]:
        """What the server reported on a work-done token (a chat turn's reply comes so)."""
        with self.lock:
            return [m["params"]["value"] for m in self.messages
                    if m.get("method") == "$/progress" and m["params"].get("token") == token]  # fmt: skip

    def log(self) -> str:
        with self.lock:
            return "\n".join(m["params"].get("message", "") for m in self.messages
                             if m.get("method") == "window/logMessage")  # fmt: skip

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
