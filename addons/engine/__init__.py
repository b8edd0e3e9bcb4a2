"""
Every place aibridge-proxy reaches into mitmproxy's internals, and nothing else.

Each is an object with its state on it, installed explicitly by whoever builds the engine
(`proxy/server/app.py` for `aibridge-proxy serve`, `addons/mitmdump_entry.py` for stock
`mitmdump -s`), never as a side effect of an addon's `load()`. Each is pinned by a contract
test in `tests/engine/test_contracts.py` that fails, naming the internal, when an engine
upgrade moves it:

| module | internal | why |
|---|---|---|
| gateway_leg.py | `HttpLayer.get_connection`, `ConnectionHandler.open_connection` | routed requests over a pool of gateway connections shared by every client connection (mitmproxy dials per client connection) |
| pause_queues.py | `Layer.__init__`, `Layer._paused_event_queue` | a layer's deque for events that wait on a hook made when one first waits: 0.6 KB less per layer, a dozen layers per open stream |
| connections.py | `Proxyserver.connections`, `ConnectionHandler.max_conns` | close a client's sockets; lift the 5-connection cap per h2 client (mitmproxy#8322) |
| header_limit.py | `Http1Server.read_headers` | mitmproxy buffers request headers without limit (its FIXME) |
| body_limit.py | `HttpStream.state_consume_request_body` | a per-flow limit on a buffered request body (mitmproxy's is global, and also refuses streamed ones) |
| h2_abuse.py | `Http2Server.handle_h2_event`, `BufferedH2Connection.receive_data` | rapid reset and control-frame floods end in GOAWAY; a stream reset in the read that opened it never becomes a request |
| error_rendering.py | `HttpStream.handle_protocol_error`, `_http1.make_error_response` | our 502/504 text instead of mitmproxy's HTML page with socket detail |
| layer_stack.py | `context.layers` of a CONNECT tunnel | undo the TLS layers mitmproxy's NextLayer stacked, relay raw bytes |
| upstream_handshake.py | `HttpUpstreamProxy.receive_handshake_data` | a second CONNECT on the same connection for NTLM and Negotiate upstream proxies |
| websocket_cap.py | `WebsocketConnection` (wsproto `events()`, `frame_buf`) | a cap on one message: mitmproxy reassembles fragments without a bound |
| tls_buffers.py | `net.tls.create_client_proxy_context`, `create_proxy_server_context` | SSL_MODE_RELEASE_BUFFERS: ~30 KB less per idle stream |
| hook_table.py | `AddonManager` (`handle_lifecycle`, `trigger_event`, `trigger`, the chain) | each hook to the addons that have it, from a table: a fifth of a request's CPU went to dispatch (our master only) |
| log_events.py | `Master._legacy_log_events` | no `add_log` re-dispatch of every log record (our master only) |
| reuse_port.py | `proxy.mode_servers.asyncio.start_server` | SO_REUSEPORT for worker processes (workers only) |
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field

from addons.engine.body_limit import BufferedBodyLimit
from addons.engine.error_rendering import ProtocolErrorRendering
from addons.engine.gateway_leg import PooledGatewayLeg
from addons.engine.h2_abuse import Http2FloodGuard
from addons.engine.header_limit import HeaderSizeLimit
from addons.engine.pause_queues import LazyPauseQueues
from addons.engine.tls_buffers import ReleaseIdleTlsBuffers
from addons.engine.upstream_handshake import UpstreamAuthHandshake
from addons.engine.websocket_cap import WebSocketMessageCap


@dataclass
class EnginePatches:
    """The patches both runtimes install, handed to the addons that configure them."""

    header_limit: HeaderSizeLimit = field(default_factory=HeaderSizeLimit)
    body_limit: BufferedBodyLimit = field(default_factory=BufferedBodyLimit)
    h2_flood: Http2FloodGuard = field(default_factory=Http2FloodGuard)
    error_rendering: ProtocolErrorRendering = field(default_factory=ProtocolErrorRendering)
    tls_buffers: ReleaseIdleTlsBuffers = field(default_factory=ReleaseIdleTlsBuffers)
    websocket_cap: WebSocketMessageCap = field(default_factory=WebSocketMessageCap)
    upstream_handshake: UpstreamAuthHandshake = field(default_factory=UpstreamAuthHandshake)
    gateway_leg: PooledGatewayLeg = field(default_factory=PooledGatewayLeg)
    pause_queues: LazyPauseQueues = field(default_factory=LazyPauseQueues)

    def _all(self):
        return (
            self.header_limit,
            self.body_limit,
            self.h2_flood,
            self.error_rendering,
            self.tls_buffers,
            self.websocket_cap,
            self.upstream_handshake,
            self.gateway_leg,
            self.pause_queues,
        )

    def install(self) -> None:
        for patch in self._all():
            patch.install()

    def uninstall(self) -> None:
        for patch in self._all():
            patch.uninstall()
