"""Reading another thread's frames with no garbage collection in the middle.

The sampler (and a hung request's trace lookup) reads the frames of threads
that keep running: ``sys._current_frames()``, then ``f_back``, ``f_locals``,
a coroutine's ``cr_frame``. In C, each of these may first have to *create*
the frame object of a frame that is still running on the other thread, from
a pointer into that thread's frame stack.

On CPython 3.11 that creation can run a garbage collection: 3.11 collects
inside allocations, when the young generation is full. A collection runs
finalizers (``__del__``, weakref callbacks), which are Python code, and
Python code lets the GIL go to a waiting thread. If that is the thread being
read, it goes on running and returns from the very frame whose object is
half made; its stack slot is reused, and the reader then links the new frame
object to it, or reads the next ``previous`` pointer out of it: a
use-after-free. It shows as a segfault, sometimes in the thread being read,
or as ``f_back`` handing back an object that is not a frame (a function, say:
whatever the reused slot holds). Long collections make it likelier (other
threads ask for the GIL while one runs), so it comes with load and big heaps.
We saw both in this project's test runs on 3.11.7 (see CHANGES.rst), and
other sampling profilers report the same on 3.11 only (sentry-python
#2386 and #6119, dd-trace-py #5019). CPython 3.12 runs the collector from
the eval loop only (gh-97922), never inside an allocation, so there a read
in C cannot be interrupted.

So on 3.11, every read of another thread's frames runs inside
:data:`reading_stacks`, which turns the collector off for its duration (tens
to hundreds of microseconds per sampling round: 85 µs median and 0.5 ms at
most with four requests in flight, measured) if it was on, and back
on after: collections are put off, not skipped; the next allocation after the
section runs the one that was due. Sections may nest and may overlap across
threads (a depth count under a lock); the collector comes back on when the
last one ends, and only if it was on when the first began. A caveat: an
application that calls ``gc.disable()`` from another thread in the middle of
a section (it would have to win the GIL in those microseconds) has the
collector turned back on when the section ends. On 3.12 and later,
:data:`reading_stacks` does nothing.
"""

from __future__ import annotations

import gc
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from .. import _fork
from ._native import allocate_lock

if TYPE_CHECKING:
    from types import TracebackType

#: whether this CPython may collect garbage inside an allocation (3.11)
COLLECTS_IN_ALLOCATION = sys.version_info < (3, 12)

_lock = allocate_lock()  # an OS lock: under gevent the sampler is a real thread
_depth = 0  # sections open now, on any thread
_resume = False  # whether the first of them turned the collector off
_registered = False  # the after-fork hook, registered at the first section


class _CollectorOff(AbstractContextManager[None]):
    """``with reading_stacks:``: no collection can start inside the block."""

    __slots__ = ()

    def __enter__(self) -> None:
        global _depth, _resume, _registered
        if not _registered:  # not at import: _fork installs its hook on first use
            _registered = True
            _fork.register_function(_after_fork_in_child)
        with _lock:
            if _depth == 0:
                _resume = gc.isenabled()
                if _resume:
                    gc.disable()
            _depth += 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        global _depth
        with _lock:
            if _depth == 0:  # ended already: by the fork hook, in a child forked inside it
                return
            _depth -= 1
            if _depth == 0 and _resume:
                gc.enable()


def _after_fork_in_child() -> None:
    """A fork made while another thread was inside a section: that thread is
    gone, so its section never ends here; end it, and make a new lock (the
    old one may have been held)."""
    global _lock, _depth, _resume
    _lock = allocate_lock()
    if _depth:
        _depth = 0
        if _resume:
            gc.enable()
    _resume = False


#: ``with reading_stacks:`` around every read of another thread's frames; on
#: 3.12 and later a no-op (the collector runs from the eval loop only)
reading_stacks: AbstractContextManager[None] = (
    _CollectorOff() if COLLECTS_IN_ALLOCATION else nullcontext())
