"""
Limits and budgets on the wire (addons/rules/limits.py says what a limit is): every routed or
observed request is checked against the limits that match it before it is sent, and counted
once it is over; the refused ones never reach the gateway or the vendor, and never count.

Two addons share one `Limits` state: `LimitGuard` checks and takes (after the routing rules and
the prompt scan, before the router: a request the scan blocks is not counted), `LimitLedger`
counts tokens and releases leases once a response is over (at the end of the chain, after
token usage was read). A request is checked in `requestheaders`, or in `request` when its body
is held (the prompt scan, a model rule, a limit on `model`).

Refusals are 429 in the API's own shape with `Retry-After` (the true reset): a window limit
(`rate_limit_exceeded`) SDKs wait out; a spent budget (`insufficient_quota`, a window over
five minutes or any token budget) also says `x-should-retry: false`, which the openai and
anthropic SDKs obey at once; an open-request cap says retry in a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http

from addons.core.background import in_background
from addons.core.events import LIMIT_ALERT
from addons.core.events import LIMIT_AUDITED
from addons.core.events import LIMIT_REFUSED
from addons.core.events import LIMIT_STORE_ERROR
from addons.core.events import LIMIT_USAGE
from addons.core.events import EventBus
from addons.core.record import FlowRecord
from addons.core.record import PendingModel
from addons.core.record import RejectReason
from addons.core.record import RuleRefusal
from addons.core.record import existing_record
from addons.core.record import record
from addons.core.responses import provider_error_response
from addons.engine.body_limit import limit_buffered_body
from addons.engine.websocket_cap import WebSocketMessageCap
from addons.govern.limit_store import Ask
from addons.govern.limit_store import MemoryLimitStore
from addons.govern.limit_store import RedisLimitStore
from addons.govern.limit_store import StoreUnavailable
from addons.rules.limits import MICRO
from addons.rules.limits import SPENT
from addons.rules.limits import Limit
from addons.rules.limits import LimitUsage
from addons.rules.limits import Refusal
from addons.rules.limits import applicable
from addons.rules.limits import crossed
from addons.rules.limits import needs_model
from addons.rules.limits import parse_limits
from addons.rules.model_field import ModelUnreadable
from addons.rules.model_field import model_span
from addons.rules.policy import Facts
from addons.rules.policy import PolicyError
from addons.rules.request_target import is_websocket_upgrade
from addons.rules.token_usage import usage_of_message

logger = logging.getLogger(__name__)

HEARTBEAT = 10.0  # seconds between lease renewals (LEASE_TTL is three of them)
USAGE_EVERY = 15.0  # seconds between samples of every limit's use (the /metrics gauges)


@dataclass
class Taken:
    """What a request took, to count or give back once it is over."""

    # (limit, counter key, when the window ends): request windows and token budgets
    limits: list[tuple[Limit, str, float | None]] = field(default_factory=list)
    leases: list[tuple[str, str]] = field(default_factory=list)  # (lease set key, lease id)


class Limits:
    """The limits in force and the store they are counted in; shared by guard and ledger."""

    def __init__(self, events: EventBus | None = None) -> None:
        self.limits: tuple[Limit, ...] = ()
        self.store: MemoryLimitStore | RedisLimitStore = MemoryLimitStore()
        self.on_store_error = "allow"
        self.events = events or EventBus()
        self.taken: dict[int, Taken] = {}  # flow id -> what it holds
        self._store_down = False
        self.background: set[asyncio.Task] = set()
        self._heartbeat: asyncio.Task | None = None
        self._sampler: asyncio.Task | None = None

    def store_failed(self, why: str) -> None:
        """Logged once per outage, counted every time."""
        self.events.emit(LIMIT_STORE_ERROR, self.on_store_error)
        if not self._store_down:
            self._store_down = True
            logger.warning("the limits store is unavailable (%s): requests are %s until it is "
                           "back (limits_on_store_error)", why,
                           "allowed" if self.on_store_error == "allow" else "refused")  # fmt: skip

    def store_ok(self) -> None:
        if self._store_down:
            self._store_down = False
            logger.warning("the limits store is back: counting resumes")

    async def settle(self, budgets: list[tuple[Limit, str, int, float]], give_backs: list[str],
                     leases: list[tuple[str, str]], who: str | None) -> None:  # fmt: skip
        """What requests spent on budgets (limit, key, amount, window end) added, counts
        given back, leases released; then each budget's alert shares crossed said once (each
        crossing is one atomic add in the store). Shared by a request's end and a WebSocket
        session's answers."""
        adds = [(key, amount, expires) for _, key, amount, expires in budgets]
        try:
            totals = await self.store.settle(adds, give_backs, leases)
        except StoreUnavailable as e:
            self.store_failed(str(e))
            return
        now = time.time()
        for limit, key, amount, _ in budgets:
            after = totals.get(key)
            if after is None or not limit.alerts:
                continue
            for share in crossed(limit, after - amount, after):
                subject = limit.subject_of(key, now) or who
                self.events.emit(LIMIT_ALERT, limit.name, share)
                logger.warning("limit %s: %s reached %d%% of %s (%s used)", limit.name, subject,
                               round(share * 100), limit.describe(), limit.used_text(after))  # fmt: skip

    def replace_store(self, store) -> None:
        old, self.store = self.store, store
        in_background(old.close(), self.background)

    async def heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            leases = [lease for taken in self.taken.values() for lease in taken.leases]
            try:
                await self.store.renew(leases)
            except StoreUnavailable as e:
                self.store_failed(str(e))

    async def sample(self) -> list[LimitUsage] | None:
        """Each limit's use now, per subject, read from the store (None if it cannot say);
        reported on the bus for the usage gauges."""
        now = time.time()
        out = []
        try:
            for limit in self.limits:
                counters = await self.store.usage(limit.prefix(), leases=limit.kind == "concurrent")
                for key, used in counters.items():
                    if (subject := limit.subject_of(key, now)) is not None:
                        out.append(LimitUsage(limit, subject, used))
        except StoreUnavailable as e:
            self.store_failed(str(e))
            return None
        self.events.emit(LIMIT_USAGE, out)
        return out

    async def sampler(self) -> None:
        while True:  # with no limits left (a reload took them) the gauges fall to 0
            await self.sample()
            await asyncio.sleep(USAGE_EVERY)

    def start(self) -> None:
        if self._heartbeat is None:
            loop = asyncio.get_running_loop()
            self._heartbeat = loop.create_task(self.heartbeat())
            self._sampler = loop.create_task(self.sampler())

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._sampler.cancel()
        await self.store.close()
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)


