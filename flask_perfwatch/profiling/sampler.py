"""Engine ``sampler``: one daemon thread samples the stacks of in-flight requests.

Nothing is installed in the request thread: no profile or trace hook, so the
interpreter stays on its fast path and debuggers, coverage and other profilers
keep working. The Flask wrapper registers each request in a
:class:`~.base.Registry` itself (its thread id, start time and environ), and
other callers through :meth:`SamplerEngine.start`; a daemon thread reads
``sys._current_frames()`` every ``PERFWATCH_PROFILE_INTERVAL`` and adds each
in-flight request's stack to that request's call tree (:mod:`._calltree`: bounded to at most
:attr:`SamplerEngine.max_nodes` distinct stack entries, each sample weighted by
the time since the previous one). A fast request's tree is simply dropped; a
slow one becomes a pyinstrument :class:`~pyinstrument.session.Session`
(:mod:`._session`: built through the public ``Session.from_json`` format,
lazily, on the delivery thread), so the report is pyinstrument's own HTML with
line numbers and class names.

Costs are kept off the request thread:

* requests younger than :attr:`SamplerEngine.arm_delay` are never sampled, so
  a fast request costs its registration only; the report says how many
  milliseconds at the start were not sampled;
* a Registry entry is a tuple and two dict operations on the request thread;
  the sampler thread "adopts" a registered request once it is armed (builds
  its record, below) and :meth:`~SamplerEngine.collect` hands a slow one's
  profile back. What :meth:`~SamplerEngine.start` creates is the least that
  can be: a small list (see the comment on the request record below) and a
  dict entry, with no ``__init__`` call. The sampling state (call tree,
  counters) is created by the sampler thread when it first samples a
  request. :meth:`~SamplerEngine.stop` drops the references to the caller's
  objects, so a request's objects (the middleware's watch refers back to the
  handle) are freed by reference counting, not left to the garbage collector;
* under steady traffic the thread does not poll: it sleeps until the oldest
  in-flight request reaches the arming delay (or, with none in flight, for one
  arming delay: no request starting meanwhile can be armed sooner), so it wakes
  at most ``1 / arm_delay`` times a second while every request is fast. After
  :attr:`~SamplerEngine.idle_after` without requests it sleeps on an event,
  woken by the next request (:attr:`.base.Registry.idle`, or
  :meth:`~SamplerEngine.start`);
* it is started lazily, re-created after ``fork`` (gunicorn pre-fork,
  ``--preload``) and stopped by :meth:`~SamplerEngine.close`.

Async views (:mod:`._asyncstack`): Flask runs a coroutine view through asgiref
in an event loop thread while the request thread waits. When the request thread
is waiting there, the sample follows the coroutine's await chain and, while it
runs, the loop thread's stack below it; while it is suspended the sample ends
in pyinstrument's ``[await]`` frame. Other work a request hands to a thread
pool and waits on is shown as the wait (its frames are not linked to the
request).

CPU and waits, read from the sampler thread at no cost to the request:

* :attr:`Profile.cpu_time <.base.Profile.cpu_time>`, the CPU seconds of the
  request's thread, for a sampled request on a platform with
  ``time.pthread_getcpuclockid`` (Linux, the BSDs): the thread's CPU clock is
  read when the request is first sampled and, on its own thread
  (``time.thread_time()``, the same clock), when :meth:`~SamplerEngine.stop`
  or :meth:`~SamplerEngine.collect` takes its profile. The first
  :attr:`~SamplerEngine.arm_delay` was not sampled: its CPU is extrapolated
  at the rate measured over the sampled part (capped at its wall time), and
  the profile's note says so. None where it is not known: under gevent
  (greenlets share their thread's clock), without ``pthread_getcpuclockid``
  (macOS, Windows), when the thread's clock could not be read, and when an
  async view's coroutine was seen running on asgiref's event loop thread
  (its CPU is that thread's, not the request's);
* waiting lines: a sample whose leaf frame is at a call instruction (the
  thread is inside a call into C: ``time.sleep``, a socket's ``recv``, a
  driver's ``execute``, ``lock.acquire``, or a lock's ``__enter__`` at a
  ``with``) and whose thread used under :data:`WAIT_CPU_SHARE` of the wall
  time in CPU since its clock was last read is counted below the calling
  line (``line 16: time.sleep(0.2)``, :data:`._calltree.WAIT`), not as the
  function's own time; :attr:`Profile.waits <.base.Profile.waits>` lists
  them. The CPU test is needed: a thread busy in C returns to the sampler at
  the same instruction (the switch to another thread happens right after a
  call), so the instruction alone cannot tell waiting from working. It
  costs a clock read (about 0.5 µs) per sample of a request at a call, but
  only one in :data:`_WAIT_RECHECK` while it keeps waiting in the same call
  (the usual case: a request that waits, waits long); whether an
  instruction is a call is looked up once per (code, instruction). The
  first sample of a wait that follows work usually still counts as the
  function's own time (its clock's last reading was before the work).
  Where the CPU time is not known there are no waiting lines.

Frame locals: the sampler reads another thread's frames for their code, line
and caller only, never the locals of the user's frames: on Python 3.11 and
3.12, ``frame.f_locals`` would copy them into a dict attached to the frame,
which keeps them alive as long as the frame object. Class names
are therefore taken from the code's qualified name (``Class.method`` of the
class that defines the method), not from ``self``. The one exception is
asgiref's own ``AsyncToSync.__call__`` frame, whose ``awaitable`` local is read
once per asgiref call to reach an async view's coroutine; why and how it is
bounded is in :mod:`._asyncstack`.
"""

from __future__ import annotations

import dis
import gc
import importlib
import inspect
import logging
import random
import sys
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from .. import _fork
from .._guard import report_swallowed
from ..config import key_name
from . import _asyncstack, _native
from ._calltree import LINE_MASK, WAIT, CallTree, Node
from ._session import SampledProfile, session_json, waits
from ._stacks import reading_stacks
from .base import Engine, HangCallback, Profile, Record, Registry, RegistryOwner

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import CodeType, FrameType

    from ..config import Config
    from ._asyncstack import AsgirefHook, AsyncCall
    from ._calltree import Stack

