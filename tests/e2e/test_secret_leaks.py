"""No secret leaks: real traffic at debug level, then every byte the proxy wrote (logs, files
in its state directory, answers to clients) is searched for the tokens and keys used."""

from __future__ import annotations

import ssl
import subprocess

import httpx

from tests.support import ALICE
from tests.support import LOOPBACK_INTERNET
from tests.support import TlsOrigin
from tests.support import UpstreamTestProxy
from tests.support import client_env
from tests.support import proxy_basic
from tests.support import raw_request

WRONG_TOKEN = "tok-wrong-but-secret-7a7a7a7a"
PROVIDER_KEY = "sk-provider-secret-5b5b5b5b"
ANTHROPIC_KEY = "sk-ant-secret-6c6c6c6c"
UPSTREAM_PASSWORD = "upstream-pass-8d8d8d8d"


def test_no_token_or_key_in_anything_written(make_proxy, gateway, tmp_path):
    upstream = UpstreamTestProxy().start()
    origin = TlsOrigin().start(tmp_path)
    try:
        dump = tmp_path / "dump"
        p = make_proxy(
            "--log-level",
            "debug",
            "--log-format",
            "text",
            "--dump-dir",
            str(dump),
            "--upstream-proxy",
            f"http://corp:{UPSTREAM_PASSWORD}@127.0.0.1:{upstream.port}",
            "--header-timeout",
            "1",
            *LOOPBACK_INTERNET,
        )
        answers: list[bytes] = []
        ctx = ssl.create_default_context(cafile=str(p.ca_path))
        with httpx.Client(proxy=p.url(ALICE), verify=ctx, trust_env=False) as c:
            for r in (
                c.post(
                    "https://api.openai.com/v1/chat/completions",
                    json={"model": "m", "stream": True},
                    headers={"Authorization": f"Bearer {PROVIDER_KEY}"},
                ),
                c.post(
                    "https://api.anthropic.com/v1/messages",
                    json={"model": "m"},
                    headers={"x-api-key": ANTHROPIC_KEY},
                ),
                c.get(
                    "https://api.openai.com/_diag/status?code=401",
                    headers={"Authorization": f"Bearer {PROVIDER_KEY}"},
                ),
            ):
                answers.append(r.headers.raw.__repr__().encode())
            c.get("https://api.openai.com/v1/models?key=" + PROVIDER_KEY)
        for auth in (
            proxy_basic(WRONG_TOKEN),
            proxy_basic(ALICE).replace("Basic", "Digest"),
            "Basic " + "x" * 70,
        ):
            answers.append(
                raw_request(
                    p.port,
                    f"CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n".encode(),
                )
            )
        answers.append(
            raw_request(
                p.port,
                f"GET http://10.0.0.1/?k={PROVIDER_KEY} HTTP/1.1\r\nProxy-Authorization: {proxy_basic(ALICE)}\r\n\r\n".encode(),
            )
        )
        # HTTP/2 inside the tunnel: mitmproxy's hpack logger prints header blocks at debug
        h2 = subprocess.run(
            ["curl", "-sS", "--http2", "-o", "/dev/null", "-w", "%{http_version}"]
            + ["-H", f"Authorization: Bearer {PROVIDER_KEY}", "-H", f"x-api-key: {ANTHROPIC_KEY}"]
            + ["https://api.openai.com/v1/models"],
            env=client_env(p),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert h2.stdout == "2", h2.stderr
        # broken requests, each carrying credentials: closed mid-headers, an invalid header
        # line, and headers that never finish (the header timeout closes it)
        head = f"GET http://example.org/ HTTP/1.1\r\nProxy-Authorization: {proxy_basic(ALICE)}\r\n"
        for data, until_close in (
            (head.encode(), False),
            (head.encode() + f"Bad Header {PROVIDER_KEY}\r\n\r\n".encode(), True),
            ((head + f"Authorization: Bearer {PROVIDER_KEY}\r\n").encode(), True),
        ):
            answers.append(raw_request(p.port, data, timeout=3, read_until_close=until_close))
        with httpx.Client(
            proxy=p.url(ALICE),
            verify=ssl.create_default_context(cafile=str(origin.write_ca(tmp_path / "o.pem"))),
            trust_env=False,
        ) as c:
            c.get(f"https://localhost:{origin.port}/?token={ALICE}")
        p.stop()
        written = p.output.encode()
        dumped = [f for f in dump.rglob("*") if f.is_file()]
        assert len(dumped) >= 6  # requests and responses really were dumped
        for f in [*p.state_dir.rglob("*"), *dumped]:
            if f.is_file():
                written += f.read_bytes()
        assert b"debug" in p.output.encode()  # the run really logged at debug level
        for secret in (ALICE, WRONG_TOKEN, PROVIDER_KEY, ANTHROPIC_KEY, UPSTREAM_PASSWORD):
            assert secret.encode() not in written, f"{secret} found in what the proxy wrote"
            for answer in answers:
                assert secret.encode() not in answer, f"{secret} echoed to a client"
    finally:
        upstream.stop()
        origin.stop()
