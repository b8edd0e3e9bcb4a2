"""
`aibridge-proxy doctor`: checks a developer's set-up step by step, with their environment,
and explains each failure in one line with the fix.

1. HTTPS_PROXY is set and carries credentials
2. the proxy answers (and its own TLS certificate is trusted, for https:// proxy URLs)
3. the token is accepted (a real CONNECT to a provider host)
4. our CA is trusted by Python, OpenSSL and Node on this machine (real handshakes through the proxy)
5. the gateway answers (a real request through the proxy)
"""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote
from urllib.parse import urlsplit

from addons.developer.verdicts import GATEWAY_REJECTED_TOKEN
from addons.developer.verdicts import NO_TOKEN
from addons.developer.verdicts import connect_verdict

TIMEOUT = 10.0


class CheckFailed(Exception):
    """`str(e)` says what is wrong; `fix` says what to do."""

    def __init__(self, problem: str, fix: str):
        super().__init__(problem)
        self.fix = fix


@dataclass
class ProxyURL:
    scheme: str
    host: str
    port: int
    user: str
    token: str | None


def proxy_from_env(environ: Mapping[str, str]) -> ProxyURL:
    raw = environ.get("HTTPS_PROXY") or environ.get("https_proxy") or ""
    if not raw:
        raise CheckFailed(
            "HTTPS_PROXY is not set", 'run: eval "$(aibridge-proxy env --proxy-url ...)"'
        )
    parts = urlsplit(raw if "://" in raw else "http://" + raw)
    try:
        port = parts.port
    except ValueError:
        raise CheckFailed(
            "HTTPS_PROXY has an invalid port", "use http://coder:<token>@host:8888"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CheckFailed(
            "HTTPS_PROXY is not an http:// or https:// URL", "use http://coder:<token>@host:8888"
        )
    token = unquote(parts.password) if parts.password else None
    return ProxyURL(
        parts.scheme,
        parts.hostname,
        port or (443 if parts.scheme == "https" else 80),
        unquote(parts.username or "coder"),
        token,
    )


class ProxyProbe:
    """Talks to the proxy the way clients do, with Python's default trust (SSL_CERT_FILE)."""

    def __init__(self, proxy: ProxyURL, target: str = "api.openai.com"):
        self.proxy = proxy
        self.target = target

    def _outer(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.proxy.host, self.proxy.port), timeout=TIMEOUT)
        except OSError as e:
            raise CheckFailed(
                f"cannot connect to the proxy at {self.proxy.host}:{self.proxy.port}: {e.strerror or e}",
                "check the host and port in HTTPS_PROXY, and that the proxy runs",
            ) from None
        if self.proxy.scheme == "https":
            try:
                return ssl.create_default_context().wrap_socket(
                    sock, server_hostname=self.proxy.host
                )
            except ssl.SSLError as e:
                sock.close()
                raise CheckFailed(
                    f"the proxy's own TLS certificate is not trusted: {e.reason}",
                    "add the proxy listener's CA to SSL_CERT_FILE's bundle",
                ) from None
        return sock

    def reachable(self) -> str:
        self._outer().close()
        return f"{self.proxy.scheme}://{self.proxy.host}:{self.proxy.port} answers"

    def connect(self) -> socket.socket:
        sock = self._outer()
        creds = base64.b64encode(f"{self.proxy.user}:{self.proxy.token or ''}".encode()).decode()
        sock.sendall(
            f"CONNECT {self.target}:443 HTTP/1.1\r\nHost: {self.target}:443\r\n"
            f"Proxy-Authorization: Basic {creds}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
        if status == 200:
            return sock
        sock.close()
        verdict = connect_verdict(status)
        raise CheckFailed(verdict.problem, verdict.fix)

    def token(self) -> str:
        if not self.proxy.token:
            raise CheckFailed(NO_TOKEN.problem, NO_TOKEN.fix)
        self.connect().close()
        return f"CONNECT {self.target}:443 accepted"

    def python_trust(self) -> str:
        sock = self.connect()
        try:
            tls = _wrap_inner(sock, self.target)
            tls.close()
        except ssl.SSLCertVerificationError as e:
            raise CheckFailed(
                f"Python does not trust the proxy's CA ({e.verify_message})",
                "set SSL_CERT_FILE (and REQUESTS_CA_BUNDLE) to the bundle from `aibridge-proxy env`",
            ) from None
        finally:
            sock.close()
        return "Python's ssl accepts the certificate for " + self.target

    def gateway(self) -> str:
        sock = self.connect()
        try:
            tls = _wrap_inner(sock, self.target)
            tls.sendall(
                f"GET /v1/models HTTP/1.1\r\nHost: {self.target}\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
        except ssl.SSLError:
            raise CheckFailed("TLS through the proxy failed", "fix the CA trust first") from None
        finally:
            sock.close()
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
        body = data.partition(b"\r\n\r\n")[2].decode("utf-8", "replace").strip()
        if status in (502, 504) and "gateway" in body:
            raise CheckFailed(
                f"the proxy cannot reach the gateway ({body.splitlines()[0]})",
                "tell the proxy's administrator",
            )
        if status == 401:
            raise CheckFailed(GATEWAY_REJECTED_TOKEN.problem, GATEWAY_REJECTED_TOKEN.fix)
        return f"the gateway answered GET {self.target}/v1/models with {status}"


def _wrap_inner(sock: socket.socket, hostname: str):
    """TLS inside the tunnel, with Python's default trust. Works over plain and TLS sockets."""
    context = ssl.create_default_context()
    if not isinstance(sock, ssl.SSLSocket):
        return context.wrap_socket(sock, server_hostname=hostname)
    return _TLSInTLS(context, sock, hostname)


class _TLSInTLS:
    """A minimal TLS-over-TLS stream (https:// proxies), via memory BIOs."""

    def __init__(self, context: ssl.SSLContext, outer: ssl.SSLSocket, hostname: str):
        self.outer = outer
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_hostname=hostname)
        self._run(self.obj.do_handshake)

    def _run(self, op, *args):
        while True:
            try:
                result = op(*args)
                self._flush()
                return result
            except ssl.SSLWantReadError:
                self._flush()
                data = self.outer.recv(65536)
                if not data:
                    self.incoming.write_eof()
                else:
                    self.incoming.write(data)

    def _flush(self) -> None:
        if data := self.outgoing.read():
            self.outer.sendall(data)

    def sendall(self, data: bytes) -> None:
        self._run(self.obj.write, data)

    def recv(self, n: int) -> bytes:
        try:
            return self._run(self.obj.read, n)
        except ssl.SSLZeroReturnError:
            return b""

    def close(self) -> None:
        pass


def openssl_trust(proxy: ProxyURL, target: str, environ: Mapping[str, str]) -> str:
    if not shutil.which("openssl"):
        return "skipped: openssl is not installed"
    if proxy.scheme == "https":
        return "skipped: openssl s_client cannot use an https:// proxy"
    env = {**environ, "AIBRIDGE_DOCTOR_TOKEN": proxy.token or ""}
    cmd = [
        "openssl",
        "s_client",
        "-connect",
        f"{target}:443",
        "-servername",
        target,
        "-proxy",
        f"{proxy.host}:{proxy.port}",
        "-proxy_user",
        proxy.user,
        "-proxy_pass",
        "env:AIBRIDGE_DOCTOR_TOKEN",
        "-verify_return_error",
        "-brief",
    ]
    r = subprocess.run(cmd, input="", capture_output=True, text=True, timeout=TIMEOUT, env=env)
    if r.returncode != 0 or "Verification: OK" not in r.stderr:
        lines = [
            line
            for line in r.stderr.splitlines()
            if "verify" in line.lower() or "error" in line.lower()
        ]
        raise CheckFailed(
            f"OpenSSL does not trust the proxy's CA ({(lines or ['handshake failed'])[0].strip()})",
            "set SSL_CERT_FILE to the bundle, or run `aibridge-proxy trust`",
        )
    return "openssl s_client verifies the certificate"


_NODE_CHECK = r"""
const http = require("http"), tls = require("tls");
const [host, port, user, token, target] = process.argv.slice(1);
const auth = "Basic " + Buffer.from(user + ":" + token).toString("base64");
const req = http.request({host, port: +port, method: "CONNECT", path: target + ":443",
  headers: {"Proxy-Authorization": auth}});
req.on("connect", (res, socket) => {
  if (res.statusCode !== 200) { console.log("CONNECT " + res.statusCode); process.exit(2); }
  const s = tls.connect({socket, servername: target}, () => { console.log("OK"); s.end(); process.exit(0); });
  s.on("error", e => { console.log(e.code || e.message); process.exit(1); });
});
req.on("error", e => { console.log(e.code || e.message); process.exit(3); });
req.end();
"""


def node_trust(
    proxy: ProxyURL, target: str, environ: Mapping[str, str], node: str | None = None
) -> str:
    node = node or shutil.which("node", path=environ.get("PATH"))
    if not node:
        return "skipped: node is not installed"
    if proxy.scheme == "https":
        return "skipped: this check does not speak TLS to the proxy"
    r = subprocess.run(
        [
            node,
            "-e",
            _NODE_CHECK,
            proxy.host,
            str(proxy.port),
            proxy.user,
            proxy.token or "",
            target,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        env=dict(environ),
    )
    if r.returncode != 0:
        lines = (r.stdout.strip() or r.stderr.strip()).splitlines()
        raise CheckFailed(
            f"Node does not trust the proxy's CA ({lines[-1] if lines else 'failed'})",
            "set NODE_EXTRA_CA_CERTS to the CA file from `aibridge-proxy env`",
        )
    return "Node's tls accepts the certificate (NODE_EXTRA_CA_CERTS)"


def run_doctor(
    environ: Mapping[str, str],
    target: str = "api.openai.com",
    out: Callable[[str], None] = print,
    node: str | None = None,
    completions: str | None = None,
) -> int:
    """Run every check, print one line each; 0 when all pass."""
    failures = 0

    def step(name: str, check: Callable[[], str]) -> bool:
        nonlocal failures
        try:
            detail = check()
        except CheckFailed as e:
            failures += 1
            out(f"FAIL  {name}: {e}  -> fix: {e.fix}")
            return False
        except (OSError, subprocess.SubprocessError) as e:
            failures += 1
            out(f"FAIL  {name}: {type(e).__name__}: {e}")
            return False
        out(f"ok    {name}: {detail}")
        return True

    proxy_holder: list[ProxyURL] = []

    def configured() -> str:
        proxy_holder.append(proxy_from_env(environ))
        p = proxy_holder[0]
        return f"{p.scheme}://{p.user}:***@{p.host}:{p.port}"

    if not step("proxy configured", configured):
        return 1
    proxy = proxy_holder[0]
    if proxy.scheme == "https":
        out(
            "note  https:// works for this shell's tools, but not for GitHub Copilot in JetBrains, "
            "Neovim, Xcode or Visual Studio: their language server ignores https:// and speaks "
            "plain HTTP to the proxy, which its TLS listener refuses (403: 'this client cannot "
            "speak TLS to a proxy') -> give Copilot an http:// proxy URL on a plain listener"
        )
    probe = ProxyProbe(proxy, target)
    if not step("proxy answers", probe.reachable):
        return 1
    if not step("token accepted", probe.token):
        return 1
    step("CA trusted by Python", probe.python_trust)
    step("CA trusted by OpenSSL", lambda: openssl_trust(proxy, target, environ))
    step("CA trusted by Node", lambda: node_trust(proxy, target, environ, node))
    step("gateway answers", probe.gateway)
    if completions is not None:  # Copilot's inline completions: decrypted and trusted too
        step(f"completions host {completions}", ProxyProbe(proxy, completions).python_trust)
    out("all checks passed" if not failures else f"{failures} check(s) failed")
    return 0 if not failures else 1
