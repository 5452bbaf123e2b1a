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

Layout: table ``perfwatch_dedupe`` holds one row per key (``prefix, key``:
the end of its window, the repeats suppressed in it, when it alerted, and the
previous window's count and time); table ``perfwatch_dedupe_groups`` one row
per group with a limit (``prefix, grp``: the end of the group's window, the
claims it granted in it, and the claims the limit refused since its last
grant). A claim refused by the limit writes no key row, so a flood of distinct
keys on one endpoint adds at most ``limit`` rows per window. Both tables
together are capped at ``max_entries`` rows.

Files: the database is created ``0600`` (before sqlite opens it, so there is
no moment it is readable by others; sqlite gives its ``-wal`` and ``-shm``
files the same mode) and the directories this store creates ``0700``. A
database path that is a symbolic link is refused (a local user could plant one
to make the monitor write into another file); an existing file is used with
its mode as it is. Put the file in a directory only its owner can write:
the link check cannot close the race with a user who can rename entries there.

How the claim stays atomic across processes: the database is in WAL mode, a
claim runs inside ``BEGIN IMMEDIATE`` (the write lock is taken up front, so two
processes cannot both read "free"), its key is decided by one conditional
``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``, and a busy timeout makes a
process wait its turn instead of failing with "database is locked".

Connections are opened lazily, one per thread, and again in a forked child: a
connection must never cross ``fork()``, and the child abandons inherited ones
without closing them, since closing could checkpoint and delete the parent's
write-ahead log. The child is told through :mod:`flask_perfwatch._fork`; a
cheap process-id check on each claim stays as a second line, because a server
that forks in C without calling ``PyOS_AfterFork_Child`` (uWSGI unless
``py-call-osafterfork`` is on) never runs Python's fork hooks. Expired entries
are deleted in small batches at most every ``purge_every`` seconds, and sooner
when this process alone added a tenth of ``max_entries`` rows since its last
purge, so a flood cannot outgrow the cap for long.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from .. import _fork
from .._util import parse_duration
from ..config import key_name
from ..exceptions import ConfigError
from .base import DUPLICATE, LIMIT, Claim, Store

if TYPE_CHECKING:
    from ..config import Config

T = TypeVar("T")
logger = logging.getLogger(__name__)

TABLE = "perfwatch_dedupe"
GROUPS = "perfwatch_dedupe_groups"
_TABLES = (TABLE, GROUPS)

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
CREATE TABLE IF NOT EXISTS {GROUPS} (
    prefix TEXT NOT NULL,
    grp TEXT NOT NULL,
    expires_at REAL NOT NULL,       -- end of the group's window (from its first grant)
    granted INTEGER NOT NULL,       -- claims granted in that window
    suppressed INTEGER NOT NULL,    -- claims the limit refused since the last grant
    PRIMARY KEY (prefix, grp)
);
CREATE INDEX IF NOT EXISTS {GROUPS}_expires ON {GROUPS} (expires_at);
"""

# One statement decides and records the key's claim. SET expressions all read
# the row as it was, so "expired" means the same thing in every column. A
# refused claim always leaves suppressed >= 1 and a granted one leaves 0: that
# is how the caller tells them apart from the RETURNING row; a granted one with
# no previous alert is a new row.
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

_KEY_EXPIRES = f"SELECT expires_at FROM {TABLE} WHERE prefix = :prefix AND key = :key"

_GROUP_STATE = f"""
SELECT expires_at, granted, suppressed FROM {GROUPS} WHERE prefix = :prefix AND grp = :grp
"""

_GROUP_REFUSE = f"""
UPDATE {GROUPS} SET suppressed = suppressed + 1 WHERE prefix = :prefix AND grp = :grp
RETURNING suppressed
"""

_GROUP_GRANT = f"""
INSERT INTO {GROUPS} (prefix, grp, expires_at, granted, suppressed)
VALUES (:prefix, :grp, :now + :window, 1, 0)
ON CONFLICT (prefix, grp) DO UPDATE SET
    granted = CASE WHEN expires_at <= :now THEN 1 ELSE granted + 1 END,
    expires_at = CASE WHEN expires_at <= :now THEN :now + :window ELSE expires_at END,
    suppressed = 0
"""

_PURGE_BATCH = """
DELETE FROM {table} WHERE rowid IN
    (SELECT rowid FROM {table} WHERE expires_at <= :before LIMIT :limit)
"""

_CLOSEST_TO_EXPIRY = f"""
SELECT 0, rowid, expires_at FROM {TABLE}
UNION ALL SELECT 1, rowid, expires_at FROM {GROUPS}
ORDER BY expires_at LIMIT :limit
"""

_COUNT_ALL = f"SELECT (SELECT count(*) FROM {TABLE}) + (SELECT count(*) FROM {GROUPS})"

#: Connections inherited through ``fork()``: kept referenced, never closed,
#: so that their finalizer cannot touch the parent's database files.
_abandoned: list[sqlite3.Connection] = []

_OPTIONS = ("timeout", "retain")


class SQLiteStore(Store):
    """Dedupe entries in two tables of a sqlite database file.

    :param path: the database file (created ``0600``; a symlink is refused
        with :class:`ConfigError`).
    :param prefix: namespace of this app's keys (``PERFWATCH_STORE_PREFIX``).
    :param timeout: seconds a claim waits for another process's write lock.
    :param retain: seconds an expired entry is kept, so that its suppressed
        count reaches the next alert of its key.
    :param purge_every: seconds between two scheduled purges in one process.
    :param purge_batch: rows deleted per purge transaction; a scheduled purge
        runs at most ``purge_batches`` of them per table, so it never holds the
        lock long.
    :param max_entries: rows kept at most in the file (keys and groups of all
        prefixes together); beyond it the entries closest to expiry are evicted
        (they may alert again early).
    :param clock: Unix time; every process sharing the file must agree on it.
    """

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
        _refuse_symlink(self.path, "URL")
        self.prefix = prefix
        self.timeout = timeout
        self.retain = retain
        self.purge_every = purge_every
        self.purge_batch = purge_batch
        self.purge_batches = purge_batches
        self.max_entries = max_entries
        self.clock = clock
        #: where the URL came from, for error messages
        self.source = "URL"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._next_purge = clock() + purge_every
        self._inserted = 0  # rows this process added since its last purge
        self._evicted = 0
        self._next_evict_log = float("-inf")
        self._closed = False
        _fork.register(self)

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, *, prefix: str, config: Config | None = None) -> SQLiteStore:
        source = config.sources.get("store", "default") if config is not None else "URL"
        path, options = parse_sqlite_url(url, source=source)
        _refuse_symlink(path, source)
        store = cls(path, prefix=prefix, timeout=options.get("timeout", 5.0),
                    retain=options.get("retain", 86400.0))
        store.source = source
        store.validate(source=source)
        return store

    def check(self) -> str:
        self.validate(source=self.source)
        return f"sqlite:///{self.path} ({len(self)} entries for prefix {self.prefix!r})"

    def validate(self, *, source: str = "URL") -> None:
        """Make sure the database can be used (creating its directory and file
        if needed); :class:`ConfigError` if not. Opens and closes one connection."""

        def bad(expected: str) -> ConfigError:
            return ConfigError.invalid(key_name("store"), f"sqlite:///{self.path}", source,
                                       expected)

        _refuse_symlink(self.path, source)
        if self.path.exists() and not self.path.is_file():
            raise bad("a path to a sqlite database file (this is not a file)")
        try:
            self._create_file()
        except OSError as exc:
            raise bad(f"a sqlite file in a directory that can be created ({exc.strerror})"
                      ) from None
        if not os.access(self.path, os.R_OK | os.W_OK):
            raise bad("a sqlite database file that can be read and written")
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise bad(f"a usable sqlite database ({exc})") from None
        conn.close()

    # -- the interface --------------------------------------------------------

    def claim(self, key: str, window: float, *, group: str | None = None,
              limit: int = 0) -> Claim:
        conn = self._connection()
        now = self.clock()
        params = {"prefix": self.prefix, "key": key, "grp": group, "now": now,
                  "window": window}
        try:
            with _transaction(conn):
                claim, inserted = _claim(conn, params, limit if group is not None else 0)
        except sqlite3.Error:
            self._discard(conn)  # the next claim starts from a fresh connection
            raise
        self._inserted += inserted
        if now >= self._next_purge or self._inserted >= max(self.max_entries // 10, 1):
            self._scheduled_purge(now)
        return claim

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
        """Rows of this store's prefix, keys and groups together (expired ones
        not yet purged included)."""
        (count,) = self._connection().execute(
            f"SELECT (SELECT count(*) FROM {TABLE} WHERE prefix = :p)"
            f" + (SELECT count(*) FROM {GROUPS} WHERE prefix = :p)", {"p": self.prefix}
        ).fetchone()
        return int(count)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} sqlite:///{self.path} prefix={self.prefix!r}>"

    # -- files ----------------------------------------------------------------

    def _create_file(self) -> None:
        """Create the missing directories (``0700``) and the database file
        (``0600``, never through a symlink); then refuse a symlink at the path."""
        _make_private_dirs(self.path.parent)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # a symlink, dangling or not, is "existing" too
            pass
        else:
            os.close(fd)
        _refuse_symlink(self.path, "URL")

    # -- connections ----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self._create_file()
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            mode = self._when_free(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                logger.warning("%r: could not switch to WAL mode (journal_mode=%s); claims "
                               "still work but readers wait for writers", self, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            self._when_free(lambda: conn.executescript(_SCHEMA))
        except BaseException:
            conn.close()
            raise
        return conn

    def _when_free(self, step: Callable[[], T]) -> T:
        """Run one set-up step, retrying while another process holds the
        database, for up to :attr:`timeout`. Switching to WAL needs a moment
        of exclusive access and SQLite answers "database is locked" at once
        there, without waiting for the busy timeout: several workers creating
        the database together (uWSGI ``--lazy-apps``, gevent workers) would
        otherwise fail ``init_app`` now and then."""
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                return step()
            except sqlite3.OperationalError as exc:
                message = str(exc).lower()
                if ("locked" not in message and "busy" not in message) \
                        or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _connection(self) -> sqlite3.Connection:
        # forked without Python's fork hooks (uWSGI, module doc): the one fallback
        # of flask_perfwatch._fork runs every hook, this store's included
        _fork.ensure_current()
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

    def _after_fork_in_child(self) -> None:
        """Start afresh in a forked child: never close a connection opened by
        another process (see the module doc), and a lock nobody holds."""
        _abandoned.extend(self._connections)
        self._connections = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._inserted = 0
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
        self._inserted = 0
        try:
            self._purge(now, batches=self.purge_batches)
        except sqlite3.Error as exc:
            # the claim itself succeeded; the next schedule tries again
            logger.warning("%r: purging expired dedupe entries failed: %s", self, exc,
                           exc_info=True)

    def _purge(self, now: float, *, batches: int | None) -> int:
        conn = self._connection()
        before = now - self.retain
        deleted = 0
        for table in _TABLES:
            statement = _PURGE_BATCH.format(table=table)
            done = 0
            while batches is None or done < batches:
                with _transaction(conn):
                    cursor = conn.execute(statement, {"before": before,
                                                      "limit": self.purge_batch})
                done += 1
                deleted += max(cursor.rowcount, 0)
                if cursor.rowcount < self.purge_batch:
                    break
        self._evict(conn, now)
        if deleted:
            logger.debug("%r: purged %d expired dedupe entries", self, deleted)
        return deleted

    def _evict(self, conn: sqlite3.Connection, now: float) -> None:
        """Beyond ``max_entries`` rows, delete those closest to expiry."""
        with _transaction(conn):
            (count,) = conn.execute(_COUNT_ALL).fetchone()
            overflow = int(count) - self.max_entries
            if overflow <= 0:
                return
            victims: tuple[list[tuple[int]], list[tuple[int]]] = ([], [])
            for table, rowid, _ in conn.execute(_CLOSEST_TO_EXPIRY, {"limit": overflow}):
                victims[table].append((rowid,))
            for table, rowids in zip(_TABLES, victims, strict=True):
                conn.executemany(f"DELETE FROM {table} WHERE rowid = ?", rowids)
        self._evicted += overflow
        if now >= self._next_evict_log:  # a flood logs now and then, not per purge
            self._next_evict_log = now + self.purge_every
            logger.warning("%r: more than %d dedupe entries; evicted %d closest to expiry so "
                           "far in this process (they may alert again early)", self,
                           self.max_entries, self._evicted)


def _claim(conn: sqlite3.Connection, params: dict[str, Any], limit: int) -> tuple[Claim, int]:
    """Decide one claim inside the caller's write transaction; returns the
    claim and how many rows it added."""
    group_suppressed = 0
    inserted = 0
    if limit > 0:
        row = conn.execute(_KEY_EXPIRES, params).fetchone()
        if row is None or row[0] <= params["now"]:  # the key is free: the limit decides
            state = conn.execute(_GROUP_STATE, params).fetchone()
            if state is not None and state[0] > params["now"] and state[1] >= limit:
                (refused,) = conn.execute(_GROUP_REFUSE, params).fetchone()
                return Claim(granted=False, suppressed=int(refused), reason=LIMIT), 0
            conn.execute(_GROUP_GRANT, params)
            group_suppressed = 0 if state is None else int(state[2])
            inserted += state is None
    suppressed, alerted_at, prev_suppressed, prev_alerted_at = conn.execute(
        _CLAIM, params).fetchone()
    if suppressed:
        return Claim(granted=False, suppressed=int(suppressed), previous_at=float(alerted_at),
                     reason=DUPLICATE), inserted
    if prev_alerted_at is None:
        return Claim(granted=True, group_suppressed=group_suppressed), inserted + 1
    return Claim(granted=True, suppressed=int(prev_suppressed),
                 previous_at=float(prev_alerted_at), group_suppressed=group_suppressed), inserted


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any error, even a
    ``KeyboardInterrupt``, so the connection is never left inside a transaction)."""

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


def _make_private_dirs(directory: Path) -> None:
    """``mkdir -p`` where every directory created is ``0700`` (``Path.mkdir``
    gives missing parents the default mode)."""
    missing: list[Path] = []
    while not os.path.lexists(directory) and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        # another process may win the race: fine if it made a directory
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)


def _refuse_symlink(path: Path, source: str) -> None:
    """:class:`ConfigError` if ``path`` is a symbolic link (``os.lstat``)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError:
        return  # unreachable or not a directory on the way: check() explains
    if stat.S_ISLNK(mode):
        raise ConfigError.invalid(
            key_name("store"), f"sqlite:///{path}", source,
            "a sqlite database path that is not a symbolic link (a planted link would "
            "make the monitor write into another file)")


def parse_sqlite_url(url: str, *, source: str = "URL") -> tuple[Path, dict[str, float]]:
    """``sqlite:///rel.db`` / ``sqlite:////abs.db`` -> (absolute path, options).

    Raises :class:`ConfigError` for a URL without a path, with a host, for
    ``:memory:`` (per connection, so useless for sharing: use ``memory://``)
    or with an unknown or invalid option.
    """

    def bad(expected: str) -> ConfigError:
        return ConfigError.invalid(key_name("store"), url, source, expected)

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