@dataclass(frozen=True)
class LimitUse:
    """One limit as the developer page shows it to whom it applies."""

    name: str
    description: str
    used: int  # (micro-dollars for a usd limit: limit.used_text says it)
    left: int
    resets_at: float | None  # None: open requests, no window
    limit: Limit


IDENTITY_CONDITIONS = ("user", "group", "workspace", "client")


async def uses_of(state: Limits, facts: Facts) -> list[LimitUse] | None:
    """Each limit that applies to this developer (whatever the host or model), with its use
    now; None if the store cannot say."""
    now = time.time()
    out = []
    try:
        for limit in state.limits:
            mine = all(p.matches(facts.values(k), k) for k, p in limit.conditions.items()
                       if k in IDENTITY_CONDITIONS)  # fmt: skip
            if not mine:
                continue
            for subject in limit.subjects(facts):
                key, expires = limit.key(subject, now)
                if limit.kind == "concurrent":
                    used = await state.store.held(key)
                else:
                    used = await state.store.used(key)
                label = limit.name if limit.by in ("user", "all") else f"{limit.name} ({subject})"
                out.append(
                    LimitUse(
                        label, limit.describe(), used, max(0, limit.amount - used), expires, limit
                    )  # fmt: skip
                )
    except StoreUnavailable:
        return None
    return out


