"""
The core every addon may import: the per-request record (record.py), the small event bus that
chain.py wires (events.py) and the answers the proxy gives itself (responses.py).

Nothing here imports another addon or anything from `proxy/`; addon concerns share a request's
state through its `FlowRecord`, never through each other's modules.
"""
