"""
Routing rules at request time: which rule decides each intercepted request, from who sends it
(user, workspace, groups, address), what it asks for (host, path, method) and, only when a rule
needs it, the model in its body.

Most requests are decided in `requestheaders` and stream as before. A WebSocket session is
decided on its upgrade, and model rules then apply to each `response.create` message: a denied
model closes the session with 1008 and the rule's message, a replaced one is rewritten, and a
message the rules cannot read unambiguously closes it too. When going on needs the model, the
body is read first (up to `aibridge_rules_max_body` bytes, with or without a Content-Length)
and the decision is made in `request`; GatewayRouter applies it in the same hook. A body that
a model rule needs but cannot read is answered with a clear 4xx, never routed elsewhere, on
routed and observed hosts alike. Exempt on observed hosts only: a tool's binary protocols
(gRPC, Connect, protobuf: never held back), and bodies and WebSocket messages that are not
JSON at all (no reader takes a model from them); one that starts like JSON must be readable.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http

from addons.core.background import in_background
from addons.core.record import PendingModel
from addons.core.record import RejectReason
from addons.core.record import RuleRefusal
from addons.core.record import record
from addons.engine.body_limit import limit_buffered_body
from addons.engine.websocket_cap import WebSocketMessageCap
from addons.routing.profile_store import ProfileChoices
from addons.routing.profile_store import RedisProfileChoices
from addons.routing.snapshot import Routing
from addons.rules.model_field import ModelUnreadable
from addons.rules.model_field import model_in_path
from addons.rules.model_field import model_span
from addons.rules.model_field import replace_model
from addons.rules.model_field import top_level_fields
from addons.rules.plan import decide
from addons.rules.policy import NEEDS_MODEL
from addons.rules.policy import Decision
from addons.rules.policy import Deny
from addons.rules.policy import Facts
from addons.rules.policy import Route
from addons.rules.request_target import decoded_path
from addons.rules.request_target import is_binary_protocol
from addons.rules.request_target import is_websocket_upgrade

logger = logging.getLogger(__name__)


def _looks_like_json(body: bytes) -> bool:
    """Starts like a JSON object (a BOM and whitespace aside): some reader could take a model
    from it, so a body like this that we cannot read is refused, never passed."""
    return body.lstrip(b" \t\r\n").removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n").startswith(b"{")


POLICY_VIOLATION = 1008


class ChoiceStore:
    """Holds the profile-choice store in use: a file in the state directory, or Redis."""

    def __init__(self) -> None:
        self.store: ProfileChoices | RedisProfileChoices = ProfileChoices(None)
        self._closing: set[asyncio.Task] = set()

    def replace(self, store: ProfileChoices | RedisProfileChoices) -> None:
        """Use `store` from now on. A Redis store that is replaced (by another, or by a file)
        is closed in the background, so its retry task never outlives it."""
        old, self.store = self.store, store
        if isinstance(store, RedisProfileChoices):
            store.start()  # loads the choices, and keeps retrying while Redis is away
        if isinstance(old, RedisProfileChoices):
            in_background(old.close(), self._closing)

    async def close(self) -> None:
        if isinstance(self.store, RedisProfileChoices):
            await self.store.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


class RoutingRules:
    def __init__(
        self,
        routing: Routing,
        choices: ChoiceStore,
        websocket_closer: WebSocketMessageCap | None = None,
    ):
        self.routing = routing
        self.choices = choices
        self.websocket_closer = websocket_closer or WebSocketMessageCap()

    def load(self, loader):
        loader.add_option(
            "aibridge_rules_max_body",
            int,
            16 * 1024 * 1024,
            "Largest request body read to find the model when a rule needs it (bigger: 413).",
        )
        loader.add_option(
            "aibridge_profile_store",
            str | None,
            None,
            "Where each (user, workspace)'s chosen profile is kept: a JSON file, or a "
            "redis:// URL that several replicas share (default: in memory).",
        )

    def configure(self, updated):
        if "aibridge_rules_max_body" in updated and ctx.options.aibridge_rules_max_body < 1024:
            raise exceptions.OptionsError("aibridge_rules_max_body must be at least 1024")
        if "aibridge_profile_store" in updated:
            where = ctx.options.aibridge_profile_store or ""
            if where.startswith(("redis://", "rediss://", "unix://")):
                self.choices.replace(RedisProfileChoices(where))
            else:
                self.choices.replace(ProfileChoices(Path(where) if where else None))

    async def done(self):
        await self.choices.close()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        snapshot = self.routing.current
        policy, request = snapshot.policy, flow.request
        entry = record(flow)
        identity = entry.identity
        if identity is None or not snapshot.intercepts(request.host):
            return  # rules govern what we intercept, for someone we know
        path_model = model_in_path(request.path)
        peer = flow.client_conn.peername
        facts = Facts(
            host=request.host,
            path=decoded_path(request.path),
            method=request.method,
            workspace=identity.workspace,
            user=identity.user,
            groups=policy.groups_of(identity.user),
            client=peer[0] if peer else None,
            model=path_model,
            model_known=path_model is not None,
        )
        entry.facts = facts  # the limits match on the same facts
        if policy.empty:
            return
        chosen = self.choices.store.get(identity.user, identity.workspace)
        entry.profile = policy.profile_in_force(chosen)  # MCP tool calls are decided on it
        observed = snapshot.table.lookup(request.host) is None  # this decision's snapshot
        if observed and is_binary_protocol(request.headers.get("content-type", "")):
            facts = replace(facts, model_known=True)  # model rules do not apply (see above)
        if is_websocket_upgrade(request.headers):
            # a session: decided on its headers now (model rules cannot match yet, model
            # replacements route it), then model rules apply to each response.create message
            facts = replace(facts, model_known=True)
            entry.session = PendingModel(facts, chosen)
        _, decision = decide(facts, policy, chosen)
        if decision is None:
            return
        if decision != NEEDS_MODEL:
            entry.decision = decision
            return
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > ctx.options.aibridge_rules_max_body:
            self._refuse_too_large(flow)
        else:
            # read it whole, with or without a Content-Length (chunked, HTTP/2): `request`
            # decides; a body without one is cut off with 413 as soon as it is too long
            request.stream = False
            limit_buffered_body(flow, ctx.options.aibridge_rules_max_body)
            entry.decision = PendingModel(facts, chosen)

    def request(self, flow: http.HTTPFlow) -> None:
        entry = record(flow)
        pending = entry.decision
        if not isinstance(pending, PendingModel) or flow.response is not None:
            return
        body = flow.request.raw_content or b""
        if len(body) > ctx.options.aibridge_rules_max_body:
            self._refuse_too_large(flow)
            return
        try:
            # no body (a GET, an empty POST): no model; routed and observed hosts alike
            model = model_span(body)[0] if body else None
        except ModelUnreadable as e:
            if self._observed(pending.facts.host) and not _looks_like_json(body):
                model = None  # an observed tool's own format: no reader takes a model from it
            else:
                self._refuse(
                    flow,
                    400,
                    RejectReason.MODEL_UNREADABLE,
                    f"a routing rule needs this request's model, but {e}",
                )
                return
        facts = entry.facts = replace(pending.facts, model=model, model_known=True)
        _, entry.decision = decide(facts, self.routing.current.policy, pending.chosen)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """Codex's Responses API over WebSocket: each `response.create` names its model."""
        session = record(flow).session
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        policy = self.routing.current.policy
        if session is None or not message.from_client or not policy.has_model_rules:
            return
        # Model rules must read every client message the way the gateway would: one that is
        # not a text JSON object with unambiguous `type` and `model` ends the session (on an
        # observed host, only one that looks like JSON: the tool's own frames pass).
        if self._observed(session.facts.host) and not (  # the host asked for, not the gateway
            message.is_text and _looks_like_json(message.content)
        ):
            return
        try:
            if not message.is_text:
                raise ModelUnreadable("a binary message cannot be checked against the rules")
            fields = top_level_fields(message.content, ("type", "model"))
        except ModelUnreadable as e:
            message.drop()
            self._close_session(flow, f"model rules apply: {e}")
            return
        event_type = fields.get("type", (None,))[0]
        model = fields.get("model", (None,))[0]
        if event_type != "response.create":
            return
        if model is not None and not isinstance(model, str):
            message.drop()
            self._close_session(flow, "model rules apply: the model is not a string")
            return
        facts = replace(session.facts, model=model, model_known=True)
        _, decision = decide(facts, policy, session.chosen)
        if not isinstance(decision, Decision):
            return
        action = decision.rule.action
        if isinstance(action, Deny):
            message.drop()
            self._close_session(flow, f"{action.message} (rule {decision.rule.name})")
        elif isinstance(action, Route) and action.model and model != action.model:
            message.content = replace_model(message.content, action.model)

    def _observed(self, host: str) -> bool:
        return self.routing.current.table.lookup(host) is None

    def _close_session(self, flow: http.HTTPFlow, reason: str) -> None:
        reason = reason[:120]  # fits a close frame
        logger.info("closing a WebSocket session: %s", reason)
        self.websocket_closer.close(flow.client_conn, POLICY_VIOLATION, reason)

    def _refuse_too_large(self, flow: http.HTTPFlow) -> None:
        limit = ctx.options.aibridge_rules_max_body
        self._refuse(flow, 413, RejectReason.BODY_TOO_LARGE, f"a routing rule needs this request's model, and the body "
                     f"is larger than model_body_limit ({limit} bytes)")  # fmt: skip

    @staticmethod
    def _refuse(flow: http.HTTPFlow, status: int, reason: RejectReason, message: str) -> None:
        """The router answers it, so the access log and the page see the request too."""
        record(flow).decision = RuleRefusal(status, reason, message)
