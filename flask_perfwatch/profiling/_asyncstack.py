"""Async views: the coroutine asgiref runs for a request, spliced into its samples.

Flask runs a coroutine view (or async hook) through asgiref's
``async_to_sync``: the request thread calls ``AsyncToSync.__call__``, which
runs the coroutine in an event loop in another thread and waits in
``CurrentThreadExecutor.run_until_future`` meanwhile. A plain sample of the
request thread would show only that wait. While the request thread waits
there, :meth:`AsyncCall.splice` puts in its place the coroutine's await chain
(outermost coroutine first), ending

* while the innermost coroutine runs: in the loop thread's stack below it
  (the thread is found by walking each thread's stack down to that
  coroutine's frame; the one found last time is tried first);
* while it is suspended: in pyinstrument's ``[await]`` leaf
  (:data:`._calltree.AWAIT`).

Work the coroutine hands to a thread pool and waits on is shown as the wait
(its frames are not linked to the request). While the request thread runs
``sync_to_async`` work sent back to it, its own stack is shown, as it is.

What is matched of asgiref
--------------------------
Every dependency on asgiref's internals is in :class:`AsgirefHook`, made by
:func:`find_hook` and nowhere else:

* the code object of ``asgiref.sync.AsyncToSync.__call__``, found on the
  request thread's stack;
* directly above it, ``asgiref.current_thread_executor.CurrentThreadExecutor
  .run_until_future``, and above that ``threading.Condition.wait``: asgiref is
  idle, waiting for the coroutine (matched by code object, not by name);
* the local ``awaitable`` of ``AsyncToSync.__call__``: the
  ``AsyncToSync.main_wrap`` coroutine that awaits the view's coroutine.

Checked against asgiref 3.13.0 (installed when this was written) and, from
their source, the tags 3.9.0 to 3.12.1, which have the same three. 3.5 to 3.8
have the same ``__call__`` and ``awaitable`` but wait in ``queue.Queue.get``:
asgiref's wait is not recognised, and their samples show it, as below.

Anything absent or different degrades to what a sample would show without this
module, never to an error in the sampler loop: :func:`find_hook` returns None
(and logs once) when the names are missing, a stack that does not have the
expected shape is left as it is, a value of ``awaitable`` that is not a
coroutine is ignored, and an unexpected exception is logged by the "log and
swallow" guard and ends splicing for that request.

Reading ``f_locals``
--------------------
The sampler does not read the locals of the user's frames (see
:mod:`.sampler`). ``awaitable`` is the one read of a frame's locals, and it is
restricted to what it needs: a suspended coroutine is on no thread's stack,
and this local is the only reference to it that a sampled stack leads to.

* Only the frame of asgiref's own ``AsyncToSync.__call__``, recognised by its
  code object, never a frame of the user's code; only while asgiref waits in
  it (the local is assigned by then); and once per asgiref call: the
  coroutine is kept, with that frame, until a sample finds the request thread
  out of it (so a later call, such as an async view after an async
  ``before_request`` hook, is read once too), or the request ends. Keeping
  the frame is what tells a later call from this one; it keeps the call's
  locals at most until the sampler's next tick after the call returns.
* On Python 3.13 and later, ``f_locals`` is a PEP 667 proxy: reading one name
  reads that variable, nothing is copied.
* On 3.11 and 3.12 it calls ``PyFrame_FastToLocals``: a dict of that frame's
  locals (asgiref's objects and the view's arguments) is made and attached to
  the frame. It refers to nothing the frame does not already refer to, and it
  goes with the frame. A trace function (a debugger) on the request thread is
  unaffected: CPython refreshes that same dict before each of its calls.
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass
from types import CodeType, CoroutineType, GeneratorType
from typing import TYPE_CHECKING, Any

from .._guard import report_swallowed
from ._calltree import AWAIT

if TYPE_CHECKING:
    from types import FrameType, ModuleType

    from ._calltree import Stack, StackEntry

logger = logging.getLogger(__name__)

#: The modules, attributes and local name below are all this package assumes
#: of asgiref; see the module doc for the versions they were checked against.
_PACKAGE = "asgiref"
_SYNC_MODULE = "asgiref.sync"
_EXECUTOR_MODULE = "asgiref.current_thread_executor"
_AWAITABLE = "awaitable"


@dataclass(frozen=True, slots=True)
class AsgirefHook:
    """What is recognised of the running asgiref (see the module doc)."""

    #: ``AsyncToSync.__call__``: the request thread's frame that waits.
    call_code: CodeType
    #: ``CurrentThreadExecutor.run_until_future``, called by it to wait.
    run_code: CodeType
    #: ``threading.Condition.wait``, called by that: idle, not running work.
    wait_code: CodeType

    def coroutine(self, call_frame: FrameType) -> CoroutineType[Any, Any, Any] | None:
        """The coroutine asgiref runs, from its ``__call__`` frame: the single
        read of a frame's locals (see the module doc)."""
        value = call_frame.f_locals.get(_AWAITABLE)
        return value if type(value) is CoroutineType else None


# (asgiref.sync module object, what was recognised in it): recognised once per
# module object, on the first tick that finds it imported.
_recognised: tuple[ModuleType, AsgirefHook | None] | None = None


