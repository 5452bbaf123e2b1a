"""``sqlite:///path``: a dedupe store shared by every process of one host.

One database file holds the claims of every worker process (gunicorn, uwsgi)
and survives restarts and deploys. The URL is read like SQLAlchemy's:
``sqlite:///relative/path.db`` (relative to the working directory at start-up)
and ``sqlite:////absolute/path.db``. A missing parent directory is created at
``init_app``; a path that cannot be used raises
:class:`~flask_perfwatch.exceptions.ConfigError` there. URL options:
``?timeout=5s`` (how long a claim waits for another process's write lock,
default 5 s) and ``?retain=1d`` (how long an expired entry is kept so that the
next alert of its key can still say how many repeats were suppressed, default
one day).

How the claim stays atomic across processes: the database is in WAL mode, a
claim is one conditional ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``
inside ``BEGIN IMMEDIATE`` (the write lock is taken up front, so two processes
cannot both read "free"), and a busy timeout makes a process wait its turn
instead of failing with "database is locked".

Connections are opened lazily, one per thread, and again in a forked child
(a connection must never cross ``fork()``: the child abandons inherited ones
without closing them, since closing could checkpoint and delete the parent's
write-ahead log). Expired entries are deleted in small batches at most every
``purge_every`` seconds, and the table is capped at ``max_entries`` rows.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..config import parse_duration
from ..exceptions import ConfigError
from .base import Claim, Store

if TYPE_CHECKING:
    from ..config import Config

logger = logging.getLogger(__name__)

TABLE = "perfwatch_dedupe"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    prefix TEXT NOT NULL,
    key TEXT NOT NULL,
    expires_at REAL NOT NULL,       -- end of the current window (Unix time)
    suppressed INTEGER NOT NULL,    -- repeats refused in the current window
    alerted_at REAL NOT NULL,       -- when the current window's alert was granted
    prev_suppressed INTEGER NOT NULL DEFAULT 0,  -- the previous window's count
    prev_alerted_at REAL,                        -- the previous window's alert
    PRIMARY KEY (prefix, key)
);
CREATE INDEX IF NOT EXISTS {TABLE}_expires ON {TABLE} (expires_at);
"""

# One statement decides and records the claim. SET expressions all read the
# row as it was, so "expired" means the same thing in every column. A refused
# claim always leaves suppressed >= 1 and a granted one leaves 0: that is how
# the caller tells them apart from the RETURNING row.
_CLAIM = f"""
INSERT INTO {TABLE} (prefix, key, expires_at, suppressed, alerted_at,
                     prev_suppressed, prev_alerted_at)
VALUES (:prefix, :key, :now + :window, 0, :now, 0, NULL)
ON CONFLICT (prefix, key) DO UPDATE SET
    prev_suppressed = CASE WHEN expires_at <= :now THEN suppressed ELSE prev_suppressed END,
    prev_alerted_at = CASE WHEN expires_at <= :now THEN alerted_at ELSE prev_alerted_at END,
    suppressed = CASE WHEN expires_at <= :now THEN 0 ELSE suppressed + 1 END,
    alerted_at = CASE WHEN expires_at <= :now THEN :now ELSE alerted_at END,
    expires_at = CASE WHEN expires_at <= :now THEN :now + :window ELSE expires_at END
RETURNING suppressed, alerted_at, prev_suppressed, prev_alerted_at
"""

_PURGE_BATCH = f"""
DELETE FROM {TABLE} WHERE rowid IN
    (SELECT rowid FROM {TABLE} WHERE expires_at <= :before LIMIT :limit)
"""

_EVICT = f"""
DELETE FROM {TABLE} WHERE rowid IN
    (SELECT rowid FROM {TABLE} ORDER BY expires_at LIMIT :limit)
"""

#: Connections inherited through ``fork()``: kept referenced, never closed,
#: so that their finalizer cannot touch the parent's database files.
_abandoned: list[sqlite3.Connection] = []

