"""
MCP governance, pure logic: which remote MCP servers are governed, which of their tools an
agent may use, and how JSON-RPC 2.0 messages are read, answered and filtered on the wire.

    mcp:
      - name: github                              # named in refusals, logs and metrics
        url: https://api.githubcopilot.com/mcp/   # scheme, host (port) and path prefix
        allow_tools: ["*"]                        # globs; default all
        deny_tools: ["delete_*", "merge_*"]       # globs; deny wins over allow
        on_tool_change: flag                      # pass | flag | hide (see rules/mcp_pins.py)
        strip_hidden_text: true                   # zero-width text and HTML comments removed

A listed server's host is decrypted; requests under its path prefix are read as MCP (Streamable
HTTP: POST of one message or a batch, answered as JSON or an SSE stream, and its GET stream;
the legacy HTTP+SSE transport: GET `/sse` and POSTs to the endpoint it announces). Nothing here
imports mitmproxy: addons/govern/mcp_guard.py applies it to flows.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from urllib.parse import parse_qs
from urllib.parse import urlsplit

from addons.rules.mcp_pins import CHANGED_NOTE
from addons.rules.mcp_pins import ON_CHANGE
from addons.rules.mcp_pins import visible_text
from addons.rules.policy import PolicyError

# JSON-RPC error codes the proxy answers with (-32000..-32099 are the implementation's own)
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
DENIED = -32001  # a tool the policy does not allow
TOO_LARGE = -32002  # a message larger than the proxy reads
HEADER_MISMATCH = -32020  # Mcp-Method or Mcp-Name disagrees with the body (SEP-2243)

MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # a client's POST body, or one server answer, checked whole
ARGS_DIGEST_HEX = 16


@dataclass(frozen=True)
class McpServer:
    name: str
    scheme: str
    host: str
    port: int
    prefix: str  # the path prefix, without a trailing slash ("" for the whole host)
    allow_tools: tuple[str, ...] = ("*",)
    deny_tools: tuple[str, ...] = ()
    on_tool_change: str = "flag"  # a tool whose definition changed after it was pinned
    strip_hidden_text: bool = True  # descriptions lose what a person would not see

    def covers(self, host: str, port: int, path: str) -> bool:
        if host.lower() != self.host or port != self.port:
            return False
        path = path.split("?", 1)[0]
        return not self.prefix or path == self.prefix or path.startswith(self.prefix + "/")

    def denial(self, tool: str) -> str | None:
        """Why this server's entry does not allow `tool` (None: it does)."""
        if any(fnmatch.fnmatchcase(tool, p) for p in self.deny_tools):
            return f"the tool {tool} of the MCP server {self.name} is denied (deny_tools)"
        if not any(fnmatch.fnmatchcase(tool, p) for p in self.allow_tools):
            return f"the tool {tool} of the MCP server {self.name} is not in allow_tools"
        return None

    def names_tool(self, tool: str) -> bool:
        """The admin wrote this tool's name literally (it may be a metrics label)."""
        return tool in self.allow_tools or tool in self.deny_tools


