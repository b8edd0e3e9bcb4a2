"""
Pure rules: what the proxy decides, without mitmproxy (the linter forbids importing it here)
and without I/O of their own (the HTTP token check and the profile stores live with the
concerns that own them), so that they can be unit- and property-tested alone and reused by
the settings, `explain` and the CLI.

May import nothing else of the project: it is the bottom layer.
"""
