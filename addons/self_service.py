"""
What the proxy answers itself, for the developer behind a request: the reserved plain-HTTP host
`aibridge-proxy.internal` (under `.internal`, which no one can register, like mitmproxy's
`mitm.it`) is never forwarded. Requests to it carry the developer's own proxy credentials, so
the proxy knows who asks: `GET /profile` shows the active routing profile of this workspace,
`PUT /profile` with `{"profile": NAME}` (or null for the default) switches it. Nobody can see
or change another user's choice: the key is the authenticated user and their workspace.
"""

from __future__ import annotations

import json

from mitmproxy import http
from redis.exceptions import RedisError

from addons.auth import TokenAuth
from addons.policy import ChoiceStore
from addons.responses import plain_response
from addons.routing import Routing

RESERVED_HOST = "aibridge-proxy.internal"


def json_response(status: int, body: dict) -> http.Response:
    return http.Response.make(
        status, json.dumps(body, indent=2).encode() + b"\n", {"Content-Type": "application/json"}
    )


class SelfService:
    def __init__(self, routing: Routing, auth: TokenAuth, choices: ChoiceStore):
        self.routing = routing
        self.auth = auth
        self.choices = choices

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        if request.host.lower() != RESERVED_HOST:
            return
        flow.metadata["aibridge.self_service"] = True
        if flow.response is not None:  # e.g. the 407 of a request without credentials
            return
        request.stream = False
        identity = self.auth.identity(flow)
        if identity is None:
            flow.response = plain_response(407, "proxy credentials needed")
        elif request.path.split("?", 1)[0] != "/profile":
            flow.response = plain_response(404, f"{RESERVED_HOST} answers /profile")
        elif request.method not in ("GET", "PUT", "POST"):
            flow.response = plain_response(405, "GET shows the profile, PUT switches it")

    async def request(self, flow: http.HTTPFlow) -> None:
        if not flow.metadata.get("aibridge.self_service") or flow.response is not None:
            return
        identity = self.auth.identity(flow)
        policy = self.routing.current.policy
        if identity is None or not identity.user:
            flow.response = plain_response(
                403, "profiles need a validated Coder user (auth.mode: validate)"
            )
            return
        if flow.request.method in ("PUT", "POST"):
            try:
                wanted = json.loads(flow.request.raw_content or b"{}").get("profile")
            except (ValueError, AttributeError):
                flow.response = plain_response(400, 'send {"profile": "<name>"} as JSON')
                return
            if wanted is not None and wanted not in policy.profiles:
                known = ", ".join(policy.profiles) or "none are configured"
                flow.response = plain_response(
                    404, f"no profile named {wanted!r} (profiles: {known})"
                )
                return
            try:
                await self.choices.store.set(identity.user, identity.workspace, wanted)
            except (OSError, RedisError) as e:  # nothing changed: say so, do not guess
                flow.response = plain_response(
                    503, f"the profile store is unavailable ({type(e).__name__})"
                )
                return
        chosen = self.choices.store.get(identity.user, identity.workspace)
        flow.response = json_response(
            200,
            {
                "user": identity.user,
                "workspace": identity.workspace,
                "active": chosen if chosen in policy.profiles else policy.default_profile,
                "chosen": chosen,
                "default": policy.default_profile,
                "profiles": {
                    name: [r.name for r in rules] for name, rules in policy.profiles.items()
                },
            },
        )
