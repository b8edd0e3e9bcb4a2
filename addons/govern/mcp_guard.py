"""
MCP governance on the wire (addons/rules/mcp.py says what a server entry is): for the remote MCP
servers the admin lists, every agent through the proxy sees only the tools it may use, cannot
call the others, and each of its JSON-RPC requests is on record with who made it.

- A client's POST is read whole (bounded) before it is sent: each `tools/call` is checked
  against its server entry (`allow_tools`, `deny_tools`) and the rules with `mcp_server` or
  `mcp_tool` conditions. A POST whose requests are all denied is answered by the proxy (JSON,
  the same ids, a JSON-RPC error naming the entry or rule and the tool), never forwarded. A
  denied call that shares a batch with allowed ones, or that goes over the legacy HTTP+SSE
  transport (whose answers come on the GET stream), is sent to the server as a `ping` with the
  same id, and that ping's answer is turned into the refusal: the server never sees the call.
- Answers are read as they stream: a JSON body is held only when it must change (a tool list,
  a denied call's answer); an SSE stream is cut into events, each handed on as soon as it is
  whole, never later. `tools/list` results lose the tools the entry does not allow, on every
  page and after every `notifications/tools/list_changed`.
- Each JSON-RPC request, once answered (or never), is reported on the bus as an `McpCall`: the
  access log writes one line for it, metrics count it, the developer page lists it.

Answers to a POST are matched by id within the exchange's session (the `Mcp-Session-Id`, or the
legacy transport's `session_id`), per user and server entry, so one user's answers never
settle another's calls.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from pathlib import Path

from mitmproxy import ctx
from mitmproxy import http

from addons.core.events import MCP_CALL
from addons.core.events import MCP_TOOL_CHANGED
from addons.core.events import EventBus
from addons.core.record import FlowRecord
from addons.core.record import RejectReason
from addons.core.record import existing_record
from addons.core.record import record
from addons.core.responses import plain_response
from addons.engine.body_limit import buffered_body_limit
from addons.engine.body_limit import limit_buffered_body
from addons.govern.mcp_pins import PinBook
from addons.routing.snapshot import Routing
from addons.rules.content_decoding import DECODE_ERRORS
from addons.rules.content_decoding import BoundedDecoder
from addons.rules.mcp import DENIED
from addons.rules.mcp import HEADER_MISMATCH
from addons.rules.mcp import MAX_MESSAGE_BYTES
from addons.rules.mcp import TOO_LARGE
from addons.rules.mcp import Call
from addons.rules.mcp import McpServer
from addons.rules.mcp import MessageError
from addons.rules.mcp import Outcome
from addons.rules.mcp import Pending
from addons.rules.mcp import SseSplitter
from addons.rules.mcp import calls_in
from addons.rules.mcp import encode
from addons.rules.mcp import error_message
from addons.rules.mcp import header_mismatch
from addons.rules.mcp import legacy_session
from addons.rules.mcp import parse_event
from addons.rules.mcp import ping_in_place_of
from addons.rules.mcp import read_messages
from addons.rules.mcp import rewrite_answers
from addons.rules.request_target import decoded_path
from addons.rules.request_target import path_problem

logger = logging.getLogger(__name__)

SESSIONS = 10_000  # sessions whose unanswered calls are remembered (oldest forgotten first)
PENDING_PER_SESSION = 1_000  # unanswered calls remembered per session
NO_ANSWER = "no_answer"


@dataclass(frozen=True)
class McpCall:
    """One JSON-RPC request to a governed MCP server and how it ended; never its arguments."""

    server: str
    method: str
    tool: str | None
    outcome: str  # ok, error, denied or no_answer
    error_code: int | None
    duration_ms: float
    args_digest: str | None
    user: str | None
    workspace: str | None
    client: str | None
    user_agent: str | None
    request_id: str | None
    rule: str | None  # the rule that denied it, if one did
    known_tool: bool  # the server entry names this tool literally (safe as a metrics label)
    message: str | None = None  # a denial's words


@dataclass
class Exchange:
    """One flow's part in an MCP session: its server entry, and where its calls wait."""

    server: McpServer
    # the session's unanswered calls, shared by its flows (or this flow's own without a session)
    pending: dict[str, Pending]
    legacy: bool = False  # the legacy HTTP+SSE transport: answers come on the GET stream
    calls: list[Call] = field(default_factory=list)  # the calls this POST carried
    user_agent: str | None = None


