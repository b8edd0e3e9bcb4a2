"""
What the proxy answers itself for a developer: the page at aibridge-proxy.internal, the CA
downloads, the profile switch and the setup check on a routed host (answers.py).

May import: addons.core, addons.rules, addons.developer, addons.observe.recent_requests (the
list it shows) and addons.routing (the profile store and snapshot). Never `proxy/`.
"""
