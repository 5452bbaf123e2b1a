"""Native OS threads, locks and sleeps for the sampler, whatever gevent patched.

Under ``gevent.monkey.patch_all()`` (gunicorn ``-k gevent``) the
:mod:`threading` module's threads are greenlets, its locks and ``time.sleep``
switch to the hub, and ``threading.get_ident()`` returns a greenlet's id. A
sampler built from those would be a greenlet itself: it could not run while a
view burns the CPU (a greenlet is never preempted), and ``sys._current_frames()``
knows only OS threads, so it would never find a request.

So the sampler takes its primitives from here: the originals gevent saved
(:func:`gevent.monkey.get_original`), which are the plain ones when gevent
is absent or did not patch :mod:`threading`. With gevent, each request is a
greenlet: :func:`current_task` names it, and :func:`task_frame` reads its
stack from the sampler's OS thread, from ``gr_frame`` while it is suspended
or from the OS thread's current frame while it runs.

Nothing here imports gevent: it is used only when the application already did.
"""

from __future__ import annotations

import _thread
import contextlib
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import FrameType


def _monkey() -> Any:
    gevent = sys.modules.get("gevent")
    if gevent is None:
        return None
    return sys.modules.get("gevent.monkey")


def greenlets_patched() -> bool:
    """Whether gevent has replaced :mod:`threading` (requests are greenlets)."""
    monkey = _monkey()
    return bool(monkey is not None and monkey.is_module_patched("threading"))


def original(module: str, name: str) -> Any:
    """``module.name`` as it was before gevent patched it (or as it is)."""
    monkey = _monkey()
    if monkey is not None:
        return monkey.get_original(module, name)
    return getattr(sys.modules[module], name)


def get_ident() -> int:
    """The OS thread's id (``threading.get_ident`` may return a greenlet's)."""
    ident: int = original("_thread", "get_ident")()
    return ident


def allocate_lock() -> _thread.LockType:
    """A lock that blocks the OS thread, not the greenlet."""
    lock: _thread.LockType = original("_thread", "allocate_lock")()
    return lock


def sleeper() -> Callable[[float], None]:
    """``time.sleep`` that blocks the OS thread (gevent's would switch greenlets)."""
    sleep: Callable[[float], None] = original("time", "sleep")
    return sleep


class NativeThread:
    """An OS thread running ``target``, started past gevent's patches; the
    part of :class:`threading.Thread`'s interface the sampler uses."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self.name = name
        self.ident: int | None = None
        self._target = target
        self._done = allocate_lock()
        self._done.acquire()

    def start(self) -> None:
        original("_thread", "start_new_thread")(self._main, ())

    def _main(self) -> None:
        self.ident = get_ident()
        try:
            self._target()
        finally:
            self._done.release()

    def join(self, timeout: float) -> None:
        if self._done.acquire(timeout=timeout):
            self._done.release()

    def is_alive(self) -> bool:
        return self._done.locked()


def start_thread(target: Callable[[], None], name: str) -> threading.Thread | NativeThread:
    """A daemon OS thread: a :class:`threading.Thread` (named, listed by
    :func:`threading.enumerate`), or a :class:`NativeThread` when gevent has
    made :mod:`threading`'s threads greenlets."""
    thread: threading.Thread | NativeThread
    if greenlets_patched():
        thread = NativeThread(target, name)
    else:
        thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


class Wake:
    """A one-waiter event on a native lock: the sampler thread waits, request
    threads or greenlets :meth:`set` it without blocking."""

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._lock.acquire()

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # already set
            self._lock.release()

    def clear(self) -> None:
        self._lock.acquire(blocking=False)

    def wait(self) -> None:
        """Block until :meth:`set`; the event is clear again afterwards."""
        self._lock.acquire()


def current_task() -> Any:
    """The running greenlet (call only when :func:`greenlets_patched`)."""
    getcurrent: Callable[[], Any] = sys.modules["greenlet"].getcurrent
    return getcurrent()


def task_frame(task: Any, thread_frame: FrameType | None) -> FrameType | None:
    """The current frame of greenlet ``task``, read from another OS thread.

    A suspended greenlet keeps its top frame in ``gr_frame``; the one that
    runs has none there (its frames are the OS thread's, ``thread_frame``).
    A greenlet that has not started or has ended has no frame."""
    frame: FrameType | None = task.gr_frame
    if frame is not None:
        return frame
    return thread_frame if task else None  # bool(greenlet): started and not dead


def run_in_hub(task: Any, function: Callable[..., None], *args: Any) -> bool:
    """Call ``function(*args)`` in a new greenlet of the gevent hub that runs
    greenlet ``task`` (from any OS thread); False if ``task`` has no hub."""
    hub_type = sys.modules["gevent.hub"].Hub
    hub = task
    while hub is not None and not isinstance(hub, hub_type):
        hub = hub.parent
    if hub is None:
        return False
    hub.loop.run_callback_threadsafe(sys.modules["gevent"].spawn_raw, function, *args)
    return True
