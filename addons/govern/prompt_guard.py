"""
Prompt DLP on the wire: every request body the proxy decrypts (routed, observed, or sent on to
a routed host's origin) is held until it is scanned for credentials, then blocked, masked or
flagged (addons/rules/prompt_dlp.py says how). Codex's WebSocket `response.create` messages
are scanned one by one. Responses are never held or rewritten.

The action is the routing rule's `dlp:` where the deciding rule has one, else the global
`dlp.action`. It runs after the routing rules and before the router: a body it holds is read
whole before anything is sent (`body_held`: the router neither streams nor counts it until
then), and scanned in `request` once the rule is known; bodies up to 256 KiB are scanned in the event loop (well under a millisecond
for ordinary prompts), larger ones in a thread (the detector releases the GIL).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import secrets
from collections.abc import Sequence

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http

from addons.core.events import DLP_VERDICT
from addons.core.events import EventBus
from addons.core.record import FlowRecord
from addons.core.record import RejectReason
from addons.core.record import RuleRefusal
from addons.core.record import record
from addons.core.responses import provider_error_response
from addons.engine.body_limit import limit_buffered_body
from addons.engine.websocket_cap import WebSocketMessageCap
from addons.routing.rules import POLICY_VIOLATION
from addons.routing.snapshot import Routing
from addons.rules.policy import Decision
from addons.rules.prompt_dlp import ACTIONS
from addons.rules.prompt_dlp import DlpConfigError
from addons.rules.prompt_dlp import DlpPolicy
from addons.rules.prompt_dlp import Scan
from addons.rules.prompt_dlp import Verdict
from addons.rules.prompt_dlp import parse_allow
from addons.rules.prompt_dlp import parse_patterns
from addons.rules.request_target import is_binary_protocol
from addons.rules.secret_detector import SecretDetector
from addons.rules.secret_detector import engine

logger = logging.getLogger(__name__)

IN_LOOP_BYTES = 256 * 1024
BLOCK_STATUS = 400  # a 4xx: SDKs and agents do not retry it
_OPTIONS = {
    "aibridge_dlp_action", "aibridge_dlp_on_error", "aibridge_dlp_unreadable",
    "aibridge_dlp_max_bytes", "aibridge_dlp_timeout", "aibridge_dlp_patterns",
    "aibridge_dlp_allow", "aibridge_dlp_mask_key",
}  # fmt: skip


class PromptGuard:
    """Holds, scans and then blocks, masks or flags what a request carries."""

    def __init__(
        self,
        routing: Routing,
        events: EventBus | None = None,
        websocket_closer: WebSocketMessageCap | None = None,
    ):
        self.routing = routing
        self.events = events or EventBus()
        self.websocket_closer = websocket_closer or WebSocketMessageCap()
        self.policy = DlpPolicy()
        self.scan: Scan | None = None  # built once some action can apply
        # large bodies are scanned here, one at a time, with the thread's own scanner
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dlp-scan")

    def load(self, loader):
        loader.add_option("aibridge_dlp_action", str, "off",
                          "Prompt DLP: off, block, mask or flag (routing rules may set their own).")  # fmt: skip
        loader.add_option("aibridge_dlp_on_error", str, "auto",
                          "When a body cannot be scanned (detector error, timeout, over "
                          "aibridge_dlp_max_bytes): block or pass; auto: pass under flag, "
                          "else block.")  # fmt: skip
        loader.add_option("aibridge_dlp_unreadable", str, "pass",
                          "A body that is not text (protobuf, an unknown encoding): pass "
                          "(recorded as unscanned) or block.")  # fmt: skip
        loader.add_option("aibridge_dlp_max_bytes", int, 4 * 1024 * 1024,
                          "Largest request body scanned (decoded); bigger: aibridge_dlp_on_error.")  # fmt: skip
        loader.add_option("aibridge_dlp_timeout", float, 2.0,
                          "Seconds one body's scan may take; longer: aibridge_dlp_on_error.")  # fmt: skip
        loader.add_option("aibridge_dlp_patterns", str, "[]",
                          "The admin's own kinds, as JSON: [{name, regex}].")  # fmt: skip
        loader.add_option("aibridge_dlp_allow", Sequence[str], [],
                          "Values never reported (a team's test keys).")  # fmt: skip
        loader.add_option("aibridge_dlp_mask_key", str | None, None,
                          "Hex key the mask placeholders are derived with; the same in every "
                          "replica (aibridge-proxy serve derives it from the CA key).")  # fmt: skip

    def configure(self, updated):
        if _OPTIONS & set(updated):
            self._configure_scan()
        if (_OPTIONS | {"aibridge_policy"}) & set(updated) and self._could_apply():
            engine()  # compile the catalogue now, not on the first request
            self._thread.submit(engine)

    def _configure_scan(self) -> None:
        o = ctx.options
        checks = (
            ("aibridge_dlp_action", ("off", *ACTIONS)),
            ("aibridge_dlp_on_error", ("auto", "block", "pass")),
            ("aibridge_dlp_unreadable", ("pass", "block")),
        )
        for name, allowed in checks:
            if getattr(o, name) not in allowed:
                raise exceptions.OptionsError(f"{name} must be one of {', '.join(allowed)}")
        if o.aibridge_dlp_max_bytes < 1024:
            raise exceptions.OptionsError("aibridge_dlp_max_bytes must be at least 1024")
        if not o.aibridge_dlp_timeout > 0:
            raise exceptions.OptionsError("aibridge_dlp_timeout must be a positive number")
        try:
            patterns = parse_patterns(json.loads(o.aibridge_dlp_patterns or "[]"))
            allow = parse_allow(list(o.aibridge_dlp_allow))
        except ValueError as e:  # DlpConfigError, or the JSON itself
            message = (
                str(e) if isinstance(e, DlpConfigError) else "aibridge_dlp_patterns is not JSON"
            )
            raise exceptions.OptionsError(message) from None
        key = o.aibridge_dlp_mask_key
        try:
            mask_key = bytes.fromhex(key) if key else secrets.token_bytes(32)
        except ValueError:
            raise exceptions.OptionsError("aibridge_dlp_mask_key must be hex") from None
        if not key and o.aibridge_dlp_action == "mask":
            logger.warning("aibridge_dlp_mask_key is not set: mask placeholders differ per process")
        self.policy = DlpPolicy(
            action=None if o.aibridge_dlp_action == "off" else o.aibridge_dlp_action,
            on_error=None if o.aibridge_dlp_on_error == "auto" else o.aibridge_dlp_on_error,
            unreadable=o.aibridge_dlp_unreadable,
            max_bytes=o.aibridge_dlp_max_bytes,
            timeout=o.aibridge_dlp_timeout,
        )
        self.scan = Scan(self.policy, SecretDetector(patterns, allow), mask_key)

    def done(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    # -- which action applies ---------------------------------------------------------------

    def _could_apply(self) -> bool:
        return self.policy.action is not None or self.routing.current.policy.has_dlp_rules

    def _action(self, entry: FlowRecord) -> str | None:
        decision = entry.decision
        if isinstance(decision, Decision) and decision.rule.dlp is not None:
            return None if decision.rule.dlp == "off" else decision.rule.dlp
        return self.policy.action

    # -- HTTP requests ------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        entry = record(flow)
        request = flow.request
        if (
            flow.response is not None
            or entry.self_service
            or entry.identity is None
            or self.scan is None
            or not self._could_apply()
            or not self.routing.current.intercepts(request.host)
        ):
            return
        if isinstance(entry.decision, Decision) and self._action(entry) is None:
            return  # decided, and no scan applies to it
        if not _has_body(request):
            return  # nothing to read (a GET with a body is read like any other)
        routed = self.routing.current.table.lookup(request.host) is not None
        if is_binary_protocol(request.headers.get("content-type", "")) and not routed:
            # an observed tool's own protocol: never held (its streams are bidirectional); a
            # routed host's gateway speaks JSON APIs, so a body labelled so there is read
            self._settle(flow, entry, self.scan.unreadable("a binary protocol body"))
            return
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.policy.max_bytes:
            self._settle(flow, entry, self.scan.too_large(self._action(entry) or "block"))
            return
        # read whole before anything is sent (the router neither streams nor counts it);
        # a body without a length is cut off with 413 past the bound
        request.stream = False
        entry.body_held = True
        limit_buffered_body(flow, max(self.policy.max_bytes, ctx.options.aibridge_rules_max_body))

    async def request(self, flow: http.HTTPFlow) -> None:
        entry = record(flow)
        if flow.response is not None or not entry.body_held or self.scan is None:
            return
        action = self._action(entry)  # the rule is known now, also where it needed the model
        if action is None:
            return
        raw = flow.request.raw_content or b""
        encoding = flow.request.headers.get("content-encoding", "")
        kind = flow.request.headers.get("content-type", "")
        if len(raw) > IN_LOOP_BYTES:
            loop = asyncio.get_running_loop()
            verdict = await loop.run_in_executor(
                self._thread, self.scan.body, raw, encoding, action, kind
            )
        else:
            verdict = self.scan.body(raw, encoding, action, kind)
        if verdict.action == "mask" and verdict.body is not None:
            flow.request.content = verdict.body  # re-encoded as the client encoded it
        elif verdict.body is not None:
            entry.shown_body = verdict.body  # flagged: sent as it is, dumped masked
        self._settle(flow, entry, verdict)

    def _settle(self, flow: http.HTTPFlow, entry: FlowRecord, verdict: Verdict) -> None:
        """Record the verdict, and answer for a block: in `requestheaders` (before the router
        has seen the request) through the router, which answers refusals in the API's shape
        and logs them; in `request` here."""
        if verdict.action == "pass" and verdict.unscanned is None:
            return
        entry.dlp = verdict
        self.events.emit(DLP_VERDICT, verdict)
        if verdict.unscanned is not None:  # what went wrong, never what the body holds
            host = entry.route.original_host if entry.route else flow.request.host
            logger.warning("prompt DLP could not scan a request to %s (%s): %s", host,
                           verdict.unscanned, verdict.action)  # fmt: skip
        if verdict.action != "block":
            if verdict.findings:
                logger.info("prompt DLP %s: %s", verdict.action, ", ".join(verdict.kinds))
            return
        reason = RejectReason.DLP_BLOCKED if verdict.findings else RejectReason.DLP_UNSCANNED
        status = 413 if verdict.unscanned and "max_bytes" in verdict.unscanned else BLOCK_STATUS
        message = f"blocked by the proxy's DLP policy: {verdict.message}"
        if verdict.findings:
            message += ". Remove it, or use a placeholder"
        info = entry.route
        if info is None:  # requestheaders, before the router
            entry.decision = RuleRefusal(status, reason, message)
            return
        entry.reject = reason
        flow.response = provider_error_response(info.provider, info.original_host, status, message)

    # -- WebSocket messages (Codex's Responses API) --------------------------------------------

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """Each message the client sends, read as a body is: a JSON text or binary frame for
        its prompt parts, other text as text, and a binary frame that is neither as what the
        scan cannot read (dlp.unreadable decides), never skipped. permessage-deflate is undone
        by the engine before this hook."""
        entry = record(flow)
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        if not message.from_client or self.scan is None or message.dropped:
            return
        action = self._action(entry)
        if action is None:
            return
        verdict = self.scan.body(message.content, "", action)
        if verdict.action == "pass" and verdict.unscanned is None:
            return
        entry.dlp = verdict
        self.events.emit(DLP_VERDICT, verdict)
        if verdict.unscanned is not None:
            logger.warning("prompt DLP could not scan a WebSocket message to %s (%s): %s",
                           flow.request.host, verdict.unscanned, verdict.action)  # fmt: skip
        if verdict.action == "mask" and verdict.body is not None:
            message.content = verdict.body  # the frame keeps its type
        elif verdict.action == "block":
            message.drop()
            reason = f"DLP: {verdict.message}"[:120]
            logger.info("closing a WebSocket session: %s", reason)
            self.websocket_closer.close(flow.client_conn, POLICY_VIOLATION, reason)


def _has_body(request: http.Request) -> bool:
    """A body follows the headers: a length above zero, or chunked (any method)."""
    length = request.headers.get("content-length", "").strip()
    if length:
        return length != "0"
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        return True
    return request.http_version.startswith("HTTP/2") and request.method not in ("GET", "HEAD")
