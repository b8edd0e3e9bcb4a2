"""systemd's notify protocol (sd_notify), without a library: one datagram per message."""

from __future__ import annotations

import asyncio
import logging
import socket

logger = logging.getLogger(__name__)


class Notifier:
    """Sends READY/STOPPING/WATCHDOG to systemd when started under `Type=notify`; otherwise
    every call is a no-op."""

    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None):
        self.path = socket_path
        self.watchdog_usec = watchdog_usec
        self._task: asyncio.Task | None = None

    def send(self, message: str) -> None:
        if not self.path:
            return
        address = "\0" + self.path[1:] if self.path.startswith("@") else self.path
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(address)
                s.sendall(message.encode())
        except OSError as e:
            logger.warning("could not notify systemd: %s", e)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")
        if self.watchdog_usec and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watchdog())

    def stopping(self) -> None:
        self.send("STOPPING=1")
        if self._task is not None:
            self._task.cancel()

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    async def _watchdog(self) -> None:
        # ping at half the interval, as sd_watchdog_enabled(3) recommends
        interval = self.watchdog_usec / 2_000_000
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)