@dataclass(frozen=True)
class McpServers:
    servers: tuple[McpServer, ...] = ()

    def lookup(self, host: str, port: int, path: str) -> McpServer | None:
        """The entry whose prefix is the longest that covers this request."""
        found = [s for s in self.servers if s.covers(host, port, path)]
        return max(found, key=lambda s: len(s.prefix), default=None)

    def hosts(self) -> list[str]:
        return sorted({s.host for s in self.servers})

    def on_host(self, host: str) -> bool:
        return host.lower() in {s.host for s in self.servers}


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def parse_mcp_servers(raw: Any) -> McpServers:
    """Each entry checked now; a broken one names itself and the key, as the rules' do."""
    if raw in (None, ""):
        return McpServers()
    if not isinstance(raw, list):
        raise PolicyError("mcp: must be a list of MCP servers")
    out: list[McpServer] = []
    names: set[str] = set()
    for i, entry in enumerate(raw):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        label = f"mcp[{i}]" + (f" ({name})" if name else "")
        if not isinstance(entry, Mapping):
            raise PolicyError(f"{label}: must be a mapping with name and url")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise PolicyError(f"{label}: needs a name of letters, digits, '.', '_' and '-'")
        if name in names:
            raise PolicyError(f"{label}: the name is used twice")
        names.add(name)
        unknown = set(entry) - {"name", "url", "allow_tools", "deny_tools", "on_tool_change",
                                "strip_hidden_text"}  # fmt: skip
        if unknown:
            raise PolicyError(f"{label}: unknown key {sorted(unknown)[0]!r}")
        url = entry.get("url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme != "https" or not parts.hostname:
            raise PolicyError(f"{label}: url must be https://host[:port]/path of the MCP server")
        if parts.query or parts.fragment or parts.username or "*" in parts.hostname:
            raise PolicyError(f"{label}: url takes no query, fragment, user or wildcard")
        try:
            port = parts.port or 443
        except ValueError:
            raise PolicyError(f"{label}: url has a bad port") from None
        tools = {}
        for key, default in (("allow_tools", ["*"]), ("deny_tools", [])):
            value = entry.get(key, default)
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise PolicyError(f"{label}: {key} must be a list of tool name globs")
            tools[key] = tuple(value)
        on_change = entry.get("on_tool_change", "flag")
        if on_change not in ON_CHANGE:
            raise PolicyError(f"{label}: on_tool_change must be one of {', '.join(ON_CHANGE)}")
        strip = entry.get("strip_hidden_text", True)
        if not isinstance(strip, bool):
            raise PolicyError(f"{label}: strip_hidden_text must be true or false")
        prefix = parts.path.rstrip("/")
        out.append(McpServer(name, "https", parts.hostname.lower(), port, prefix, **tools,
                             on_tool_change=on_change, strip_hidden_text=strip))  # fmt: skip
    return McpServers(tuple(out))


# -- JSON-RPC messages ---------------------------------------------------------------------------


class MessageError(ValueError):
    """A client's body the proxy cannot govern: answered with this JSON-RPC error."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Call:
    """One JSON-RPC request from the client (a notification has no id)."""

    index: int  # its place in the body (a batch's member)
    id: Any  # str, int or None
    method: str
    tool: str | None = None  # tools/call's tool
    args_digest: str | None = None  # a digest of tools/call's arguments, never the arguments

    @property
    def id_key(self) -> str:
        return id_key(self.id)

    @property
    def is_notification(self) -> bool:
        return self.id is None


def id_key(message_id: Any) -> str:
    """An id as JSON-RPC compares them: `1` and `1.0` are the same number."""
    if isinstance(message_id, float) and message_id.is_integer():
        message_id = int(message_id)
    return json.dumps(message_id)


def _valid_id(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, str)
        or (isinstance(value, int | float) and not isinstance(value, bool))
    )


def read_messages(body: bytes) -> tuple[list[Any], bool]:
    """The body's messages, and whether it was a batch. MessageError for what no server could
    take either: not JSON, not an object, an id that is not a string or number."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise MessageError(
            TOO_LARGE, f"the message is larger than the proxy reads ({MAX_MESSAGE_BYTES} bytes)"
        )
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        raise MessageError(PARSE_ERROR, "the body is not JSON") from None
    batch = isinstance(parsed, list)
    messages = parsed if batch else [parsed]
    if batch and not messages:
        raise MessageError(INVALID_REQUEST, "an empty batch")
    for message in messages:
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise MessageError(INVALID_REQUEST, "a message is not a JSON-RPC 2.0 object")
        if "id" in message and not _valid_id(message["id"]):
            raise MessageError(INVALID_REQUEST, "a message's id is neither a string nor a number")
    return messages, batch


