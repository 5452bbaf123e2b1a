"""The background delivery thread: a bounded queue and one daemon worker.

Sentry's SDK shape: the thread starts lazily on the first job, is re-created
in a forked child (gunicorn/uwsgi pre-fork; the parent's queue is abandoned,
never touched, since its lock may have been held at fork time), and queued
jobs are flushed at interpreter exit within a timeout.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable

logger = logging.getLogger(__name__)

Job = Callable[[], None]
_STOP = object()
_live_workers: weakref.WeakSet[Worker] = weakref.WeakSet()


class Worker:
    """Runs submitted jobs, one at a time, on a daemon thread."""

    def __init__(self, maxsize: int = 100, *, name: str = "flask-perfwatch",
                 shutdown_timeout: float = 5.0) -> None:
        self.maxsize = maxsize
        self.name = name
        self.shutdown_timeout = shutdown_timeout
        self._lock = threading.Lock()
        self._queue: queue.Queue[object] = queue.Queue(maxsize)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        _install_process_hooks()
        _live_workers.add(self)

    @property
    def depth(self) -> int:
        """Jobs waiting or running."""
        return self._queue.unfinished_tasks if self._pid == os.getpid() else 0

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() \
            and self._pid == os.getpid()

    def submit(self, job: Job) -> bool:
        """Queue ``job`` without blocking; False if the queue is full or closed."""
        if self._closed:
            return False
        self._ensure_thread()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            return False
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued job has run; False if ``timeout`` passed first."""
        if not self.is_alive:
            return self._queue.unfinished_tasks == 0 or self._pid != os.getpid()
        deadline = None if timeout is None else time.monotonic() + timeout
        q = self._queue
        with q.all_tasks_done:
            while q.unfinished_tasks:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                q.all_tasks_done.wait(remaining)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Flush within ``timeout`` (default ``shutdown_timeout``), then stop the thread."""
        timeout = self.shutdown_timeout if timeout is None else timeout
        flushed = self.flush(timeout)
        if not flushed:
            logger.warning("%d alert(s) still queued after %.1fs at shutdown; dropping them",
                           self.depth, timeout)
        self._closed = True
        if self.is_alive:
            # if full, the daemon thread simply ends with the process
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_STOP)
        return flushed

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            pid = os.getpid()
            if self._pid != pid:
                self._reset_after_fork()
            if self._thread is None:
                thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                thread.start()
                self._thread = thread

    def _reset_after_fork(self) -> None:
        self._pid = os.getpid()
        self._queue = queue.Queue(self.maxsize)
        self._thread = None
        self._lock = threading.Lock()

    def _run(self) -> None:
        q = self._queue
        while True:
            job = q.get()
            try:
                if job is _STOP:
                    return
                job()  # type: ignore[operator]
            except Exception:
                logger.exception("a delivery job failed (swallowed)")
            finally:
                q.task_done()


def _after_fork_in_child() -> None:
    for worker in list(_live_workers):
        worker._reset_after_fork()


def _flush_at_exit() -> None:
    for worker in list(_live_workers):
        if worker.is_alive and not worker._closed:
            worker.close()


_hooks_installed = False


def _install_process_hooks() -> None:
    """Fork and exit hooks, installed with the first worker (not at import)."""
    global _hooks_installed
    if not _hooks_installed:
        _hooks_installed = True
        os.register_at_fork(after_in_child=_after_fork_in_child)
        atexit.register(_flush_at_exit)
