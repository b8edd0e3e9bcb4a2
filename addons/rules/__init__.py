"""
Pure rules: what the proxy decides, without mitmproxy (the linter forbids importing it here),
so that they can be unit- and property-tested alone and reused by the settings and the CLI.
"""
