"""
mitmproxy addons that make up aibridge-proxy; `chain.py` puts them in order, `rules/` holds
the pure logic they apply, `engine/` every reach into mitmproxy's internals.

This file imports nothing, so importing one module (the settings need only `rules/`) does not
load the engine.
"""
