"""
Where a client may go and how: ports, address ranges and the host policy (egress_policy.py),
decrypt or tunnel (intercept.py), and the upstream proxy a tunnel leaves through, with its
sign-in (upstream_proxy.py).

May import: addons.core, addons.rules, addons.engine, and the routing snapshot
(addons.routing.snapshot: which hosts are routed or observed). Never `proxy/`.
"""
