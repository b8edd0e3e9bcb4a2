"""
What a request may carry and cost, once the routing rules have said where it goes: credentials
kept out of prompts (prompt_guard.py, on the pure scan in addons/rules/prompt_dlp.py), MCP
servers' tools allowed or denied on the wire (mcp_guard.py, on addons/rules/mcp.py), and limits
and budgets (limits.py, counted in limit_store.py, on addons/rules/limits.py).

May import: addons.core, addons.rules, addons.engine, and the routing snapshot (which hosts
are routed or observed). Never another concern, never `proxy/`.
"""