def calls_in(messages: list[Any], key: bytes = b"") -> list[Call]:
    """The requests and notifications among a client's messages (its answers to the server's
    own requests are not calls)."""
    out = []
    for i, message in enumerate(messages):
        method = message.get("method")
        if not isinstance(method, str):
            continue
        tool = digest = None
        if method == "tools/call":
            params = message.get("params")
            name = params.get("name") if isinstance(params, dict) else None
            if not isinstance(name, str):
                raise MessageError(INVALID_REQUEST, "tools/call needs params.name")
            tool = name
            digest = args_digest(params.get("arguments"), key)
        out.append(Call(i, message.get("id"), method, tool, digest))
    return out


def header_mismatch(method: str | None, name: str | None, messages: list[Any],
                    batch: bool) -> str | None:  # fmt: skip
    """Why the `Mcp-Method` / `Mcp-Name` request headers (the 2026-07-28 revision, SEP-2243)
    disagree with the body, or None. A server that dispatches on the header would otherwise run
    what the body, which the guard checked, does not say."""
    if method is None and name is None:
        return None
    if batch:
        return "Mcp-Method and Mcp-Name describe one message, and the body is a batch"
    message = messages[0]
    if method is not None and method != message.get("method"):
        return "the Mcp-Method header does not match the body's method"
    if name is not None:
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        named = (
            params.get("uri") if message.get("method") == "resources/read" else params.get("name")
        )
        if name != named:
            return "the Mcp-Name header does not match the name in the body"
    return None


def args_digest(arguments: Any, key: bytes) -> str:
    """What a call's arguments were, without them: equal arguments give the same digest within
    a deployment (keyed, like the audit trail's content digests: a reader of the logs cannot
    test a guess such as {"name": "prod"})."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    mac = hmac.new(key, canonical.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return mac.hexdigest()[:ARGS_DIGEST_HEX]


def error_message(message_id: Any, code: int, text: str) -> dict:
    return {"jsonrpc": "2.0", "id": message_id, "error": {"code": code, "message": text}}


def encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def ping_in_place_of(message: dict) -> dict:
    """A denied call the server must not see, where its answer must still come from the
    server's stream (a batch, the legacy transport): the server is asked a ping instead, and
    the proxy turns that ping's answer into the refusal."""
    return {"jsonrpc": "2.0", "id": message["id"], "method": "ping"}


# -- the server's answers -----------------------------------------------------------------------


@dataclass
class Pending:
    """A call sent on (or denied) whose answer the proxy is waiting for."""

    call: Call
    started: float
    denied: str | None = None  # the refusal to answer in place of the server's answer
    rule: str | None = None


@dataclass(frozen=True)
class Outcome:
    call: Call
    pending: Pending
    error_code: int | None  # None: a result


@dataclass
class Rewrite:
    """The answers in one JSON body or SSE event, after the policy: the new bytes (None:
    unchanged) and the outcome of each pending call it answered."""

    data: bytes | None = None
    outcomes: list[Outcome] = field(default_factory=list)


# (server entry, the tools a listing offers) -> the names whose definition changed after it was
# pinned (addons/govern/mcp_pins.py)
Review = Callable[[McpServer, list[dict]], list[str]]


def rewrite_answers(
    data: bytes, pending: dict[str, Pending], server: McpServer, review: Review | None = None
) -> Rewrite:
    """Answers to pending calls: denied ones replaced by their refusal, tools/list results
    without the tools the server entry denies (and as it says for changed definitions and
    hidden text); everything else byte for byte."""
    out = Rewrite()
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        return out  # not a JSON-RPC answer: not ours to judge
    batch = isinstance(parsed, list)
    changed = False
    answers = parsed if batch else [parsed]
    for i, answer in enumerate(answers):
        if not isinstance(answer, dict) or "method" in answer or "id" not in answer:
            continue  # the server's own requests and notifications
        try:
            found = pending.pop(id_key(answer["id"]), None)
        except TypeError:
            continue
        if found is None:
            continue
        if found.denied is not None:
            answers[i] = error_message(answer["id"], DENIED, found.denied)
            out.outcomes.append(Outcome(found.call, found, DENIED))
            changed = True
            continue
        error = answer.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        out.outcomes.append(Outcome(found.call, found, code if isinstance(code, int) else None))
        if found.call.method == "tools/list" and _filter_tools(answer, server, review):
            changed = True
    if changed:
        out.data = encode(answers if batch else answers[0])
    return out


