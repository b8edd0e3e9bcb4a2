"""Contracts with mitmproxy's internals: one test per place in addons/engine/ that reaches
into them, against the installed mitmproxy. Each fails with a message naming the internal that
moved, so an engine upgrade says at once which patch needs work (the end-to-end tests then say
whether the behaviour still holds)."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from mitmproxy import master
from mitmproxy import options
from mitmproxy.addons import proxyserver
from mitmproxy.net import tls as net_tls
from mitmproxy.proxy import layer as mitmproxy_layer
from mitmproxy.proxy import layers
from mitmproxy.proxy import mode_servers
from mitmproxy.proxy import server
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.layers.http import HttpStream
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http import _upstream_proxy
from mitmproxy.proxy.layers.http._http2 import Http2Server
from mitmproxy.proxy.layers.http._http_h2 import BufferedH2Connection
from mitmproxy.proxy.layers.websocket import WebsocketConnection

from addons.engine import EnginePatches
from addons.engine.body_limit import BufferedBodyLimit
from addons.engine.error_rendering import ProtocolErrorRendering
from addons.engine.gateway_leg import PooledGatewayLeg
from addons.engine.h2_abuse import Http2FloodGuard
from addons.engine.header_limit import HeaderSizeLimit
from addons.engine.pause_queues import LazyPauseQueues
from addons.engine.reuse_port import _AsyncioWithReusePort
from addons.engine.tls_buffers import ReleaseIdleTlsBuffers
from addons.engine.upstream_handshake import UpstreamAuthHandshake
from addons.engine.websocket_cap import WebSocketMessageCap


def moved(internal: str, why: str):
    pytest.fail(f"mitmproxy internal moved: {internal}: {why}", pytrace=False)


def params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_http1_server_reads_headers_with_a_buffer_and_states():
    internal = "mitmproxy.proxy.layers.http._http1.Http1Server.read_headers"
    reader = _http1.Http1Server.read_headers
    if not inspect.isgeneratorfunction(reader) or params(reader) != ["self", "event"]:
        moved(internal, "no longer a generator method (self, event)")
    source = inspect.getsource(_http1.Http1Connection)
    for name in ("self.buf", "self.state", "self.done", "self.conn"):
        if name not in source + inspect.getsource(_http1.Http1Server):
            moved(internal, f"{name} is gone (HeaderSizeLimit reads and sets it)")


def test_protocol_error_handler_and_error_page():
    internal = "mitmproxy.proxy.layers.http.HttpStream.handle_protocol_error"
    handler = http_layer.HttpStream.handle_protocol_error
    if not inspect.isgeneratorfunction(handler) or params(handler) != ["self", "event"]:
        moved(internal, "no longer a generator method (self, event)")
    for name in (
        "SendHttp",
        "ResponseProtocolError",
        "ResponseHeaders",
        "ResponseData",
        "ResponseEndOfMessage",
    ):
        if not hasattr(http_layer, name):
            moved(f"mitmproxy.proxy.layers.http.{name}", "ProtocolErrorRendering sends it")
    maker = getattr(_http1, "make_error_response", None)
    if maker is None or params(maker)[:2] != ["status_code", "message"]:
        moved("mitmproxy.proxy.layers.http._http1.make_error_response", "signature changed")


def test_the_request_body_is_buffered_in_a_state_of_the_stream():
    internal = "mitmproxy.proxy.layers.http.HttpStream.state_consume_request_body"
    state = getattr(http_layer.HttpStream, "state_consume_request_body", None)
    if state is None or params(state) != ["self", "event"]:
        moved(internal, "no longer a state method (self, event)")
    source = inspect.getsource(http_layer.HttpStream)
    for name in ("self.request_body_buf", "self.state_errored", "self.flow.live"):
        if name not in source:
            moved(internal, f"{name} is gone (BufferedBodyLimit reads and sets it)")
    for name in ("ErrorCode", "HttpErrorHook", "RequestData", "ResponseProtocolError"):
        if not hasattr(http_layer, name):
            moved(f"mitmproxy.proxy.layers.http.{name}", "BufferedBodyLimit uses it")


def test_the_h2_server_handles_each_event_and_can_end_the_connection():
    internal = "mitmproxy.proxy.layers.http._http2.Http2Server"
    handler = Http2Server.handle_h2_event
    if not inspect.isgeneratorfunction(handler) or params(handler) != ["self", "event"]:
        moved(f"{internal}.handle_h2_event", "no longer a generator method (self, event)")
    if params(Http2Server.protocol_error)[:3] != ["self", "message", "error_code"]:
        moved(f"{internal}.protocol_error", "no longer (message, error_code)")
    if params(BufferedH2Connection.receive_data) != ["self", "data"]:
        moved("mitmproxy.proxy.layers.http._http_h2.BufferedH2Connection.receive_data", "changed")
    if "self.h2_conn" not in inspect.getsource(Http2Server.__mro__[1]):
        moved(f"{internal}.h2_conn", "Http2FloodGuard keeps its budgets there")


def test_connection_handlers_are_kept_by_client_id_with_a_connection_cap():
    ps = proxyserver.Proxyserver()
    if not isinstance(getattr(ps, "connections", None), dict):
        moved("Proxyserver.connections", "no longer a dict of client id -> handler")
    if "max_conns" not in server.ConnectionHandler.__annotations__:
        moved("mitmproxy.proxy.server.ConnectionHandler.max_conns", "the per-address semaphore")


def test_the_http_layer_gets_connections_for_its_streams_by_command():
    internal = "mitmproxy.proxy.layers.http.HttpLayer.get_connection"
    getter = http_layer.HttpLayer.get_connection
    if not inspect.isgeneratorfunction(getter) or params(getter) != ["self", "event", "reuse"]:
        moved(internal, "no longer a generator method (self, event, *, reuse)")
    for name in ("command_sources", "connections", "waiting_for_establishment"):
        if name not in http_layer.HttpLayer.__annotations__:
            moved(f"mitmproxy.proxy.layers.http.HttpLayer.{name}", "GatewayLeg registers there")
    if not hasattr(http_layer.HttpStream, "flow"):
        if "self.flow" not in inspect.getsource(http_layer.HttpStream):
            moved("mitmproxy.proxy.layers.http.HttpStream.flow", "the leg reads the request")
    for name in ("RegisterHttpConnection", "GetHttpConnectionCompleted", "ReceiveHttp"):
        if not hasattr(http_layer, name):
            moved(f"mitmproxy.proxy.layers.http.{name}", "GatewayLeg speaks it")
    fields = {f for f in http_layer.GetHttpConnection.__dataclass_fields__}
    if not {"address", "tls", "via", "transport_protocol"} <= fields:
        moved("mitmproxy.proxy.layers.http.GetHttpConnection", "the pooled address test")


def test_the_connection_handler_opens_connections_and_takes_events():
    internal = "mitmproxy.proxy.server.ConnectionHandler"
    opener = server.ConnectionHandler.open_connection
    if not inspect.iscoroutinefunction(opener) or params(opener) != ["self", "command"]:
        moved(f"{internal}.open_connection", "no longer a coroutine method (self, command)")
    event = server.ConnectionHandler.server_event
    if not inspect.iscoroutinefunction(event) or params(event) != ["self", "event"]:
        moved(f"{internal}.server_event", "the pool's answers come in through it")
    if "transports" not in server.ConnectionHandler.__annotations__:
        moved(f"{internal}.transports", "the leg's virtual connection is kept there")
    drain = server.ConnectionHandler.drain_writers
    if not inspect.iscoroutinefunction(drain) or params(drain) != ["self"]:
        moved(f"{internal}.drain_writers", "no longer a coroutine method (self)")
    reads = inspect.getsource(server.ConnectionHandler.handle_connection)
    if reads.find("self.drain_writers()") < reads.find("reader.read("):
        moved(
            f"{internal}.handle_connection",
            "no longer drains writers after each read "
            "(where a pooled upload holds the client back)",
        )


def test_layers_keep_waiting_events_in_one_deque_made_at_birth():
    internal = "mitmproxy.proxy.layer.Layer._paused_event_queue"
    source = inspect.getsource(mitmproxy_layer.Layer)
    uses = source.count("_paused_event_queue")
    init = inspect.getsource(mitmproxy_layer.Layer.__init__)
    if "self._paused_event_queue = collections.deque()" not in init:
        moved(internal, "no longer made in Layer.__init__ (LazyPauseQueues drops it there)")
    for use in (".append(event)", ".popleft()", "and self._paused_event_queue"):
        if "_paused_event_queue" + use not in source and use not in source:
            moved(internal, f"no longer used as {use!r} (what _NoEventsYet stands in for)")
    if uses != 5:  # annotation, init, append, the resume loop's test and popleft
        moved(internal, f"used {uses} times in Layer, not 5: check LazyPauseQueues")
    http = inspect.getsource(http_layer.HttpStream)
    if http.count("_paused_event_queue") != 1 or "for evt in self._paused_event_queue" not in http:
        moved("mitmproxy.proxy.layers.http.HttpStream", "reads the queue otherwise now")


def test_a_layer_gets_its_queue_when_an_event_first_waits():
    from mitmproxy.proxy import context
    from mitmproxy.test import tflow

    patch = LazyPauseQueues()
    patch.install()
    try:
        ctx = context.Context(tflow.tclient_conn(), options.Options())
        waiting = mitmproxy_layer.NextLayer(ctx)
        assert "_paused_event_queue" not in waiting.__dict__
        assert not waiting._paused_event_queue and list(waiting._paused_event_queue) == []
        waiting._paused_event_queue.append("event")
        assert list(waiting._paused_event_queue) == ["event"]
        assert waiting._paused_event_queue.popleft() == "event"
        assert not waiting._paused_event_queue
    finally:
        patch.uninstall()
    assert "_paused_event_queue" in mitmproxy_layer.NextLayer(ctx).__dict__


def test_asyncio_ssl_transports_read_into_a_buffer_of_max_size():
    """gateway_pool.lean_tls_read_buffer shrinks it per connection."""
    from asyncio import sslproto

    internal = "asyncio.sslproto.SSLProtocol"
    if getattr(sslproto.SSLProtocol, "max_size", None) != 256 * 1024:
        moved(f"{internal}.max_size", "no longer the 256 KiB class attribute")
    source = inspect.getsource(sslproto.SSLProtocol)
    for name in ("self._ssl_buffer = bytearray(self.max_size)", "return self._ssl_buffer_view"):
        if name not in source:
            moved(internal, f"{name!r} is gone")
    if "self._ssl_protocol = ssl_protocol" not in inspect.getsource(sslproto._SSLProtocolTransport):
        moved("asyncio.sslproto._SSLProtocolTransport._ssl_protocol", "the transport's protocol")


def test_h2_closes_its_state_machine_in_one_goaway_method():
    """The pool keeps a gracefully closed h2 connection reading (gateway_pool._GracefulH2)."""
    import h2.connection

    receive = getattr(h2.connection.H2Connection, "_receive_goaway_frame", None)
    if receive is None or params(receive) != ["self", "frame"]:
        moved("h2.connection.H2Connection._receive_goaway_frame", "no longer (self, frame)")
    if "state_machine" not in inspect.getsource(h2.connection.H2Connection.__init__):
        moved("h2.connection.H2Connection.state_machine", "the state _GracefulH2 restores")


def test_connect_streams_sit_in_the_layer_stack():
    for cls, name in ((layers.HttpLayer, "HttpLayer"), (HttpStream, "HttpStream")):
        if not inspect.isclass(cls):
            moved(f"mitmproxy.proxy.layers.{name}", "layer_stack.py looks for it")
    if not {"regular", "upstream"} <= {m.name for m in HTTPMode}:
        moved("mitmproxy.proxy.layers.http.HTTPMode", "regular/upstream modes")
    if "ignore" not in params(layers.TCPLayer.__init__):
        moved("mitmproxy.proxy.layers.TCPLayer(context, ignore=True)", "the raw relay")


def test_tls_context_factories_take_keyword_arguments():
    for name in ("create_client_proxy_context", "create_proxy_server_context"):
        fn = getattr(net_tls, name, None)
        if fn is None or not hasattr(fn, "cache_info"):
            moved(f"mitmproxy.net.tls.{name}", "no longer an lru-cached factory")
        if any(p.kind is not p.KEYWORD_ONLY for p in inspect.signature(fn).parameters.values()):
            moved(f"mitmproxy.net.tls.{name}", "takes positional arguments now")


async def test_master_redispatches_log_records_through_legacy_events():
    m = master.Master(options.Options())
    try:
        if not callable(getattr(getattr(m, "_legacy_log_events", None), "uninstall", None)):
            moved("mitmproxy.master.Master._legacy_log_events", "log_events.py uninstalls it")
    finally:
        m._legacy_log_events.uninstall()


def test_the_proxy_dispatches_hooks_through_the_masters_addon_manager():
    from mitmproxy import addonmanager

    if "self.master.addons.handle_lifecycle(hook)" not in inspect.getsource(mode_servers):
        moved(
            "mitmproxy.proxy.mode_servers", "hooks no longer go to master.addons.handle_lifecycle"
        )
    for name in ("add", "register", "remove", "trigger", "trigger_event", "handle_lifecycle"):
        if not callable(getattr(addonmanager.AddonManager, name, None)):
            moved(f"mitmproxy.addonmanager.AddonManager.{name}", "hook_table.py overrides it")
    if not callable(getattr(addonmanager, "traverse", None)):
        moved("mitmproxy.addonmanager.traverse", "hook_table.py walks addons' children with it")


def test_mode_servers_bind_through_their_asyncio_module():
    if getattr(mode_servers, "asyncio", None) is not asyncio:
        moved("mitmproxy.proxy.mode_servers.asyncio", "reuse_port.py swaps that module")
    if "asyncio.start_server(" not in inspect.getsource(mode_servers):
        moved("mitmproxy.proxy.mode_servers", "no longer binds with asyncio.start_server")
    assert _AsyncioWithReusePort().sleep is asyncio.sleep  # everything else passes through


def test_websocket_connections_buffer_fragments_and_inherit_wsproto_events():
    import wsproto
    from mitmproxy.proxy.layers import websocket as ws_layer

    internal = "mitmproxy.proxy.layers.websocket.WebsocketConnection"
    cls = getattr(ws_layer, "WebsocketConnection", None)
    if cls is None or not issubclass(cls, wsproto.Connection):
        moved(internal, "no longer a wsproto.Connection subclass")
    if "events" in cls.__dict__:
        moved(f"{internal}.events", "overridden: WebSocketMessageCap wraps the inherited one")
    if "frame_buf" not in cls.__annotations__ or "conn" not in cls.__annotations__:
        moved(f"{internal}.frame_buf", "the reassembly buffer the cap measures")
    relay = inspect.getsource(ws_layer.WebsocketLayer)
    if "wsproto.events.CloseConnection" not in relay or "frame_buf" not in relay:
        moved("WebsocketLayer.relay_messages", "no longer closes both sides on a close event")


def test_the_upstream_connect_is_a_tunnel_handshake_on_the_tunnel_connection():
    internal = "layers.http._upstream_proxy.HttpUpstreamProxy"
    cls = _upstream_proxy.HttpUpstreamProxy
    if params(cls.receive_handshake_data) != ["self", "data"]:
        moved(f"{internal}.receive_handshake_data", "no longer (self, data)")
    source = inspect.getsource(cls)
    for needed in ("self.send_connect", "self.tunnel_connection", "HttpConnectUpstreamHook"):
        if needed not in source:
            moved(internal, f"no longer uses {needed}")
    if "_upstream_proxy.HttpUpstreamProxy.make" not in inspect.getsource(http_layer):
        moved("layers.http", "no longer looks HttpUpstreamProxy up on its module at call time")


@pytest.mark.parametrize(
    "patch, target, attribute",
    [
        (HeaderSizeLimit(), _http1.Http1Server, "read_headers"),
        (BufferedBodyLimit(), http_layer.HttpStream, "state_consume_request_body"),
        (Http2FloodGuard(), Http2Server, "handle_h2_event"),
        (Http2FloodGuard(), BufferedH2Connection, "receive_data"),
        (ProtocolErrorRendering(), http_layer.HttpStream, "handle_protocol_error"),
        (ProtocolErrorRendering(), _http1, "make_error_response"),
        (ReleaseIdleTlsBuffers(), net_tls, "create_client_proxy_context"),
        (WebSocketMessageCap(), WebsocketConnection, "events"),
        (UpstreamAuthHandshake(), _upstream_proxy.HttpUpstreamProxy, "receive_handshake_data"),
        (PooledGatewayLeg(), http_layer.HttpLayer, "get_connection"),
        (PooledGatewayLeg(), server.ConnectionHandler, "open_connection"),
        (PooledGatewayLeg(), server.ConnectionHandler, "drain_writers"),
        (LazyPauseQueues(), mitmproxy_layer.Layer, "__init__"),
    ],
)
def test_each_patch_installs_once_and_uninstalls_cleanly(patch, target, attribute):
    original = getattr(target, attribute)
    patch.install()
    patched = getattr(target, attribute)
    patch.install()  # idempotent
    assert patched is not original and getattr(target, attribute) is patched
    patch.uninstall()
    assert getattr(target, attribute) is original


def test_loading_the_chain_patches_nothing():
    """Patches come only from EnginePatches.install(), called by the program or the mitmdump
    entry, never as a side effect of an addon's load()."""
    from mitmproxy.test import taddons

    from addons.chain import make_addons

    originals = (_http1.Http1Server.read_headers, http_layer.HttpStream.handle_protocol_error)
    with taddons.context(*make_addons(EnginePatches())):
        assert (_http1.Http1Server.read_headers, http_layer.HttpStream.handle_protocol_error) == (
            originals
        )
