"""The background delivery thread: a bounded queue and one daemon worker.

Sentry's SDK shape: the thread starts lazily on the first job, is re-created
in a forked child through :mod:`flask_perfwatch._fork` (gunicorn/uwsgi
pre-fork; the parent's queue is abandoned, never touched, since its lock may
have been held at fork time), and queued jobs are flushed at interpreter exit
within a timeout.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable

from . import _fork
from ._guard import report_swallowed

logger = logging.getLogger(__name__)

Job = Callable[[], None]
_STOP = object()
#: every worker, in creation order: a monitor's delivery worker comes before
#: the notifier lanes it feeds, so flushing in this order drains both
_live_workers: list[weakref.ref[Worker]] = []


class Worker:
    """Runs submitted jobs, one at a time, on a daemon thread."""

    def __init__(self, maxsize: int = 100, *, name: str = "flask-perfwatch",
                 shutdown_timeout: float = 5.0, at_exit: Job | None = None) -> None:
        self.maxsize = maxsize
        self.name = name
        self.shutdown_timeout = shutdown_timeout
        #: a last job, submitted at interpreter exit if the worker was never
        #: closed, before what is queued is flushed
        self.at_exit = at_exit
        self._lock = threading.Lock()
        self._queue: queue.Queue[object] = queue.Queue(maxsize)
        self._thread: threading.Thread | None = None
        self._closed = False
        _install_exit_hook()
        _live_workers[:] = [ref for ref in _live_workers if ref() is not None]
        _live_workers.append(weakref.ref(self))
        _fork.register(self)

    @property
    def depth(self) -> int:
        """Jobs waiting or running."""
        return self._queue.unfinished_tasks

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Job) -> bool:
        """Queue ``job`` without blocking; False if the queue is full or closed."""
        if self._closed:
            return False
        _fork.ensure_current()
        if not self._ensure_thread():
            # the interpreter is exiting and refuses new threads (CPython
            # 3.12.0-3.12.1 do even in atexit): run the job here, on the
            # thread flushing the queue at exit, never a request's
            try:
                job()
            except BaseException:
                report_swallowed(f"a job of thread {self.name} (run at exit)")
            return True
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            return False
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued job has run; False if ``timeout`` passed first."""
        if not self.is_alive:
            return self._queue.unfinished_tasks == 0
        deadline = None if timeout is None else time.monotonic() + timeout
        q = self._queue
        with q.all_tasks_done:
            while q.unfinished_tasks:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                q.all_tasks_done.wait(remaining)
        return True

    def close(self, timeout: float | None = None, *, waited: float | None = None) -> bool:
        """Flush within ``timeout`` (default ``shutdown_timeout``), then stop the
        thread. ``waited``: how long the caller already waited (for the log)."""
        timeout = self.shutdown_timeout if timeout is None else timeout
        flushed = self.flush(timeout)
        if not flushed:
            logger.warning("%d alert(s) still queued after %.1fs at shutdown (%s); dropping "
                           "them", self.depth, timeout if waited is None else waited,
                           self.name)
        self._closed = True
        if self.is_alive:
            # if full, the daemon thread simply ends with the process
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_STOP)
        return flushed

    def _ensure_thread(self) -> bool:
        """Start the thread if needed; False only if it cannot start because
        the interpreter is exiting (see :func:`start_at_exit`)."""
        if self._thread is not None:
            return True
        with self._lock:
            if self._thread is None and not self._closed:
                thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                if not start_at_exit(thread):
                    return False
                self._thread = thread
        return True

    def _after_fork_in_child(self) -> None:
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
            except BaseException:  # the thread must outlive any job
                report_swallowed(f"a job of thread {self.name}")
            finally:
                q.task_done()


_exiting = False


def start_at_exit(thread: threading.Thread) -> bool:
    """``thread.start()``; False if the interpreter is exiting and refuses new
    threads, which CPython 3.12.0 and 3.12.1 do even in atexit handlers (3.12.2
    and 3.13 allow it again). Any other failure to start raises as before."""
    try:
        thread.start()
    except RuntimeError:
        if _exiting:
            return False
        raise
    return True


def _flush_at_exit() -> None:
    """Deliver what is queued before the interpreter exits, within the longest
    ``shutdown_timeout`` of the live workers: submit each one's ``at_exit``
    job, flush them in creation order (a delivery worker hands its alerts to
    the notifier lanes created after it, starting their threads), then stop
    them."""
    global _exiting
    _exiting = True
    workers = [w for ref in _live_workers if (w := ref()) is not None and not w._closed]
    if not workers:
        return
    for worker in workers:
        if worker.at_exit is not None:
            worker.submit(worker.at_exit)
    budget = max(w.shutdown_timeout for w in workers)
    deadline = time.monotonic() + budget
    for worker in workers:
        if worker.is_alive:
            worker.flush(max(deadline - time.monotonic(), 0.0))
    for worker in workers:
        if worker.is_alive:
            worker.close(0.0, waited=budget)


_hook_installed = False


def _install_exit_hook() -> None:
    """The exit hook, installed with the first worker (not at import)."""
    global _hook_installed
    if not _hook_installed:
        _hook_installed = True
        atexit.register(_flush_at_exit)
