"""
The pages the proxy serves to people: the developer page (through the proxy, at
http://aibridge-proxy.internal/, and on the admin listener at /) and the admin's overview
(admin listener only). Server-rendered with Jinja2 from templates shipped in the package;
nothing is fetched from the internet. Pure: no mitmproxy, so the supervisor can render too.
"""