logger = logging.getLogger(__name__)

# -- the request record ------------------------------------------------------
# What start() registers on the request thread, and the handle it returns, is a
# plain list, on purpose: start() + stop() are what every request pays, and a
# list display is the cheapest object CPython builds (from the interpreter's
# free list, no class call, no __init__): about 0.07 µs for these six fields,
# where a __slots__ class with an __init__ takes about 0.45 µs, which would add
# about half again to what start() + stop() cost (0.5 to 0.9 µs: see
# benchmarks/overhead.py, "engine.start + engine.stop alone"). Not a tuple:
# stop() clears two fields. The fields are these indexes, defined here only,
# in the order start() lists them:
_IDENT = 0         # threading.get_ident() of the request thread
_START = 1         # time.perf_counter() when start() was called
_DESCRIPTION = 2   # start()'s description; None once stopped
_ON_HANG = 3       # start()'s on_hang (or None); None once stopped
_CALLER_ID = 4     # id() of the frame that called start() (not the frame: see start());
                   # None for a found request (its _FRAME is its anchor)
_CALLER_CODE = 5   # that frame's code object (None for a found request)
_TASK = 6          # under gevent: the request's greenlet, else None
_RECORD = 7        # a request found by its wrapper's frame (Registry): its Record
                   # (None for start()'s)
_FRAME = 8         # ... and that frame, held while the request is in flight (None
                   # once collected)
# stop() sets DESCRIPTION and ON_HANG to None: the caller's objects refer back
# to the handle, a reference cycle otherwise left to the garbage collector.
# The sampler thread reads the record; what it keeps per request is a _Sampled.
# A request of a Registry's wrapper is "found": the sampler thread builds its
# record when it finds the wrapper's frame on a thread's stack (_discover).
_Request: TypeAlias = list[Any]
#: What _found_request() says of a wrapper frame that is another engine's
#: (another app's wrapper) or of a wrapper that is gone: never this engine's request.
_FOREIGN: _Request = []


def _let_go(req: _Request) -> None:
    """A found request is over: drop its references to the caller's objects
    (its description and hang callback hold the wrapper and environ) and to
    the wrapper's frame."""
    req[_DESCRIPTION] = req[_ON_HANG] = req[_FRAME] = None


class _Described:
    """A registered request's description, formatted only if a profile is kept."""

    __slots__ = ("owner", "record")

    def __init__(self, owner: RegistryOwner, record: Record) -> None:
        self.owner = owner
        self.record = record

    def __str__(self) -> str:
        return self.owner.describe(self.record)

# the OS thread's id, even if gevent patched threading (resolved once: start() is hot)
_get_ident = _native.original("_thread", "get_ident")


def free_threaded() -> bool:
    """Whether this is a free-threaded CPython running without its GIL
    (``python3.13t``), where ``sys._current_frames()`` is documented as
    unsafe: another thread's frames may be freed while they are read."""
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    return is_gil_enabled is not None and not is_gil_enabled()


#: said once per process, however many engines are built
_free_threaded_warned = False
_perf_counter = time.perf_counter
_thread_time = time.thread_time  # this thread's CPU seconds
_random = random.random
#: The longest wait between two samples the budget may impose (seconds): a
#: request in flight is still sampled at least this often.
MAX_PERIOD = 0.25
#: A round in which the collector ran counts in the budget's moving averages
#: (cost and lag) for at most this many times the average, or _DEAR_FLOOR
#: seconds if more (see _run)
_DEAR_ROUND = 20
_DEAR_FLOOR = 0.001


def _collections() -> int:
    """How many garbage collections (of any generation) have run."""
    count = 0
    for generation in gc.get_stats():
        count += generation["collections"]
    return count


def _moved(average: float, value: float, collected: bool) -> float:
    """A moving average of the sampler's rounds after one more, ``value``.

    A collection that ran during the round (``collected``) is mostly the
    process's work: a full one takes time in proportion to the whole heap,
    and would have run in whichever thread allocated next. Counted in full,
    one of 0.3 s held the sampler at its slowest rate for seconds; such a
    round counts for at most _DEAR_ROUND times the average, which lets the
    young collections that the sampler's own allocations cause (a few ms
    with 64 requests in flight) count whole."""
    if collected:
        value = min(value, max(average * _DEAR_ROUND, _DEAR_FLOOR))
    return average + (value - average) * 0.2


# A frame of these may be suspended and resumed by another caller: a
# generator, a coroutine, an async generator (inspect.CO_* flags)
_RESUMABLE = (inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
              | inspect.CO_ITERABLE_COROUTINE)
_getframe = sys._getframe

# -- CPU clocks and waiting lines (see the module doc) --------------------------
#: ``time.pthread_getcpuclockid`` where the platform has it (not macOS, Windows)
_cpu_clock_id: Callable[[int], int] | None = getattr(time, "pthread_getcpuclockid", None)
# called only with a clock from _cpu_clock_id, so only where it exists (Unix)
_clock_gettime = cast("Callable[[int], float]", getattr(time, "clock_gettime", None))
#: A sample whose leaf is at a call counts as waiting in that call when its
#: thread used less than this share of the wall time in CPU since its clock
#: was last read: a thread that waits uses next to none, one that works in C
#: nearly all (a starved one may get less: then its wait is for a core).
WAIT_CPU_SHARE = 0.1
#: The instructions at which a leaf frame runs a call into C, resolved once:
#: CALL (and on 3.11 PRECALL, in which a builtin may run), CALL_FUNCTION_EX,
#: CALL_KW (3.13), and ``with``'s BEFORE_WITH (a lock's ``__enter__``).
_CALL_OPS = frozenset(dis.opmap[name] for name in
                      ("CALL", "PRECALL", "CALL_FUNCTION_EX", "CALL_KW", "BEFORE_WITH")
                      if name in dis.opmap)
