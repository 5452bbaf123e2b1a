"""Engine ``sampler``: one daemon thread samples the stacks of in-flight requests.

Nothing is installed in the request thread: no profile or trace hook, so the
interpreter stays on its fast path and debuggers, coverage and other profilers
keep working. :meth:`SamplerEngine.start` only registers the thread and a start
time; a daemon thread reads ``sys._current_frames()`` every
``PERFWATCH_PROFILE_INTERVAL`` and adds each in-flight request's stack to that
request's call tree (bounded: at most :attr:`SamplerEngine.max_nodes` distinct
stack entries, each sample weighted by the time since the previous one). A fast
request's tree is simply dropped; a slow one becomes a pyinstrument
:class:`~pyinstrument.session.Session` (built through the public
``Session.from_json`` format, lazily, on the delivery thread), so the report is
pyinstrument's own HTML with line numbers and class names.

Costs are kept off the request thread:

* requests younger than :attr:`SamplerEngine.arm_delay` are never sampled, so
  a fast request costs its registration only; the report says how many
  milliseconds at the start were not sampled;
* what :meth:`~SamplerEngine.start` creates is the least that can be: a small
  list (from the interpreter's free list) and a dict entry, with no
  ``__init__`` call. The sampling state (call tree, counters) is created by the
  sampler thread when it first samples a request. :meth:`~SamplerEngine.stop`
  drops the references to the caller's objects, so a request's objects (the
  middleware's watch refers back to the handle) are freed by reference
  counting, not left to the garbage collector;
* under steady traffic the thread does not poll: it sleeps until the oldest
  in-flight request reaches the arming delay (or, with none in flight, for one
  arming delay: no request starting meanwhile can be armed sooner), so it wakes
  at most ``1 / arm_delay`` times a second while every request is fast. After
  :attr:`~SamplerEngine.idle_after` without requests it sleeps on an event,
  woken by the next :meth:`~SamplerEngine.start`;
* it is started lazily, re-created after ``fork`` (gunicorn pre-fork,
  ``--preload``) and stopped by :meth:`~SamplerEngine.close`.

Async views: Flask runs a coroutine view through asgiref in an event loop
thread while the request thread waits. When the request thread is waiting there,
the sample follows the coroutine's await chain and, while it runs, the loop
thread's stack below it; while it is suspended the sample ends in
pyinstrument's ``[await]`` frame. Other work a request hands to a thread pool
and waits on is shown as the wait (its frames are not linked to the request).

Class names are taken from the code's qualified name (``Class.method`` of the
class that defines the method), not from ``self``: reading another thread's
frame locals would copy them into a dict that keeps them alive.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import _fork
from .._guard import report_swallowed
from .base import Engine, HangCallback, Profile

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import CodeType, FrameType

    from pyinstrument.session import Session

    from ..config import Config

logger = logging.getLogger(__name__)

#: pyinstrument's synthetic leaf for time a coroutine spent suspended.
AWAIT_FRAME = "[await]"

# A call-tree node is a list (cheaper than an object): [code, self_time, children]
# where children maps (id(code) << 16 | lineno) -> node; the await leaf has key -1
# and code None, the root code None.
_CODE, _TIME, _CHILDREN = 0, 1, 2
_AWAIT = object()  # stands for the [await] leaf in a sampled stack

# A request as start() registers it on the request thread: a plain list (from
# the interpreter's free list, no __init__ call), read by the sampler thread.
# stop() sets DESCRIPTION and ON_HANG to None (the caller's objects refer back
# to the handle: a reference cycle otherwise left to the garbage collector).
_IDENT, _START, _DESCRIPTION, _ON_HANG, _CALLER_ID, _CALLER_CODE = range(6)

_get_ident = threading.get_ident
_perf_counter = time.perf_counter
_getframe = sys._getframe


class _Sampled:
    """The sampling state of one request, created by the sampler thread when it
    first samples (or declares hung) the request; never on the request thread."""

    __slots__ = ("anchor", "caller_code", "caller_id", "coro", "first_sample", "hang_fired",
                 "last_sample", "loop_ident", "nodes", "req", "root", "samples", "truncated")

    def __init__(self, req: list[Any]) -> None:
        self.req = req
        # the frame that called start(), if it is still running at the first
        # sample, becomes the root of the profile (a WSGI wrapper's frame does)
        self.caller_id: int = req[_CALLER_ID]
        self.caller_code: CodeType | None = req[_CALLER_CODE]
        self.anchor: FrameType | None = None
        self.coro: Any = None                 # asgiref's awaitable, for async views
        self.loop_ident: int | None = None
        self.root: list[Any] = [None, 0.0, None]
        self.nodes = 0
        self.samples = 0
        self.truncated = 0.0
        self.first_sample: float | None = None
        self.last_sample: float | None = None
        self.hang_fired = False


class SampledProfile(Profile):
    """A :class:`Profile` whose pyinstrument session is built on first use
    (on the delivery thread), from a frozen call tree."""

    def __init__(self, build: Callable[[], dict[str, Any]], *, sample_count: int,
                 duration: float, note: str | None) -> None:
        self._session: Session | None = None
        self._build: Callable[[], dict[str, Any]] | None = build
        self._sample_count = sample_count
        self._duration = duration
        self.note = note

    @property
    def session(self) -> Session:
        if self._session is None:
            from pyinstrument.session import Session

            assert self._build is not None
            self._session = Session.from_json(self._build())
            self._build = None
        return self._session

    @session.setter
    def session(self, value: Session) -> None:
        self._session = value

    @property
    def sample_count(self) -> int:
        return self._sample_count

    @property
    def duration(self) -> float:
        return self._duration


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
        # Import pyinstrument now (~40 ms, at app set-up), not on first use: the
        # delivery thread rendering one profile while another thread opens a
        # session would import the package from two threads at once, which
        # CPython 3.11 can fail with "partially initialized module" ImportError.
        for module in ("pyinstrument.session", "pyinstrument.renderers"):
            importlib.import_module(module)

        # in flight: id(handle) -> handle (written by request threads, read by the sampler)
        self._active: dict[int, list[Any]] = {}
        # id(handle) -> sampling state: written by the sampler thread and by
        # stop(keep=True), always under _lock
        self._states: dict[int, _Sampled] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._sleeping = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self.ticks = 0  # sampler ticks that sampled something (for tests/benchmarks)
        self.wakeups = 0  # times the sampler thread woke up (for tests/benchmarks)
        _fork.register(self)

    # -- request thread --------------------------------------------------------

    def start(self, description: object, *, is_async: bool = False,
              on_hang: HangCallback | None = None) -> list[Any] | None:
        if self._closed:
            return None
        _fork.ensure_current()  # a uWSGI worker forked without Python's fork hooks
        # The caller's frame by id and code only: keeping the frame itself would
        # make CPython keep the frames of returning callers alive (~4 µs/request).
        caller = _getframe(1)
        req = [_get_ident(), _perf_counter(), description, on_hang, id(caller), caller.f_code]
        self._active[id(req)] = req
        if self._thread is None:
            self._start_thread()
        elif self._sleeping:
            self._wake.set()
        return req

    def stop(self, handle: Any, *, keep: bool) -> Profile | None:
        if handle is None:
            return None
        req: list[Any] = handle
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
        if state is None or not state.samples:
            return None
        state.anchor = state.coro = None
        return self._profile(state, description, end)

    # -- lifecycle ---------------------------------------------------------------

    def _start_thread(self) -> None:
        with self._thread_lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(target=self._run, name="perfwatch-sampler", daemon=True)
            self._thread = thread
            thread.start()

    def _after_fork_in_child(self) -> None:
        # Only the forking thread survives; keep its requests, forget the rest.
        me = threading.get_ident()
        self._active = {k: r for k, r in list(self._active.items()) if r[_IDENT] == me}
        self._states = {k: s for k, s in list(self._states.items()) if k in self._active}
        self._lock = threading.Lock()
        self._thread_lock = threading.Lock()
        self._wake = threading.Event()
        self._sleeping = False
        self._thread = None
        if self._active and not self._closed:
            self._start_thread()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        self._thread = None
        self._active.clear()
        with self._lock:
            self._states.clear()

    # -- sampler thread ----------------------------------------------------------

    def _run(self) -> None:
        idle_since = _perf_counter()
        while not self._closed:
            try:
                self.wakeups += 1
                active = list(self._active.values())
                now = _perf_counter()
                if not active:
                    if self._states:
                        self._forget_finished()
                    if now - idle_since < self.idle_after:
                        # no request that starts meanwhile can be armed sooner
                        time.sleep(self.arm_delay)
                        continue
                    self._wake.clear()
                    self._sleeping = True
                    if not self._active and not self._closed:
                        self._wake.wait()
                    self._sleeping = False
                    continue
                idle_since = now
                armed_at = now - self.arm_delay
                armed = [r for r in active if r[_START] <= armed_at]
                if not armed:
                    if self._states:
                        self._forget_finished()
                    # sleep until the oldest in-flight request is armed
                    earliest = min(r[_START] for r in active)
                    time.sleep(max(earliest - armed_at, 0.0005))
                    continue
                self._tick(armed)
                if self.hang_after > 0:
                    for fire in self._hung(armed):
                        self._fire_hang(*fire)
                pause = self.interval - (_perf_counter() - now)
                time.sleep(pause if pause > 0 else 0)
            except Exception:  # never let the thread die
                report_swallowed("the sampler thread")
                time.sleep(self.interval)

    def _forget_finished(self) -> None:
        """Drop the states of requests that ended without keeping them."""
        with self._lock:
            active = self._active
            states = self._states
            for key in [k for k, st in states.items() if active.get(k) is not st.req]:
                del states[key]

    def _tick(self, armed: list[list[Any]]) -> None:
        frames = sys._current_frames()
        asgiref_sync = sys.modules.get("asgiref.sync")
        atc_code: CodeType | None = None
        if asgiref_sync is not None:
            atc_code = asgiref_sync.AsyncToSync.__call__.__code__
        with self._lock:
            now = _perf_counter()
            active = self._active
            states = self._states
            sampled = 0
            for req in armed:
                key = id(req)
                if active.get(key) is not req:  # stopped meanwhile
                    continue
                frame = frames.get(req[_IDENT])
                if frame is None:
                    continue
                state = states.get(key)
                if state is None:
                    state = states[key] = _Sampled(req)
                stack = self._stack(state, frame, frames, atc_code)
                last = state.last_sample
                if last is None:
                    state.first_sample = now
                    weight = min(self.interval, now - req[_START])
                else:
                    weight = now - last
                state.last_sample = now
                state.samples += 1
                self._record(state, stack, weight)
                sampled += 1
            if sampled:
                self.ticks += 1
        if len(self._states) > sampled:
            self._forget_finished()
        del frames

    def _stack(self, state: _Sampled, leaf: FrameType, frames: dict[int, FrameType],
               atc_code: CodeType | None) -> list[Any]:
        """The request's stack, leaf first, down to its anchor frame; an async
        view's coroutine frames replace asgiref's wait."""
        if state.caller_code is not None:
            self._resolve_anchor(state, leaf)
        anchor = state.anchor
        stack: list[Any] = []
        f: FrameType | None = leaf
        depth = self.max_depth
        while f is not None and depth:
            stack.append(f)
            if f is anchor:
                break
            f = f.f_back
            depth -= 1
        if atc_code is not None:
            for i in range(len(stack) - 1, 1, -1):
                if stack[i].f_code is atc_code:
                    if (stack[i - 1].f_code.co_name == "run_until_future"
                            and stack[i - 2].f_code.co_name == "wait"):
                        inner = self._coroutine_stack(state, stack[i], frames)
                        if inner is not None:
                            return inner + stack[i:]
                    break
        return stack

    @staticmethod
    def _resolve_anchor(state: _Sampled, leaf: FrameType) -> None:
        """Once per request: root the profile at the frame that called start()
        if it is still on the stack; else the thread's whole stack is kept."""
        f: FrameType | None = leaf
        while f is not None:
            if id(f) == state.caller_id and f.f_code is state.caller_code:
                state.anchor = f
                break
            f = f.f_back
        state.caller_code = None

    def _coroutine_stack(self, state: _Sampled, call_frame: FrameType,
                         frames: dict[int, FrameType]) -> list[Any] | None:
        """Leaf-first frames of the coroutine asgiref runs for this request."""
        coro = state.coro
        if coro is None:
            # once per request: asgiref's ``awaitable`` local (a main_wrap coroutine)
            coro = state.coro = call_frame.f_locals.get("awaitable")
            if coro is None:
                return None
        chain: list[Any] = []
        c: Any = coro
        innermost: Any = None
        while c is not None and len(chain) < self.max_depth:
            f = getattr(c, "cr_frame", None) or getattr(c, "gi_frame", None)
            if f is None:
                break
            chain.append(f)
            innermost = c
            c = getattr(c, "cr_await", None) or getattr(c, "gi_yieldfrom", None)
        if not chain:
            return None
        chain.reverse()
        running = getattr(innermost, "cr_running", False) or getattr(innermost,
                                                                       "gi_running", False)
        if not running:
            return [_AWAIT, *chain]
        target = chain[0]
        idents = list(frames)
        request_ident = state.req[_IDENT]
        loop_ident = state.loop_ident
        if loop_ident is not None and loop_ident in frames:
            idents.remove(loop_ident)
            idents.insert(0, loop_ident)
        for ident in idents:
            if ident == request_ident:
                continue
            below: list[Any] = []
            g: FrameType | None = frames[ident]
            depth = self.max_depth
            while g is not None and g is not target and depth:
                below.append(g)
                g = g.f_back
                depth -= 1
            if g is target:
                state.loop_ident = ident
                return below + chain
        return chain

    def _record(self, state: _Sampled, stack: list[Any], weight: float) -> None:
        node = state.root
        for i in range(len(stack) - 1, -1, -1):
            f = stack[i]
            if f is _AWAIT:
                code: Any = None
                key = -1
            else:
                code = f.f_code
                # one int per (code, line): cheaper to hash and keep than a tuple
                key = (id(code) << 16) | ((f.f_lineno or 0) & 0xFFFF)
            children = node[_CHILDREN]
            if children is None:
                children = node[_CHILDREN] = {}
            child = children.get(key)
            if child is None:
                if state.nodes >= self.max_nodes:
                    state.truncated += weight
                    break
                child = children[key] = [code, 0.0, None]
                state.nodes += 1
            node = child
        node[_TIME] += weight

    def _hung(self, armed: list[list[Any]]
              ) -> list[tuple[HangCallback, object, float, Profile | None]]:
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
                if on_hang is None or self._active.get(key) is not req:
                    continue
                state = self._states.get(key)
                if state is None:  # not sampled yet (e.g. its thread was not found)
                    state = self._states[key] = _Sampled(req)
                if state.hang_fired:
                    continue
                state.hang_fired = True
                description = req[_DESCRIPTION]
                profile = self._profile(state, description, now, snapshot=True) \
                    if state.samples else None
            found.append((on_hang, description, req[_START], profile))
        return found

    @staticmethod
    def _fire_hang(callback: HangCallback, description: object, start: float,
                   profile: Profile | None) -> None:
        try:
            callback(profile, _perf_counter() - start)
        except Exception:
            report_swallowed(f"the request_hung callback for {description}")

    # -- building the pyinstrument session ------------------------------------

    def _profile(self, state: _Sampled, description: object, end: float, *,
                 snapshot: bool = False) -> Profile:
        start = state.req[_START]
        duration = end - start
        wall_start = time.time() - (_perf_counter() - start)
        root = _copy_tree(state.root) if snapshot else state.root
        unsampled = ((state.first_sample or end) - start) * 1000
        samples = state.samples
        note = (f"sampled from another thread about every {self.interval * 1000:g} ms "
                f"({samples} samples); the first {unsampled:.0f} ms were not sampled")
        if state.truncated:
            note += (f"; {state.truncated * 1000:.0f} ms of samples had new stacks beyond "
                     f"the {self.max_nodes}-entry limit and were counted in their caller")
        if snapshot:
            note += f"; partial: the request was still running after {duration:.1f} s"
        interval = self.interval
        text = str(description)

        def build() -> dict[str, Any]:
            return session_json(root, start_time=wall_start, duration=duration,
                                interval=interval, sample_count=samples,
                                description=text)

        return SampledProfile(build, sample_count=samples, duration=duration,
                              note=note)


