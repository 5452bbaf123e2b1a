"""The one fork mechanism: every object that owns a lock, a thread, a queue or
a connection registers here, and a forked child re-creates them all.

A fork copies only the forking thread. A lock another thread held at that
moment stays held forever in the child, a thread is gone, and a connection is
shared with the parent. gunicorn ``--preload`` and uWSGI fork after the app
(and so this library) is set up, so each such object implements
``_after_fork_in_child()`` and calls :func:`register` once. The hook is
installed with the first registration (never at import) and runs in
registration order. It must not raise; if it does, the error is logged and the
next object still runs.

Python's fork hooks only run for forks made through :func:`os.fork`. uWSGI
forks its workers in C and runs them only with ``py-call-osafterfork``, so
the places that start threads also call :func:`ensure_current` (one
``os.getpid()``, about 50 ns), which runs the same hooks once in a process
whose id changed without them.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger(__name__)


class ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_objects: list[weakref.ref[ForkAware]] = []
_functions: list[Callable[[], None]] = []
_installed = False
_lock = threading.Lock()
_pid = os.getpid()


def ensure_current() -> None:
    """Run the after-fork hooks if this process was forked without them."""
    if os.getpid() != _pid:
        _after_fork_in_child()


def register(obj: ForkAware) -> None:
    """Call ``obj._after_fork_in_child()`` in every forked child while ``obj`` lives."""
    with _lock:
        _install()
        _objects[:] = [ref for ref in _objects if ref() is not None]
        _objects.append(weakref.ref(obj))


def register_function(func: Callable[[], None]) -> None:
    """Call ``func()`` in every forked child (module-level state)."""
    with _lock:
        _install()
        if func not in _functions:
            _functions.append(func)


def _install() -> None:
    global _installed
    if not _installed:
        _installed = True
        os.register_at_fork(after_in_child=_after_fork_in_child)


def _after_fork_in_child() -> None:
    global _lock, _pid
    _lock = threading.Lock()  # ours too: another thread may have held it
    if _pid == os.getpid():  # already done for this process
        return
    _pid = os.getpid()
    hooks: list[Callable[[], None]] = list(_functions)
    for ref in list(_objects):
        obj = ref()
        if obj is not None:
            hooks.append(obj._after_fork_in_child)
    for hook in hooks:
        try:
            hook()
        except Exception:
            logger.exception("re-creating %r after fork failed", hook)
