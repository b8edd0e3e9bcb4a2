"""
The core every addon may import: the per-request record (record.py), the small event bus that
chain.py wires (events.py), the answers the proxy gives itself (responses.py), the marker
a refused dial travels in (dial_refusals.py) and the TLS context of calls to the gateway
(gateway_tls.py).

It imports only the pure rules (addons.rules), no other addon and nothing of `proxy/`.
Addon concerns share a request's state through its `FlowRecord`, never through each other's
modules.
"""
