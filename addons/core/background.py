"""Closing an old client (a token validator, a Redis store) after a reload, without waiting in
`configure`: asyncio keeps only weak references to tasks, so each is held until it ends."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

_RUNNING: set[asyncio.Task] = set()


def in_background(
    coro: Coroutine[Any, Any, Any], holder: set[asyncio.Task] | None = None
) -> asyncio.Task | None:
    """Run `coro` on the running loop, held in `holder` (or here) until it ends. Without a
    running loop there is nothing to close on: the coroutine is dropped, unstarted."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        coro.close()
        return None
    held = _RUNNING if holder is None else holder
    task = loop.create_task(coro)
    held.add(task)
    task.add_done_callback(held.discard)
    return task
