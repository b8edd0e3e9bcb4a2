"""
Each mitmproxy layer makes a deque at birth for the events that arrive while it waits on a
hook (`Layer._paused_event_queue`), and a deque costs about 0.6 KB however empty it stays. An
open stream has a dozen layers and most never hold an event: the tracemalloc profile of a
pooled stream (tests/benchmarks/stream_memory.py) put 9.7 KB of its 50 KB of Python objects in
these deques. Here a layer gets its deque when the first event has to wait; until then reads
see an empty queue.
"""

from __future__ import annotations

import collections

from mitmproxy.proxy import layer

ATTRIBUTE = "_paused_event_queue"


class _NoEventsYet:
    """What a layer without a deque reads: empty; the first `append` gives it a real one."""

    __slots__ = ("layer",)

    def __init__(self, owner: layer.Layer) -> None:
        self.layer = owner

    def __bool__(self) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def __iter__(self):
        return iter(())

    def append(self, event) -> None:
        queue = self.layer.__dict__[ATTRIBUTE] = collections.deque()
        queue.append(event)

    def popleft(self):
        raise IndexError("pop from an empty deque")


class _QueueOnFirstPause:
    """A non-data descriptor: once a layer has its own deque (in its __dict__), that wins."""

    def __get__(self, owner, cls=None):
        return self if owner is None else _NoEventsYet(owner)


class LazyPauseQueues:
    def __init__(self) -> None:
        self._original_init = None

    def install(self) -> None:
        if self._original_init is not None:
            return
        original = self._original_init = layer.Layer.__init__

        def init(self, context) -> None:
            original(self, context)
            self.__dict__.pop(ATTRIBUTE, None)  # until an event has to wait

        layer.Layer.__init__ = init
        setattr(layer.Layer, ATTRIBUTE, _QueueOnFirstPause())

    def uninstall(self) -> None:
        if self._original_init is None:
            return
        layer.Layer.__init__ = self._original_init
        delattr(layer.Layer, ATTRIBUTE)
        self._original_init = None