class LimitGuard:
    """Checks each request against the limits that match it, before it is sent."""

    def __init__(self, limits: Limits, websocket_closer: WebSocketMessageCap | None = None):
        self.state = limits
        self.websocket_closer = websocket_closer or WebSocketMessageCap()

    def load(self, loader):
        loader.add_option("aibridge_limits", str, "[]",
                          "Limits and budgets as JSON: [{name, match, requests|tokens|concurrent, "
                          "per, by}] (manual, Limits and budgets).")  # fmt: skip
        loader.add_option("aibridge_limits_store", str | None, None,
                          "Where limits are counted: a redis:// URL every replica shares "
                          "(default: this process's memory).")  # fmt: skip
        loader.add_option("aibridge_limits_on_store_error", str, "allow",
                          "When the limits store cannot be reached: allow or refuse.")  # fmt: skip

    def configure(self, updated):
        o = ctx.options
        if "aibridge_limits" in updated:
            try:
                self.state.limits = parse_limits(json.loads(o.aibridge_limits or "[]"))
            except ValueError as e:  # PolicyError, or the JSON itself
                message = str(e) if isinstance(e, PolicyError) else "aibridge_limits is not JSON"
                raise exceptions.OptionsError(message) from None
        if "aibridge_limits_on_store_error" in updated:
            if o.aibridge_limits_on_store_error not in ("allow", "refuse"):
                raise exceptions.OptionsError(
                    "aibridge_limits_on_store_error must be allow or refuse"
                )
            self.state.on_store_error = o.aibridge_limits_on_store_error
        if "aibridge_limits_store" in updated:
            where = o.aibridge_limits_store or ""
            if where and not where.startswith(("redis://", "rediss://", "unix://")):
                raise exceptions.OptionsError("aibridge_limits_store must be a redis:// URL")
            self.state.replace_store(RedisLimitStore(where) if where else MemoryLimitStore())

    def running(self) -> None:
        self.state.start()

    async def done(self) -> None:
        await self.state.close()

    # -- checking -----------------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        entry = record(flow)
        if not self._applies(flow, entry) or isinstance(entry.decision, RuleRefusal):
            return
        facts = entry.facts
        # A limit on the model needs the body when nothing read the model yet.
        if not facts.model_known and needs_model(self.state.limits):
            if flow.request.method not in ("GET", "HEAD") and not entry.body_held:
                flow.request.stream = False
                entry.body_held = True
                limit_buffered_body(flow, ctx.options.aibridge_rules_max_body)
        entry.limits_pending = True
        if not entry.body_held and not isinstance(entry.decision, PendingModel):
            await self._check(flow, entry, in_request=False)  # else in `request`, body read

    async def request(self, flow: http.HTTPFlow) -> None:
        entry = existing_record(flow)
        if entry is None or not entry.limits_pending or flow.response is not None:
            return
        if isinstance(entry.decision, RuleRefusal):
            entry.limits_pending = False
            return  # refused already (a model rule, the prompt scan): nothing to count
        facts = entry.facts
        if not facts.model_known:
            try:
                body = flow.request.raw_content or b""
                model = model_span(body)[0] if body else None
            except ModelUnreadable:
                model = None
            entry.facts = replace(facts, model=model, model_known=True)
        await self._check(flow, entry, in_request=True)

    def _applies(self, flow: http.HTTPFlow, entry: FlowRecord) -> bool:
        return (
            bool(self.state.limits)
            and flow.response is None
            and not entry.self_service
            and entry.facts is not None  # the rules' facts: someone known, an intercepted host
        )

    async def _check(self, flow: http.HTTPFlow, entry: FlowRecord, in_request: bool) -> None:
        entry.limits_pending = False
        facts = entry.facts
        now = time.time()
        taken = Taken()
        refusal = None
        found = applicable(self.state.limits, facts)
        limits = [limit for limit in found if limit.mode == "enforce"]
        audited = [limit for limit in found if limit.mode == "audit"]
        try:
            if is_websocket_upgrade(flow.request.headers):
                # a session is not a request: each `response.create` in it counts
                # (websocket_message); one whose window is spent already is refused here
                windows = [limit for limit in limits if limit.kind == "requests"]
                limits = [limit for limit in limits if limit.kind != "requests"]
                refusal = await self._spent(windows, facts, now)
                if refusal is None:
                    refusal = await self._take_all(limits, facts, now, taken)
            else:
                refusal = await self._take_all(limits, facts, now, taken)
            if refusal is None and audited:
                await self._audit(audited, facts, now, taken)
            self.state.store_ok()
        except StoreUnavailable as e:
            self.state.store_failed(str(e))
            if self.state.on_store_error == "refuse":
                self._refuse(flow, entry, in_request, 503,
                             "the proxy cannot check its limits now; try again shortly",
                             {"Retry-After": "5"}, "limits_unavailable")  # fmt: skip
            return
        if refusal is not None:
            self.state.events.emit(LIMIT_REFUSED, refusal.limit.name, facts.user)
            entry.limit = refusal.limit.name
            headers = {"Retry-After": str(refusal.retry_after)}
            if refusal.is_budget:
                headers["x-should-retry"] = "false"  # the openai and anthropic SDKs stop at once
            status = refusal.status
            if is_websocket_upgrade(flow.request.headers):
                # Codex retries a refused upgrade for minutes, but falls back to HTTPS at once
                # on 426, where the same limit answers it 429 with the message
                status, headers = 426, {**headers, "Upgrade": "websocket"}
            self._refuse(flow, entry, in_request, status, refusal.message, headers, refusal.code)
            return
        if taken.limits or taken.leases:
            self.state.taken[id(flow)] = taken

    async def _audit(self, limits: list[Limit], facts: Facts, now: float, taken: Taken) -> None:
        """Limits in audit mode: taken as the others (so their use is counted), and the one
        that would refuse recorded (a log line, a metric), never refused."""
        would = await self._take_all(limits, facts, now, taken)
        if would is not None:
            self.state.events.emit(LIMIT_AUDITED, would.limit.name, facts.user)
            logger.info("limit %s would refuse a request of %s (mode: audit): %s",
                        would.limit.name, facts.user, would.message)  # fmt: skip

    async def _spent(self, limits: list[Limit], facts: Facts, now: float) -> Refusal | None:
        """The first of these request windows already spent, read without counting."""
        for limit in limits:
            for subject in limit.subjects(facts):
                key, expires = limit.key(subject, now)
                if (used := await self.state.store.used(key)) >= limit.amount:
                    return Refusal(limit, used, expires, now)
        return None

    async def _take_all(self, limits: list[Limit], facts: Facts, now: float, taken: Taken):
        """Every matching limit in one call to the store, all or nothing: the first that
        does not fit refuses, and nothing is taken (a refused request never counts)."""
        asks, owners = [], []
        for limit in limits:
            for subject in limit.subjects(facts):
                key, expires = limit.key(subject, now)
                lease = uuid.uuid4().hex if limit.kind == "concurrent" else ""
                asks.append(Ask(limit.kind, key, limit.amount, expires, lease))
                owners.append(limit)
        if not asks:
            return None
        verdict = await self.state.store.check_all(asks)
        if verdict.refused is not None:
            limit, ask = owners[verdict.refused], asks[verdict.refused]
            if limit.kind == "concurrent":  # try again when the oldest lease ends, or in a second
                reset = min(now + 1, verdict.reset_at or now + 1)
                return Refusal(limit, verdict.used, reset, now)
            return Refusal(limit, verdict.used, ask.expires, now)
        for limit, ask in zip(owners, asks, strict=True):
            if limit.kind == "concurrent":
                taken.leases.append((ask.key, ask.lease))
            else:
                taken.limits.append((limit, ask.key, ask.expires))
        return None

    # -- WebSocket sessions (Codex's Responses API) -------------------------------------------

    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        """Each `response.create` a client sends is a request: counted against `requests`
        limits and checked against budgets, the one over refused by closing the session (1008,
        the limit's message as the reason); each `response.completed` spends its tokens."""
        entry = existing_record(flow)
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        if entry is None or entry.facts is None or not self.state.limits or message.dropped:
            return
        wanted = b'"response.create"' if message.from_client else b'"response.completed"'
        if wanted not in message.content:
            return  # (the stream's deltas: no parse)
        event = _responses_event(message.content)
        if event is None:
            return
        limits = applicable(self.state.limits, entry.facts)
        if not message.from_client:
            if event.get("type") == "response.completed":
                usage = usage_of_message(event)
                used = (usage.input_tokens or 0) + (usage.output_tokens or 0)
                now, budgets = time.time(), []
                for limit in limits:
                    if limit.kind != "tokens" or not used:
                        continue
                    for subject in limit.subjects(entry.facts):
                        key, expires = limit.key(subject, now)
                        if expires is not None:
                            budgets.append((limit, key, used, expires))
                if budgets:
                    await self.state.settle(budgets, [], [], entry.facts.user)
            return
        if event.get("type") != "response.create":
            return
        taken = Taken()
        try:
            refusal = await self._take_all([limit for limit in limits if limit.kind != "concurrent"],
                                           entry.facts, time.time(), taken)  # fmt: skip
            self.state.store_ok()
        except StoreUnavailable as e:
            self.state.store_failed(str(e))
            if self.state.on_store_error != "refuse":
                return
            refusal_message, code = "the proxy cannot check its limits now", "limits_unavailable"
        else:
            if refusal is None:
                return
            self.state.events.emit(LIMIT_REFUSED, refusal.limit.name, entry.facts.user)
            entry.limit = refusal.limit.name
            refusal_message, code = refusal.message, refusal.code
        # The session ends with the refusal as its close reason (1008): an error event sent
        # first would be queued by the engine behind the close, and lost
        message.drop()
        logger.info("closing a WebSocket session (%s): %s", code, refusal_message)
        self.websocket_closer.close(flow.client_conn, POLICY_VIOLATION, refusal_message[:120])

    @staticmethod
    def _refuse(flow, entry, in_request, status, message, headers, code) -> None:
        if in_request and entry.route is not None and not entry.route.awaiting_body:
            entry.reject = RejectReason.LIMITED
            info = entry.route
            flow.response = provider_error_response(info.provider, info.original_host, status,
                                                    message, code, headers)  # fmt: skip
        else:  # the router answers it, as any refusal decided before routing
            entry.decision = RuleRefusal(status, RejectReason.LIMITED, message, headers, code)


