"""
One record per flow: what the addons found out about a request and did with it.

Producers write their part (auth: `identity`; routing rules: `decision`; the gateway router:
`route`; token usage: `route.usage`; any refusal: `reject`), consumers (access log, metrics,
recent requests, error pages) read it. No addon imports another addon's module for state.

The record lives beside the flow, in one weak mapping, rather than in `flow.metadata`:
mitmproxy serialises the metadata when flows are saved (`mitmdump -w`), so it must hold plain
data only, and the record holds live objects (readers, taps, rule decisions).
"""

from __future__ import annotations

import enum
import weakref
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    from addons.rules.policy import Facts
    from addons.rules.prices import Cost
    from addons.rules.prompt_dlp import Verdict
    from addons.rules.token_usage import Usage
    from addons.rules.token_usage import UsageReader


PREFIX_BYTES = 64 * 1024  # a request body's first bytes kept for its model (clients put it first)


class RejectReason(enum.StrEnum):
    """Why the proxy refused a request or CONNECT itself. The value is the label the access
    log, the metrics and `connect refused` lines carry; `hint` is what the developer page's
    "my recent requests" says about it (problem, fix), where it says more than the status."""

    # credentials (auth)
    MISSING = "missing"
    MALFORMED = "malformed"
    EMPTY_TOKEN = "empty_token"
    INVALID_TOKEN = "invalid_token"
    RATE_LIMITED = "rate_limited"
    VALIDATION_UNAVAILABLE = "validation_unavailable"
    INTERNAL_ERROR = "internal_error"
    # the connection and the request's form
    PLAINTEXT_CLIENT = "plaintext_client"
    HEADERS_TOO_LARGE = "headers_too_large"
    MALFORMED_HEADER = "malformed_header"
    MALFORMED_METHOD = "malformed_method"
    MALFORMED_TARGET = "malformed_target"
    DOT_SEGMENTS = "dot_segments"
    AMBIGUOUS_PATH = "ambiguous_path"
    # egress
    BLOCKED_PORT = "blocked_port"
    BLOCKED_DESTINATION = "blocked_destination"
    DIAL_FAILED = "dial_failed"
    DENIED_HOST = "denied_host"
    CONNECTION_CAP = "connection_cap"
    # routing
    RULE_DENIED = "rule_denied"
    GOVERNANCE_TOKEN_MISMATCH = "governance_token_mismatch"
    MODEL_UNREADABLE = "model_unreadable"
    BODY_TOO_LARGE = "body_too_large"
    # what a request carries and costs
    LIMITED = "limited"
    DLP_BLOCKED = "dlp_blocked"
    DLP_UNSCANNED = "dlp_unscanned"
    MCP_DENIED = "mcp_denied"  # every call the request carried is a tool the policy denies

    @property
    def is_denial(self) -> bool:
        """A policy said no (the access log's outcome `denied`), rather than a failure."""
        return self in _DENIALS

    @property
    def hint(self) -> tuple[str, str] | None:
        return _HINTS.get(self)


_DENIALS = frozenset({RejectReason.DENIED_HOST, RejectReason.RULE_DENIED, RejectReason.DLP_BLOCKED,
                      RejectReason.DLP_UNSCANNED, RejectReason.LIMITED,
                      RejectReason.MCP_DENIED})  # fmt: skip
_ASK_ADMIN = "ask your administrator"
_HINTS: dict[RejectReason, tuple[str, str]] = {
    RejectReason.DENIED_HOST: ("the proxy's egress policy denies this host", _ASK_ADMIN),
    RejectReason.RULE_DENIED: ("a routing rule denies this request", _ASK_ADMIN),
    RejectReason.MCP_DENIED: ("the MCP server's entry or a rule denies this tool", _ASK_ADMIN),
    RejectReason.DOT_SEGMENTS: ("the path holds . or .. segments",
                                "the tool sent a malformed path"),
    RejectReason.AMBIGUOUS_PATH: ("the path holds an encoded slash or an empty segment",
                                  "the tool sent a malformed path"),
    RejectReason.GOVERNANCE_TOKEN_MISMATCH: (
        "the request carries another user's governance token",
        "remove the X-Coder-AI-Governance-Token header from the tool's settings",
    ),
    RejectReason.MODEL_UNREADABLE: ("a routing rule needs the model, but the body has none",
                                    "the tool's request is not one JSON object with one model"),
    RejectReason.BODY_TOO_LARGE: (
        "a routing rule needs the model, but the body is larger than the proxy reads",
        "send a smaller request, or ask your administrator to raise model_body_limit",
    ),
    RejectReason.BLOCKED_PORT: ("the proxy does not allow this port", _ASK_ADMIN),
    RejectReason.PLAINTEXT_CLIENT: (
        "this client spoke plain HTTP to the proxy's TLS listener (GitHub Copilot's language "
        "server does, whatever the URL says)",
        "use an http:// proxy URL on a plain listener; ask your administrator for one"),
    RejectReason.LIMITED: ("a limit of the proxy's is used up",
                           "wait until it resets (the tool's error says when), or ask your administrator"),
    RejectReason.DLP_BLOCKED: ("the request carries a credential",
                               "remove it, or use a placeholder"),
    RejectReason.DLP_UNSCANNED: ("the proxy could not scan the request for credentials",
                                 "send a smaller request, or ask your administrator"),
    RejectReason.CONNECTION_CAP: ("you hold too many open connections through the proxy",
                                  "close idle tools or sessions, or ask your administrator"),
}  # fmt: skip


