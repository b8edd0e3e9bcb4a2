"""
Routed requests go to the gateway over the worker's shared pool (`gateway_pool.py`), not over
a connection of their own client connection.

mitmproxy's HTTP layer asks for a server connection per request (`HttpLayer.get_connection`)
and, for a new address, stacks `ServerTLSLayer` and `HttpClient` on a connection that belongs
to that one client connection: every client connection dials the gateway anew. For a pooled
gateway address we stack a `GatewayLeg` instead, a layer that takes the same HTTP events
(RequestHeaders, RequestData, ...) and hands them to the pool, and gives back the pool's
answers as the events `Http2Client` would (ResponseHeaders, ResponseData, ...). Everything
above it (the HttpStream, our hooks, streaming, the error pages) runs as before.

Two internals make that work:
- `HttpLayer.get_connection`: wrapped, to stack a GatewayLeg for a pooled address (WebSocket
  upgrades keep mitmproxy's own connection: a pooled connection is never handed over).
- `ConnectionHandler.open_connection`: wrapped, so that the leg's OpenConnection, which makes
  every layer above it route the leg's events to it, dials nothing. The pool's answers come in
  through `ConnectionHandler.server_event`, as a socket's data would.

The leg's connection is virtual: one per client connection and gateway, "open" while the
client connection is, and it carries that client connection's streams (alpn says h2 so that
mitmproxy sends concurrent streams through it, whatever the pooled connections speak).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass
from dataclasses import field

from mitmproxy import connection
from mitmproxy import http
from mitmproxy.proxy import commands
from mitmproxy.proxy import events
from mitmproxy.proxy import layer
from mitmproxy.proxy import server as proxy_server
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import ErrorCode
from mitmproxy.proxy.layers.http import GetHttpConnection
from mitmproxy.proxy.layers.http import GetHttpConnectionCompleted
from mitmproxy.proxy.layers.http import ReceiveHttp
from mitmproxy.proxy.layers.http import RegisterHttpConnection
from mitmproxy.proxy.layers.http import RequestData
from mitmproxy.proxy.layers.http import RequestEndOfMessage
from mitmproxy.proxy.layers.http import RequestHeaders
from mitmproxy.proxy.layers.http import RequestProtocolError
from mitmproxy.proxy.layers.http import RequestTrailers
from mitmproxy.proxy.layers.http import ResponseData
from mitmproxy.proxy.layers.http import ResponseEndOfMessage
from mitmproxy.proxy.layers.http import ResponseHeaders
from mitmproxy.proxy.layers.http import ResponseProtocolError
from mitmproxy.proxy.layers.http import ResponseTrailers

from addons.engine.gateway_pool import GatewayPool
from addons.engine.gateway_pool import OutboundRequest
from addons.engine.gateway_pool import PoolStream

logger = logging.getLogger(__name__)

# Hop-by-hop (RFC 9110 7.6.1) and what only concerned the client's leg.
HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
        b"te", b"host", b"proxy-authorization", b"proxy-authenticate", b"http2-settings",
    }
)  # fmt: skip
CLIENT_BACKLOG = 256 * 1024  # unsent bytes to a client before its gateway stream waits
LEGS_OF_HANDLER = "_aibridge_gateway_legs"  # a client connection's legs, on its handler


@dataclass
class GatewayAnswer(events.ConnectionEvent):
    """HTTP events for one of a leg's streams, from the pool, in order."""

    http_events: list = field(default_factory=list)


def outbound_request(request: http.Request) -> OutboundRequest:
    """What the gateway gets: the routed request without hop-by-hop headers; the whole body
    when mitmproxy buffered it (then it may be retried), else None and it streams."""
    fields = request.headers.fields
    named = set()
    for name, value in fields:
        if name.lower() == b"connection":
            named.update(t.strip().lower() for t in value.split(b","))
    headers: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    for name, value in fields:
        name = name.lower()
        if name in HOP_BY_HOP or name in named:
            continue
        if name == b"cookie":
            cookies.append(value)
            continue
        headers.append((name, value))
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    authority = request.data.authority or request.headers.get(b"host", "").encode()
    if not authority:
        authority = f"{request.host}:{request.port}".encode()
    return OutboundRequest(
        method=request.data.method,
        path=request.data.path,
        authority=authority,
        headers=headers,
        body=request.raw_content,
    )