class McpGuard:
    """Reads MCP requests and answers to governed servers; refuses denied tools."""

    def __init__(self, routing: Routing, events: EventBus | None = None):
        self.routing = routing
        self.events = events or EventBus()
        self._sessions: collections.OrderedDict[tuple, dict[str, Pending]] = (
            collections.OrderedDict()
        )
        self.key = b"aibridge-proxy"  # of the arguments' digests: the audit trail's key
        self.pins = PinBook(None)

    def load(self, loader) -> None:
        loader.add_option("aibridge_mcp_pins_file", str | None, None,
                          "Where governed MCP servers' approved tool definitions are kept "
                          "(serve: <state_dir>/mcp-pins.json; unset: in memory).")  # fmt: skip

    def configure(self, updated) -> None:
        # the deployment's digest key, declared by the audit trail (observe/telemetry.py)
        if "aibridge_telemetry_key" in updated:
            self.key = (ctx.options.aibridge_telemetry_key or "aibridge-proxy").encode()
        if "aibridge_mcp_pins_file" in updated:
            where = ctx.options.aibridge_mcp_pins_file
            self.pins = PinBook(Path(where) if where else None)

    def _review(self, server: McpServer, tools: list[dict]) -> list[str]:
        """A listing's tools against their pins: first seen pinned, changes recorded once."""
        differ, fresh = self.pins.observe(server.name, tools)
        for name in fresh:
            logger.warning("MCP server %s changed the definition of its tool %s after it was "
                           "approved (%s until `aibridge-proxy mcp accept %s`)", server.name,
                           name, server.on_tool_change, server.name)  # fmt: skip
            self.events.emit(MCP_TOOL_CHANGED, server.name, name)
        return differ

    # -- requests -------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        entry = record(flow)
        request = flow.request
        if flow.response is not None or entry.self_service or entry.identity is None:
            return
        servers = self.routing.current.mcp
        if not servers.on_host(request.host):
            return
        # the entry is matched on the path as the server reads it (percent-decoded once, as
        # Starlette and Go do); a spelling two servers could read differently is refused
        if (problem := path_problem(request.path)) is not None:
            entry.reject = RejectReason.AMBIGUOUS_PATH
            flow.response = plain_response(400, f"{problem}; MCP servers are governed here")
            return
        server = servers.lookup(request.host, request.port, decoded_path(request.path))
        if server is None:
            return
        legacy = legacy_session(request.path)  # the legacy transport answers on its stream
        session_id = request.headers.get("mcp-session-id") or legacy
        key = self._key(entry, server, session_id)
        entry.mcp = Exchange(server, self._pending(key) if key else {}, legacy is not None,
                             user_agent=request.headers.get("user-agent"))  # fmt: skip
        # answers are read before they are passed on: asked for as they are, not compressed
        request.headers["accept-encoding"] = "identity"
        if request.method != "POST":
            return
        # read whole before anything is sent; past the bound the engine answers 413 and drops
        # what it read (an answer set here would make mitmproxy read the whole body first)
        request.stream = False
        entry.body_held = True
        limit_buffered_body(flow, max(MAX_MESSAGE_BYTES + 1, buffered_body_limit(flow)))

    async def request(self, flow: http.HTTPFlow) -> None:
        entry = existing_record(flow)
        exchange = entry.mcp if entry is not None else None
        if exchange is None or flow.request.method != "POST" or flow.response is not None:
            return
        try:
            body = flow.request.content or b""
        except ValueError:  # an unknown Content-Encoding
            body = b"\x00"
        try:
            messages, batch = read_messages(body)
            calls = calls_in(messages, self.key)
            headers = flow.request.headers
            if why := header_mismatch(headers.get("mcp-method"), headers.get("mcp-name"),
                                      messages, batch):  # fmt: skip
                raise MessageError(HEADER_MISMATCH, why)
        except MessageError as e:
            status = 413 if e.code == TOO_LARGE else 400
            logger.info("MCP server %s: refused a message: %s", exchange.server.name, e)
            one = messages[0] if e.code == HEADER_MISMATCH and not batch else {}
            flow.response = _json_response(status, error_message(one.get("id"), e.code, str(e)))
            return
        now = time.monotonic()
        denied = {c.index: why for c in calls if c.tool
                  and (why := self._denial(entry, exchange.server, c)) is not None}  # fmt: skip
        requests = [c for c in calls if not c.is_notification]
        exchange.calls = requests
        # a denied call sent as a notification expects no answer: it is dropped, never sent
        dropped = {c.index for c in calls if c.is_notification and c.index in denied}
        kept = [i for i in range(len(messages)) if i not in dropped]
        if not kept:
            flow.response = http.Response.make(202)
            return
        if all(i in denied for i in kept) and not exchange.legacy:
            # every message a denied call: answered here, never forwarded
            entry.reject = RejectReason.MCP_DENIED
            answers = []
            for call in requests:
                message, rule = denied[call.index]
                answers.append(error_message(call.id, DENIED, message))
                self._report(flow, entry, Outcome(call, Pending(call, now, message, rule), DENIED))
            flow.response = _json_response(200, answers if batch else answers[0])
            return
        for call in requests:
            message, rule = denied.get(call.index, (None, None))
            pending = Pending(call, now, message, rule)
            exchange.pending[call.id_key] = pending
            while len(exchange.pending) > PENDING_PER_SESSION:  # the oldest is forgotten
                forgotten = exchange.pending.pop(next(iter(exchange.pending)))
                self._report(flow, entry, Outcome(forgotten.call, forgotten, None), NO_ANSWER)
        if denied:  # the server is asked a ping in their place (see the module's docstring)
            sent = [ping_in_place_of(messages[i]) if i in denied else messages[i] for i in kept]
            flow.request.content = encode(sent if batch else sent[0])

    def _denial(self, entry: FlowRecord, server: McpServer, call: Call):
        """(message, rule) when this tool call may not be made, else None."""
        assert call.tool is not None
        if (why := server.denial(call.tool)) is not None:
            return why, None
        if server.on_tool_change == "hide" and self.pins.held(server.name, call.tool):
            return (f"the tool {call.tool} of the MCP server {server.name} changed after it was "
                    f"approved; an admin accepts it with `aibridge-proxy mcp accept "
                    f"{server.name}`"), None  # fmt: skip
        policy = self.routing.current.policy
        if entry.facts is None or policy.empty:
            return None
        facts = replace(entry.facts, mcp_server=server.name, mcp_tool=call.tool)
        decision = policy.mcp_denial(facts, entry.profile)
        if decision is None:
            return None
        deny = decision.rule.action
        return f"{deny.message} (rule {decision.rule.name}; tool {call.tool})", decision.rule.name

    # -- answers ----------------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        entry = existing_record(flow)
        exchange = entry.mcp if entry is not None else None
        info = entry.route if entry is not None else None
        if exchange is None or info is None or flow.response is None:
            return
        headers = flow.response.headers
        kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        reader: EventStream | JsonAnswer
        if kind == "text/event-stream":
            reader = EventStream(self, flow, entry, exchange)
        elif kind == "application/json" and exchange.calls:
            reader = JsonAnswer(self, flow, entry, exchange)
        else:
            return
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            # compressed though asked not to be: read decoded, and passed on decoded
            info.response_filters.append(Decoded(encoding, reader))
            del headers["content-encoding"]
        else:
            info.response_filters.append(reader)
        if "content-length" in headers:  # what is sent may differ: its length is not known
            del headers["content-length"]
            if flow.response.http_version == "HTTP/1.1":
                headers["transfer-encoding"] = "chunked"

    def response(self, flow: http.HTTPFlow) -> None:
        self._over(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._over(flow)

    def _over(self, flow: http.HTTPFlow) -> None:
        """A POST whose answers should have come in its own response: those still missing
        never will (the legacy transport answers on its stream instead: 202)."""
        entry = existing_record(flow)
        exchange = entry.mcp if entry is not None else None
        if exchange is None or not exchange.calls:
            return
        if flow.response is not None and flow.response.status_code == 202:
            return
        for call in exchange.calls:
            pending = exchange.pending.get(call.id_key)
            if pending is not None and pending.call is call:
                del exchange.pending[call.id_key]
                self._report(flow, entry, Outcome(call, pending, None), NO_ANSWER)

    def settle(self, flow, entry: FlowRecord, exchange: Exchange, data: bytes) -> bytes | None:
        """One JSON answer (a body or an event's data): the outcomes reported, and the new
        bytes if the policy changed it."""
        if not exchange.pending:
            return None
        rewritten = rewrite_answers(data, exchange.pending, exchange.server, self._review)
        for outcome in rewritten.outcomes:
            self._report(flow, entry, outcome)
        return rewritten.data

    def bind(self, entry: FlowRecord, exchange: Exchange, session_id: str) -> None:
        """The legacy transport's stream named its session: its answers settle its calls."""
        exchange.pending = self._pending(self._key(entry, exchange.server, session_id))

    # -- the record ---------------------------------------------------------------------------

    def _report(self, flow, entry: FlowRecord, outcome: Outcome, ended: str | None = None):
        call, pending = outcome.call, outcome.pending
        identity = entry.identity
        exchange = entry.mcp
        if ended is not None:
            result = ended
        elif pending.denied is not None:
            result = "denied"
        else:
            result = "ok" if outcome.error_code is None else "error"
        peer = flow.client_conn.peername
        info = entry.route
        self.events.emit(MCP_CALL, McpCall(
            server=exchange.server.name,
            method=call.method,
            tool=call.tool,
            outcome=result,
            error_code=outcome.error_code,
            duration_ms=round((time.monotonic() - pending.started) * 1000, 2),
            args_digest=call.args_digest,
            user=identity.user if identity else None,
            workspace=identity.workspace if identity else None,
            client=f"{peer[0]}:{peer[1]}" if peer else None,
            user_agent=exchange.user_agent,
            request_id=info.request_id if info is not None else None,
            rule=pending.rule,
            known_tool=bool(call.tool) and exchange.server.names_tool(call.tool),
            message=pending.denied,
        ))  # fmt: skip

    # -- sessions -----------------------------------------------------------------------------

    @staticmethod
    def _key(entry: FlowRecord, server: McpServer, session_id: str | None) -> tuple | None:
        if not session_id:
            return None
        user = entry.identity.user if entry.identity else None
        return (user, entry.identity.connect_id if user is None else "", server.name, session_id)

    def _pending(self, key: tuple) -> dict[str, Pending]:
        found = self._sessions.get(key)
        if found is None:
            found = self._sessions[key] = {}
            while len(self._sessions) > SESSIONS:
                self._sessions.popitem(last=False)
        else:
            self._sessions.move_to_end(key)
        return found


def _json_response(status: int, body) -> http.Response:
    return http.Response.make(status, encode(body), {"Content-Type": "application/json"})


class JsonAnswer:
    """A JSON answer to a POST that carried calls: held (bounded) to the end, then settled."""

    def __init__(self, guard: McpGuard, flow, entry: FlowRecord, exchange: Exchange):
        self.guard, self.flow, self.entry, self.exchange = guard, flow, entry, exchange
        self.held: list[bytes] = []
        self.size = 0
        self.gave_up = False

    def __call__(self, chunk: bytes) -> bytes:
        if self.gave_up:
            return b""  # nothing more of it reaches the client
        if chunk:
            self.held.append(chunk)
            self.size += len(chunk)
            if self.size > MAX_MESSAGE_BYTES:
                return self._too_large()
            return b""
        body = b"".join(self.held)
        self.held = []
        changed = self.guard.settle(self.flow, self.entry, self.exchange, body)
        return body if changed is None else changed

    def _too_large(self) -> bytes:
        return self.unreadable(
            f"the MCP server's answer is larger than the proxy checks ({MAX_MESSAGE_BYTES} bytes)"
        )

    def unreadable(self, text: str) -> bytes:
        """An answer the guard cannot read (too large, an encoding it cannot undo): a tool
        list or a refusal in it cannot be let through unread, so each call it answers gets an
        error instead; the rest of the body is dropped."""
        self.gave_up = True
        self.held = []
        answers = []
        for call in self.exchange.calls:
            pending = self.exchange.pending.pop(call.id_key, None)
            if pending is None:
                continue
            answers.append(error_message(call.id, TOO_LARGE, text))
            self.guard._report(self.flow, self.entry, Outcome(call, pending, TOO_LARGE))
        return encode(answers if len(answers) != 1 else answers[0])


class EventStream:
    """An SSE answer (a POST's, or the GET stream): each event handed on once whole."""

    def __init__(self, guard: McpGuard, flow, entry: FlowRecord, exchange: Exchange):
        self.guard, self.flow, self.entry, self.exchange = guard, flow, entry, exchange
        self.events = SseSplitter(MAX_MESSAGE_BYTES)
        self.dropping = False
        self.gone = False  # unreadable: nothing more is passed on

    def __call__(self, chunk: bytes) -> bytes:
        if self.gone:
            return b""
        out = []
        for raw in self.events.feed(chunk):
            if self.dropping:  # the end of an event that was too large
                self.dropping = False
                continue
            out.append(self._event(raw))
        if self.events.overflowed:  # one event larger than the proxy checks: dropped
            self.events.rest()
            self.events.overflowed = False
            self.dropping = True
            logger.warning("MCP server %s sent an event larger than %d bytes: dropped",
                           self.exchange.server.name, MAX_MESSAGE_BYTES)  # fmt: skip
        if not chunk and not self.dropping:
            out.append(self.events.rest())  # the stream ended mid-event: as it was
        return b"".join(out)

    def unreadable(self, text: str) -> bytes:
        """A stream the guard cannot read: nothing more of it reaches the client."""
        logger.warning("MCP server %s: %s; the rest of its stream is dropped",
                       self.exchange.server.name, text)  # fmt: skip
        self.events.rest()
        self.dropping = True
        self.gone = True
        return b""

    def _event(self, raw: bytes) -> bytes:
        event = parse_event(raw)
        if event.kind == "endpoint":
            if (session_id := legacy_session(event.data)) is not None:
                self.guard.bind(self.entry, self.exchange, session_id)
            return raw
        if event.kind != "message" or not event.data:
            return raw
        changed = self.guard.settle(self.flow, self.entry, self.exchange, event.data)
        return raw if changed is None else event.with_data(changed)


class Decoded:
    """An answer's Content-Encoding undone before the guard reads it (the client gets it
    decoded): each chunk may decode to at most MAX_MESSAGE_BYTES, so a small bomb cannot grow
    the worker; an encoding not undone here, or corrupt data, is unreadable, never passed."""

    def __init__(self, encoding: str, reader: EventStream | JsonAnswer):
        self.decoder = BoundedDecoder(encoding, MAX_MESSAGE_BYTES)
        self.reader = reader
        self.given_up = False
        self.problem = None if self.decoder.ok else f"it is encoded as {encoding!r}"

    def __call__(self, chunk: bytes) -> bytes:
        if self.given_up:
            return b""
        data = b""
        if self.problem is None and chunk:
            try:
                self.decoder.refill()
                data = self.decoder.decode(chunk)
            except (ValueError, *DECODE_ERRORS) as e:
                self.problem = str(e)
        if self.problem is not None:
            self.given_up = True
            return self.reader.unreadable(f"the MCP server's answer cannot be read: {self.problem}")
        out = self.reader(data) if data else b""
        return out if chunk else out + self.reader(b"")
