"""
What the proxy answers itself, for the developer behind a request; never forwarded.

- The reserved plain-HTTP host `aibridge-proxy.internal` (under `.internal`, which no one can
  register, like mitmproxy's `mitm.it`). Requests to it carry the developer's own proxy
  credentials, so the proxy knows who asks:
  `/` the developer page (set up this machine, check it, my recent requests, my profile),
  `/ca.pem`, `/ca.cer` (DER), `/ca-bundle.pem`, `/requests` (my recent requests as JSON), and
  `/profile`: GET shows the active routing profile of this workspace, PUT `{"profile": NAME}`
  (or null for the default) or the page's form switches it. Nobody sees or changes another
  user's traffic or choice: everything is keyed by the authenticated user and workspace.
- `/.well-known/aibridge-proxy/check` on a routed host: the page's "check my setup". Reaching
  it at all proves this browser trusts our CA and passed the proxy's sign-in; the answer says
  as whom. Only the developer page's origin may read it (CORS).
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from pathlib import Path
from urllib.parse import parse_qs
from urllib.parse import urlsplit

from cryptography import x509
from mitmproxy import ctx
from mitmproxy import http
from redis.exceptions import RedisError

from addons.core.record import RejectReason
from addons.core.record import existing_record
from addons.core.record import record
from addons.core.responses import plain_response
from addons.developer.pages import CHECK_PATH
from addons.developer.pages import RESERVED_HOST
from addons.developer.pages import DeveloperPage
from addons.developer.pages import LimitRow
from addons.developer.pages import ProfileView
from addons.developer.pages import RecentRow
from addons.developer.pages import nonce
from addons.developer.pages import origin_of
from addons.developer.pages import page_headers
from addons.developer.pages import platform_and_shell
from addons.developer.pages import render_developer
from addons.developer.verdicts import CONNECT_VERDICTS
from addons.govern.limits import Limits
from addons.govern.limits import uses_of
from addons.observe.recent_requests import RecentRequest
from addons.observe.recent_requests import RecentRequests
from addons.observe.request_context import CopilotQuotas
from addons.routing.rules import ChoiceStore
from addons.routing.snapshot import Routing
from addons.rules.policy import Facts
from addons.rules.profile_choices import TooManyChoices
from certs.authority import der_certificate
from certs.authority import fingerprint
from certs.bundle import build_bundle

logger = logging.getLogger(__name__)
PAGE_ORIGIN = f"http://{RESERVED_HOST}"
# The proxy's refusals of a developer's credentials that the page explains (others: a 407).
EXPLAINED = {
    RejectReason.INVALID_TOKEN: 407,
    RejectReason.RATE_LIMITED: 429,
    RejectReason.INTERNAL_ERROR: 503,
}


def json_response(status: int, body: dict | list, headers: dict | None = None) -> http.Response:
    return http.Response.make(
        status,
        json.dumps(body, indent=2).encode() + b"\n",
        {"Content-Type": "application/json", "Cache-Control": "no-store", **(headers or {})},
    )


def recent_rows(entries: list[RecentRequest]) -> list[RecentRow]:
    def tokens(e: RecentRequest) -> str:
        if e.input_tokens is None and e.output_tokens is None:
            return ""
        return f"{e.input_tokens if e.input_tokens is not None else '?'} / " + (
            f"{e.output_tokens if e.output_tokens is not None else '?'}"
        )

    return [
        RecentRow(
            time=datetime.datetime.fromtimestamp(e.time, datetime.UTC).strftime("%H:%M:%S"),
            tool=e.tool or "",
            where=e.provider or e.host,
            model=e.model or "",
            status=e.outcome or (str(e.status) if e.status is not None else "failed"),
            duration=f"{e.duration_ms:.0f} ms",
            tokens=tokens(e),
            problem=e.problem or "",
            fix=e.fix or "",
        )
        for e in entries
    ]


class SelfService:
    def __init__(
        self,
        routing: Routing,
        choices: ChoiceStore,
        recent: RecentRequests | None = None,
        limits: Limits | None = None,
        quotas: CopilotQuotas | None = None,
    ):
        self.routing = routing
        self.choices = choices
        self.recent = recent
        self.limits = limits
        self.quotas = quotas
        self.ca_pem: bytes | None = None
        self.ca_fingerprint = ""

    def load(self, loader):
        loader.add_option(
            "aibridge_proxy_address",
            str | None,
            None,
            "host:port developers use for the proxy, for the lines the developer page shows "
            "(default: the address the browser connected to).",
        )

    def configure(self, updated):
        if "confdir" not in updated:
            return
        path = Path(ctx.options.confdir).expanduser() / "mitmproxy-ca-cert.pem"
        try:
            self.ca_pem = path.read_bytes()
            cert = x509.load_pem_x509_certificate(self.ca_pem)
        except (OSError, ValueError):
            self.ca_pem, self.ca_fingerprint = None, ""
            return
        self.ca_fingerprint = fingerprint(cert)

    # -- routing of our own requests -----------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        host = request.host.lower()
        if host == RESERVED_HOST:
            record(flow).self_service = True
            self._reserved_headers(flow)
        elif (
            request.path.split("?", 1)[0] == CHECK_PATH
            and self.routing.current.table.lookup(host) is not None
        ):
            record(flow).self_service = True
            self._check(flow)

    def _reserved_headers(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        if flow.response is not None:
            reason = record(flow).reject
            if reason in EXPLAINED and request.method == "GET" and self._path(flow) == "/":
                flow.response = self._page(flow, verdict=CONNECT_VERDICTS[EXPLAINED[reason]])
            return  # e.g. the 407 of a request without credentials: the browser then sends them
        request.stream = False
        if record(flow).identity is None:
            flow.response = plain_response(407, "proxy credentials needed")
            return
        path = self._path(flow)
        if path not in ("/", "/ca.pem", "/ca.cer", "/ca-bundle.pem", "/requests", "/profile"):
            flow.response = plain_response(
                404, f"{RESERVED_HOST} answers /, /ca.pem, /ca.cer, /ca-bundle.pem, /requests "
                "and /profile",
            )  # fmt: skip
        elif path == "/profile" and request.method not in ("GET", "PUT", "POST"):
            flow.response = plain_response(405, "GET shows the profile, PUT switches it")
        elif path != "/profile" and request.method not in ("GET", "HEAD"):
            flow.response = plain_response(405, f"{path} answers GET")

    @staticmethod
    def _path(flow: http.HTTPFlow) -> str:
        return flow.request.path.split("?", 1)[0]

    async def request(self, flow: http.HTTPFlow) -> None:
        entry = existing_record(flow)
        if entry is None or not entry.self_service or flow.response is not None:
            return
        try:
            await self._answer(flow)
        except Exception:
            logger.exception("could not answer %s", self._path(flow))
            flow.response = None
        if flow.response is None:  # never unanswered: an unanswered flow would be dialled
            flow.response = plain_response(500, "the proxy could not answer this request")

    def server_connect(self, data) -> None:
        """The reserved name is ours alone: whatever it resolves to (a company `.internal`
        zone) is never dialled, whatever went wrong before."""
        address = data.server.address
        if address and str(address[0]).lower().rstrip(".") == RESERVED_HOST:
            data.server.error = f"{RESERVED_HOST} is answered by the proxy, never dialled"

    async def _answer(self, flow: http.HTTPFlow) -> None:
        path = self._path(flow)
        if path == "/profile":
            await self._profile(flow)
        elif path == "/":
            flow.response = self._page(flow, limits=await self._limit_rows(flow))
        elif path == "/requests":
            flow.response = self._recent_json(flow)
        else:
            flow.response = self._download(path)

    # -- the page and the files ------------------------------------------------------------------

    async def _limit_rows(self, flow: http.HTTPFlow) -> list[LimitRow] | None:
        identity = record(flow).identity
        if self.limits is None or not self.limits.limits or identity is None or not identity.user:
            return None
        peer = flow.client_conn.peername
        policy = self.routing.current.policy
        facts = Facts(host="", path="/", method="GET", workspace=identity.workspace,
                      user=identity.user, groups=policy.groups_of(identity.user),
                      client=peer[0] if peer else None)  # fmt: skip
        uses = await uses_of(self.limits, facts)
        if uses is None:
            return None
        return [
            LimitRow(u.name, u.description, u.limit.used_text(u.used), u.limit.used_text(u.left),
                     time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(u.resets_at)) if u.resets_at else "")
            for u in uses
        ]  # fmt: skip

    def _page(
        self, flow: http.HTTPFlow, verdict=None, notice: str | None = None, limits=None
    ) -> http.Response:
        if self.ca_pem is None:
            return plain_response(503, "the proxy's CA is not loaded")
        query = parse_qs(urlsplit(flow.request.path).query, keep_blank_values=True)
        platform, shell = platform_and_shell(
            query.get("os", [""])[0],
            query.get("shell", [""])[0],
            flow.request.headers.get("user-agent"),
        )
        if notice is None and (switched := query.get("switched")) is not None:
            # only a configured profile's name: the URL is anyone's to write
            if not switched[0]:
                notice = "Switched back to the default profile."
            elif switched[0] in self.routing.current.policy.profiles:
                notice = f"Switched to the profile {switched[0]}."
        identity = record(flow).identity if verdict is None else None
        user = identity.user if identity else None
        check = self._check_url()
        page = DeveloperPage(
            proxy_address=self._proxy_address(flow),
            ca_fingerprint=self.ca_fingerprint,
            platform=platform,
            shell=shell,
            user=user or (("(not validated: presence mode)") if identity else None),
            workspace=identity.workspace if identity else None,
            verdict=verdict,
            check_url=check,
            recent=recent_rows(self.recent.of(user)) if self.recent and user else None,
            limits=limits,
            copilot=[s.describe() for s in self.quotas.of(user)] if self.quotas and user else None,
            profiles=self._profiles(identity) if identity and user else None,
            notice=notice,
        )
        page_nonce = nonce()
        body = render_developer(page, self.ca_pem, page_nonce).encode()
        return http.Response.make(
            200,
            body,
            {"Content-Type": "text/html; charset=utf-8", **page_headers(page_nonce, check)},
        )

    def _check_url(self) -> str | None:
        """The check on api.openai.com when it is routed, else on the first routed host."""
        hosts = [r.host for r in self.routing.current.table.routes if "*" not in r.host]
        if not hosts:
            return None
        host = "api.openai.com" if "api.openai.com" in hosts else hosts[0]
        return f"https://{host}{CHECK_PATH}"

    @staticmethod
    def _proxy_address(flow: http.HTTPFlow) -> str:
        if ctx.options.aibridge_proxy_address:
            return ctx.options.aibridge_proxy_address
        sock = flow.client_conn.sockname
        if not sock:
            return "proxy.example.com:8888"
        host = f"[{sock[0]}]" if ":" in sock[0] else sock[0]
        return f"{host}:{sock[1]}"

    def _download(self, path: str) -> http.Response:
        assert self.ca_pem is not None
        if path == "/ca.cer":
            der = der_certificate(self.ca_pem)
            return self._file(der, "application/pkix-cert", "aibridge-proxy-ca.cer")
        if path == "/ca-bundle.pem":
            bundle = build_bundle() + self.ca_pem
            return self._file(bundle, "application/x-pem-file", "aibridge-proxy-ca-bundle.pem")
        return self._file(self.ca_pem, "application/x-pem-file", "aibridge-proxy-ca.pem")

    @staticmethod
    def _file(data: bytes, media: str, name: str) -> http.Response:
        return http.Response.make(
            200,
            data,
            {"Content-Type": media, "Content-Disposition": f'attachment; filename="{name}"'},
        )

    def _recent_json(self, flow: http.HTTPFlow) -> http.Response:
        identity = record(flow).identity
        if identity is None or not identity.user or self.recent is None:
            return plain_response(403, "recent requests need a validated Coder user")
        return json_response(200, [e.__dict__ for e in self.recent.of(identity.user)])

    # -- the check ---------------------------------------------------------------------------------

    def _check(self, flow: http.HTTPFlow) -> None:
        cors = {"Access-Control-Allow-Origin": PAGE_ORIGIN, "Vary": "Origin"}
        if flow.response is not None:
            return
        identity = record(flow).identity
        if identity is None:  # not through a signed-in tunnel: never reached here
            flow.response = plain_response(407, "proxy credentials needed")
            return
        who = identity.user or "a user the proxy did not validate (presence mode)"
        where = f" (workspace {identity.workspace})" if identity.workspace else ""
        flow.response = json_response(
            200,
            {
                "ok": True,
                "user": identity.user,
                "workspace": identity.workspace,
                "summary": f"this browser trusts the proxy's CA and reaches the proxy signed "
                f"in as {who}{where}.",
            },
            cors,
        )

    # -- profiles ----------------------------------------------------------------------------------

    def _profiles(self, identity) -> ProfileView | None:
        policy = self.routing.current.policy
        if not policy.profiles:
            return None
        chosen = self.choices.store.get(identity.user, identity.workspace)
        return ProfileView(
            policy.profile_in_force(chosen), policy.default_profile, tuple(policy.profiles)
        )

    async def _profile(self, flow: http.HTTPFlow) -> None:
        identity = record(flow).identity
        policy = self.routing.current.policy
        request = flow.request
        if identity is None or not identity.user:
            flow.response = plain_response(
                403, "profiles need a validated Coder user (auth.mode: validate)"
            )
            return
        form = request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        )
        if request.method in ("PUT", "POST"):
            origin = request.headers.get("origin")
            if (origin is not None or form) and not self._same_origin(request):
                # a browser on another site (a CLI sends no Origin): never with our credentials
                flow.response = plain_response(403, "profile switches come from the page only")
                return
            if form:
                values = parse_qs((request.raw_content or b"").decode("utf-8", "replace"))
                wanted = values.get("profile", [""])[0] or None
            elif not request.headers.get("content-type", "").startswith("application/json"):
                flow.response = plain_response(
                    415, 'send {"profile": "<name>"} as application/json'
                )
                return
            else:
                try:
                    body = json.loads(request.raw_content or b"{}")
                except (ValueError, RecursionError):
                    body = None
                wanted = body.get("profile") if isinstance(body, dict) else []
                if wanted is not None and not isinstance(wanted, str):
                    flow.response = plain_response(
                        400, 'send {"profile": "<name>"} (or {"profile": null}) as JSON'
                    )
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
            except TooManyChoices as e:
                flow.response = plain_response(409, str(e))
                return
            if form:  # back to the page, which shows the switch
                flow.response = http.Response.make(
                    303,
                    b"",
                    {"Location": "/?switched=" + (wanted or ""), "Cache-Control": "no-store"},
                )
                return
        chosen = self.choices.store.get(identity.user, identity.workspace)
        flow.response = json_response(
            200,
            {
                "user": identity.user,
                "workspace": identity.workspace,
                "active": policy.profile_in_force(chosen),
                "chosen": chosen,
                "default": policy.default_profile,
                "profiles": {
                    name: [r.name for r in rules] for name, rules in policy.profiles.items()
                },
            },
        )

    @staticmethod
    def _same_origin(request: http.Request) -> bool:
        """A form post from our page: a browser says where it comes from (another site's form
        could otherwise switch a developer's profile with their proxy credentials)."""
        origin = request.headers.get("origin") or origin_of(request.headers.get("referer"))
        return origin == PAGE_ORIGIN