_EXTENDED_ARG = dis.opmap["EXTENDED_ARG"]
#: While a request waits where it waited at its last sample (the same frame,
#: at the same instruction), its thread's clock is read at one sample in this
#: many, over the samples since: its thread cannot leave the call without
#: moving on, unless it comes back to the same call (a loop) or the call
#: itself turns to work; such samples are then counted as waiting, at most
#: this many minus one.
_WAIT_RECHECK = 8
#: The (code, instruction) lookups kept (then the cache starts over)
_CALLS_CACHED = 4096
#: The leaf of a waiting sample, below its frame's entry (see _calltree.WAIT)
_WAITING = (WAIT,)


def _at_call(code: CodeType, lasti: int) -> bool:
    """Whether the instruction at byte offset ``lasti`` (``frame.f_lasti``)
    of ``code`` is a call (:data:`_CALL_OPS`). ``co_code`` is the bytecode
    as compiled (not specialized; CACHE entries are zeros, never a call); an
    ``EXTENDED_ARG`` prefix is skipped to its instruction."""
    co_code = code.co_code
    end = len(co_code)
    while 0 <= lasti < end and co_code[lasti] == _EXTENDED_ARG:
        lasti += 2
    return 0 <= lasti < end and co_code[lasti] in _CALL_OPS


class _Sampled:
    """The sampling state of one request, created by the sampler thread when it
    first samples (or declares hung) the request; never on the request thread."""

    __slots__ = ("anchor", "async_call", "caller_code", "caller_id", "clock", "cpu",
                 "cpu_at", "cpu_first", "first_sample", "hang_fired", "index", "last_sample",
                 "lasti", "path", "rechecked", "req", "samples", "tree", "wait", "waiting")

    def __init__(self, req: _Request, max_nodes: int) -> None:
        self.req = req
        # the frame that called start(), if it is still running at the first
        # sample, becomes the root of the profile (a WSGI wrapper's frame does)
        self.caller_id: int | None = req[_CALLER_ID]
        self.caller_code: CodeType | None = req[_CALLER_CODE]
        #: where the request's stack ends (a found request's wrapper frame)
        self.anchor: FrameType | None = req[_FRAME]
        self.async_call: AsyncCall | None = None  # an async view's coroutine, if any
        self.tree = CallTree(max_nodes)
        self.samples = 0
        self.first_sample: float | None = None
        self.last_sample: float | None = None
        self.hang_fired = False
        # The last sample's stack, root first: each frame and its tree node
        # (whose key holds the line the frame was at); ``index``: id(frame) ->
        # position. A plain function's frame that is still on the stack has
        # run ever since, so its callers have waited in the same calls; if it
        # is still at its node's line, its node is still right, and the next
        # sample walks from its leaf only down to the first such frame and
        # adds what is new below that frame's node: a waiting request costs a
        # lookup, a busy one the few frames that changed. (A generator's or
        # coroutine's frame may have been suspended and resumed by another
        # caller meanwhile, so it never ends the walk.) Empty when the last
        # stack was an async view's (spliced) or did not fit in the tree.
        self.path: list[tuple[FrameType, Node]] = []
        self.index: dict[int, int] = {}
        #: the f_lasti of the path's leaf frame at the last sample: a request
        #: whose leaf is still that frame at that instruction (waiting in a
        #: call) is sampled with no walk at all
        self.lasti: int | None = None
        #: The thread's CPU clock (None: not read, see the module doc), its
        #: reading at the first sample, and its last reading and when.
        self.clock: int | None = None
        self.cpu_first = self.cpu = self.cpu_at = 0.0
        #: Whether the sample being added waits in a call at its leaf (set
        #: before it is added); the waiting-line node the last sample went
        #: to (None: it did not wait), which the next one adds to if its
        #: leaf is still that frame at that instruction and still waits.
        self.waiting = False
        self.wait: Node | None = None
        #: samples since the clock was last read while waiting (_WAIT_RECHECK)
        self.rechecked = 0