class _ClientSide:
    """One stream's way back into its client connection's layers: what the pool queues goes
    in as one GatewayAnswer (one pass through the layers) per flush."""

    __slots__ = ("leg", "stream_id", "request", "queued")

    def __init__(self, leg: GatewayLeg, stream_id: int, request: http.Request) -> None:
        self.leg, self.stream_id, self.request = leg, stream_id, request
        self.queued: list = []

    async def flush(self) -> None:
        answers, self.queued = self.queued, []
        leg = self.leg
        if answers and leg.handler is not None and not leg.closed:
            await leg.handler.server_event(GatewayAnswer(leg.context.server, answers))

    def on_headers(self, status, reason, version, headers, ended) -> None:
        response = http.Response(
            http_version=version,
            status_code=status,
            reason=reason,
            headers=http.Headers(headers),
            content=None,
            trailers=None,
            timestamp_start=time.time(),
            timestamp_end=None,
        )
        self.queued.append(ResponseHeaders(self.stream_id, response, ended))

    def on_data(self, data: bytes) -> None:
        self.queued.append(ResponseData(self.stream_id, data))

    def on_end(self, trailers) -> None:
        if trailers:
            self.queued.append(ResponseTrailers(self.stream_id, http.Headers(trailers)))
        self.queued.append(ResponseEndOfMessage(self.stream_id))

    def on_error(self, message: str, connect_failed: bool) -> None:
        code = ErrorCode.CONNECT_FAILED if connect_failed else ErrorCode.GENERIC_SERVER_ERROR
        self.queued.append(ResponseProtocolError(self.stream_id, message, code))

    def backlog(self):
        handler = self.leg.handler
        io = handler.transports.get(handler.client) if handler is not None else None
        writer = io.writer if io is not None else None
        if writer is None or not hasattr(writer, "transport"):
            return None
        if writer.transport.get_write_buffer_size() <= CLIENT_BACKLOG:
            return None
        return writer.drain()


class GatewayLeg(layer.Layer):
    """Where ServerTLSLayer + HttpClient would be for one client connection's gateway
    connection: its streams go out over the pool."""

    def __init__(self, context, pool: GatewayPool, registry: PooledGatewayLeg) -> None:
        super().__init__(context)
        self.pool = pool
        self.registry = registry
        self.handler: proxy_server.ConnectionHandler | None = None
        self.streams: dict[int, PoolStream] = {}
        self.closed = False

    def __repr__(self) -> str:
        return f"GatewayLeg({self.pool.host}:{self.pool.port}, streams: {len(self.streams)})"

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        server = self.context.server
        if isinstance(event, events.Start):
            self.registry.legs[server] = self
            err = yield commands.OpenConnection(server)
            yield RegisterHttpConnection(server, err)
        elif isinstance(event, GatewayAnswer):
            for answer in event.http_events:
                if isinstance(answer, (ResponseEndOfMessage, ResponseProtocolError)):
                    self.streams.pop(answer.stream_id, None)
                yield ReceiveHttp(answer)
        elif isinstance(event, RequestHeaders):
            sink = _ClientSide(self, event.stream_id, event.request)
            stream = self.pool.request(outbound_request(event.request), sink)
            self.streams[event.stream_id] = stream
            if event.end_stream and event.request.raw_content is None:
                stream.end()
        elif isinstance(event, RequestData):
            if (stream := self.streams.get(event.stream_id)) and stream.request.body is None:
                stream.send(event.data)  # (a buffered body went whole with the headers)
        elif isinstance(event, RequestTrailers):
            if stream := self.streams.get(event.stream_id):
                stream.trailers = [(k.lower(), v) for k, v in event.trailers.fields]
        elif isinstance(event, RequestEndOfMessage):
            if stream := self.streams.get(event.stream_id):
                stream.end(stream.trailers)
        elif isinstance(event, RequestProtocolError):
            if stream := self.streams.pop(event.stream_id, None):
                stream.cancel()
        elif isinstance(event, events.ConnectionClosed) and event.connection == server:
            self.closed = True
            for stream_id, stream in list(self.streams.items()):
                stream.cancel()
                yield ReceiveHttp(
                    ResponseProtocolError(
                        stream_id, "connection closed", ErrorCode.GENERIC_SERVER_ERROR
                    )
                )
            self.streams.clear()
        # anything else (a late CommandCompleted, data for a closed stream) needs nothing

    def abort(self, request: http.Request, message: str) -> bool:
        """End one stream with `message` (a timeout), leaving the others alone."""
        for stream_id, stream in self.streams.items():
            if stream.sink.request is request:  # type: ignore[attr-defined]
                del self.streams[stream_id]
                conn = stream.conn
                stream.cancel()
                if conn is not None:  # a connection that let a stream time out takes no more
                    conn.retire()
                stream.sink.on_error(message, False)
                self.pool._spawn(stream.sink.flush())
                return True
        return False

    def upload_backlog(self):
        """What to await before the client's connection is read further, or None."""
        for stream in self.streams.values():
            if (waiting := stream.upload_backlog()) is not None:
                return waiting
        return None

    def cancel_all(self) -> None:
        self.closed = True
        for stream in self.streams.values():
            stream.cancel()
        self.streams.clear()


