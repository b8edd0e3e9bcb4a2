"""
`aibridge-proxy demo`: the proxy and the local gateway on free loopback ports, real requests
from the official SDKs through them, and the settings to try it with your own tools.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from proxy.devtools.democlients import CLIENTS
from proxy.devtools.localgateway import LocalGateway
from proxy.server.app import ProxyApp
from proxy.server.logs import configure_logging
from proxy.server.settings import load_settings


async def _run_client(name: str, env: dict[str, str]) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.devtools.democlients",
        name,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"status": "error", "reply": err.decode().strip().splitlines()[-1:] or ["no output"]}
    return json.loads(lines[-1])


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


async def run_demo(keep: bool = False) -> int:
    state = Path(tempfile.mkdtemp(prefix="aibridge-demo-"))
    token = "demo-" + secrets.token_hex(12)
    gateway = LocalGateway({token: "demo-user"})
    await gateway.start()
    settings = load_settings(
        {
            "gateway": gateway.url,
            "listen": "127.0.0.1:0",
            "state_dir": str(state),
            "log.level": "warning",
            "log.format": "text",
        },
        environ={},
    )
    configure_logging(settings.log_level, settings.log_format)
    app = ProxyApp(settings)
    await app.start()
    host, port = app.listen_address
    proxy_url = f"http://demo:{token}@{host}:{port}"
    print("aibridge-proxy demo")
    print(f"  local gateway  {gateway.url}  (AI Bridge routes under /api/v2/aibridge)")
    print(f"  proxy          http://{host}:{port}  (CA {settings.ca_cert_path})")
    print()

    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update(
        HTTPS_PROXY=proxy_url,
        SSL_CERT_FILE=str(settings.client_bundle_path),
        OPENAI_API_KEY=token,  # the Coder token as the provider key ("centralized" mode)
        ANTHROPIC_API_KEY="sk-ant-your-own-key",  # a personal key: the token rides in a header
    )
    rows = [["CLIENT", "ORIGINAL URL", "->", "GATEWAY URL", "PROVIDER", "STATUS", "TIME"]]
    failures = 0
    for name, (label, _) in CLIENTS.items():
        seen = len(gateway.records)
        result = await _run_client(name, env)
        recs = gateway.records[seen:]
        gw_url = gateway.url + recs[-1].path if recs else "-"
        provider = recs[-1].path.split("/")[4] if recs else "-"
        status = str(result.get("status"))
        failures += status != "200"
        rows.append(
            [
                label,
                result.get("url", "-"),
                "->",
                gw_url,
                provider,
                status,
                f"{result.get('seconds', 0):.2f}s",
            ]
        )
        if status != "200":
            rows.append(["", f"  {result.get('reply')}", "", "", "", "", ""])
    print(_table(rows))
    print()
    print("Replies came from the local gateway; nothing left this machine.")
    print("To send your own tools through this proxy while it runs (demo --keep):")
    print(f'  export HTTPS_PROXY="{proxy_url}"')
    print(
        f'  export SSL_CERT_FILE="{settings.client_bundle_path}" REQUESTS_CA_BUNDLE="{settings.client_bundle_path}"'
    )
    print(f'  export NODE_EXTRA_CA_CERTS="{settings.ca_cert_path}"')
    print(f'  export OPENAI_API_KEY="{token}"')
    if keep:
        print("\nServing until Ctrl-C ...", flush=True)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
    await app.stop()
    await gateway.stop()
    shutil.rmtree(state, ignore_errors=True)
    return 1 if failures else 0