def _copy_tree(node: list[Any]) -> list[Any]:
    children = node[_CHILDREN]
    return [node[_CODE], node[_TIME],
            None if children is None else {k: _copy_tree(c) for k, c in children.items()}]


def frame_info(code: CodeType, lineno: int) -> str:
    """pyinstrument's frame-info string (``function\\x00file\\x00firstline`` then
    ``\\x01c<class>``, ``\\x01l<line>``, ``\\x01h1`` attributes)."""
    info = f"{code.co_name}\x00{code.co_filename}\x00{code.co_firstlineno}"
    varnames = code.co_varnames
    if code.co_argcount and varnames and varnames[0] in ("self", "cls"):
        parts = code.co_qualname.split(".")
        if len(parts) >= 2 and parts[-2] != "<locals>":
            info += f"\x01c{parts[-2]}"
    if lineno > 0:
        info += f"\x01l{lineno}"
    if "__tracebackhide__" in varnames:
        info += "\x01h1"
    return info


def _records(root: list[Any]) -> Iterator[tuple[list[str], float]]:
    """Depth-first frame records (stack of frame infos, seconds) of a call tree."""
    cache: dict[int, str] = {}
    path: list[str] = []

    def walk(node: list[Any]) -> Iterator[tuple[list[str], float]]:
        if node[_TIME] > 0:
            yield list(path), node[_TIME]
        children = node[_CHILDREN]
        if not children:
            return
        for key, child in children.items():
            if child[_CODE] is None:
                info = AWAIT_FRAME
            else:
                info = cache.get(key) or cache.setdefault(
                    key, frame_info(child[_CODE], key & 0xFFFF))
            path.append(info)
            yield from walk(child)
            path.pop()

    for record in walk(root):
        if record[0]:
            yield record


def session_json(root: list[Any], *, start_time: float, duration: float, interval: float,
                 sample_count: int, description: str) -> dict[str, Any]:
    """A call tree as pyinstrument's ``Session.to_json()`` dictionary."""
    records = list(_records(root))
    return {
        "frame_records": records,
        "start_time": start_time,
        "duration": duration,
        "min_interval": interval,
        "max_interval": interval,
        "sample_count": sample_count,
        # the tree's root (the request's outermost frame): pyinstrument trims
        # the stem down to it and no further
        "start_call_stack": [records[0][0][0]] if records else [],
        "target_description": description,
        "cpu_time": 0.0,
        "sys_path": list(sys.path),
        "sys_prefixes": [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix],
    }


__all__ = ["SampledProfile", "SamplerEngine", "frame_info", "session_json"]