_OPTIONS = ("timeout", "retain")


class SQLiteStore(Store):
    """Dedupe entries in one table of a sqlite database file.

    :param path: the database file.
    :param prefix: namespace of this app's keys (``PERFWATCH_STORE_PREFIX``).
    :param timeout: seconds a claim waits for another process's write lock.
    :param retain: seconds an expired entry is kept, so that its suppressed
        count reaches the next alert of its key.
    :param purge_every: seconds between two scheduled purges in one process.
    :param purge_batch: rows deleted per purge transaction; a scheduled purge
        runs at most ``purge_batches`` of them, so it never holds the lock long.
    :param max_entries: rows kept at most in the file (all prefixes together);
        beyond it the entries closest to expiry are evicted (they may alert
        again early).
    :param clock: Unix time; every process sharing the file must agree on it.
    """

    schemes = ("sqlite",)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        prefix: str = "perfwatch",
        timeout: float = 5.0,
        retain: float = 86400.0,
        purge_every: float = 60.0,
        purge_batch: int = 500,
        purge_batches: int = 10,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.prefix = prefix
        self.timeout = timeout
        self.retain = retain
        self.purge_every = purge_every
        self.purge_batch = purge_batch
        self.purge_batches = purge_batches
        self.max_entries = max_entries
        self.clock = clock
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._next_purge = clock() + purge_every
        self._closed = False

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, *, prefix: str, config: Config | None = None) -> SQLiteStore:
        source = config.sources.get("store", "default") if config is not None else "URL"
        path, options = parse_sqlite_url(url, source=source)
        store = cls(path, prefix=prefix, timeout=options.get("timeout", 5.0),
                    retain=options.get("retain", 86400.0))
        store.check(source=source)
        return store

    def check(self, *, source: str = "URL") -> None:
        """Make sure the database can be used (creating its directory if
        needed); :class:`ConfigError` if not. Opens and closes one connection."""

        def bad(expected: str) -> ConfigError:
            return ConfigError.invalid("PERFWATCH_STORE", f"sqlite:///{self.path}", source,
                                       expected)

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise bad(f"a sqlite file in a directory that can be created ({exc.strerror})"
                      ) from None
        if self.path.exists() and not self.path.is_file():
            raise bad("a path to a sqlite database file (this is not a file)")
        target = self.path if self.path.exists() else self.path.parent
        if not os.access(target, os.R_OK | os.W_OK):
            raise bad("a sqlite database file that can be read and written")
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise bad(f"a usable sqlite database ({exc})") from None
        conn.close()

    # -- the interface --------------------------------------------------------

    def claim(self, key: str, window: float) -> Claim:
        conn = self._connection()
        now = self.clock()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(_CLAIM, {"prefix": self.prefix, "key": key, "now": now,
                                            "window": window}).fetchone()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error:
            self._discard(conn)  # the next claim starts from a fresh connection
            raise
        suppressed, _alerted_at, prev_suppressed, prev_alerted_at = row
        if now >= self._next_purge:
            self._scheduled_purge(now)
        if suppressed:
            return Claim(granted=False, suppressed=int(suppressed),
                         previous_at=float(_alerted_at))
        if prev_alerted_at is None:
            return Claim(granted=True)
        return Claim(granted=True, suppressed=int(prev_suppressed),
                     previous_at=float(prev_alerted_at))

    def purge(self) -> int:
        """Delete every entry expired more than ``retain`` seconds ago (in
        batches) and enforce ``max_entries``; returns how many expired ones went."""
        return self._purge(self.clock(), batches=None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
            mine = self._pid == os.getpid()
        for conn in connections:
            if mine:
                conn.close()
            else:
                _abandoned.append(conn)
        self._local = threading.local()

    def __len__(self) -> int:
        """Rows of this store's prefix (expired ones not yet purged included)."""
        (count,) = self._connection().execute(
            f"SELECT count(*) FROM {TABLE} WHERE prefix = ?", (self.prefix,)).fetchone()
        return int(count)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} sqlite:///{self.path} prefix={self.prefix!r}>"

    # -- connections ----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            # switching to WAL needs a moment of exclusive access; the busy
            # timeout covers several processes doing it at once
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                logger.warning("%r: could not switch to WAL mode (journal_mode=%s); claims "
                               "still work but readers wait for writers", self, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> sqlite3.Connection:
        pid = os.getpid()
        if pid != self._pid:
            self._after_fork(pid)
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        conn = self._connect()
        with self._lock:
            self._connections.append(conn)
        self._local.conn = conn
        return conn

    def _after_fork(self, pid: int) -> None:
        # never close a connection opened by another process (see module doc)
        _abandoned.extend(self._connections)
        self._connections = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pid = pid
        self._next_purge = self.clock() + self.purge_every

    def _discard(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        try:
            conn.close()
        except sqlite3.Error:
            logger.debug("closing a failed sqlite connection failed too", exc_info=True)

    # -- purging --------------------------------------------------------------

    def _scheduled_purge(self, now: float) -> None:
        self._next_purge = now + self.purge_every
        try:
            self._purge(now, batches=self.purge_batches)
        except sqlite3.Error as exc:
            # the claim itself succeeded; the next schedule tries again
            logger.warning("%r: purging expired dedupe entries failed: %s", self, exc)

    def _purge(self, now: float, *, batches: int | None) -> int:
        conn = self._connection()
        before = now - self.retain
        deleted = 0
        done = 0
        while batches is None or done < batches:
            with _transaction(conn):
                cursor = conn.execute(_PURGE_BATCH, {"before": before,
                                                     "limit": self.purge_batch})
            done += 1
            deleted += max(cursor.rowcount, 0)
            if cursor.rowcount < self.purge_batch:
                break
        (count,) = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        overflow = int(count) - self.max_entries
        if overflow > 0:
            with _transaction(conn):
                conn.execute(_EVICT, {"limit": overflow})
            logger.warning("%r: more than %d dedupe entries; evicted the %d closest to expiry "
                           "(they may alert again early)", self, self.max_entries, overflow)
        if deleted:
            logger.debug("%r: purged %d expired dedupe entries", self, deleted)
        return deleted


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


def parse_sqlite_url(url: str, *, source: str = "URL") -> tuple[Path, dict[str, float]]:
    """``sqlite:///rel.db`` / ``sqlite:////abs.db`` -> (absolute path, options).

    Raises :class:`ConfigError` for a URL without a path, with a host, for
    ``:memory:`` (per connection, so useless for sharing: use ``memory://``)
    or with an unknown or invalid option.
    """

    def bad(expected: str) -> ConfigError:
        return ConfigError.invalid("PERFWATCH_STORE", url, source, expected)

    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite" or not url.lower().startswith("sqlite://"):
        raise bad("a URL like sqlite:///relative/path.db or sqlite:////absolute/path.db")
    if parts.netloc:
        raise bad("sqlite:/// followed by a file path (three slashes, then the path; four "
                  "for an absolute path), not a host")
    raw = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not raw:
        raise bad("a file path after sqlite:/// such as sqlite:///perfwatch.db")
    if raw == ":memory:" or raw.startswith("file:"):
        raise bad("a database file (an in-memory sqlite database is private to one "
                  "connection; use memory:// for a per-process store)")
    options: dict[str, float] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _OPTIONS:
            raise bad(f"only the options {', '.join(_OPTIONS)} (not {name!r})")
        try:
            options[name] = parse_duration(value)
        except ValueError:
            raise bad(f"option {name} as a duration such as 5, '500ms' or '1d'") from None
    if options.get("timeout", 1.0) <= 0:
        raise bad("a positive timeout")
    path = Path(os.path.expanduser(raw))
    return (path if path.is_absolute() else Path.cwd() / path), options
