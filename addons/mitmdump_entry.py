"""
Entry file for stock mitmproxy: `mitmdump -s addons/mitmdump_entry.py --set aibridge_gateway=...`.

Use it to debug flows in mitmweb with the same behaviour as `aibridge-proxy serve`. Set
`connection_strategy=lazy` too, so that routed provider hosts are never contacted.
"""

from addons import make_addons

addons = make_addons()
