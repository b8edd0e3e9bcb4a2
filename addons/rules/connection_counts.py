"""
Who holds how many client connections, and whether one more fits: per user, per address, and
in all, so one token or one machine cannot take every file descriptor the proxy has. Pure
counting; the ConnectionCaps addon feeds it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

FDS_PER_CONNECTION = 2  # the client's socket, and the one to the gateway or the origin
RESERVE_FDS = 64  # kept for the listener, logs, state files, token checks and the admin port


def total_for(open_files_limit: int) -> int:
    """Client connections that fit under an open-file limit, the reserve kept aside."""
    return max(16, (open_files_limit - RESERVE_FDS) // FDS_PER_CONNECTION)


@dataclass(frozen=True)
class Caps:
    per_user: int
    per_address: int
    total: int

    @property
    def user_share(self) -> int:
        """What one user may hold: their cap, and never more than half of all connections."""
        return min(self.per_user, max(1, self.total // 2))


class ConnectionCounts:
    def __init__(self, caps: Caps) -> None:
        self.caps = caps
        self.by_user: Counter[str] = Counter()
        self.by_address: Counter[str] = Counter()
        self.total = 0

    def opened(self, address: str) -> None:
        self.by_address[address] += 1
        self.total += 1

    def closed(self, address: str, user: str | None) -> None:
        _drop(self.by_address, address)
        self.total = max(0, self.total - 1)
        if user is not None:
            _drop(self.by_user, user)

    def claim(self, user: str) -> None:
        self.by_user[user] += 1

    def refusal(self, address: str, user: str | None) -> tuple[int, str] | None:
        """(status, why naming the setting) when this connection is one too many, else None.
        The connection itself is already counted for its address and in all; `user` is the
        one it would be claimed for (not yet counted)."""
        if self.total > self.caps.total:
            return 503, (f"the proxy holds {self.caps.total} client connections, its limit "
                         "(connections.max_total): try again shortly")  # fmt: skip
        if self.by_address[address] > self.caps.per_address:
            return 429, (f"{address} holds more than {self.caps.per_address} connections "
                         "(connections.max_per_address): close some")  # fmt: skip
        if user is not None and self.by_user[user] + 1 > self.caps.user_share:
            return 429, (f"{user} holds {self.caps.user_share} connections already "
                         "(connections.max_per_user): close some")  # fmt: skip
        return None


def _drop(counter: Counter, key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
