"""``memory://``: a per-process dedupe store (the default).

Each process alerts on its own and a restart forgets the window; use a sqlite
or redis store to share it between workers, restarts and hosts.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import _fork
from .base import DUPLICATE, LIMIT, Claim, Store

if TYPE_CHECKING:
    from ..config import Config

logger = logging.getLogger(__name__)


class MemoryStore(Store):
    """Two dicts behind one lock: keys (``key -> [expires_at, suppressed,
    alerted_at]``) and groups (``group -> [expires_at, granted,
    limit_suppressed]``).

    Keys and groups together are bounded by ``max_entries`` (at least 2: a
    claim may add a key and its group). An entry expired more than ``retain``
    seconds ago (default a day, as for the sqlite and redis stores) is purged,
    at most every ``purge_every`` seconds and whenever a claim would grow the
    store past ``max_entries``; until then it keeps its suppressed count for
    the next alert. If the store is still too big after a purge, the entries
    closest to expiry (expired ones first) are evicted down to 90 %, so memory
    stays bounded however many distinct keys and groups arrive, and a flood
    logs a warning now and then rather than per key.

    The lock is re-created in a forked child (:mod:`flask_perfwatch._fork`):
    another thread may hold it at the moment gunicorn ``--preload`` forks, and
    the child would otherwise wait for it forever.
    """

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        purge_every: float = 60.0,
        retain: float = 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_entries < 2:
            raise ValueError(f"max_entries must be at least 2 (a key and its group), "
                             f"not {max_entries}")
        self.max_entries = max_entries
        self.purge_every = purge_every
        self.retain = retain
        self.clock = clock
        self._entries: dict[str, list[float]] = {}
        self._groups: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._next_purge = clock() + purge_every
        self._evicted = 0
        self._next_evict_log = float("-inf")
        _fork.register(self)

    @classmethod
    def from_url(cls, url: str, *, prefix: str, config: Config) -> MemoryStore:
        return cls()

    def check(self) -> str:
        return "memory:// (per process: each worker process dedupes on its own)"

    def __len__(self) -> int:
        """Entries held: keys and groups together (what ``max_entries`` bounds)."""
        return len(self._entries) + len(self._groups)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} memory:// {len(self)}/{self.max_entries} entries>"

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def claim(self, key: str, window: float, *, group: str | None = None,
              limit: int = 0) -> Claim:
        limited = group is not None and limit > 0
        with self._lock:
            now = self.clock()
            needed = (key not in self._entries) + (limited and group not in self._groups)
            if now >= self._next_purge or len(self) + needed > self.max_entries:
                self._purge_locked(now, room=needed)
            entry = self._entries.get(key)
            if entry is not None and entry[0] > now:
                entry[1] += 1
                return Claim(granted=False, suppressed=int(entry[1]), previous_at=entry[2],
                             reason=DUPLICATE)
            group_suppressed = 0
            if group is not None and limit > 0:
                state = self._groups.get(group)
                if state is None or state[0] <= now:  # the group's window (re)starts
                    state = self._groups.setdefault(group, [0.0, 0, 0])
                    state[0], state[1] = now + window, 0
                elif state[1] >= limit:
                    state[2] += 1
                    return Claim(granted=False, suppressed=int(state[2]), reason=LIMIT)
                state[1] += 1
                group_suppressed, state[2] = int(state[2]), 0
            self._entries[key] = [now + window, 0, now]
            if entry is None:
                return Claim(granted=True, group_suppressed=group_suppressed)
            return Claim(granted=True, suppressed=int(entry[1]), previous_at=entry[2],
                         group_suppressed=group_suppressed)

    def purge(self) -> int:
        with self._lock:
            return self._purge_locked(self.clock())

    def _purge_locked(self, now: float, *, room: int = 0) -> int:
        """Drop entries expired more than ``retain`` ago; then, if ``room`` more
        would not fit, evict those closest to expiry down to 90 % of the cap."""
        self._next_purge = now + self.purge_every
        purged = 0
        for table in (self._entries, self._groups):
            expired = [k for k, entry in table.items() if entry[0] + self.retain <= now]
            for key in expired:
                del table[key]
            purged += len(expired)
        if len(self) + room > self.max_entries:
            target = min(self.max_entries * 9 // 10, self.max_entries - room)
            overflow = len(self) - target
            both = itertools.chain(((self._entries, k, e[0]) for k, e in self._entries.items()),
                                   ((self._groups, g, e[0]) for g, e in self._groups.items()))
            for table, name, _ in heapq.nsmallest(overflow, both, key=lambda t: t[2]):
                del table[name]
            self._evicted += overflow
            if now >= self._next_evict_log:  # at most once per purge interval
                self._next_evict_log = now + self.purge_every
                logger.warning("dedupe memory store full (%d entries): evicted %d entries "
                               "closest to expiry so far; they may alert again early",
                               self.max_entries, self._evicted)
        return purged