@dataclass
class RouteInfo:
    """Where a request the proxy handled went, and how its bodies streamed; set by the
    gateway router for every intercepted request (routed, observed or sent to its origin)."""

    provider: str | None  # None: passed through to the original host
    original_host: str
    original_path: str
    upstream_url: str
    request_id: str
    started: float
    first_byte: float | None = None
    timed_out: bool = False
    bytes_in: int = 0  # request body bytes from the client
    bytes_out: int = 0  # response body bytes to the client
    awaiting_body: bool = False  # its rule needs the model: routed in the `request` hook
    rule: str | None = None  # the routing rule that decided, if one did
    action: str | None = None  # what it decided: route, origin or deny
    profile: str | None = None  # the profile that rule came from
    gateway: str | None = None  # the named gateway it went to
    model: str | None = None  # the model the client asked for, where a rule replaced it
    model_sent: str | None = None  # the model sent instead
    observed: str | None = None  # an observed host: its catalog entry, else the host pattern
    usage_reader: UsageReader | None = None  # while the response streams
    usage: Usage | None = None  # what the response reported, once it is over
    cost: Cost | None = None  # what that cost (observe/cost.py), once it is over
    initiator: str | None = None  # Copilot's X-Initiator: user or agent (observe/request_context)
    request_model: str | None = None  # the body's model, read as it passed (request_context)
    request_prefix: bytearray | None = None  # the body's first bytes, while it streams
    session: str | None = None  # the client's own session key (observe/request_context)
    repo: str | None = None  # host/owner/name, where the client says it (Codex)
    copilot_quotas: list | None = None  # the quota snapshots a Copilot answer carried
    # Other addons may watch the bodies as they stream by (the dump and token usage do).
    request_taps: list = field(default_factory=list)
    response_taps: list = field(default_factory=list)
    # A concern may change the response as it streams (MCP governance filters tool lists):
    # each filter takes a chunk and gives what goes on (b"" at the end: flush what it holds).
    response_filters: list = field(default_factory=list)

    def count_in(self, chunk: bytes, shown: bytes | None = None) -> bytes:
        """`chunk` is sent on; the taps see `shown` instead where a concern said so (a flagged
        credential is sent, but never written to the dump)."""
        self.bytes_in += len(chunk)
        prefix = self.request_prefix  # the body's first bytes, for its model (request_context)
        if prefix is not None and len(prefix) < PREFIX_BYTES:
            prefix += chunk[: PREFIX_BYTES - len(prefix)]
        for tap in self.request_taps:
            tap(chunk if shown is None else shown)
        return chunk

    def count_out(self, chunk: bytes) -> bytes | list[bytes]:
        for change in self.response_filters:
            chunk = change(chunk)
        self.bytes_out += len(chunk)
        for tap in self.response_taps:
            tap(chunk)
        # nothing to send now (a filter holds it): an empty chunk would end a chunked body
        return chunk if chunk else []


@dataclass(frozen=True)
class PendingModel:
    """A routing rule needs the request's model: decided once the body is in, from the facts
    so far and the profile the workspace chose."""

    facts: Facts
    chosen: str | None


@dataclass(frozen=True)
class RuleRefusal:
    """A refusal decided before routing (the rules cannot read the body for the model, the
    prompt scan will not let it through): the router answers it, in the API's error shape, with
    this reason, so the access log and the page see it as any other request."""

    status: int
    reason: RejectReason
    message: str
    headers: dict[str, str] = field(default_factory=dict)  # e.g. Retry-After
    code: str = "policy_denied"  # the OpenAI shape's error code


@dataclass
class FlowRecord:
    """Everything the chain knows about one flow (a CONNECT or a request)."""

    identity: Any = None  # auth's Identity: who sent it (None: nobody known yet)
    reject: RejectReason | None = None  # set by whichever addon refused it
    auth_failure: bool = False  # the refusal was a failed sign-in (counted once)
    self_service: bool = False  # answered by the proxy itself, never forwarded
    decision: Any = None  # routing rules: a Decision, a PendingModel, or a RuleRefusal
    session: Any = None  # a WebSocket session's PendingModel: what each message is decided on
    route: RouteInfo | None = None  # the gateway router's part: None for what it never saw
    websocket_refused: bool = False  # the gateway refused the upgrade: answer 426
    dlp: Verdict | None = None  # the prompt scan's findings and action (None: nothing to say)
    # A concern holds the request body until `request` (the prompt scan): the router neither
    # streams it nor counts it before. `shown_body`: what observers (the dump) see of it instead.
    body_held: bool = False
    shown_body: bytes | None = None
    facts: Facts | None = None  # the request as the rules and limits match it (rules: read it)
    limits_pending: bool = False  # limits apply; checked once the body is read
    limit: str | None = None  # the limit that refused it
    profile: str | None = None  # the profile in force for its workspace (routing rules)
    mcp: Any = None  # MCP governance's exchange (govern/mcp_guard.py), on a governed server
    # the audit trail's span (observe/telemetry.py), and what it reads for a content policy
    span: Any = None
    span_body: bytearray | None = None
    span_output: Any = None


_RECORDS: weakref.WeakKeyDictionary[Any, FlowRecord] = weakref.WeakKeyDictionary()


def record(flow: Any) -> FlowRecord:
    """The flow's record, made on first use."""
    found = _RECORDS.get(flow)
    if found is None:
        found = _RECORDS[flow] = FlowRecord()
    return found


def existing_record(flow: Any) -> FlowRecord | None:
    """The flow's record if any addon wrote one (readers that must not create one)."""
    return _RECORDS.get(flow)


def route_info(flow: Any) -> RouteInfo | None:
    """The gateway router's part of the record, if it handled this flow."""
    found = _RECORDS.get(flow)
    return found.route if found is not None else None


def reject(flow: Any, reason: RejectReason) -> None:
    record(flow).reject = reason


def reject_reason(flow: Any) -> RejectReason | None:
    found = _RECORDS.get(flow)
    return found.reject if found is not None else None
