"""
The client's connection before any request is understood: deadlines for headers, handshakes
and idle tunnels (deadlines.py), header size and request-line checks (request_limits.py), TLS
to the proxy itself (listener_tls.py), and HTTP/2 clients' connection caps (http2_clients.py).

May import: addons.core, addons.rules, addons.engine. Never another concern, never `proxy/`.
"""
