"""
Routing rules at request time: which rule decides each intercepted request, from who sends it
(user, workspace, groups, address), what it asks for (host, path, method) and, only when a rule
needs it, the model in its body.

Most requests are decided in `requestheaders` and stream as before. A WebSocket session is
decided on its upgrade, and model rules then apply to each `response.create` message: a denied
model closes the session with 1008 and the rule's message, a replaced one is rewritten. When going on needs the
model, the body is read first (up to `aibridge_rules_max_body` bytes, with a Content-Length)
and the decision is made in `request`; GatewayRouter applies it in the same hook. A body that a
model rule needs but cannot read is answered with a clear 4xx, never routed elsewhere.
"""

from __future__ import annotations

import asyncio
import json
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
from addons.engine.websocket_cap import WebSocketMessageCap
from addons.routing.profile_store import ProfileChoices
from addons.routing.profile_store import RedisProfileChoices
from addons.routing.snapshot import Routing
from addons.rules.model_field import ModelUnreadable
from addons.rules.model_field import model_in_path
from addons.rules.model_field import model_span
from addons.rules.model_field import replace_model
from addons.rules.plan import decide
from addons.rules.policy import NEEDS_MODEL
from addons.rules.policy import Decision
from addons.rules.policy import Deny
from addons.rules.policy import Facts
from addons.rules.policy import Route
from addons.rules.request_target import is_websocket_upgrade

logger = logging.getLogger(__name__)


def _json_with_length(headers) -> bool:
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media.endswith(("/json", "+json")) and headers.get("content-length", "").isdigit()


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
        if policy.empty or identity is None or not snapshot.intercepts(request.host):
            return  # rules govern what we intercept, for someone we know
        path_model = model_in_path(request.path)
        peer = flow.client_conn.peername
        facts = Facts(
            host=request.host,
            path=request.path,
            method=request.method,
            workspace=identity.workspace,
            user=identity.user,
            groups=policy.groups_of(identity.user),
            client=peer[0] if peer else None,
            model=path_model,
            model_known=path_model is not None,
        )
        chosen = self.choices.store.get(identity.user, identity.workspace)
        observed = snapshot.table.lookup(request.host) is None
        if observed and not _json_with_length(request.headers):
            # An observed tool's own protocol (protobuf, bidirectional streams): never held
            # back to look for a model; rules on the model do not apply to it.
            facts = replace(facts, model_known=True)
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
        limit = ctx.options.aibridge_rules_max_body
        length = request.headers.get("content-length", "")
        if not length.isdigit():
            self._refuse(flow, 411, RejectReason.BODY_WITHOUT_LENGTH, "a routing rule needs this request's model: send the body "
                         "with a Content-Length")  # fmt: skip
        elif int(length) > limit:
            self._refuse(flow, 413, RejectReason.BODY_TOO_LARGE, f"a routing rule needs this request's model, and the body "
                         f"is larger than model_body_limit ({limit} bytes)")  # fmt: skip
        else:
            request.stream = False  # read it whole: `request` decides
            entry.decision = PendingModel(facts, chosen)

    def request(self, flow: http.HTTPFlow) -> None:
        entry = record(flow)
        pending = entry.decision
        if not isinstance(pending, PendingModel) or flow.response is not None:
            return
        try:
            model, _ = model_span(flow.request.raw_content or b"")
        except ModelUnreadable as e:
            if self.routing.current.table.lookup(flow.request.host) is None:
                model = None  # observed: the tool keeps working; model rules do not apply
            else:
                self._refuse(
                    flow,
                    400,
                    RejectReason.MODEL_UNREADABLE,
                    f"a routing rule needs this request's model, but {e}",
                )
                return
        facts = replace(pending.facts, model=model, model_known=True)
        _, entry.decision = decide(facts, self.routing.current.policy, pending.chosen)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """Codex's Responses API over WebSocket: each `response.create` names its model."""
        session = record(flow).session
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        if session is None or not message.from_client or not message.is_text:
            return
        try:
            event = json.loads(message.content)
        except ValueError:
            return
        if not isinstance(event, dict) or event.get("type") != "response.create":
            return
        model = event.get("model") if isinstance(event.get("model"), str) else None
        facts = replace(session.facts, model=model, model_known=True)
        _, decision = decide(facts, self.routing.current.policy, session.chosen)
        if not isinstance(decision, Decision):
            return
        action = decision.rule.action
        if isinstance(action, Deny):
            message.drop()
            reason = f"{action.message} (rule {decision.rule.name})"[:120]  # fits a close frame
            logger.info("closing a WebSocket session: %s", reason)
            self.websocket_closer.close(flow.client_conn, POLICY_VIOLATION, reason)
        elif isinstance(action, Route) and action.model and model != action.model:
            message.content = replace_model(message.content, action.model)

    @staticmethod
    def _refuse(flow: http.HTTPFlow, status: int, reason: RejectReason, message: str) -> None:
        """The router answers it, so the access log and the page see the request too."""
        record(flow).decision = RuleRefusal(status, reason, message)
