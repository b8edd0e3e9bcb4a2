"""
Tool definitions an admin approved, per governed MCP server ("rug pulls"): a server can change
a tool's description (to a prompt injection) or its input schema after agents were told what
it does. Each tool's definition (name, description, input schema) is pinned the first time it
is seen for an entry; a later listing that differs is a change, recorded and, per entry
(`on_tool_change`), passed, flagged in its description, or hidden (and its calls refused) until
`aibridge-proxy mcp accept <server>` approves what the server now says.

The pure part: what a definition is, and what a description hides. The pins themselves live
in addons/govern/mcp_pins.py. No mitmproxy and no I/O here.
"""

from __future__ import annotations

import hashlib
import json
import re

ON_CHANGE = ("pass", "flag", "hide")
CHANGED_NOTE = (
    "[aibridge-proxy: this tool's definition changed after it was approved; "
    "ask your admin before relying on it] "
)
# zero-width and direction-control characters: text a person does not see but a model reads
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_HTML_COMMENT = re.compile(r"<!--.*?(-->|$)", re.S)


def definition_digest(tool: dict) -> str:
    """What a tool says it is: its name, description and input schema, canonical."""
    canonical = json.dumps(
        {k: tool.get(k) for k in ("name", "description", "inputSchema")},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def visible_text(text: str) -> str:
    """A description without what its reader would not see: zero-width characters and HTML
    comments (hiding places for instructions to a model)."""
    return _INVISIBLE.sub("", _HTML_COMMENT.sub("", text))


def changes(pinned: dict[str, str], changed: dict[str, str], tools: list[dict]):
    """(first seen: name -> digest, differing from the pin: names, newly changed: names)."""
    digests = {t["name"]: definition_digest(t) for t in tools}
    new = {n: d for n, d in digests.items() if n not in pinned}
    differ = [n for n, d in digests.items() if n in pinned and pinned[n] != d]
    fresh = {n: digests[n] for n in differ if changed.get(n) != digests[n]}
    return new, differ, fresh