def _filter_tools(answer: dict, server: McpServer, review: Review | None) -> bool:
    """A tools/list result as the entry lets the client see it: without the tools it does not
    allow, changed definitions hidden or flagged (`on_tool_change`), descriptions without
    hidden text; True if anything changed."""
    result = answer.get("result")
    tools = result.get("tools") if isinstance(result, dict) else None
    if not isinstance(tools, list):
        return False
    kept = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)
            and server.denial(t["name"]) is None]  # fmt: skip
    changed = len(kept) != len(tools)
    differ = set(review(server, kept)) if review is not None else set()
    if differ and server.on_tool_change == "hide":
        kept = [t for t in kept if t["name"] not in differ]
        changed = True
    for tool in kept:
        text = tool.get("description")
        if not isinstance(text, str):
            continue
        shown = visible_text(text) if server.strip_hidden_text else text
        if tool["name"] in differ and server.on_tool_change == "flag":
            shown = CHANGED_NOTE + shown
        if shown != text:
            tool["description"] = shown
            changed = True
    if changed:
        result["tools"] = kept
    return changed


# -- Server-Sent Events ----------------------------------------------------------------------

# a line end: CRLF, LF, or a CR not followed by LF (a CR at the very end waits for more)
_EVENT_END = re.compile(rb"(?:\r\n|\n|\r(?=[^\n]))(?:\r\n|\n|\r(?=[^\n])|\r\Z)")


@dataclass(frozen=True)
class SseEvent:
    raw: bytes  # the event as the server sent it, blank line included
    kind: str  # the `event:` field ("message" when absent)
    data: bytes  # the `data:` lines joined with LF

    def with_data(self, data: bytes) -> bytes:
        """The same event (its id, type, retry) with another data, in one data line."""
        lines = [ln for ln in re.split(rb"\r\n|\n|\r", self.raw) if ln]
        kept = [ln for ln in lines if not ln.startswith(b"data")]
        return b"\n".join([*kept, b"data: " + data]) + b"\n\n"


def parse_event(raw: bytes) -> SseEvent:
    kind, data = "message", []
    for line in re.split(rb"\r\n|\n|\r", raw):
        name, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if name == b"event":
            kind = value.decode("utf-8", "replace")
        elif name == b"data":
            data.append(value)
    return SseEvent(raw, kind, b"\n".join(data))


class SseSplitter:
    """Cuts a stream into whole events as they arrive: each event is handed on as soon as its
    blank line is in, never later; only the event still arriving is held (at most `limit`)."""

    def __init__(self, limit: int = MAX_MESSAGE_BYTES) -> None:
        self.buffer = b""
        self.limit = limit
        self.overflowed = False

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self.buffer += chunk
        start = 0
        for m in _EVENT_END.finditer(self.buffer):
            if m.end() == len(self.buffer) and self.buffer.endswith(b"\r"):
                break  # maybe the CR of a CRLF: wait for the next chunk
            yield self.buffer[start : m.end()]
            start = m.end()
        self.buffer = self.buffer[start:]
        if len(self.buffer) > self.limit:
            self.overflowed = True

    def rest(self) -> bytes:
        rest, self.buffer = self.buffer, b""
        return rest


def legacy_session(endpoint: bytes | str) -> str | None:
    """The session id in the legacy transport's announced endpoint (`/messages?session_id=..`
    in the Python SDK, `sessionId` in the TypeScript one) or in a POST's own URL."""
    text = endpoint.decode("utf-8", "replace") if isinstance(endpoint, bytes) else endpoint
    query = parse_qs(urlsplit(text.strip()).query)
    for key in ("session_id", "sessionId"):
        if query.get(key):
            return query[key][0]
    return None