class LimitLedger:
    """Counts what a request used once it is over, and releases its open-request leases."""

    def __init__(self, limits: Limits):
        self.state = limits

    def response(self, flow: http.HTTPFlow) -> None:
        self._over(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._over(flow)  # a client that went away, a gateway that failed: released too

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._over(flow, session_over=True)

    def _over(self, flow: http.HTTPFlow, session_over: bool = False) -> None:
        if flow.websocket is not None and not session_over:
            return  # the upgrade's answer: the session is still open
        taken = self.state.taken.pop(id(flow), None)
        if taken is None:
            return
        entry = record(flow)
        info = entry.route
        usage = info.usage if info is not None else None
        cost = info.cost if info is not None else None
        spent = {
            "tokens": (usage.input_tokens or 0) + (usage.output_tokens or 0) if usage else 0,
            # what it cost (observe/cost.py) in micro-dollars; an unpriced model costs nothing
            # here, and is counted as unpriced where costs are
            "usd": round(cost.usd * MICRO) if cost is not None and cost.usd else 0,
        }
        # refused by the proxy after the limits took their share (a rule's deny, a bad path):
        # it was never sent, so it never counts
        refused = entry.reject is not None
        who = entry.facts.user if entry.facts is not None else None
        budgets = [
            (limit, key, spent[limit.kind], expires)
            for limit, key, expires in taken.limits
            if limit.kind in SPENT and spent[limit.kind] and expires is not None and not refused
        ]
        give_backs = [key for limit, key, _ in taken.limits if refused and limit.kind == "requests"]
        settled = self.state.settle(budgets, give_backs, taken.leases, who)
        in_background(settled, self.state.background)


POLICY_VIOLATION = 1008  # the WebSocket close code for a refused message


def _responses_event(content: bytes) -> dict | None:
    """A Responses API event of a WebSocket session (Codex), or None for anything else."""
    if b'"type"' not in content or len(content) > 16 * 1024 * 1024:
        return None
    try:
        event = json.loads(content)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None
