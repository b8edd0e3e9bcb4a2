"""
What a developer's machine needs, pure and shared by the proxy's pages and the laptop's
commands: per-tool proxy lines (client_env.py), CA trust plans (trust_plan.py), the verdicts
of a setup check (verdicts.py), and the developer and admin pages (pages.py, templates/).

Loads no mitmproxy. May import: addons.rules, certs. Never another addon, never `proxy/`.
"""
