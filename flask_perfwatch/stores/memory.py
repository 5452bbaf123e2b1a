"""``memory://``: a per-process dedupe store (the default).

Each process alerts on its own and a restart forgets the window; use a sqlite
or redis store to share it between workers, restarts and hosts.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .base import Claim, Store

if TYPE_CHECKING:
    from ..config import Config

logger = logging.getLogger(__name__)


class MemoryStore(Store):
    """A dict of ``key -> [expires_at, suppressed, alerted_at]`` behind a lock.

    Expired entries are purged at most every ``purge_every`` seconds and
    whenever the store grows past ``max_entries``; if it is still too big after
    that, the entries closest to expiry are evicted, so memory stays bounded
    however many distinct keys arrive.
    """

    schemes = ("memory",)

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        purge_every: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_entries = max_entries
        self.purge_every = purge_every
        self.clock = clock
        self._entries: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._next_purge = clock() + purge_every

    @classmethod
    def from_url(cls, url: str, *, prefix: str, config: Config) -> MemoryStore:
        return cls()

    def __len__(self) -> int:
        return len(self._entries)

    def claim(self, key: str, window: float) -> Claim:
        with self._lock:
            now = self.clock()
            if now >= self._next_purge or len(self._entries) >= self.max_entries:
                self._purge_locked(now)
            entry = self._entries.get(key)
            if entry is not None and entry[0] > now:
                entry[1] += 1
                return Claim(granted=False, suppressed=int(entry[1]), previous_at=entry[2])
            self._entries[key] = [now + window, 0, now]
            if entry is None:
                return Claim(granted=True)
            return Claim(granted=True, suppressed=int(entry[1]), previous_at=entry[2])

    def purge(self) -> int:
        with self._lock:
            return self._purge_locked(self.clock())

    def _purge_locked(self, now: float) -> int:
        self._next_purge = now + self.purge_every
        expired = [k for k, entry in self._entries.items() if entry[0] <= now]
        for key in expired:
            del self._entries[key]
        overflow = len(self._entries) - self.max_entries + 1
        if overflow > 0:
            soonest = heapq.nsmallest(overflow, self._entries.items(), key=lambda kv: kv[1][0])
            for key, _ in soonest:
                del self._entries[key]
            logger.warning("dedupe memory store full (%d keys): evicted the %d closest to "
                           "expiry; they may alert again early", self.max_entries, overflow)
        return len(expired)
