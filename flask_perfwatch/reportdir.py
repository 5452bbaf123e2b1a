"""The report folder on disk: private directories, atomic writes that never
follow or overwrite anything, and pruning by age and total size.

The threat model is a local user who can write to the folder (by default it
lives under the shared system temp dir): they may plant symlinks or files
under the names we are about to use, or own the directory we expected to be
ours. So:

* directories we create are 0700 (every level), files 0600;
* a report is written to a fresh temp file (``O_EXCL | O_NOFOLLOW``), synced,
  then published with :func:`os.link`, which fails on any existing name, a
  symlink included; nothing is ever opened by its final name without
  ``O_EXCL``, so nothing planted is followed or overwritten;
* a failed write removes its temp file: the final name never exists half-written;
* pruning looks at regular files only (``lstat``), of our uid, with our names,
  and removes them by name relative to the directory it scanned.

This module imports nothing of ours but leaf modules (no config, no metrics),
so the config can call :func:`default_report_dir` without an import cycle.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import _fork
from ._util import safe_text

logger = logging.getLogger(__name__)

#: Names of report files (``perfwatch-<...>.html``); nothing else is ever pruned.
REPORT_PREFIX = "perfwatch-"
REPORT_SUFFIX = ".html"
#: Temp files of writes in progress; removed by :func:`prune` once stale.
TMP_PREFIX = ".perfwatch-tmp-"
#: A temp file older than this (seconds) belongs to a write that died.
STALE_TMP_AGE = 3600.0
#: How often :meth:`ReportFolder.prune_if_due` scans the folder (seconds).
PRUNE_INTERVAL = 60.0

# errno values of a filesystem without hard links: publish by O_EXCL instead
_NO_HARD_LINKS = frozenset(
    getattr(errno, name) for name in ("EPERM", "ENOTSUP", "EOPNOTSUPP", "EXDEV", "EMLINK",
                                      "ENOSYS") if hasattr(errno, name))
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NEW_FILE = os.O_CREAT | os.O_EXCL | os.O_WRONLY | _O_NOFOLLOW | _O_CLOEXEC


def encode(data: str) -> bytes:
    """The bytes written for ``data``: UTF-8, with any lone surrogate (from
    undecodable input) escaped rather than failing the write."""
    return data.encode("utf-8", "backslashreplace")


# -- directories -------------------------------------------------------------

def ensure_dir(path: Path) -> Path:
    """Return ``path``, creating each missing level with mode 0700.

    An existing directory (or a symlink to one) is the user's choice and is
    used as it is; anything else there raises :class:`NotADirectoryError`.
    Levels are created one by one because :func:`os.makedirs` applies its
    mode to the last level only. A level another process creates meanwhile
    is used as it is."""
    missing: list[Path] = []
    level = path
    while not os.path.isdir(level):
        if os.path.lexists(level):
            if os.path.isdir(level):  # another process made it since we looked
                break
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(level))
        missing.append(level)
        if level.parent == level:
            break
        level = level.parent
    for level in reversed(missing):
        try:
            os.mkdir(level, 0o700)
        except FileExistsError:
            if not os.path.isdir(level):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                         str(level)) from None
            continue
        # mkdir's mode is narrowed by the umask; make it exactly 0700 (never wider)
        os.chmod(level, 0o700)
    return path


_default_dirs: dict[str, Path] = {}
_default_lock = threading.Lock()


def _new_default_lock() -> None:
    global _default_lock
    _default_lock = threading.Lock()


def default_report_dir() -> Path:
    """The report folder when ``PERFWATCH_REPORT_DIR`` is unset:
    ``<system temp dir>/flask-perfwatch-<uid>``, private (0700).

    The temp dir is shared with every local user, so the folder is checked
    (with ``lstat``: no symlink followed) to be a real directory of our uid.
    If it is ours but open to others, it is tightened to 0700. If it is a
    symlink, not a directory, or another user's, it is not used: a WARNING
    names the problem and a fresh private :func:`tempfile.mkdtemp` folder is
    used for the rest of the process. Computed once per temp dir, then cached."""
    base = tempfile.gettempdir()
    found = _default_dirs.get(base)
    if found is not None:
        return found
    _fork.register_function(_new_default_lock)
    with _default_lock:
        found = _default_dirs.get(base)
        if found is None:
            found = _default_dirs[base] = _private_dir_under(base)
        return found


def _private_dir_under(base: str) -> Path:
    getuid = getattr(os, "getuid", None)
    if getuid is None:  # no uids to check (not POSIX)
        return ensure_dir(Path(base) / "flask-perfwatch")
    uid: int = getuid()
    path = Path(base) / f"flask-perfwatch-{uid}"
    try:
        problem = _claim_private_dir(path, uid)
    except OSError as exc:
        problem = f"cannot be used ({type(exc).__name__}: {exc.strerror})"
    if problem is None:
        return path
    fallback = Path(tempfile.mkdtemp(prefix="flask-perfwatch-"))
    logger.warning("the default report folder %s %s; writing reports to %s instead",
                   safe_text(str(path)), problem, safe_text(str(fallback)))
    return fallback


def _claim_private_dir(path: Path, uid: int) -> str | None:
    """Create or check ``path``; None if it is a private directory of ``uid``,
    else what is wrong with it."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != uid:
        return f"is owned by another user (uid {st.st_uid})"
    # Re-check through a descriptor that cannot follow a symlink, and tighten
    # the mode through it: the name cannot be swapped between check and chmod.
    fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or fst.st_uid != uid:
            return "changed while it was being checked"
        if stat.S_IMODE(fst.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return None


# -- writing -----------------------------------------------------------------

def write_atomic(directory: Path, filename: str, data: str) -> Path:
    """Write ``data`` as ``directory/filename`` (mode 0600), or as
    ``stem-1.html``, ``stem-2.html``... if that name is taken; return the path.

    The data goes to a temp file first (``.perfwatch-tmp-<random>``), is
    synced, then published with a hard link, which never overwrites or follows
    an existing name, planted symlinks included. On a filesystem without hard
    links the final name is created with ``O_EXCL | O_NOFOLLOW`` instead. On
    any failure the temp file (and, in that fallback, the final file) is
    removed and the error raised: nothing half-written is left behind."""
    path, _ = _write(directory, filename, encode(data))
    return path


def _write(directory: Path, filename: str, payload: bytes) -> tuple[Path, int]:
    if not filename or filename.startswith(".") or os.sep in filename or "\0" in filename \
            or (os.altsep and os.altsep in filename):
        raise ValueError(f"not a plain file name: {safe_text(filename)!r}")
    tmp = directory / f"{TMP_PREFIX}{secrets.token_hex(8)}"
    fd = os.open(tmp, _NEW_FILE, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # exactly, whatever the umask
            _write_all(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        path = _publish(directory, tmp, filename, payload)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _remove_quietly(tmp)  # after a link, the report lives on under its name
    return path, len(payload)


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _candidates(filename: str) -> list[str]:
    stem, suffix = os.path.splitext(filename)
    return [filename] + [f"{stem}-{n}{suffix}" for n in range(1, 100)]


def _publish(directory: Path, tmp: Path, filename: str, payload: bytes) -> Path:
    linking = True
    for name in _candidates(filename):
        final = directory / name
        if linking:
            try:
                os.link(tmp, final, follow_symlinks=False)
                return final
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                linking = False
        try:
            fd = os.open(final, _NEW_FILE, 0o600)
        except FileExistsError:
            continue
        try:
            try:
                os.fchmod(fd, 0o600)
                _write_all(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            _remove_quietly(final)  # ours: O_EXCL created it
            raise
        return final
    raise FileExistsError(errno.EEXIST, "no free report name", str(directory / filename))


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        # left for prune() to collect as a stale temp file
        logger.warning("could not remove %s (%s)", safe_text(str(path)), type(exc).__name__)


# -- pruning -----------------------------------------------------------------

@dataclass(frozen=True)
class PruneResult:
    """What one :func:`prune` did: files removed and bytes freed, report files
    kept and their bytes, and files it failed to look at or remove."""

    removed: int = 0
    freed: int = 0
    kept: int = 0
    kept_bytes: int = 0
    errors: int = 0


def prune(directory: Path, *, retention: float, max_bytes: int,
          now: float | None = None) -> PruneResult:
    """Delete old report files from ``directory``, never raising.

    Only regular files (by ``lstat``: never a symlink's target, never a
    directory) owned by our uid are considered: reports named
    ``perfwatch-*.html`` and temp files ``.perfwatch-tmp-*`` older than
    :data:`STALE_TMP_AGE`. Reports older than ``retention`` seconds are removed
    (if ``retention > 0``), then the oldest (by mtime) until the reports total
    at most ``max_bytes`` (if ``max_bytes > 0``). Files are removed by name
    relative to a descriptor of the scanned directory, so swapping the
    directory meanwhile does not redirect the deletions. A file another
    process removed first is simply gone; other per-file errors are counted and
    logged once per call with their type."""
    now = time.time() if now is None else now
    uid = os.getuid() if hasattr(os, "getuid") else None
    errors: list[BaseException] = []
    removed = freed = 0
    try:
        dir_fd = os.open(directory, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    except FileNotFoundError:
        return PruneResult()
    except OSError as exc:
        _log_errors(directory, [exc])
        return PruneResult(errors=1)
    try:
        reports: list[tuple[float, str, int]] = []  # (mtime, name, size)
        stale: list[tuple[str, int]] = []
        try:
            with os.scandir(dir_fd) as entries:
                for entry in entries:
                    name = entry.name
                    is_report = name.startswith(REPORT_PREFIX) and name.endswith(REPORT_SUFFIX)
                    if not is_report and not name.startswith(TMP_PREFIX):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        errors.append(exc)
                        continue
                    if not stat.S_ISREG(st.st_mode) or (uid is not None and st.st_uid != uid):
                        continue
                    if is_report:
                        reports.append((st.st_mtime, name, st.st_size))
                    elif now - st.st_mtime > STALE_TMP_AGE:
                        stale.append((name, st.st_size))
        except OSError as exc:
            errors.append(exc)

        def remove(name: str, size: int) -> bool:
            """True if the file is gone (by us or by another process)."""
            nonlocal removed, freed
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                return True
            except OSError as exc:
                errors.append(exc)
                return False
            removed += 1
            freed += size
            return True

        for name, size in stale:
            remove(name, size)
        reports.sort()
        kept: list[tuple[float, str, int]] = []
        for mtime, name, size in reports:
            if retention > 0 and now - mtime > retention and remove(name, size):
                continue
            kept.append((mtime, name, size))
        total = sum(size for _, _, size in kept)
        if max_bytes > 0 and total > max_bytes:
            survivors = []
            for mtime, name, size in kept:  # oldest first
                if total > max_bytes and remove(name, size):
                    total -= size
                    continue
                survivors.append((mtime, name, size))
            kept = survivors
    finally:
        os.close(dir_fd)
    if errors:
        _log_errors(directory, errors)
    return PruneResult(removed=removed, freed=freed, kept=len(kept),
                       kept_bytes=sum(size for _, _, size in kept), errors=len(errors))


def _log_errors(directory: Path, errors: list[BaseException]) -> None:
    kinds = sorted({type(exc).__name__ for exc in errors})
    logger.warning("pruning the report folder %s: %d error(s) (%s); will retry later",
                   safe_text(str(directory)), len(errors), ", ".join(kinds))


# -- one folder with its limits ----------------------------------------------

class FolderConfig(Protocol):
    """The configuration a :class:`ReportFolder` reads (a ``Config`` is one)."""

    @property
    def resolved_report_dir(self) -> Path: ...
    @property
    def report_retention(self) -> float: ...
    @property
    def report_max_bytes(self) -> int: ...


class ReportFolder:
    """One report directory with its retention limits.

    :meth:`write` writes a report atomically (creating the directory 0700 if
    it is missing) and adds its size to a running estimate of the folder's
    total. :meth:`prune_if_due` scans and prunes at most every ``interval``
    seconds, or at once when the estimate says the folder went over
    ``max_bytes``, so a burst of writes does not scan the folder each time.
    Call it off the request thread (the delivery thread does, after writing).

    :meth:`from_config` shares one instance per directory and limits, so every
    writer in the process (the ``local`` notifier, the pipeline's safety net)
    feeds the same estimate. Thread-safe; re-created locks after fork."""

    def __init__(self, directory: Path, *, retention: float, max_bytes: int,
                 interval: float = PRUNE_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.retention = retention
        self.max_bytes = max_bytes
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()        # guards the fields below
        self._prune_lock = threading.Lock()  # one scan at a time; others skip
        self._last_prune: float | None = None
        self._estimate: int | None = None    # bytes; None until the first scan
        _fork.register(self)

    @classmethod
    def from_config(cls, config: FolderConfig) -> ReportFolder:
        """The process's folder for ``config``'s report dir and limits: the same
        instance while any caller holds one, so keep a reference (a fresh one
        has no estimate and prunes on its first :meth:`prune_if_due`)."""
        directory = config.resolved_report_dir
        key = (str(directory), float(config.report_retention), int(config.report_max_bytes))
        _fork.register_function(_new_folders_lock)
        with _folders_lock:
            folder = _folders.get(key)
            if folder is None:
                folder = _folders[key] = cls(directory, retention=key[1], max_bytes=key[2])
            return folder

    def write(self, filename: str, data: str) -> Path:
        """:func:`write_atomic` into this folder (created 0700 if missing)."""
        ensure_dir(self.directory)
        path, size = _write(self.directory, filename, encode(data))
        self.note_written(size)
        return path

    def note_written(self, nbytes: int) -> None:
        """Count ``nbytes`` written into the folder by someone else."""
        with self._lock:
            if self._estimate is not None:
                self._estimate += nbytes

    def prune_if_due(self) -> PruneResult | None:
        """Prune if the interval has passed since the last prune (or there was
        none yet), or the writes since then pushed the folder over
        ``max_bytes``; else, or while another thread prunes, return None."""
        with self._lock:
            now = self._clock()
            due = self._last_prune is None or now - self._last_prune >= self.interval
            over = (self.max_bytes > 0 and self._estimate is not None
                    and self._estimate > self.max_bytes)
            if not (due or over):
                return None
            if not self._prune_lock.acquire(blocking=False):
                return None
            self._last_prune = now
        try:
            result = prune(self.directory, retention=self.retention, max_bytes=self.max_bytes)
            with self._lock:
                # still over (files it could not remove): no early scans until
                # the next interval, else every write would rescan the folder
                over_after = self.max_bytes > 0 and result.kept_bytes > self.max_bytes
                self._estimate = None if over_after else result.kept_bytes
            return result
        finally:
            self._prune_lock.release()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._prune_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ReportFolder {safe_text(str(self.directory))!r}>"


# from_config's instances, by (directory, retention, max_bytes)
_folders: weakref.WeakValueDictionary[tuple[str, float, int], ReportFolder] = \
    weakref.WeakValueDictionary()
_folders_lock = threading.Lock()


def _new_folders_lock() -> None:
    global _folders_lock
    _folders_lock = threading.Lock()
