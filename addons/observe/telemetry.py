"""
The audit trail in OpenTelemetry: one span per AI request (routed, observed, refused) and per
MCP tool call, in the GenAI semantic conventions (addons/rules/genai.py), exported over OTLP/HTTP
by the OpenTelemetry SDK.

- A span starts with the request (continuing the client's `traceparent`; a routed request
  carries ours on to the gateway, so a gateway that traces joins the trace) and ends with the
  response: model, tokens, outcome, who (user, workspace, groups), which tool, which gateway.
- Prompts and answers leave only as `aibridge_telemetry_content` says: `none` (default),
  `hash` (a keyed digest of each input message and of the output), `redact` (the text as the
  prompt scan masked it; needs the scan on), `full`. The answer is read from the stream as it
  passes, never held. No header value is ever an attribute.
- Export never slows a request: spans queue in memory (bounded) and a background thread sends
  them; a collector that is slow, down or refusing costs dropped spans, counted
  (`telemetry_dropped_total`) and logged once per outage, never a request's time.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version
from typing import Any

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind
from opentelemetry.trace import Status
from opentelemetry.trace import StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from addons.core.events import TELEMETRY_DROPPED
from addons.core.events import EventBus
from addons.core.record import FlowRecord
from addons.core.record import existing_record
from addons.observe.access_log import outcome
from addons.observe.access_log import tool_name
from addons.rules.attribution import shown_session
from addons.rules.genai import BODY_LIMIT
from addons.rules.genai import CONTENT_POLICIES
from addons.rules.genai import SEMCONV
from addons.rules.genai import OutputText
from addons.rules.genai import digest
from addons.rules.genai import input_messages
from addons.rules.genai import operation_of
from addons.rules.genai import provider_name
from addons.rules.genai import recorded_model
from addons.rules.user_agents import tool_of

logger = logging.getLogger(__name__)

QUEUE = 4096  # spans waiting for export; past it new spans are dropped (and counted)
# ... and their attributes' size, which `content: full` makes large (a 1 MiB prompt is a 1 MiB
# span): a collector that hangs holds at most this much in the worker
QUEUE_BYTES = 64 * 1024 * 1024
ATTRIBUTE_CHARS = 256  # any attribute but the content ones (a model a gateway echoes, a path)
EXPORT_TIMEOUT = 5.0  # seconds one export may take (the SDK's retries included)
PROPAGATOR = TraceContextTextMapPropagator()


@dataclass(frozen=True)
class TelemetryConfig:
    endpoint: str
    headers: dict[str, str]
    content: str
    service_name: str


def _version() -> str:
    try:
        return version("aibridge-proxy")
    except PackageNotFoundError:
        return "0"


class _CountingExporter(SpanExporter):
    """The OTLP exporter, counting what it could not deliver (logged once per outage)."""

    def __init__(self, inner: SpanExporter, dropped) -> None:
        self.inner = inner
        self.dropped = dropped
        self.down = False
        self.pending = 0  # queued and not yet exported: a full queue drops new spans
        self.pending_bytes = 0  # their size (span_size)
        self.lock = threading.Lock()

    def export(self, spans) -> SpanExportResult:
        with self.lock:
            self.pending -= len(spans)
            self.pending_bytes -= sum(span_size(s) for s in spans)
        result = self.inner.export(spans)
        if result is SpanExportResult.SUCCESS:
            if self.down:
                self.down = False
                logger.warning("the telemetry collector is back: spans are exported again")
        else:
            if not self.down:
                self.down = True
                logger.warning("the telemetry collector cannot take spans: they are dropped "
                               "until it can (telemetry_dropped_total)")  # fmt: skip
            self.dropped(len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _BoundedProcessor(BatchSpanProcessor):
    """Drops (and counts) a span rather than queueing past QUEUE: the SDK's own queue would
    drop silently after a warning per span."""

    def __init__(self, exporter: _CountingExporter) -> None:
        super().__init__(exporter, max_queue_size=QUEUE, schedule_delay_millis=1000,
                         export_timeout_millis=EXPORT_TIMEOUT * 1000)  # fmt: skip
        self.counting = exporter

    def on_end(self, span) -> None:
        size = span_size(span)
        with self.counting.lock:
            full = (
                self.counting.pending >= QUEUE or self.counting.pending_bytes + size > QUEUE_BYTES
            )
            if not full:
                self.counting.pending += 1
                self.counting.pending_bytes += size
        if full:
            self.counting.dropped(1)
            return
        super().on_end(span)


def span_size(span) -> int:
    """About what a queued span holds: its name and attribute values (what content grows)."""
    size = len(span.name)
    for value in (span.attributes or {}).values():
        if isinstance(value, str | bytes):
            size += len(value)
        elif isinstance(value, tuple | list):
            size += sum(len(v) if isinstance(v, str | bytes) else 8 for v in value)
        else:
            size += 8
    return size


def _capped(attributes: dict[str, Any]) -> dict[str, Any]:
    """Every attribute but the content ones cut to ATTRIBUTE_CHARS (a gateway may echo
    anything into a model name or a client into a path)."""
    out = {}
    for name, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, str) and not name.startswith(CONTENT_ATTRIBUTES):
            value = value[:ATTRIBUTE_CHARS]
        out[name] = value
    return out


CONTENT_ATTRIBUTES = ("gen_ai.input.messages", "gen_ai.output.messages", "aibridge.input.")


class Telemetry:
    """Spans for AI requests and MCP calls, exported when an OTLP endpoint is set."""

    def __init__(self, events: EventBus | None = None) -> None:
        self.events = events or EventBus()
        self.config: TelemetryConfig | None = None
        self.provider: TracerProvider | None = None
        self.tracer: trace.Tracer | None = None
        self.key = b""

    def load(self, loader):
        loader.add_option("aibridge_telemetry_endpoint", str | None, None,
                          "OTLP/HTTP collector for spans, e.g. http://collector:4318 (manual, "
                          "Audit trail and OpenTelemetry); off when unset.")  # fmt: skip
        loader.add_option("aibridge_telemetry_headers", str, "{}",
                          "Headers for the collector as JSON (never logged).")  # fmt: skip
        loader.add_option("aibridge_telemetry_content", str, "none",
                          "Prompts and answers in spans: none, hash, redact or full.")  # fmt: skip
        loader.add_option("aibridge_telemetry_service_name", str, "aibridge-proxy",
                          "service.name of the spans' resource.")  # fmt: skip
        loader.add_option("aibridge_telemetry_key", str | None, None,
                          "Key of the content digests (derived from the CA key by serve).")  # fmt: skip

    def configure(self, updated):
        if not any(name.startswith("aibridge_telemetry") for name in updated):
            return
        o = ctx.options
        if o.aibridge_telemetry_content not in CONTENT_POLICIES:
            raise exceptions.OptionsError(
                f"aibridge_telemetry_content must be one of {', '.join(CONTENT_POLICIES)}"
            )
        try:
            headers = json.loads(o.aibridge_telemetry_headers or "{}")
        except ValueError:
            raise exceptions.OptionsError("aibridge_telemetry_headers is not JSON") from None
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise exceptions.OptionsError("aibridge_telemetry_headers must map names to text")
        endpoint = o.aibridge_telemetry_endpoint
        if endpoint and not endpoint.startswith(("http://", "https://")):
            raise exceptions.OptionsError(
                "aibridge_telemetry_endpoint must be an http:// or https:// URL (OTLP/HTTP)"
            )
        self.key = (o.aibridge_telemetry_key or "aibridge-proxy").encode()
        config = TelemetryConfig(endpoint, headers, o.aibridge_telemetry_content,
                                 o.aibridge_telemetry_service_name) if endpoint else None  # fmt: skip
        if config == self.config:
            return
        self._stop()
        self.config = config
        if config is not None:
            self._start(config)

    def _start(self, config: TelemetryConfig) -> None:
        # the exporter logs every retry and every failed batch: we say it once per outage
        logging.getLogger("opentelemetry.exporter.otlp.proto.http").setLevel(logging.CRITICAL)
        resource = Resource.create({
            "service.name": config.service_name,
            "service.version": _version(),
            "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
        })  # fmt: skip
        exporter = OTLPSpanExporter(endpoint=config.endpoint.rstrip("/") + "/v1/traces",
                                    headers=config.headers, timeout=EXPORT_TIMEOUT)  # fmt: skip
        counting = _CountingExporter(exporter, self._dropped)
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(_BoundedProcessor(counting))
        schema = f"https://opentelemetry.io/schemas/{SEMCONV}"
        self.tracer = self.provider.get_tracer("aibridge-proxy", _version(), schema_url=schema)
        if config.content == "full":
            logger.warning("telemetry.content is full: prompts and answers leave the proxy "
                           "in every span, in clear")  # fmt: skip

    def _stop(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()  # flushes what it can within the export timeout
        self.provider = self.tracer = None

    def _dropped(self, count: int) -> None:
        self.events.emit(TELEMETRY_DROPPED, count)

    def done(self) -> None:
        self._stop()

    # -- requests -----------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        entry = existing_record(flow)
        info = entry.route if entry is not None else None
        if self.tracer is None or info is None:
            return
        headers = flow.request.headers
        parent = None
        if traceparent := headers.get("traceparent"):  # most clients send none: no parse
            carrier = {"traceparent": traceparent, "tracestate": headers.get("tracestate", "")}
            parent = PROPAGATOR.extract(carrier)
        started = time.time_ns() - int((time.monotonic() - info.started) * 1e9)
        span = self.tracer.start_span("request", context=parent, kind=SpanKind.CLIENT,
                                      start_time=started)  # fmt: skip
        entry.span = span
        if info.provider is not None and flow.response is None:  # the gateway joins the trace
            carrier: dict[str, str] = {}
            PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
            for name, value in carrier.items():
                flow.request.headers[name] = value
        if self.config.content != "none":
            body = bytearray()

            def keep(chunk: bytes, body=body) -> None:
                if len(body) < BODY_LIMIT:
                    body += chunk[: BODY_LIMIT - len(body)]

            entry.span_body = body
            info.request_taps.append(keep)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        entry = existing_record(flow)
        if entry is None or entry.span is None or entry.route is None or flow.response is None:
            return
        if self.config is not None and self.config.content != "none":
            headers = flow.response.headers
            reader = OutputText(
                headers.get("content-type", ""), headers.get("content-encoding", "")
            )
            if reader.active:
                entry.span_output = reader
                entry.route.response_taps.append(reader.feed)

    def response(self, flow: http.HTTPFlow) -> None:
        self._end(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._end(flow)

    def _end(self, flow: http.HTTPFlow) -> None:
        entry = existing_record(flow)
        if entry is None or entry.span is None:
            return
        span, entry.span = entry.span, None
        try:
            self._describe(flow, entry, span)
        except Exception:  # a span must never break a request
            logger.exception("could not describe a span")
        span.end()

    def _describe(self, flow: http.HTTPFlow, entry: FlowRecord, span) -> None:
        info = entry.route
        usage = info.usage
        request = flow.request
        operation = operation_of(info.original_path)
        model = recorded_model(info.model or (usage.model if usage else None)
                               or _request_model(entry))  # fmt: skip
        span.update_name(f"{operation} {model}" if operation and model else
                         operation or f"{request.method} {info.original_host}"[:ATTRIBUTE_CHARS])  # fmt: skip
        identity = entry.identity
        result = outcome(entry.reject, info)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider_name(info.provider, info.observed),
            "gen_ai.request.model": recorded_model(info.model or _request_model(entry)),
            "gen_ai.response.model": recorded_model(usage.model) if usage else None,
            "gen_ai.usage.input_tokens": usage.input_tokens if usage else None,
            "gen_ai.usage.output_tokens": usage.output_tokens if usage else None,
            "gen_ai.usage.cache_read.input_tokens": usage.cached_tokens if usage else None,
            "gen_ai.usage.reasoning.output_tokens": usage.reasoning_tokens if usage else None,
            "server.address": info.original_host,
            "url.path": info.original_path.split("?", 1)[0],
            "http.request.method": request.method,
            "http.response.status_code": flow.response.status_code if flow.response else None,
            "user.name": identity.user if identity else None,
            "aibridge.workspace": identity.workspace if identity else None,
            "aibridge.groups": sorted(entry.facts.groups) if entry.facts else None,
            "aibridge.client.tool": tool_name(info, request.headers.get("user-agent")),
            "aibridge.outcome": result,
            "aibridge.reason": str(entry.reject) if entry.reject else None,
            "aibridge.rule": info.rule,
            "aibridge.limit": entry.limit,
            "aibridge.gateway": info.gateway or (info.upstream_url.split("/api/", 1)[0]
                                                 if info.provider else None),  # fmt: skip
            "aibridge.model_sent": info.model_sent,
            "aibridge.request_id": info.request_id,
            "aibridge.time_to_first_byte_ms": round((info.first_byte - info.started) * 1000, 2)
            if info.first_byte else None,
            "session.id": (session := shown_session(session_of(entry), self.key)),
            "gen_ai.conversation.id": session,
            "aibridge.repo": info.repo,
        }  # fmt: skip
        if entry.dlp is not None:
            attributes["aibridge.dlp"] = entry.dlp.action
        if info.initiator is not None:
            attributes["aibridge.initiator"] = info.initiator
        if info.cost is not None:
            attributes["aibridge.cost.usd"] = info.cost.usd
            attributes["aibridge.cost.source"] = info.cost.source
        attributes.update(self._content(entry))
        span.set_attributes(_capped(attributes))
        if flow.error is not None:
            span.set_status(Status(StatusCode.ERROR, flow.error.msg))
            span.set_attribute("error.type", "client_or_upstream_error")
        elif flow.response is not None and flow.response.status_code >= 400:
            span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("error.type", str(flow.response.status_code))

    def _content(self, entry: FlowRecord) -> dict[str, Any]:
        policy = self.config.content if self.config else "none"
        if policy == "none":
            return {}
        body = bytes(entry.span_body or b"")
        messages = input_messages(body) if body else []
        reader = entry.span_output
        output = reader.finish() if reader is not None else ""
        if policy == "hash":
            texts = [" ".join(p["content"] for p in m["parts"]) for m in messages]
            out = {"aibridge.input.message_digests": [digest(self.key, t) for t in texts]}
            if output:
                out["aibridge.output.digest"] = digest(self.key, output)
            return out
        # redact: what the taps saw is what the prompt scan let out (masked under mask, and
        # the masked copy under flag); full: the same path, the scan not required
        out = {"gen_ai.input.messages": json.dumps(messages, ensure_ascii=False)}
        if output:
            out["gen_ai.output.messages"] = json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": output}]}],
                ensure_ascii=False,
            )
        return out

    # -- MCP calls ------------------------------------------------------------------------------

    def mcp_call(self, call) -> None:
        """One span per JSON-RPC request to a governed MCP server (govern/mcp_guard.py)."""
        if self.tracer is None:
            return
        end = time.time_ns()
        start = end - int(call.duration_ms * 1e6)
        name = f"{call.method} {call.tool}" if call.tool else call.method
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, start_time=start)
        attributes = {
            "mcp.method.name": call.method,
            "gen_ai.tool.name": call.tool,
            "gen_ai.operation.name": "execute_tool" if call.tool else None,
            "aibridge.mcp.server": call.server,
            "aibridge.outcome": call.outcome,
            "aibridge.rule": call.rule,
            "aibridge.mcp.args_digest": call.args_digest,
            "rpc.jsonrpc.error_code": call.error_code,
            "user.name": call.user,
            "aibridge.workspace": call.workspace,
            "aibridge.client.tool": tool_of(call.user_agent),
            "aibridge.request_id": call.request_id,
        }
        span.set_attributes(_capped(attributes))
        if call.outcome != "ok":
            span.set_status(Status(StatusCode.ERROR, call.outcome))
            span.set_attribute("error.type", call.outcome)
        span.end(end_time=end)

    def mcp_tool_changed(self, server: str, tool: str) -> None:
        """A span on the audit trail: a governed server changed an approved tool definition."""
        if self.tracer is None:
            return
        span = self.tracer.start_span(f"mcp tool changed {tool}"[:ATTRIBUTE_CHARS])
        span.set_attributes(_capped({"aibridge.mcp.server": server, "gen_ai.tool.name": tool,
                                     "aibridge.outcome": "tool_changed"}))  # fmt: skip
        span.end()


def _request_model(entry: FlowRecord) -> str | None:
    """What the client asked for: as a rule read it, else as the body said it in passing."""
    asked = entry.facts.model if entry.facts is not None else None
    return asked or (entry.route.request_model if entry.route is not None else None)


def session_of(entry: FlowRecord) -> str | None:
    """The client's own session key: its header (observe/request_context.py, on the record);
    else Claude Code's `metadata.user_id` in the body (`..._session_<id>`)."""
    if entry.route is not None and entry.route.session:
        return entry.route.session
    body = bytes(entry.span_body or b"")
    if b"_session_" in body:
        try:
            user_id = json.loads(body).get("metadata", {}).get("user_id", "")
        except (ValueError, AttributeError, RecursionError):
            return None
        if isinstance(user_id, str) and "_session_" in user_id:
            return user_id.rsplit("_session_", 1)[1][:128]
    return None
