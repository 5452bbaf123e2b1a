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
forks its workers in C and runs them only with ``py-call-osafterfork`` or
``py-call-uwsgi-fork-hooks``. Without them a worker also keeps the
interpreter's *thread states* of every thread the master ran (the sampler and
delivery threads of a master that served a request before forking, say), and
glibc hands those dead threads' stacks to the worker's new threads: the next
``sys._current_frames()`` follows a stale state into a reused stack and the
worker segfaults in ``_PyThread_CurrentFrames``. So, in a uWSGI process:

1. At the first registration we chain ``uwsgi.post_fork_hook`` (keeping any
   hook already set, uwsgidecorators' ``@postfork`` chain included, and
   calling it after ours). uWSGI calls it in each worker right after the
   fork, after ``py-call-osafterfork`` would have run and before it starts
   the worker's threads (``uwsgi_python_post_fork``, then
   ``uwsgi_worker_run``). If the fork hooks did not run (our pid is stale)
   and the master had threads, it calls ``PyOS_AfterFork_Child()``: exactly
   what ``os.fork()`` and ``py-call-osafterfork`` run in a child (GIL and
   thread states reset, then every at-fork hook, ours included; on 3.13 it
   first takes the import lock, as ``PyOS_BeforeFork()`` would have in the
   parent). Our pid check makes sure it never runs twice in one process.
