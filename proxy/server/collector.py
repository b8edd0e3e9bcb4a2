"""
The worker's cyclic garbage collector, paced.

A full (generation-2) collection walks every object the collector tracks. With 10,000 streams
open that is millions of objects and the worker's loop stands still for up to 1.5 s: nine such
pauses while 10,000 streams opened, none once they were open
(`tests/benchmarks/gc_pauses.py`). After each full collection we freeze what survived
(`gc.freeze()`), so the next one walks only what is newer: the longest pause of that burst fell
to 0.3 s.

Frozen objects are never collected, and some become garbage later (a closed connection's
layers hold reference cycles). So once a minute everything is unfrozen, and the collector's own
next full collection takes them: frozen garbage lives about a minute longer, never for good.
"""

from __future__ import annotations

import asyncio
import gc

UNFREEZE_EVERY = 60.0


class CollectorPacing:
    def __init__(self, unfreeze_every: float = UNFREEZE_EVERY) -> None:
        self.unfreeze_every = unfreeze_every
        self.freezes = 0  # full collections whose survivors were frozen
        self.unfreezes = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._freeze_pending = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None:
            return
        self._loop = loop
        gc.callbacks.append(self._collected)
        self._timer = loop.call_later(self.unfreeze_every, self._unfreeze)

    def stop(self) -> None:
        if self._loop is None:
            return
        gc.callbacks.remove(self._collected)
        if self._timer is not None:
            self._timer.cancel()
        gc.unfreeze()
        self._loop = None

    def _collected(self, phase: str, info: dict) -> None:
        # Not from inside the collector: the freeze runs as the loop's next callback.
        if phase == "stop" and info["generation"] == 2 and not self._freeze_pending:
            if self._loop is None or self._loop.is_closed():
                return  # a collection during interpreter exit, after the loop has gone
            self._freeze_pending = True
            self._loop.call_soon_threadsafe(self._freeze)

    def _freeze(self) -> None:
        self._freeze_pending = False
        gc.freeze()
        self.freezes += 1

    def _unfreeze(self) -> None:
        gc.unfreeze()
        self.unfreezes += 1
        assert self._loop is not None
        self._timer = self._loop.call_later(self.unfreeze_every, self._unfreeze)
