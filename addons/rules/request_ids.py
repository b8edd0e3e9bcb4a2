"""
Request ids: random (version 4) UUIDs as `str(uuid.uuid4())` writes them, from OS randomness
read 4 KB at a time, one system call per 256 routed requests instead of one per request.
"""

from __future__ import annotations

import os

_BATCH = 16 * 256


class RequestIds:
    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def new(self) -> str:
        if self._at >= len(self._pool):
            self._pool, self._at = os.urandom(_BATCH), 0
        raw = bytearray(self._pool[self._at : self._at + 16])
        self._at += 16
        raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        h = raw.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
