"""
Entry file for stock mitmproxy: `mitmdump -s addons/mitmdump_entry.py --set aibridge_gateway=...`.

Use it to debug flows in mitmweb with the same behaviour as `aibridge-proxy serve`. Set
`connection_strategy=lazy` too, so that routed provider hosts are never contacted. The engine
patches are installed here, as `serve` installs them (see addons/chain.py for hook order).
"""

from addons.chain import make_addons
from addons.engine import EnginePatches

patches = EnginePatches()
patches.install()
addons = make_addons(patches)