class PooledGatewayLeg:
    """The engine patch: which addresses are pooled, and the live legs."""

    def __init__(self) -> None:
        self.pools: dict[tuple[str, int, bool], GatewayPool] = {}
        # weak: a leg whose client connection ended before its virtual connection opened
        # (so _open_virtual never ran to forget it) goes with that connection
        self.legs: weakref.WeakValueDictionary[connection.Server, GatewayLeg] = (
            weakref.WeakValueDictionary()
        )
        self._originals: dict[str, object] = {}

    def pool_for(self, event: GetHttpConnection) -> GatewayPool | None:
        if event.via is not None or event.transport_protocol != "tcp":
            return None
        return self.pools.get((event.address[0], event.address[1], event.tls))

    def abort(self, flow: http.HTTPFlow, message: str) -> bool:
        """A pooled flow's stream ended with `message`; False when the flow is not pooled."""
        leg = self.legs.get(flow.server_conn)
        return leg is not None and leg.abort(flow.request, message)

    def install(self) -> None:
        if self._originals:
            return
        get_connection = http_layers.HttpLayer.get_connection
        open_connection = proxy_server.ConnectionHandler.open_connection
        drain_writers = proxy_server.ConnectionHandler.drain_writers
        self._originals = {"get_connection": get_connection, "open_connection": open_connection,
                           "drain_writers": drain_writers}  # fmt: skip
        registry = self

        def pooled_get_connection(http_layer, event, *, reuse=True):
            pool = registry.pool_for(event)
            stream = http_layer.command_sources.get(event)
            request = getattr(getattr(stream, "flow", None), "request", None)
            if pool is None or request is None or "upgrade" in request.headers:
                yield from _without_legs(http_layer, get_connection, event, reuse)
                return
            yield from registry._leg_connection(http_layer, pool, event)

        async def pooled_open_connection(handler, command):
            leg = registry.legs.get(command.connection)
            if leg is None:
                return await open_connection(handler, command)
            await registry._open_virtual(handler, leg, command)

        async def pooled_drain_writers(handler):
            # after each read of a client: wait while a pooled stream's body waits for the
            # gateway, as mitmproxy waits for its own server sockets' writers (backpressure)
            await drain_writers(handler)
            for leg in list(getattr(handler, LEGS_OF_HANDLER, ())):
                while (waiting := leg.upload_backlog()) is not None:
                    try:
                        await waiting
                    except Exception:  # the gateway connection went: the stream fails on its own
                        break

        http_layers.HttpLayer.get_connection = pooled_get_connection
        proxy_server.ConnectionHandler.open_connection = pooled_open_connection
        proxy_server.ConnectionHandler.drain_writers = pooled_drain_writers

    def uninstall(self) -> None:
        if not self._originals:
            return
        http_layers.HttpLayer.get_connection = self._originals["get_connection"]
        proxy_server.ConnectionHandler.open_connection = self._originals["open_connection"]
        proxy_server.ConnectionHandler.drain_writers = self._originals["drain_writers"]
        self._originals = {}

    def _leg_connection(self, http_layer, pool: GatewayPool, event: GetHttpConnection):
        for conn, child in http_layer.connections.items():
            if not isinstance(child, GatewayLeg) or child.pool is not pool:
                continue
            if conn in http_layer.waiting_for_establishment:
                http_layer.waiting_for_establishment[conn].append(event)
                return
            if conn.connected:
                stream = http_layer.command_sources.pop(event)
                yield from http_layer.event_to_child(
                    stream, GetHttpConnectionCompleted(event, (conn, None))
                )
                return
        context = http_layer.context.fork()
        context.server = connection.Server(address=event.address, transport_protocol="tcp")
        context.server.tls = event.tls
        context.server.sni = event.address[0] if event.tls else None
        context.server.alpn = b"h2"  # the leg multiplexes, whatever the pooled connections speak
        leg = GatewayLeg(context, pool, self)
        http_layer.connections[context.server] = leg
        http_layer.waiting_for_establishment[context.server].append(event)
        yield from http_layer.event_to_child(leg, events.Start())

    async def _open_virtual(self, handler, leg: GatewayLeg, command) -> None:
        """The leg's connection is open at once and stays so until its client connection
        ends (or something closes it): nothing is dialled."""
        server = command.connection
        now = time.time()
        server.timestamp_start = server.timestamp_tcp_setup = now
        if server.tls:
            server.timestamp_tls_setup = now
        server.peername = server.address
        server.state = connection.ConnectionState.OPEN
        leg.handler = handler
        legs = getattr(handler, LEGS_OF_HANDLER, None)
        if legs is None:
            legs = weakref.WeakSet()
            setattr(handler, LEGS_OF_HANDLER, legs)
        legs.add(leg)
        await handler.server_event(events.OpenConnectionCompleted(command, None))
        cancelled = None
        try:
            await asyncio.get_running_loop().create_future()  # (resolved by nothing)
        except asyncio.CancelledError as e:
            cancelled = e
        server.state = connection.ConnectionState.CLOSED
        server.timestamp_end = time.time()
        await handler.server_event(events.ConnectionClosed(server))
        leg.cancel_all()
        self.legs.pop(server, None)
        handler.transports.pop(server, None)
        if cancelled is not None:
            raise cancelled


def _without_legs(http_layer, get_connection, event, reuse):
    """mitmproxy's own get_connection, blind to pooled legs (a WebSocket upgrade to a pooled
    gateway gets a connection of its own, as before)."""
    legs = {c: x for c, x in http_layer.connections.items() if isinstance(x, GatewayLeg)}
    for conn in legs:
        del http_layer.connections[conn]
    try:
        yield from get_connection(http_layer, event, reuse=reuse)
    finally:
        http_layer.connections.update(legs)
