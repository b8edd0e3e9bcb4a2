"""An OTLP/HTTP trace receiver for the tests: it decodes what the proxy exports with the
`opentelemetry-proto` package (protobuf, and OTLP's JSON), keeps every span as plain data and
every request body as it came, and can be stopped and started again on the same port."""

from __future__ import annotations

import gzip
from dataclasses import dataclass

from aiohttp import web
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.support import BackgroundLoop


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict
    resource: dict
    status_code: int
    start_ns: int
    end_ns: int


class OtlpReceiver:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.spans: list[ReceivedSpan] = []
        self.headers: list[dict] = []
        self.bg: BackgroundLoop | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        self.bg = self.bg or BackgroundLoop()
        self.port = self.bg.run(self._serve(self.port))
        return self

    def stop(self) -> None:
        """Stop listening (the port is kept, to start again on it)."""
        if self._runner is not None:
            self.bg.run(self._runner.cleanup())
            self._runner = None

    def close(self) -> None:
        self.stop()
        if self.bg is not None:
            self.bg.close()
            self.bg = None

    async def _serve(self, port: int) -> int:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        message = ExportTraceServiceRequest()
        if request.content_type == "application/json":
            json_format.Parse(body, message)
        else:
            message.ParseFromString(body)
        for resource_spans in message.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(ReceivedSpan(
                        name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(), kind=span.kind,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        resource=resource, status_code=span.status.code,
                        start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                    ))  # fmt: skip
        answer = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")
