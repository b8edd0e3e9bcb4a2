"""
`aibridge-proxy profile list | show | use NAME | use --default`: a developer's routing profile,
switched through the proxy itself with their own proxy credentials (the `HTTPS_PROXY` or
`HTTP_PROXY` their tools already use), so nobody can change another user's. Standard library
only.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping

RESERVED_URL = "http://aibridge-proxy.internal/profile"


class ProfileError(Exception):
    """One line for the developer: what went wrong and what to do."""


def proxy_url(environ: Mapping[str, str]) -> str:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        if environ.get(name):
            return environ[name]
    raise ProfileError(
        "HTTPS_PROXY is not set: export the proxy URL your tools use, e.g. "
        "http://<workspace>:$CODER_SESSION_TOKEN@proxy.example.com:8888"
    )


def call(environ: Mapping[str, str], profile: str | None = None, switch: bool = False) -> dict:
    url = proxy_url(environ)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": url}))
    data = json.dumps({"profile": profile}).encode() if switch else None
    request = urllib.request.Request(RESERVED_URL, data=data, method="PUT" if switch else "GET")
    request.add_header("Content-Type", "application/json")
    try:
        with opener.open(request, timeout=15) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace").strip()
        raise ProfileError(f"the proxy answered {e.code}: {text.split(': ', 1)[-1]}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ProfileError(f"cannot reach the proxy at its HTTPS_PROXY address: {reason}") from None


def render(state: dict, what: str) -> str:
    where = f"workspace {state['workspace']}" if state["workspace"] else "no workspace"
    lines = []
    if what == "list":
        for name, rules in state["profiles"].items():
            mark = "*" if name == state["active"] else " "
            lines.append(f"{mark} {name}: {', '.join(rules) or '(no rules)'}")
        if not state["profiles"]:
            lines.append("no profiles are configured on this proxy")
    active = state["active"] or "none"
    how = "your choice" if state["chosen"] == state["active"] and state["chosen"] else "default"
    lines.append(f"{state['user']}, {where}: profile {active} ({how})")
    return "\n".join(lines) + "\n"
