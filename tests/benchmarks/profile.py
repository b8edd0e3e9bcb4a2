"""
Where a worker's CPU goes while it proxies requests: py-spy samples one worker's Python stacks
and each sample is put in one bucket, first match wins:
- addon hooks: a frame of one of our addons (addons/*.py, not addons/engine/) is on the stack;
  the hook's whole time, mitmproxy calls it makes included;
- hook dispatch: the innermost frames are mitmproxy's AddonManager or our HookTable;
- TLS: the innermost frame is pyOpenSSL or the ssl module;
- the rest: mitmproxy's proxy core, HTTP/1 and h2, asyncio and the kernel calls under them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

_ADDON = re.compile(r"\(addons/(?!engine/)")
_DISPATCH = ("AddonManager.", "HookTable.", "traverse (mitmproxy/addonmanager")
_ENTRY = re.compile(r"^(\S+) \((addons/[^:]+):")


def py_spy() -> str:
    here = Path(sys.executable).with_name("py-spy")
    found = str(here) if here.exists() else shutil.which("py-spy")
    if not found:
        sys.exit("benchmark needs py-spy (./run setup installs it)")
    return found


def addon_share(pid: int, run: Callable[[], object], seconds: int = 8) -> dict:
    """Sample `pid` for `seconds` at 200 Hz while `run()` loads it."""
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        spy = subprocess.Popen(
            [py_spy(), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
             "--format", "raw", "--output", out.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        run()
        spy.wait(seconds + 60)
        return shares(Path(out.name).read_text())


def shares(raw: str) -> dict:
    """Buckets (fractions of all samples) and the ten addon hooks that cost most."""
    buckets: Counter = Counter()
    hooks: Counter = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count, frames = int(n), stack.split(";")
        total += count
        ours = next((f for f in frames if _ADDON.search(f)), None)
        if ours is not None:
            buckets["addon hooks"] += count
            if m := _ENTRY.match(ours):
                hooks[f"{m.group(1)} ({m.group(2)})"] += count
        elif any(f.startswith(_DISPATCH) for f in frames[-3:]):
            buckets["hook dispatch"] += count
        elif "OpenSSL" in frames[-1] or "ssl" in frames[-1].lower():
            buckets["TLS"] += count
        else:
            buckets["mitmproxy core, asyncio"] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        **{k: round(v / total, 3) for k, v in buckets.most_common()},
        "top_hooks": {k: round(v / total, 3) for k, v in hooks.most_common(10)},
    }
