"""
What a request may carry, once the routing has said where it goes: credentials kept out of
prompts (prompt_guard.py, on the pure scan in addons/rules/prompt_dlp.py).

May import: addons.core, addons.rules, addons.engine, and the routing snapshot (which hosts
are routed or observed). Never another concern, never `proxy/`.
"""