class SamplerEngine(Engine):
    """Samples in-flight requests from one daemon thread; see the module doc."""

    name = "sampler"

    #: Requests younger than this are not sampled (capped at a tenth of the threshold).
    arm_delay: float = 0.02
    #: With no request in flight for this long, the thread sleeps until woken.
    idle_after: float = 1.0
    #: Distinct stack entries kept per request; deeper novelties go to the parent.
    max_nodes: int = 600
    #: Frames followed per stack (guards against runaway recursion).
    max_depth: int = 256

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.interval = float(config.profile_interval)
        self.hang_after = float(config.hang_after)
        self.arm_delay = min(type(self).arm_delay, float(config.threshold) / 10)
        #: the most CPU the sampler thread may use, as a share of one core (0: no limit)
        self.budget = float(config.sampler_budget)
        # CPU seconds of a sampling round (a moving average), and what the
        # thread spent while sampling, for stats()
        self._round_cost = 0.0
        self._round_lag = 0.0
        self.cpu_seconds = 0.0
        self.sampling_seconds = 0.0
        # Import pyinstrument now (~40 ms, at app set-up), not on first use: the
        # delivery thread rendering one profile while another thread opens a
        # session would import the package from two threads at once, which
        # CPython 3.11 can fail with "partially initialized module" ImportError.
        for module in ("pyinstrument.session", "pyinstrument.renderers"):
            importlib.import_module(module)

        # in flight: id(handle) -> handle (written by request threads, read by the sampler)
        self._active: dict[int, _Request] = {}
        # The wrappers' registries (see _discover), and what the sampler
        # thread found on the threads' stacks (under _lock): the requests in
        # flight, id(wrapper frame) -> record; the wrapper frames that are no
        # request, id(frame) -> (frame, f_lasti when read, or None: never);
        # and per thread, its leaf frame, f_lasti and wrapper frames when last
        # walked (a thread still at the same leaf and instruction has the same
        # stack below it: not walked again).
        self._registries: list[Registry] = []
        self._anchors: dict[int, CodeType] = {}  # id(code) -> a wrapper's frame code
        self._found: dict[int, _Request] = {}
        self._skipped: dict[int, tuple[FrameType, int | None]] = {}
        self._seen: dict[int, tuple[FrameType, int | None, list[FrameType]]] = {}
        # id(handle) -> sampling state: written by the sampler thread and by
        # stop(keep=True), always under _lock
        self._states: dict[int, _Sampled] = {}
        # (id(code) << 32 | f_lasti) -> (code, whether that instruction is a
        # call): the sampler thread's, see _waits()
        self._calls: dict[int, tuple[CodeType, bool]] = {}
        # On a free-threaded build the engine only times requests and detects
        # hung ones: no call stack is read.
        if free_threaded():
            self.unavailable = (
                "free-threaded CPython without the GIL: sys._current_frames() is not safe "
                "there, so the sampler takes no samples (requests are still timed, alerted "
                f"and detected as hung, with no profile); {key_name('profiler')}=pyinstrument "
                "profiles each request in its own thread instead")
            global _free_threaded_warned
            if not _free_threaded_warned:
                _free_threaded_warned = True
                logger.warning("flask_perfwatch: %s", self.unavailable)
        # Native OS primitives (_native): under gevent, threading's would be greenlets'.
        self._lock = _native.allocate_lock()
        self._wake = _native.Wake()
        self._sleep = _native.sleeper()
        self._sleeping = False
        self._closed = False
        self._thread: threading.Thread | _native.NativeThread | None = None
        self._thread_lock = _native.allocate_lock()
        #: requests are gevent greenlets (decided when the thread starts, since
        #: gunicorn patches after a ``--preload``-ed app is set up)
        self.greenlets = False
        self.ticks = 0  # sampler ticks that sampled something (for tests/benchmarks)
        self.wakeups = 0  # times the sampler thread woke up (for tests/benchmarks)
        _fork.register(self)

    # -- request thread --------------------------------------------------------

    def start(self, description: object, *, is_async: bool = False,
              on_hang: HangCallback | None = None) -> _Request | None:
        if self._closed:
            return None
        _fork.ensure_current()  # a uWSGI worker forked without Python's fork hooks
        # The caller's frame by id and code only: keeping the frame itself would
        # make CPython keep the frames of returning callers alive (~4 µs/request).
        caller = _getframe(1)
        if self._thread is None:
            self._start_thread()
        elif self._sleeping:
            self._set_idle(False)
            self._wake.set()
        # the request record: _IDENT, _START, _DESCRIPTION, _ON_HANG, _CALLER_ID,
        # _CALLER_CODE, _TASK
        req = [_get_ident(), _perf_counter(), description, on_hang, id(caller), caller.f_code,
               _native.current_task() if self.greenlets else None, None, None]
        self._active[id(req)] = req
        return req

    def stop(self, handle: Any, *, keep: bool) -> Profile | None:
        if handle is None:
            return None
        req: _Request = handle
        if not keep:
            self._active.pop(id(req), None)
            req[_DESCRIPTION] = req[_ON_HANG] = None
            return None
        end = _perf_counter()
        with self._lock:  # the sampler thread is not writing to this tree now
            self._active.pop(id(req), None)
            state = self._states.pop(id(req), None)
            description = req[_DESCRIPTION]
            req[_DESCRIPTION] = req[_ON_HANG] = None
        return self._finished(state, description, end)

    def _finished(self, state: _Sampled | None, description: object,
                  end: float) -> Profile | None:
        """The profile of a request that ended (on its own thread: see
        :meth:`_cpu_now`)."""
        if state is None or not state.samples:
            return None
        cpu_time = self._cpu_time(state, end, self._cpu_now(state))
        state.anchor = state.async_call = None
        state.path = []
        state.index = {}
        state.wait = None
        return self._profile(state, description, end, cpu_time=cpu_time)

    def registry(self, owner: RegistryOwner, anchor: CodeType) -> Registry:
        registry = Registry(self, owner, anchor)
        registry.open = self._finds_requests()
        registry.idle = self._thread is None or self._sleeping or not registry.open
        self._anchors[id(anchor)] = anchor
        self._registries.append(registry)
        return registry

    def _finds_requests(self) -> bool:
        """Whether requests can be found by their wrappers' frames here: not
        once closed, nor where no stack is read, nor among gevent greenlets
        (known once the thread starts)."""
        return not (self._closed or self.greenlets or self.unavailable is not None)

    def wake(self) -> None:
        _fork.ensure_current()
        if self._closed:
            return
        if self._thread is None:
            self._start_thread()
        else:
            self._set_idle(False)
            self._wake.set()

    def _set_idle(self, idle: bool) -> None:
        self._sleeping = idle
        for registry in self._registries:
            registry.idle = idle or not registry.open

    def _close_registries(self) -> None:
        """The wrappers stop relying on this engine to find their requests."""
        for registry in self._registries:
            registry.open = False
            registry.idle = True

    def collect(self, registry: Registry, anchor: FrameType) -> Profile | None:
        end = _perf_counter()
        with self._lock:  # the sampler thread does not sample it meanwhile
            key = id(anchor)
            req = self._found.pop(key, None)
            # still on the stack until it returns: never to be found again
            self._skipped[key] = (anchor, None)
            if req is None:
                return None
            state = self._states.pop(id(req), None)
            description = req[_DESCRIPTION]
            _let_go(req)
        return self._finished(state, description, end)

    def stats(self) -> dict[str, Any]:
        """``sampler_rate``: samples per second while requests were being
        sampled; ``sampler_cpu_percent``: the sampler thread's CPU over that
        time, in percent of one core (held under ``PERFWATCH_SAMPLER_BUDGET``)."""
        seconds = self.sampling_seconds
        return {"sampler_rate": self.ticks / seconds if seconds else 0.0,
                "sampler_cpu_percent": self.cpu_seconds / seconds * 100 if seconds else 0.0}

    # -- lifecycle ---------------------------------------------------------------

    def _start_thread(self) -> None:
        with self._thread_lock:
            if self._thread is not None or self._closed:
                return
            self.greenlets = _native.greenlets_patched()
            if self.greenlets:  # a thread's stack is not a request's: wrappers call start()
                self._close_registries()
            self._sleep = _native.sleeper()
            self._set_idle(False)
            self._thread = _native.start_thread(self._run, name="perfwatch-sampler")

    def _after_fork_in_child(self) -> None:
        if not _fork.stacks_readable():
            # a fork without Python's hooks left the parent's thread states
            # beside live threads (uWSGI, see _fork): sys._current_frames()
            # could crash this process, so time requests without sampling
            self.unavailable = ("this process was forked without Python's fork hooks while "
                                "its parent ran threads, so reading thread stacks could crash "
                                "it: the sampler takes no samples here (see the ERROR from "
                                "flask_perfwatch._fork for the uWSGI setting that fixes it)")
            self._close_registries()
        # Only the forking thread survives; keep its requests, forget the rest.
        me = _get_ident()
        self._active = {k: r for k, r in list(self._active.items()) if r[_IDENT] == me}
        self._found = {k: r for k, r in list(self._found.items()) if r[_IDENT] == me}
        self._skipped = {}
        self._seen = {}
        live = {id(r) for r in (*self._active.values(), *self._found.values())}
        self._states = {k: s for k, s in list(self._states.items()) if k in live}
        self._lock = _native.allocate_lock()
        self._thread_lock = _native.allocate_lock()
        self._wake = _native.Wake()
        self._thread = None
        self._set_idle(True)
        if (self._active or self._found) and not self._closed:
            self._start_thread()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.ident != _get_ident():
            thread.join(timeout=2.0)
        self._thread = None
        self._active.clear()
        with self._lock:
            self._states.clear()
            self._found.clear()
            self._skipped.clear()
            self._seen.clear()
        self._close_registries()

    # -- sampler thread ----------------------------------------------------------

    def _run(self) -> None:
        idle_since = _perf_counter()
        # CPU and wall clock at the start of the last sampling round: a round's
        # cost is everything the thread did from there to the next one (the
        # sample, the hang check, and waking up, which under a busy GIL costs
        # about as much as a small sample)
        round_cpu = round_wall = None
        round_collections = 0
        period = self.interval
        # when the threads' stacks were last searched for requests, and
        # whether the last round sampled: while sampling (every interval),
        # they are searched every arm_delay; otherwise every round
        found_at = 0.0
        sampling = False
        while not self._closed:
            try:
                self.wakeups += 1
                now = _perf_counter()
                frames = None
                new = False
                if self._finds_requests() and (not sampling or now - found_at >= self.arm_delay):
                    with reading_stacks:
                        frames = sys._current_frames()
                        with self._lock:
                            new = self._discover(frames)
                    found_at = now
                active = list(self._active.values())
                found = list(self._found.values())
                busy = bool(active or found or new)
                if round_wall is not None and (not busy or now - round_wall > MAX_PERIOD * 2):
                    round_cpu = round_wall = None  # the thread idled meanwhile
                if not busy:
                    sampling = False
                    del frames
                    if self._states:
                        self._forget_finished()
                    if now - idle_since < self.idle_after:
                        # no request that starts meanwhile can be armed sooner
                        self._sleep(self.arm_delay)
                        continue
                    self._wake.clear()
                    self._set_idle(True)
                    # a request that saw us awake may have started meanwhile
                    if not (self._active or self._closed or self._look_again()):
                        self._wake.wait()
                    self._set_idle(False)
                    continue
                idle_since = now
                armed_at = now - self.arm_delay
                armed = [r for r in active if r[_START] <= armed_at]
                armed += [r for r in found if r[_START] <= armed_at]
                if not armed:
                    sampling = False
                    del frames
                    if self._states:
                        self._forget_finished()
                    # sleep until the oldest in-flight request is armed
                    earliest = min([r[_START] for r in active] + [r[_START] for r in found],
                                   default=now)
                    self._sleep(max(earliest - armed_at, 0.0005))
                    continue
                sampling = True
                cpu = _thread_time()
                collections = _collections()
                if round_cpu is not None and round_wall is not None:
                    cost = cpu - round_cpu
                    wall = now - round_wall
                    self.cpu_seconds += cost
                    self.sampling_seconds += wall
                    collected = collections != round_collections
                    self._round_cost = _moved(self._round_cost, cost, collected)
                    # how much longer than planned a round takes (waking up and,
                    # under a busy GIL, waiting for it: up to the switch interval)
                    self._round_lag = _moved(self._round_lag, max(wall - period, 0.0),
                                             collected)
                round_cpu, round_wall, round_collections = cpu, now, collections
                if self.unavailable is None:
                    with reading_stacks:
                        self._tick(armed, frames)
                del frames
                if self.hang_after > 0:
                    for fire in self._hung(armed):
                        self._fire_hang(*fire)
                # the next round comes after the interval, or later if rounds
                # this often would use more than the budget's share of a core
                period = self.interval
                if self.budget > 0 and self._round_cost > period * self.budget:
                    period = min(self._round_cost / self.budget, MAX_PERIOD)
                    # jittered (the same mean): a long fixed period would fall
                    # in step with a view's own loop and show one part of it only
                    pause = (period * (0.5 + _random())
                             - self._round_lag - (_perf_counter() - now))
                else:
                    pause = period - (_perf_counter() - now)
                self._sleep(pause if pause > 0 else 0)
            except Exception:  # never let the thread die
                report_swallowed("the sampler thread")
                self._sleep(self.interval)

    def _look_again(self) -> bool:
        """Before sleeping until woken: whether a request started while the
        wrappers still saw this thread awake (so did not wake it). The caches
        of frames are dropped: nothing is held while asleep."""
        new = False
        with self._lock:
            if self._finds_requests():
                with reading_stacks:
                    new = self._discover(sys._current_frames())
            if not (new or self._found):
                self._seen.clear()
                self._skipped.clear()
        return new or bool(self._found)

    # -- finding the requests of the registries' wrappers ------------------------

    def _discover(self, frames: dict[int, FrameType]) -> bool:
        """Find the requests in flight by their wrappers' frames on the
        threads' stacks (under _lock): new ones get a record, ended ones are
        forgotten. True if a wrapper frame turned up that is not a request
        yet (it may become one: its ``start`` is not assigned yet)."""
        anchors = self._anchors
        code = next(iter(anchors.values())) if len(anchors) == 1 else None
        seen = self._seen
        walked: dict[int, tuple[FrameType, int | None, list[FrameType]]] = {}
        me = _get_ident()
        limit = self.max_depth * 4
        for ident, leaf in frames.items():
            if ident == me:
                continue
            entry = seen.get(ident)
            if entry is None or entry[0] is not leaf or entry[1] != leaf.f_lasti:
                # walk it (a generator's frame may be resumed by another caller
                # at the same instruction: never taken as unchanged)
                on_stack: list[FrameType] = []
                f: FrameType | None = leaf
                depth = limit
                while f is not None and depth:
                    c = f.f_code
                    if c is code or (code is None and anchors.get(id(c)) is c):
                        on_stack.append(f)
                    f = f.f_back
                    depth -= 1
                entry = (leaf, None if leaf.f_code.co_flags & _RESUMABLE else leaf.f_lasti,
                         on_stack)
            walked[ident] = entry
        self._seen = walked
        found, skipped = self._found, self._skipped
        now_found: dict[int, _Request] = {}
        now_skipped: dict[int, tuple[FrameType, int | None]] = {}
        new = False
        for ident, entry in walked.items():
            for frame in entry[2]:
                key = id(frame)
                req = found.get(key)
                if req is not None:
                    now_found[key] = req
                    continue
                skip = skipped.get(key)
                if skip is not None and (skip[1] is None or skip[1] == frame.f_lasti):
                    now_skipped[key] = skip
                    continue
                req = self._found_request(ident, frame)
                if req is _FOREIGN:  # another app's, or a gone wrapper's: never ours
                    now_skipped[key] = (frame, None)
                elif req is None:  # not a request yet (or on this instruction)
                    now_skipped[key] = (frame, frame.f_lasti)
                    new = True
                else:
                    now_found[key] = req
        for key, req in found.items():  # ended without collect(): fast ones
            if key not in now_found:
                _let_go(req)
        self._found = now_found
        self._skipped = now_skipped
        return new

    def _found_request(self, ident: int, frame: FrameType) -> _Request | None:
        """The record of the request a wrapper's frame runs, from its locals
        ``self``, ``start`` and ``environ``; None if it runs none (yet);
        :data:`_FOREIGN` if the frame is not one of this engine's wrappers'."""
        try:
            local = frame.f_locals  # 3.11/3.12: a snapshot, kept on the frame while it runs
            start, owner, environ = local.get("start"), local.get("self"), local.get("environ")
        except Exception:  # not expected: logged, counted, and taken as not a request yet
            report_swallowed("reading a request's start and environ from its wrapper's frame")
            return None
        if owner is None:
            return None
        for registry in self._registries:
            wrapper = registry.owner()
            if wrapper is not None and wrapper is owner and registry.anchor is frame.f_code \
                    and registry.open:
                break
        else:  # another instance's frame of the same code
            return _FOREIGN
        if type(start) is not float:
            return None
        record = (start, environ)
        return [ident, start, _Described(wrapper, record),
                partial(wrapper.hung_record, record) if self.hang_after > 0 else None,
                None, None, None, record, frame]

    def _live(self, req: _Request) -> bool:
        """Whether the request is still in flight (under _lock)."""
        if req[_RECORD] is None:
            return self._active.get(id(req)) is req
        frame = req[_FRAME]
        return frame is not None and self._found.get(id(frame)) is req

    def _forget_finished(self) -> None:
        """Drop the states of requests that ended without keeping them."""
        with self._lock:
            live = self._live
            states = self._states
            for key in [k for k, st in states.items() if not live(st.req)]:
                del states[key]

    def _tick(self, armed: list[_Request], frames: dict[int, FrameType] | None) -> None:
        if frames is None:
            frames = sys._current_frames()
        hook = _asyncstack.find_hook()
        with self._lock:
            now = _perf_counter()
            live = self._live
            states = self._states
            sampled = 0
            for req in armed:
                key = id(req)
                if not live(req):  # stopped meanwhile
                    continue
                frame = frames.get(req[_IDENT])
                task = req[_TASK]
                if task is not None:  # a greenlet: its own frame unless it is running
                    frame = _native.task_frame(task, frame)
                if frame is None:
                    continue
                state = states.get(key)
                if state is None:
                    state = states[key] = _Sampled(req, self.max_nodes)
                last = state.last_sample
                if last is None:
                    weight = min(self.interval, now - req[_START])
                    if task is None and _cpu_clock_id is not None:
                        self._first_cpu(state, now)
                    state.waiting = False
                else:
                    weight = now - last
                    if state.clock is None:
                        state.waiting = False
                    elif (state.wait is not None and state.rechecked < _WAIT_RECHECK
                          and frame.f_lasti == state.lasti and state.path
                          and state.path[-1][0] is frame):
                        # still waiting where the last sample waited: no
                        # clock read but every _WAIT_RECHECK-th sample's
                        state.rechecked += 1
                        state.waiting = True
                    else:
                        state.rechecked = 1
                        state.waiting = self._waits(state, frame, now)
                if not (state.path and self._add_changes(state, frame, weight, hook)):
                    stack = self._stack(state, frame, frames, hook)
                    if stack is None:  # its wrapper returned since the last search: ended
                        self._ended(req)
                        continue
                    self._add_stack(state, stack, frame, weight, hook)
                path = state.path
                state.lasti = (frame.f_lasti if path and path[-1][0] is frame
                               and not frame.f_code.co_flags & _RESUMABLE else None)
                if last is None:
                    state.first_sample = now
                state.last_sample = now
                state.samples += 1
                sampled += 1
            if sampled:
                self.ticks += 1
        if len(self._states) > sampled:
            self._forget_finished()
        del frames

    @staticmethod
    def _first_cpu(state: _Sampled, now: float) -> None:
        """At a request's first sample, from the sampler thread: its thread's
        CPU clock and reading (none if it cannot be read).

        ``pthread_getcpuclockid`` of a thread that has ended is undefined
        (its ``pthread_t`` may point at freed memory): it is called only for
        a thread found in this round's ``sys._current_frames()``, which a
        request in flight is on. The clock itself is the kernel's, checked
        on each read: a thread that ends later makes a read fail, no more."""
        if _cpu_clock_id is None:
            return
        try:
            clock = _cpu_clock_id(state.req[_IDENT])
            cpu = _clock_gettime(clock)
        except (OSError, ValueError):  # the thread ended meanwhile: not measured
            return
        except Exception:
            report_swallowed("reading a request thread's CPU clock")
            return
        state.clock = clock
        state.cpu_first = state.cpu = cpu
        state.cpu_at = now

    def _waits(self, state: _Sampled, leaf: FrameType, now: float) -> bool:
        """Whether this sample of a request with a CPU clock waits in a call
        at its leaf frame (see the module doc): the leaf is at a call, and
        the thread used under :data:`WAIT_CPU_SHARE` of the wall time in CPU
        since the clock was last read (read again here)."""
        code = leaf.f_code
        lasti = leaf.f_lasti
        if lasti < 0:  # not started
            return False
        key = (id(code) << 32) | lasti
        calls = self._calls
        entry = calls.get(key)
        if entry is None or entry[0] is not code:
            if len(calls) >= _CALLS_CACHED:
                calls.clear()
            entry = calls[key] = (code, _at_call(code, lasti))
        if not entry[1]:
            return False
        clock = state.clock
        if clock is None:
            return False
        try:
            cpu = _clock_gettime(clock)
        except (OSError, ValueError):  # the thread ended meanwhile
            state.clock = None
            return False
        quiet = cpu - state.cpu < WAIT_CPU_SHARE * (now - state.cpu_at)
        state.cpu = cpu
        state.cpu_at = now
        return quiet

    @staticmethod
    def _cpu_now(state: _Sampled) -> float | None:
        """The CPU clock of a sampled request's thread now (None: not read).
        On that thread (:meth:`stop` and :meth:`collect` run there)
        ``time.thread_time()``, the same clock, read without a lookup."""
        if state.clock is None:
            return None
        if _get_ident() == state.req[_IDENT]:
            return _thread_time()
        try:
            return _clock_gettime(state.clock)
        except (OSError, ValueError):  # the thread has ended
            return None

    @staticmethod
    def _cpu_time(state: _Sampled, end: float, cpu_end: float | None) -> float | None:
        """The request's CPU seconds up to ``end``, its thread's clock then
        being ``cpu_end``: what was measured from its first sample, plus the
        unsampled start at the rate measured (at most its wall time). None
        if not measured, or if an async view's coroutine was seen running on
        asgiref's loop thread (see the module doc)."""
        first = state.first_sample
        if cpu_end is None or first is None:
            return None
        async_call = state.async_call
        if async_call is not None and async_call.loop_ident is not None:
            return None
        sampled = cpu_end - state.cpu_first
        wall = end - first
        start: float = state.req[_START]
        unsampled = max(first - start, 0.0)
        rate = sampled / wall if wall > 0 else 0.0
        return max(sampled + min(rate * unsampled, unsampled), 0.0)

    def _ended(self, req: _Request) -> None:
        """A found request whose wrapper frame left its thread's stack (under _lock)."""
        frame = req[_FRAME]
        if frame is not None and self._found.get(id(frame)) is req:
            del self._found[id(frame)]
        self._states.pop(id(req), None)
        _let_go(req)

    def _add_changes(self, state: _Sampled, leaf: FrameType, weight: float,
                     hook: AsgirefHook | None) -> bool:
        """Add a sample from the frames that changed since the last one (see
        :attr:`_Sampled.path`); False if it needs a whole walk instead (nothing
        in common, or an asgiref call appeared)."""
        path = state.path
        if path[-1][0] is leaf and leaf.f_lasti == state.lasti:
            # still where it was: no walk
            if not state.waiting:
                path[-1][1].time += weight
                state.wait = None
            elif state.wait is not None:  # and still waiting in the call
                state.wait.time += weight
            else:
                waited = state.tree.add_below(path[-1][1], _WAITING, weight)
                state.wait = waited[0] if waited else None
            return True
        index = state.index
        anchor = state.anchor
        call_code = hook.call_code if hook is not None else None
        new: list[FrameType] = []  # leaf first
        f: FrameType | None = leaf
        limit = self.max_depth
        while f is not None:
            i = index.get(id(f))
            if i is not None:
                entry = path[i]
                # the line as the node's key holds it: a node is reused only
                # for the line it was made for
                if (entry[0] is f and not f.f_code.co_flags & _RESUMABLE
                        and entry[1].key & LINE_MASK == (f.f_lineno or 0) & LINE_MASK):
                    break
            if f.f_code is call_code or len(new) >= limit or f is anchor:
                return False
            new.append(f)
            f = f.f_back
        else:
            return False
        waiting = state.waiting
        nodes = state.tree.add_below(path[i][1], [WAIT, *new] if waiting else new, weight)
        for entry in path[i + 1:]:
            del index[id(entry[0])]
        del path[i + 1:]
        if nodes is None:
            path.clear()
            index.clear()
            state.wait = None
            return True
        state.wait = nodes.pop() if waiting else None
        for f, node in zip(reversed(new), nodes, strict=True):
            index[id(f)] = len(path)
            path.append((f, node))
        return True

    @staticmethod
    def _add_stack(state: _Sampled, stack: Stack, leaf: FrameType, weight: float,
                   hook: AsgirefHook | None) -> None:
        """Add a whole sampled stack, and keep it as the path to start the
        next sample from, unless it is an async view's coroutine (spliced)."""
        # a spliced stack's leaf is the coroutine's: never the thread's wait
        waiting = state.waiting and stack[0] is leaf
        nodes = state.tree.add_below(state.tree.root, [WAIT, *stack] if waiting else stack,
                                     weight)
        path = state.path
        index = state.index
        path.clear()
        index.clear()
        state.wait = None
        if nodes is None or stack[0] is not leaf:
            return
        if waiting:
            state.wait = nodes.pop()
        call_code = hook.call_code if hook is not None else None
        # not spliced, so frames only (no [await] leaf)
        for f, node in zip(reversed(cast("list[FrameType]", stack)), nodes, strict=True):
            if f.f_code is call_code:
                path.clear()
                index.clear()
                return
            index[id(f)] = len(path)
            path.append((f, node))

    def _stack(self, state: _Sampled, leaf: FrameType, frames: dict[int, FrameType],
               hook: AsgirefHook | None) -> Stack | None:
        """The request's stack, leaf first, down to its anchor frame; an async
        view's coroutine frames replace asgiref's wait. None if the anchor
        frame is no longer on the thread's stack (the request ended)."""
        if state.caller_code is not None:
            self._resolve_anchor(state, leaf)
        anchor = state.anchor
        stack: list[FrameType] = []
        f: FrameType | None = leaf
        depth = self.max_depth
        while f is not None and depth:
            stack.append(f)
            if f is anchor:
                break
            f = f.f_back
            depth -= 1
        if f is None and anchor is not None:  # it returned: the request is over
            return None
        if hook is None:
            return stack
        async_call = state.async_call
        if async_call is None:
            async_call = state.async_call = _asyncstack.AsyncCall(state.req[_IDENT],
                                                                  self.max_depth)
        return async_call.splice(hook, stack, frames)

    @staticmethod
    def _resolve_anchor(state: _Sampled, leaf: FrameType) -> None:
        """Once per request: root the profile at the frame that called start()
        if it is still on the stack; else the thread's whole stack is kept."""
        f: FrameType | None = leaf
        code, caller_id = state.caller_code, state.caller_id
        while f is not None:
            if f.f_code is code and id(f) == caller_id:
                state.anchor = f
                break
            f = f.f_back
        state.caller_code = None

    def _hung(self, armed: list[_Request]
              ) -> list[tuple[HangCallback, object, float, Profile | None, Any]]:
        """The requests that just passed ``hang_after``, each once, with a
        snapshot of their profile so far."""
        now = _perf_counter()
        found = []
        for req in armed:
            if req[_ON_HANG] is None or now - req[_START] < self.hang_after:
                continue
            key = id(req)
            with self._lock:  # consistent with stop(): either it fires or stop() won
                on_hang = req[_ON_HANG]
                if on_hang is None or not self._live(req):
                    continue
                state = self._states.get(key)
                if state is None:  # not sampled yet (e.g. its thread was not found)
                    state = self._states[key] = _Sampled(req, self.max_nodes)
                if state.hang_fired:
                    continue
                state.hang_fired = True
                description = req[_DESCRIPTION]
                profile = self._profile(state, description, now, snapshot=True,
                                        cpu_time=self._cpu_time(state, now,
                                                                self._cpu_now(state))) \
                    if state.samples else None
            found.append((on_hang, description, req[_START], profile, req[_TASK]))
        return found

    @classmethod
    def _fire_hang(cls, callback: HangCallback, description: object, start: float,
                   profile: Profile | None, task: Any = None) -> None:
        # A greenlet's callback runs in a new greenlet of its hub: gevent's
        # queues and locks, which the alert pipeline then uses, belong to that
        # OS thread, and a loop callback itself must not block.
        if task is not None and _native.run_in_hub(task, cls._fire_hang, callback,
                                                   description, start, profile):
            return
        try:
            callback(profile, _perf_counter() - start)
        except Exception:
            report_swallowed(f"the request_hung callback for {description}")

    # -- the profile (its session is built later, see ._session) ---------------

    def _profile(self, state: _Sampled, description: object, end: float, *,
                 snapshot: bool = False, cpu_time: float | None = None) -> Profile:
        start = state.req[_START]
        duration = end - start
        wall_start = time.time() - (_perf_counter() - start)
        # stop() has taken the state from the sampler thread: its tree is
        # frozen; a hung request's keeps growing, so the snapshot is a copy
        tree = state.tree.copy() if snapshot else state.tree
        root = tree.root
        unsampled = ((state.first_sample or end) - start) * 1000
        samples = state.samples
        note = (f"sampled from another thread about every {self.interval * 1000:g} ms "
                f"({samples} samples); the first {unsampled:.0f} ms were not sampled")
        if cpu_time is not None:
            note += " (their CPU time is estimated at the rate measured over the rest)"
        if tree.truncated:
            note += (f"; {tree.truncated * 1000:.0f} ms of samples had new stacks beyond "
                     f"the {self.max_nodes}-entry limit and were counted in their caller")
        if snapshot:
            note += f"; partial: the request was still running after {duration:.1f} s"
        interval = self.interval
        text = str(description)

        def build() -> dict[str, Any]:
            return session_json(root, start_time=wall_start, duration=duration,
                                interval=interval, sample_count=samples,
                                description=text, cpu_time=cpu_time)

        return SampledProfile(build, sample_count=samples, duration=duration,
                              note=note, cpu_time=cpu_time, find_waits=partial(waits, root))


__all__ = ["SamplerEngine"]
