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

    An entry expired more than ``retain`` seconds ago (default a day, as for
    the sqlite and redis stores) is purged, at most every ``purge_every``
    seconds and whenever the store grows past ``max_entries``; until then it
    keeps its suppressed count for the key's next alert. If the store is still
    too big after a purge, the entries closest to expiry are evicted, so memory
    stays bounded however many distinct keys arrive.
    """

    schemes = ("memory",)

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        purge_every: float = 60.0,
        retain: float = 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_entries = max_entries
        self.purge_every = purge_every
        self.retain = retain
        self.clock = clock
        self._entries: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._next_purge = clock() + purge_every
        self._evicted = 0
        self._next_evict_log = float("-inf")

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
        expired = [k for k, entry in self._entries.items() if entry[0] + self.retain <= now]
        for key in expired:
            del self._entries[key]
        if len(self._entries) >= self.max_entries:
            # evict down to 90 %: a flood of new keys logs now and then, not per key
            overflow = len(self._entries) - self.max_entries * 9 // 10
            soonest = heapq.nsmallest(overflow, self._entries.items(), key=lambda kv: kv[1][0])
            for key, _ in soonest:
                del self._entries[key]
            self._evicted += overflow
            if now >= self._next_evict_log:  # at most once per purge interval
                self._next_evict_log = now + self.purge_every
                logger.warning("dedupe memory store full (%d keys): evicted %d entries closest "
                               "to expiry so far; they may alert again early",
                               self.max_entries, self._evicted)
        return len(expired)