2. The places that start threads also call :func:`ensure_current` (one
   ``os.getpid()``, about 50 ns), which catches up in a process whose id
   changed without the hooks (no post-fork hook, or it was replaced later).
   If the parent's threads left states behind, it calls
   ``PyOS_AfterFork_Child()`` only while this is the process's only thread
   (the call would delete a live thread's state); otherwise it cannot repair
   them, so :func:`stacks_readable` turns False (the sampler must then not
   read thread stacks: no profile beats a segfault) and one ERROR says how
   to fix it (``py-call-uwsgi-fork-hooks = true``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_objects: list[weakref.ref[ForkAware]] = []
_functions: list[Callable[[], None]] = []
_installed = False
_lock = threading.Lock()
_pid = os.getpid()
#: one lock per process id for catching up after a fork without hooks: made
#: with ``dict.setdefault`` (atomic), never inherited held from a parent
_catch_up_locks: dict[int, threading.Lock] = {}
#: False in a process that still holds its parent's thread states
_stacks_readable = True


def ensure_current() -> None:
    """Run the after-fork hooks if this process was forked without them."""
    if os.getpid() != _pid:
        _catch_up(post_fork=False)


def stacks_readable() -> bool:
    """Whether reading every thread's stack (``sys._current_frames()``) is
    safe in this process. False only after a fork without Python's fork hooks
    that left the parent's thread states behind, beside live threads; call
    :func:`ensure_current` first."""
    return _stacks_readable


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
    """Python's fork hook once, and uWSGI's at every registration (someone
    may have replaced it since: ``import uwsgidecorators`` assigns its own)."""
    global _installed
    if not _installed:
        _installed = True
        os.register_at_fork(after_in_child=_after_os_fork)
    _chain_uwsgi_post_fork()


def _after_os_fork() -> None:
    # a real fork hook: PyOS_AfterFork_Child has just dropped every stale state
    global _stacks_readable
    _stacks_readable = True
    _after_fork_in_child()


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


# --- forks without Python's hooks (uWSGI) ------------------------------------


class UwsgiPostForkHook:
    """``uwsgi.post_fork_hook``: ours first (before anything can start a
    thread), then the hook it replaced."""

    def __init__(self, previous: Callable[[], object] | None) -> None:
        self.previous = previous

    def __call__(self) -> None:
        if os.getpid() != _pid:
            try:
                _catch_up(post_fork=True)
            except Exception:  # uWSGI would print and clear it; say what it was
                logger.exception("flask_perfwatch's uWSGI post-fork hook failed")
        if self.previous is not None:
            self.previous()

    def __repr__(self) -> str:
        return f"<flask_perfwatch uWSGI post-fork hook, then {self.previous!r}>"


def _chain_uwsgi_post_fork() -> None:
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is None or not hasattr(uwsgi, "worker_id"):  # not uWSGI's embedded module
        return
    current = getattr(uwsgi, "post_fork_hook", None)
    if not isinstance(current, UwsgiPostForkHook):
        setattr(uwsgi, "post_fork_hook", UwsgiPostForkHook(current))  # noqa: B010


def _catch_up(*, post_fork: bool) -> None:
    """The fork hooks did not run in this process (its id changed since).
    ``post_fork``: called by uWSGI's post-fork hook, before uWSGI starts the
    worker's threads."""
    global _stacks_readable
    with _catch_up_locks.setdefault(os.getpid(), threading.Lock()):
        if _pid == os.getpid():
            return
        stale = _leftovers()
        if not stale:  # the parent ran no other thread: nothing left behind
            _after_fork_in_child()
            return
        may_reset = _may_reset_threads(post_fork)
        if may_reset and _reset_interpreter():
            logger.debug("pid %d was forked without Python's fork hooks; ran "
                         "PyOS_AfterFork_Child() for the parent's threads %s", _pid, stale)
            return
        _stacks_readable = False
        _after_fork_in_child()
        logger.error(
            "this process (pid %d) was forked without Python's fork hooks while its parent "
            "ran threads (%s), and their states cannot be cleared here (%s): reading thread "
            "stacks could crash the process, so flask_perfwatch takes no profiles in it "
            "(requests are still timed and alerted). Under uWSGI set 'py-call-uwsgi-fork-hooks "
            "= true' (before Python 3.13, 'py-call-osafterfork = true' also does), or keep "
            "flask_perfwatch's uwsgi.post_fork_hook in place (it was replaced after "
            "flask_perfwatch was set up: is uwsgidecorators imported after the app?)",
            os.getpid(), ", ".join(stale),
            "other threads already run" if not may_reset else
            "no ctypes, no C API or several interpreters")


def _live_tasks() -> set[int] | None:
    """The OS thread ids of this process (Linux), or None where unknown."""
    try:
        return {int(name) for name in os.listdir("/proc/self/task")}
    except (OSError, ValueError):
        return None


def _leftovers() -> list[str]:
    """What the parent's threads left in this process, by name.

    A thread :mod:`threading` lists whose native id does not run here is the
    parent's (a native id is unique system-wide while its thread runs). The
    main thread is not one: uWSGI forks from it, so it runs on here (under
    the parent's native id: no hook updated it). Without ``/proc`` every
    other thread counts. A thread started here through :mod:`threading` on a
    dead thread's stack has its ident and hides its entry, so the
    interpreter's thread states are counted too: more of them than the
    process has threads means some are left over."""
    tasks = _live_tasks()
    ours = (threading.current_thread(), threading.main_thread())
    names = [thread.name for thread in threading.enumerate()
             if thread not in ours and (tasks is None or thread.native_id not in tasks)]
    states = _capi().thread_states()
    if not names and tasks is not None and states is not None and states > len(tasks):
        names.append(f"{states - len(tasks)} thread state(s) of threads that have gone")
    return names


def _may_reset_threads(post_fork: bool) -> bool:
    """Whether ``PyOS_AfterFork_Child()`` may run: it deletes the state of
    every thread but the caller's, so no other live thread may have one.
    In uWSGI's post-fork hook the worker's threads do not exist yet (threads
    of C code, such as offload threads, have no Python state), unless a hook
    run before ours started one through :mod:`threading`. Elsewhere only a
    process with a single OS thread is sure."""
    tasks = _live_tasks()
    me = threading.get_native_id()
    if post_fork:
        current = threading.current_thread()
        return tasks is None or not any(
            thread.native_id in tasks for thread in threading.enumerate()
            if thread is not current and thread.native_id != me)
    return tasks == {me}


def _reset_interpreter() -> bool:
    """Run ``PyOS_AfterFork_Child()`` (what :func:`os.fork` runs in a child;
    it runs our hooks too); False where it cannot run: no :mod:`ctypes` or
    C API, or sub-interpreters (it would delete them)."""
    capi = _capi()
    if capi.after_fork_child is None or not capi.single_interpreter():
        return False
    if sys.version_info >= (3, 13):
        # The import lock became a mutex that PyOS_BeforeFork() takes in the
        # parent and PyOS_AfterFork_Child() releases in the child (which
        # aborts if this thread does not hold it): take it as the parent
        # would have. One a dead thread of the parent holds cannot be taken.
        import _imp

        if _imp.lock_held():
            return False
        _imp.acquire_lock()
    capi.after_fork_child()
    return _pid == os.getpid()


class _CAPI:
    """The few C API functions used here, through :mod:`ctypes`, each None
    where unavailable. Private prototypes: setting ``restype`` on
    ``ctypes.pythonapi``'s shared function objects would change them for
    every other user. ``PYFUNCTYPE``: the GIL stays held across each call."""

    def __init__(self) -> None:
        try:
            import ctypes
        except ImportError:
            ctypes = None  # type: ignore[assignment]
        self._ctypes = ctypes
        self.after_fork_child = self._get("PyOS_AfterFork_Child", None)
        self.interpreter = self._get("PyInterpreterState_Get", "p")
        self.main_interpreter = self._get("PyInterpreterState_Main", "p")
        self.first_interpreter = self._get("PyInterpreterState_Head", "p")
        self.next_interpreter = self._get("PyInterpreterState_Next", "p", "p")
        self.first_state = self._get("PyInterpreterState_ThreadHead", "p", "p")
        self.next_state = self._get("PyThreadState_Next", "p", "p")

    def _get(self, name: str, restype: str | None, *argtypes: str) -> Callable[..., Any] | None:
        ctypes = self._ctypes
        if ctypes is None:
            return None
        pointer = ctypes.c_void_p
        prototype = ctypes.PYFUNCTYPE(None if restype is None else pointer,
                                      *[pointer for _ in argtypes])
        try:
            func: Callable[..., Any] = prototype((name, ctypes.pythonapi))
        except AttributeError:
            return None
        return func

    def single_interpreter(self) -> bool:
        """This is the main interpreter and there is no other."""
        get, main = self.interpreter, self.main_interpreter
        first, following = self.first_interpreter, self.next_interpreter
        if get is None or main is None or first is None or following is None:
            return False
        return bool(get() == main() and following(first()) is None)

    def thread_states(self) -> int | None:
        """How many thread states this interpreter holds (walking the list
        reads no frame, so stale states are safe to count)."""
        if self.interpreter is None or self.first_state is None or self.next_state is None:
            return None
        count, state = 0, self.first_state(self.interpreter())
        while state:
            count += 1
            state = self.next_state(state)
        return count


def _capi() -> _CAPI:
    return _CAPI()
