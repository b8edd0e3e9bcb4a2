"""
Who is behind a connection: Proxy-Authorization on every CONNECT and plain request, checked
against the gateway (token_auth.py; the HTTP check itself in gateway_validator.py). Writes
`FlowRecord.identity`; every other concern reads it there.

May import: addons.core, addons.rules. Never another concern, never `proxy/`.
"""
