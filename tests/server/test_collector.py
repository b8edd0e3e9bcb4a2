"""The worker's collector pacing: survivors of a full collection are frozen, and everything is
unfrozen again on a timer so that frozen garbage is collected after all."""

from __future__ import annotations

import asyncio
import gc
import weakref

from proxy.server.collector import CollectorPacing


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_a_full_collection_freezes_its_survivors_and_the_timer_unfreezes_them():
    async def main():
        pacing = CollectorPacing(unfreeze_every=0.2)
        pacing.start(asyncio.get_running_loop())
        try:
            kept = Node()
            gc.collect()  # a full collection: its survivors are frozen on the next loop turn
            await asyncio.sleep(0)
            assert pacing.freezes == 1 and gc.get_freeze_count() > 0

            gone = weakref.ref(kept)
            del kept  # now garbage, but frozen: a collection does not see it
            gc.collect(1)
            assert gone() is not None

            await asyncio.sleep(0.3)  # the timer unfreezes everything
            assert pacing.unfreezes >= 1
            gc.collect()
            assert gone() is None
        finally:
            pacing.stop()
        assert gc.get_freeze_count() == 0 and pacing._collected not in gc.callbacks

    asyncio.run(main())
