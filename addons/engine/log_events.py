"""
mitmproxy re-emits every log record as an `add_log` hook to every addon, waking the event loop
each time; nothing of ours uses that hook, and our access log writes one record per request.
Our own handler (proxy/server/logs.py) writes the records instead. Our master only: stock
mitmdump's console needs the hook.
"""

from __future__ import annotations

from mitmproxy import master


def stop_log_redispatch(engine: master.Master) -> None:
    engine._legacy_log_events.uninstall()