def find_hook() -> AsgirefHook | None:
    """The asgiref hook, or None when ``asgiref.sync`` is not imported (no
    async view ran yet; this module never imports it) or not recognised.
    Cheap: called once per sampler tick."""
    global _recognised
    module = sys.modules.get(_SYNC_MODULE)
    if module is None:
        return None
    recognised = _recognised
    if recognised is not None and recognised[0] is module:
        return recognised[1]
    hook = _recognise(module)
    _recognised = (module, hook)
    return hook


def _recognise(sync: ModuleType) -> AsgirefHook | None:
    version = getattr(sys.modules.get(_PACKAGE), "__version__", "?")
    try:
        executor = sys.modules[_EXECUTOR_MODULE]
        call_code = sync.AsyncToSync.__call__.__code__
        run_code = executor.CurrentThreadExecutor.run_until_future.__code__
    except (KeyError, AttributeError) as exc:
        missing = f"{type(exc).__name__}: {exc}"
    except Exception:  # an asgiref shaped in a way nobody foresaw
        report_swallowed("recognising asgiref's internals")
        return None
    else:
        if not (isinstance(call_code, CodeType) and isinstance(run_code, CodeType)):
            missing = "AsyncToSync.__call__ or run_until_future is not Python code"
        elif _AWAITABLE not in call_code.co_varnames + call_code.co_cellvars:
            missing = f"AsyncToSync.__call__ has no local {_AWAITABLE!r}"
        else:
            return AsgirefHook(call_code, run_code, threading.Condition.wait.__code__)
    logger.warning("asgiref %s is not one flask_perfwatch knows (%s): async views are "
                   "profiled down to asgiref's wait, without their coroutines",
                   version, missing)
    return None


class AsyncCall:
    """The splicing state of one request, kept by the sampler thread: the
    asgiref call being waited in, its coroutine, the loop thread last seen
    running it."""

    __slots__ = ("call_frame", "coro", "disabled", "loop_ident", "max_depth",
                 "request_ident")

    def __init__(self, request_ident: int, max_depth: int) -> None:
        self.request_ident = request_ident
        self.max_depth = max_depth
        self.call_frame: FrameType | None = None
        self.coro: CoroutineType[Any, Any, Any] | None = None
        self.loop_ident: int | None = None
        self.disabled = False

    def clear(self) -> None:
        """Drop the references to the request's frame and coroutine."""
        self.call_frame = self.coro = None

    def splice(self, hook: AsgirefHook, stack: list[FrameType],
               frames: dict[int, FrameType]) -> Stack:
        """``stack`` (the request thread's, leaf first), with asgiref's wait
        replaced by the coroutine's frames when asgiref waits for one; else
        ``stack`` itself. ``frames``: ``sys._current_frames()``. Never raises."""
        if self.disabled:
            return stack
        try:
            return self._splice(hook, stack, frames)
        except Exception:
            self.disabled = True
            self.clear()
            report_swallowed("the sampler, splicing an async view's coroutine into its stack")
            return stack

    def _splice(self, hook: AsgirefHook, stack: list[FrameType],
                frames: dict[int, FrameType]) -> Stack:
        call_code = hook.call_code
        for i in range(len(stack) - 1, -1, -1):  # the outermost asgiref call
            call_frame = stack[i]
            if call_frame.f_code is not call_code:
                continue
            if (i >= 2 and stack[i - 1].f_code is hook.run_code
                    and stack[i - 2].f_code is hook.wait_code):
                inner = self._coroutine_stack(hook, call_frame, frames)
                if inner is not None:
                    return inner + stack[i:]
            return stack
        self.clear()  # out of asgiref: a later call is a new one
        return stack

    def _coroutine_stack(self, hook: AsgirefHook, call_frame: FrameType,
                         frames: dict[int, FrameType]) -> list[StackEntry] | None:
        """Leaf-first frames of the coroutine asgiref runs in ``call_frame``."""
        if call_frame is not self.call_frame:
            self.call_frame = call_frame
            self.coro = hook.coroutine(call_frame)
        coro = self.coro
        if coro is None:
            return None
        max_depth = self.max_depth
        chain: list[StackEntry] = []
        running = False  # the innermost coroutine in the chain is running
        c: Any = coro
        # only real coroutines and generators are followed: reading their
        # attributes runs no code (an awaitable's __getattr__ would run the
        # user's code on the sampler thread)
        while len(chain) < max_depth:
            kind = type(c)
            if kind is CoroutineType:
                f, is_running, awaits = c.cr_frame, c.cr_running, c.cr_await
            elif kind is GeneratorType:
                f, is_running, awaits = c.gi_frame, c.gi_running, c.gi_yieldfrom
            else:
                break
            if f is None:  # finished
                break
            chain.append(f)
            running, c = is_running, awaits
        if not chain:
            return None
        chain.reverse()
        if not running:  # the innermost coroutine is suspended
            return [AWAIT, *chain]
        target = chain[0]
        idents = list(frames)
        loop_ident = self.loop_ident
        if loop_ident is not None and loop_ident in frames:
            idents.remove(loop_ident)
            idents.insert(0, loop_ident)
        for ident in idents:
            if ident == self.request_ident:
                continue
            below: list[FrameType] = []
            g: FrameType | None = frames[ident]
            depth = max_depth
            while g is not None and g is not target and depth:
                below.append(g)
                g = g.f_back
                depth -= 1
            if g is target:
                self.loop_ident = ident
                return below + chain
        return chain  # running, but on no thread's stack by now


__all__ = ["AsgirefHook", "AsyncCall", "find_hook"]
