"""
What happens to an intercepted request: the routing snapshot swapped whole on reload
(snapshot.py), the routing rules that decide it (rules.py, on the pure plan in
addons/rules/plan.py), the router that rewrites it to the gateway and streams it
(gateway.py), failover between gateways (gateway_health.py), WebSocket fallback
(websocket.py), our words for upstream failures (upstream_errors.py) and where profile
choices are kept (profile_store.py).

May import: addons.core, addons.rules, addons.engine. Never `proxy/`.
"""
