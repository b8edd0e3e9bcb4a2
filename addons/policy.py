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
import weakref
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http

from addons.auth import TokenAuth
from addons.engine.websocket_cap import WebSocketMessageCap
from addons.profile_store import RedisProfileChoices
from addons.responses import provider_error_response
from addons.routing import Routing
from addons.rules.model_field import ModelUnreadable
from addons.rules.model_field import model_in_path
from addons.rules.model_field import model_span
from addons.rules.model_field import replace_model
from addons.rules.policy import NEEDS_MODEL
from addons.rules.policy import Decision
from addons.rules.policy import Deny
from addons.rules.policy import Facts
from addons.rules.policy import Route
from addons.rules.profile_choices import ProfileChoices
from addons.rules.request_target import is_websocket_upgrade

logger = logging.getLogger(__name__)


def _json_with_length(headers) -> bool:
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media.endswith(("/json", "+json")) and headers.get("content-length", "").isdigit()


@dataclass
class PendingModel:
    """Decided once the body is in: the facts so far and the profile in force."""

    facts: Facts
    profile: str | None


_DECISIONS: weakref.WeakKeyDictionary[http.HTTPFlow, Decision | PendingModel] = (
    weakref.WeakKeyDictionary()
)
# WebSocket sessions: what the upgrade was decided on, for the messages that follow
_SESSIONS: weakref.WeakKeyDictionary[http.HTTPFlow, PendingModel] = weakref.WeakKeyDictionary()
POLICY_VIOLATION = 1008


def decision_for(flow: http.HTTPFlow) -> Decision | PendingModel | None:
    return _DECISIONS.get(flow)


class ChoiceStore:
    """Holds the profile-choice store in use: a file in the state directory, or Redis."""

    def __init__(self) -> None:
        self.store: ProfileChoices | RedisProfileChoices = ProfileChoices(None)

    async def replace(self, store: ProfileChoices | RedisProfileChoices) -> None:
        old, self.store = self.store, store
        if isinstance(store, RedisProfileChoices):
            store.start()  # loads the choices, and keeps retrying while Redis is away
        if isinstance(old, RedisProfileChoices):
            await old.close()


class RoutingRules:
    def __init__(
        self,
        routing: Routing,
        auth: TokenAuth,
        choices: ChoiceStore,
        websocket_closer: WebSocketMessageCap | None = None,
    ):
        self.routing = routing
        self.auth = auth
        self.choices = choices
        self.websocket_closer = websocket_closer or WebSocketMessageCap()
        self._tasks: set[asyncio.Task] = set()

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
                task = asyncio.get_running_loop().create_task(
                    self.choices.replace(RedisProfileChoices(where))
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self.choices.store = ProfileChoices(Path(where) if where else None)

    async def done(self):
        if isinstance(self.choices.store, RedisProfileChoices):
            await self.choices.store.close()

    def active_profile(self, user: str | None, workspace: str | None) -> str | None:
        """The profile this (user, workspace) chose, while it exists, else the default."""
        return self.routing.current.policy.profile_in_force(self.choices.store.get(user, workspace))

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        snapshot = self.routing.current
        policy, request = snapshot.policy, flow.request
        identity = self.auth.identity(flow)
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
        profile = self.active_profile(identity.user, identity.workspace)
        observed = snapshot.table.lookup(request.host) is None
        if observed and not _json_with_length(request.headers):
            # An observed tool's own protocol (protobuf, bidirectional streams): never held
            # back to look for a model; rules on the model do not apply to it.
            facts = replace(facts, model_known=True)
        if is_websocket_upgrade(request.headers):
            # a session: decided on its headers now (model rules cannot match yet, model
            # replacements route it), then model rules apply to each response.create message
            facts = replace(facts, model_known=True)
            _SESSIONS[flow] = PendingModel(facts, profile)
        decision = policy.decide(facts, profile)
        if decision is None:
            return
        if decision != NEEDS_MODEL:
            _DECISIONS[flow] = decision
            return
        limit = ctx.options.aibridge_rules_max_body
        length = request.headers.get("content-length", "")
        if not length.isdigit():
            self._refuse(flow, 411, "a routing rule needs this request's model: send the body "
                         "with a Content-Length")  # fmt: skip
        elif int(length) > limit:
            self._refuse(flow, 413, f"a routing rule needs this request's model, and the body "
                         f"is larger than model_body_limit ({limit} bytes)")  # fmt: skip
        else:
            request.stream = False  # read it whole: `request` decides
            _DECISIONS[flow] = PendingModel(facts, profile)

    def request(self, flow: http.HTTPFlow) -> None:
        pending = _DECISIONS.get(flow)
        if not isinstance(pending, PendingModel) or flow.response is not None:
            return
        try:
            model, _ = model_span(flow.request.raw_content or b"")
        except ModelUnreadable as e:
            if self.routing.current.table.lookup(flow.request.host) is None:
                model = None  # observed: the tool keeps working; model rules do not apply
            else:
                self._refuse(flow, 400, f"a routing rule needs this request's model, but {e}")
                return
        facts = replace(pending.facts, model=model, model_known=True)
        decision = self.routing.current.policy.decide(facts, pending.profile)
        if decision is None:
            del _DECISIONS[flow]
        else:
            _DECISIONS[flow] = decision

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """Codex's Responses API over WebSocket: each `response.create` names its model."""
        session = _SESSIONS.get(flow)
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
        decision = self.routing.current.policy.decide(facts, session.profile)
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

    def _refuse(self, flow: http.HTTPFlow, status: int, message: str) -> None:
        _DECISIONS.pop(flow, None)
        route = self.routing.current.table.lookup(flow.request.host)
        flow.metadata["aibridge.reject_reason"] = "model_unreadable"
        flow.response = provider_error_response(
            route.provider if route else None, flow.request.host, status, message
        )
