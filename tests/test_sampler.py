"""The ``sampler`` engine: real threads, real clocks, generous margins.

Nothing here waits with a fixed sleep: requests run in threads for a known
time, and everything else is polled with a timeout. Figures the issue asks
for (attribution, samples per second, memory) are asserted conservatively
and recorded in the test report (``-rP`` / ``record_property``).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from conftest import (
    SLOW,
    THRESHOLD,
    build_app,
    burn,
    find_frame,
    reports_in,
    run_in_child,
    wait_until,
)
from flask import Flask

from flask_perfwatch import Config
from flask_perfwatch.profiling import ENGINES, Profile, create_engine
from flask_perfwatch.profiling import sampler as sampler_module
from flask_perfwatch.profiling._calltree import (
    AWAIT,
    AWAIT_KEY,
    WAIT,
    CallTree,
    Node,
    key_lineno,
    node_key,
    records,
)
from flask_perfwatch.profiling._session import frame_info, session_json
from flask_perfwatch.profiling.sampler import SamplerEngine
from flask_perfwatch.testing import SignalRecorder


@pytest.fixture
def engine() -> Iterator[SamplerEngine]:
    eng = SamplerEngine(Config(threshold=THRESHOLD, hang_after=0))
    yield eng
    eng.close()


#: The longest gap between two samples for which test_attribution_cpu_and_sleep
#: asserts the split (seconds); the budget's longest period is MAX_PERIOD
HELD_OFF = 0.14


def run_request(engine: SamplerEngine, work: Callable[[], Any], *, keep: bool = True,
                on_hang: Any = None) -> Profile | None:
    """Run ``work`` as one request on a fresh thread; return what stop() gave."""
    result: list[Profile | None] = []

    def target() -> None:
        handle = engine.start("GET /test", on_hang=on_hang)
        try:
            work()
        finally:
            result.append(engine.stop(handle, keep=keep))

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=60)
    assert result, "the request thread did not finish"
    return result[0]


def total_time(frame: Any, function: str) -> float:
    """Time under every frame named ``function`` (not counting nested ones twice)."""
    if frame.function == function:
        return float(frame.time)
    return sum(total_time(child, function) for child in frame.children)


# --- the work the requests do ---------------------------------------------------


def cpu_function(seconds: float) -> None:
    burn(seconds)


def sleeping_function(seconds: float) -> None:
    time.sleep(seconds)


class Handler:
    """Burns then sleeps, and records how long each phase really took: under
    load the sleep overshoots, so the true split is measured, not assumed."""

    def __init__(self) -> None:
        self.cpu_seconds = self.sleep_seconds = 0.0
        self.started = self.ended = 0.0

    def handle(self) -> None:
        t0 = self.started = time.perf_counter()
        cpu_function(0.84)
        t1 = time.perf_counter()
        sleeping_function(0.36)
        self.ended = time.perf_counter()
        self.cpu_seconds, self.sleep_seconds = t1 - t0, self.ended - t1


class FakeClock:
    """Stands in for the sampler module's ``_perf_counter``: time moves only
    when the test says so, so how late a thread is scheduled on a loaded
    machine cannot age a request past the arming delay."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def polled(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll on a request thread without raising there (the test asserts the
    outcome on its own thread, where a failure is reported)."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(sampler_module, "_perf_counter", clock)
    return clock


# --- registry and format --------------------------------------------------------


def test_registered_by_name() -> None:
    assert ENGINES.load("sampler") is SamplerEngine
    eng = create_engine(Config(profiler="sampler"))
    assert isinstance(eng, SamplerEngine)
    eng.close()


def test_frame_info_matches_pyinstrument() -> None:
    from pyinstrument.low_level.stat_profile import get_frame_info

    captured: dict[str, Any] = {}

    class Widget:
        def method(self) -> None:
            frame = sys._getframe()
            captured["method"] = (get_frame_info(frame), frame.f_code, frame.f_lineno)

    def plain() -> None:
        frame = sys._getframe()
        captured["plain"] = (get_frame_info(frame), frame.f_code, frame.f_lineno)

    def hidden() -> None:
        __tracebackhide__ = True
        frame = sys._getframe()
        captured["hidden"] = (get_frame_info(frame), frame.f_code, frame.f_lineno)

    Widget().method()
    plain()
    hidden()
    for expected, code, lineno in captured.values():
        assert frame_info(code, lineno) == expected


def test_session_json_is_pyinstrument_format() -> None:
    """Pins the pyinstrument range: our dictionary has exactly the keys its own
    Session.to_json() writes, and loads through the public Session.from_json."""
    from pyinstrument import Profiler
    from pyinstrument.session import Session

    profiler = Profiler()
    profiler.start()
    burn(0.01)
    theirs = profiler.stop().to_json()
    ours = session_json(Node(None), start_time=time.time(), duration=0.1, interval=0.001,
                        sample_count=0, description="GET /")
    assert set(ours) == set(theirs)
    assert Session.from_json(ours).duration == pytest.approx(0.1)


def test_request_record_fields(engine: SamplerEngine) -> None:
    """The handle start() returns is the request record, read by its named
    indexes; stop() clears the caller's objects from it."""

    def on_hang(profile: Profile | None, elapsed: float) -> None:
        return None

    description = object()
    before = time.perf_counter()
    handle = engine.start(description, on_hang=on_hang)
    caller = sys._getframe()
    assert handle is not None
    assert handle[sampler_module._IDENT] == threading.get_ident()
    assert before <= handle[sampler_module._START] <= time.perf_counter()
    assert handle[sampler_module._DESCRIPTION] is description
    assert handle[sampler_module._ON_HANG] is on_hang
    assert handle[sampler_module._CALLER_ID] == id(caller)
    assert handle[sampler_module._CALLER_CODE] is caller.f_code
    assert engine.stop(handle, keep=False) is None
    assert handle[sampler_module._DESCRIPTION] is None
    assert handle[sampler_module._ON_HANG] is None


# --- the call tree ----------------------------------------------------------------


def _three_frames() -> list[FrameType]:
    """The stack of the caller's caller's caller, leaf first, three frames."""
    leaf = sys._getframe(1)
    return [leaf, leaf.f_back, leaf.f_back.f_back]  # type: ignore[list-item,union-attr]


def _leaf() -> list[FrameType]:
    return _three_frames()


def _middle(first_line: bool) -> list[FrameType]:
    if first_line:
        return _leaf()
    return _leaf()  # another call line: another entry


def _outer(first_line: bool) -> list[FrameType]:
    return _middle(first_line)


def _tree_labels(tree: CallTree) -> list[tuple[list[str], float]]:
    return list(records(tree.root, lambda code, line: f"{code.co_name}:{line}", "[await]"))


def test_call_tree_keys_are_code_and_line() -> None:
    one, other = _outer(True), _outer(False)  # _middle calls _leaf from two lines
    assert one[1].f_lineno != other[1].f_lineno
    tree = CallTree(max_nodes=100)
    tree.add(one, 0.5)
    tree.add(one, 0.25)
    tree.add(other, 1.0)
    tree.add([AWAIT, *other], 2.0)
    # _outer; _middle at two lines, each calling _leaf; [await] under the second
    assert tree.nodes == 6
    assert tree.root.children is not None
    (key, outer), = tree.root.children.items()
    assert key == node_key(_outer.__code__, one[2].f_lineno)
    assert key_lineno(key) == one[2].f_lineno
    assert outer.code is _outer.__code__
    assert outer.children is not None
    assert list(outer.children) == [node_key(_middle.__code__, one[1].f_lineno),
                                    node_key(_middle.__code__, other[1].f_lineno)]
    middle_one, middle_other = outer.children.values()
    assert middle_one.children is not None
    assert middle_other.children is not None
    leaf_key = node_key(_leaf.__code__, one[0].f_lineno)
    assert middle_one.children[leaf_key].time == 0.75
    leaf_other = middle_other.children[leaf_key]
    assert leaf_other.time == 1.0
    assert leaf_other.children is not None
    await_leaf = leaf_other.children[AWAIT_KEY]
    assert (await_leaf.code, await_leaf.time, await_leaf.children) == (None, 2.0, None)
    assert node_key(_leaf.__code__, None) == node_key(_leaf.__code__, 0)
    assert key_lineno(node_key(_leaf.__code__, 65536 + 7)) == 7  # kept modulo 2**16
    assert node_key(_leaf.__code__, 7) != node_key(_middle.__code__, 7)


def test_call_tree_past_the_cap_counts_in_the_caller() -> None:
    stack = _outer(True)
    tree = CallTree(max_nodes=2)
    tree.add(stack, 0.5)
    tree.add(stack, 0.25)
    assert tree.nodes == 2
    assert tree.truncated == 0.75
    # the leaf had no entry: its time went to its caller, the deepest one kept
    assert _tree_labels(tree) == [
        ([f"_outer:{stack[2].f_lineno}", f"_middle:{stack[1].f_lineno}"], 0.75)]


def test_call_tree_records_and_copy() -> None:
    one, other = _outer(True), _outer(False)
    tree = CallTree(max_nodes=100)
    tree.add([], 9.0)  # no frame: the root's own time, never a record
    tree.add(one, 1.0)
    tree.add(one[1:], 0.5)  # a sample whose leaf is _middle
    tree.add([AWAIT, *other], 2.0)
    outer = f"_outer:{one[2].f_lineno}"
    leaf = f"_leaf:{one[0].f_lineno}"
    middle_one, middle_other = (f"_middle:{one[1].f_lineno}", f"_middle:{other[1].f_lineno}")
    expected = [  # depth first, each entry before the entries it called
        ([outer, middle_one], 0.5),
        ([outer, middle_one, leaf], 1.0),
        ([outer, middle_other, leaf, "[await]"], 2.0),
    ]
    assert _tree_labels(tree) == expected
    frozen = tree.copy()
    tree.add(one, 4.0)
    tree.add([_three_frames()[0], *one], 8.0)  # one entry more
    assert _tree_labels(frozen) == expected  # later samples do not change a copy
    assert (frozen.nodes, frozen.truncated, frozen.root.time) == (6, 0.0, 9.0)
    assert tree.nodes == 7
    assert _tree_labels(tree)[1] == ([outer, middle_one, leaf], 5.0)


# --- report quality ---------------------------------------------------------------


def test_attribution_cpu_and_sleep(engine: SamplerEngine,
                                   record_property: Callable[[str, object], None],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1.2 s request split about 70/30 between CPU and sleep reads as the
    split that really happened (±12 pp).

    What is asserted is the attribution of the samples taken. A request that
    the machine kept the sampler away from, for longer than the margin
    allows, and that then misses the margin, is run again, at most twice (in
    CI once, the sleep took 0.6 s without a single sample: share 1.0). A
    miss after samples no more than HELD_OFF apart fails at once."""
    ticks: list[float] = []
    original = SamplerEngine._tick

    def timed(self: SamplerEngine, armed: list[Any], frames: Any) -> None:
        original(self, armed, frames)
        ticks.append(time.perf_counter())

    monkeypatch.setattr(SamplerEngine, "_tick", timed)
    tries: list[tuple[float, float, float]] = []  # (share, true share, longest gap)
    for _attempt in range(3):
        ticks.clear()
        handler = Handler()
        profile = run_request(engine, handler.handle)
        assert profile is not None
        root = profile.session.root_frame()
        cpu = total_time(root, "cpu_function")
        sleep = total_time(root, "sleeping_function")
        share = cpu / (cpu + sleep)
        # Compared with the split measured on the request thread, not the
        # nominal 0.70: on a loaded machine the 0.36 s sleep overshoots. What
        # is left is the sampler's own error, about one gap between samples at
        # each phase boundary; ±12 pp allows gaps of up to HELD_OFF there,
        # while ignoring sleeping threads (share 1.0) or weighting by sample
        # count (the GIL-free sleep is sampled far more often: share well
        # under 0.5) fails.
        true_share = handler.cpu_seconds / (handler.cpu_seconds + handler.sleep_seconds)
        # the longest the request ran unsampled after its first sample
        during = [t for t in ticks if t <= handler.ended] + [handler.ended]
        gap = max((b - a for a, b in itertools.pairwise(during)),
                  default=handler.ended - handler.started)
        tries.append((round(share, 3), round(true_share, 3), round(gap, 3)))
        if share == pytest.approx(true_share, abs=0.12) or gap < HELD_OFF:
            break
    record_property("tries", tries)
    assert share == pytest.approx(true_share, abs=0.12), f"(share, true, gap): {tries}"
    # pyinstrument's own report shows the class name and line numbers
    handle = find_frame(root, "handle")
    assert handle.class_name == "Handler"
    assert find_frame(root, "cpu_function").line_no == cpu_function.__code__.co_firstlineno
    assert any("\x01l" in info for stack, _ in profile.session.frame_records for info in stack)
    html = profile.html()
    assert "cpu_function" in html
    assert "not sampled" in (profile.note or "")


def test_samples_per_second_while_view_holds_the_gil(
        engine: SamplerEngine, record_property: Callable[[str, object], None]) -> None:
    profile = run_request(engine, lambda: cpu_function(1.0))
    assert profile is not None
    rate = profile.sample_count / profile.duration
    record_property("samples_per_second", round(rate))
    print(f"samples per second while holding the GIL: {rate:.0f}")
    # ~150-200 on an idle 2-core machine, ~50-100 with two CPU burners beside
    # it. What this guards is that a view holding the GIL does not starve the
    # sampler: starved, it would get a sample only when the view blocks (never,
    # here), i.e. a handful in a second. 20/s is that property, not a speed.
    assert rate >= 20
    assert total_time(profile.session.root_frame(), "burn") > 0.7


def test_profile_is_built_off_the_request_thread(engine: SamplerEngine) -> None:
    """stop(keep=True) only freezes the tree; the session is built on first use."""
    times: list[float] = []

    def work() -> None:
        cpu_function(0.5)

    def target() -> None:
        handle = engine.start("GET /lazy")
        work()
        t0 = time.perf_counter()
        profile = engine.stop(handle, keep=True)
        times.append(time.perf_counter() - t0)
        assert profile is not None
        assert profile._session is None  # type: ignore[attr-defined]

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    assert times
    # That the session is built later is asserted above (_session is None),
    # whatever the scheduling. The time (≤ 2 ms normally) only catches stop()
    # doing something slow, such as rendering or waiting on a thread; 0.5 s
    # leaves room for the request thread being descheduled on a loaded machine.
    assert times[0] < 0.5


# --- fast requests, memory ---------------------------------------------------------


# These use the fake clock: with the real one, a request thread descheduled for
# longer than the arming delay (20 ms, not rare with two CPU burners on two
# cores) is old enough to be sampled, and "never sampled" fails for a reason
# that is not a bug. Only the sampler's notion of age is faked; its sleeps and
# wake-ups stay real.


def test_fast_requests_drop_their_data(fake_clock: FakeClock, engine: SamplerEngine) -> None:
    assert run_request(engine, lambda: None, keep=False) is None
    # kept but never armed: nothing was sampled, nothing to report
    assert run_request(engine, lambda: None, keep=True) is None

    # sampled, but fast after all: the request ages past the arming delay and
    # stays in flight until the sampler has really sampled it
    before = engine.ticks

    def armed_then_sampled() -> None:
        fake_clock.advance(engine.arm_delay * 2)
        polled(lambda: engine.ticks > before)

    assert run_request(engine, armed_then_sampled, keep=False) is None
    assert engine.ticks > before
    assert not engine._active
    wait_until(lambda: not engine._states, message="the dropped request's state forgotten")


def test_young_requests_are_not_sampled(fake_clock: FakeClock, engine: SamplerEngine) -> None:
    """A request younger than the arming delay is not sampled however often the
    sampler wakes while it is in flight; once older, it is (so this test would
    notice a sampler that ignored the delay)."""
    before = engine.ticks
    seen: dict[str, int] = {}

    def young_while_the_sampler_wakes() -> None:
        fake_clock.advance(engine.arm_delay * 0.9)
        woke = engine.wakeups
        polled(lambda: engine.wakeups >= woke + 5)
        seen["woke"], seen["young_ticks"] = engine.wakeups - woke, engine.ticks
        fake_clock.advance(engine.arm_delay * 0.2)
        polled(lambda: engine.ticks > before)
        seen["armed_ticks"] = engine.ticks

    for _ in range(3):
        run_request(engine, lambda: None, keep=False)
    assert engine.ticks == before
    run_request(engine, young_while_the_sampler_wakes, keep=False)
    assert seen["woke"] >= 5
    assert seen["young_ticks"] == before  # in flight, young, sampler awake: not sampled
    assert seen["armed_ticks"] > before   # the same request once armed: sampled


def test_sampler_sleeps_through_a_stream_of_fast_requests(
        fake_clock: FakeClock, engine: SamplerEngine,
        record_property: Callable[[str, object], None]) -> None:
    """Under steady fast traffic the thread does not poll: it sleeps until the
    oldest in-flight request would be armed, so it wakes at most about
    1 / arm_delay times a second, and never samples.

    Each request is 1 ms old on the fake clock however late the real sleep
    returns, so "never samples" holds under load. The wake-ups are counted in
    real time: a loaded machine only makes the sampler's real sleeps longer,
    so fewer wake-ups, never more; a polling sampler wakes ~1000 times."""
    run_request(engine, lambda: None, keep=False)  # the thread is running
    ticks, wakeups = engine.ticks, engine.wakeups
    t0 = time.perf_counter()
    requests = 0
    while time.perf_counter() - t0 < 1.0:
        handle = engine.start("GET /fast")
        fake_clock.advance(0.001)
        time.sleep(0.001)  # releases the GIL: a polling thread would run often
        engine.stop(handle, keep=False)
        requests += 1
    elapsed = time.perf_counter() - t0
    woke = engine.wakeups - wakeups
    record_property("wakeups_per_second", round(woke / elapsed))
    print(f"{requests} requests in {elapsed:.2f} s, sampler woke {woke} times")
    assert engine.ticks == ticks
    assert woke <= elapsed / engine.arm_delay * 2 + 10
    assert not engine._active


_rng = random.Random(42)


def _deep(n: int, width: int) -> None:
    if n <= 0:
        time.sleep(0.0002)  # lets the sampler tick often: many samples, many stacks
        return
    # different call lines make different stacks
    branch = _rng.randrange(4)
    if branch == 0:
        _deep(n - 1, width)
    elif branch == 1:
        _deep(n - 1, width + 1)
    elif branch == 2:
        _deep(n - 2, width)
    else:
        _deep(n - 3, width + 2)


def tree_size(node: Node) -> int:
    size = sys.getsizeof(node)
    children = node.children
    if children:
        size += sys.getsizeof(children)
        for key, child in children.items():
            size += sys.getsizeof(key) + tree_size(child)
    return size


def test_memory_is_bounded(record_property: Callable[[str, object], None]) -> None:
    """Distinct stacks are capped, so memory does not grow with the duration."""
    eng = SamplerEngine(Config(threshold=0.1, hang_after=0, profile_interval=0.0001))
    states: list[Any] = []

    def work() -> None:
        deadline = time.perf_counter() + 3.0
        i = 0
        while time.perf_counter() < deadline:
            _deep(10 + i % 90, i)
            i += 1
        with eng._lock:  # the sampling state, created by the sampler thread
            states.extend(eng._states.values())

    try:
        profile = run_request(eng, work)
    finally:
        eng.close()
    assert profile is not None
    assert len(states) == 1
    tree = states[0].tree
    size = tree_size(tree.root)
    record_property("tree_bytes", size)
    print(f"call tree: {tree.nodes} nodes, {size / 1024:.0f} KiB, "
          f"{tree.truncated * 1000:.0f} ms truncated")
    assert tree.nodes <= eng.max_nodes
    assert size <= 256 * 1024
    profile.html()  # and it still renders


# --- hung requests ------------------------------------------------------------------


def test_on_hang_called_once_with_a_partial_profile() -> None:
    eng = SamplerEngine(Config(threshold=THRESHOLD, hang_after=0.4))
    calls: list[tuple[Profile | None, float, str]] = []
    release = threading.Event()

    def on_hang(profile: Profile | None, elapsed: float) -> None:
        calls.append((profile, elapsed, threading.current_thread().name))
        release.set()

    def work() -> None:
        cpu_function(0.3)
        release.wait(20)  # hangs until the alert fired
        sleeping_function(0.3)  # then runs on past it

    try:
        final = run_request(eng, work, on_hang=on_hang)
    finally:
        eng.close()
    assert len(calls) == 1
    partial, elapsed, thread_name = calls[0]
    assert thread_name == "perfwatch-sampler"
    assert elapsed >= 0.4
    assert partial is not None
    assert "partial" in (partial.note or "")
    assert total_time(partial.session.root_frame(), "cpu_function") > 0.15
    assert final is not None
    assert final.duration > partial.duration
    assert total_time(final.session.root_frame(), "sleeping_function") > 0.15


def test_on_hang_errors_are_swallowed_and_logged(no_swallowed_errors: Any) -> None:
    eng = SamplerEngine(Config(threshold=THRESHOLD, hang_after=0.2))

    def on_hang(profile: Profile | None, elapsed: float) -> None:
        raise RuntimeError("hang receiver broke")

    try:
        assert run_request(eng, lambda: sleeping_function(0.6), on_hang=on_hang) is not None
    finally:
        eng.close()
    assert len(no_swallowed_errors.records) == 1
    no_swallowed_errors.records.clear()


# --- lifecycle -------------------------------------------------------------------------


def test_lazy_start_idle_sleep_and_close() -> None:
    eng = SamplerEngine(Config(threshold=THRESHOLD))
    eng.idle_after = 0.05
    assert eng._thread is None  # nothing until the first request
    run_request(eng, lambda: None, keep=False)
    thread = eng._thread
    assert thread is not None
    assert thread.is_alive()
    wait_until(lambda: eng._sleeping, timeout=10, message="the sampler to go idle")
    assert run_request(eng, lambda: cpu_function(0.3)) is not None  # woken again
    eng.close()
    assert not thread.is_alive()
    assert eng.start("after close") is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_survives_fork(engine: SamplerEngine) -> None:
    run_request(engine, lambda: None, keep=False)  # parent's thread is running
    assert engine._thread is not None

    def child() -> dict[str, Any]:
        profile = run_request(engine, lambda: cpu_function(0.4))
        thread = engine._thread
        return {"samples": profile.sample_count if profile is not None else 0,
                "alive": thread is not None and thread.is_alive()}

    answer = run_in_child(child)
    assert answer["samples"] > 10
    assert answer["alive"]
    assert run_request(engine, lambda: cpu_function(0.3)) is not None  # parent unaffected


# --- coexistence ---------------------------------------------------------------------


def test_coexists_with_settrace_and_another_profiler(engine: SamplerEngine) -> None:
    from pyinstrument import Profiler

    traced: list[str] = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if event == "call":
            traced.append(frame.f_code.co_name)
        return None

    other: list[Any] = []

    def work() -> None:
        sys.settrace(tracer)
        profiler = Profiler()
        profiler.start()
        try:
            cpu_function(0.3)
            sleeping_function(0.2)
        finally:
            other.append(profiler.stop())
            sys.settrace(None)

    ours = run_request(engine, work)
    assert "cpu_function" in traced  # the debugger-style tracer still runs
    assert other
    assert find_frame(other[0].root_frame(), "cpu_function") is not None
    assert ours is not None
    assert find_frame(ours.session.root_frame(), "cpu_function") is not None
    assert sys.gettrace() is None
    assert sys.getprofile() is None


# --- through Flask ---------------------------------------------------------------------


def test_flask_slow_request_gets_a_sampled_report(
        make_app: Callable[..., tuple[Flask, Any]], signals_recorder: SignalRecorder,
        report_dir: Path) -> None:
    app, perfwatch = make_app(profiler="sampler", threshold=THRESHOLD)
    client = app.test_client()
    assert client.get("/fast").data == b"fast"
    assert client.get("/cpu").data == b"cpu"
    event = signals_recorder.wait_for("slow_request")[0]
    metrics = event.kwargs["metrics"]
    assert metrics.name == "cpu"
    assert metrics.profile is not None
    assert metrics.profile.sample_count > 10
    assert find_frame(metrics.profile.session.root_frame(), "burn") is not None
    assert perfwatch.flush(10, app)
    assert signals_recorder.count("slow_request") == 1
    reports = wait_until(lambda: reports_in(report_dir), message="a report file")
    page = reports[0].read_text()
    assert "burn" in page


def test_flask_async_view_shows_the_coroutine(
        make_app: Callable[..., tuple[Flask, Any]], signals_recorder: SignalRecorder) -> None:
    pytest.importorskip("asgiref")
    app = build_app()

    async def crunch() -> None:
        cpu_function(SLOW / 2)
        await asyncio.sleep(SLOW / 2)

    @app.get("/async-work")
    async def async_work() -> str:
        await crunch()
        return "done"

    app, perfwatch = make_app(app=app, profiler="sampler")
    assert app.test_client().get("/async-work").data == b"done"
    metrics = signals_recorder.wait_for("slow_request")[0].kwargs["metrics"]
    root = metrics.profile.session.root_frame()
    view = find_frame(root, "async_work")
    assert view is not None, metrics.profile.text()
    assert total_time(view, "cpu_function") > SLOW / 4  # frames run by the loop thread
    assert find_frame(view, "crunch") is not None
    assert "[await]" in {info for stack, _ in metrics.profile.session.frame_records
                         for info in stack}
    assert perfwatch.flush(10, app)


# --- free-threaded CPython -----------------------------------------------------------


def test_free_threaded_build_times_and_detects_hangs_without_reading_frames(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """No free-threaded interpreter is installed here, so the build is
    simulated: ``sys._is_gil_enabled()`` says False, and reading another
    thread's frames fails the test."""
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    monkeypatch.setattr(sampler_module, "_free_threaded_warned", False)

    def unsafe() -> dict[int, FrameType]:
        raise AssertionError("sys._current_frames() read on a free-threaded build")

    monkeypatch.setattr(sys, "_current_frames", unsafe)
    caplog.set_level("WARNING", logger="flask_perfwatch.profiling.sampler")
    engines = [SamplerEngine(Config(threshold=THRESHOLD, hang_after=0.4)) for _ in range(2)]
    try:
        eng = engines[0]
        assert eng.unavailable is not None
        assert "free-threaded" in eng.unavailable
        hangs: list[tuple[Profile | None, float]] = []
        profile = run_request(eng, lambda: cpu_function(0.8),
                              on_hang=lambda p, elapsed: hangs.append((p, elapsed)))
        assert profile is None  # timed, not sampled
        assert [profile for profile, _ in hangs] == [None]
        assert hangs[0][1] >= 0.4
    finally:
        for eng in engines:
            eng.close()
    said = [r for r in caplog.records if "free-threaded" in r.getMessage()]
    assert len(said) == 1  # once per process, not per engine


def test_the_gil_build_samples(engine: SamplerEngine) -> None:
    assert sampler_module.free_threaded() is False  # 3.11-3.13 as installed here
    assert engine.unavailable is None


# --- the CPU budget and the incremental walk -------------------------------------------


def _alternating(seconds: float) -> None:
    """A request whose leaf keeps changing under a fixed caller chain, its
    caller's line too."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        _branch_a()
        _branch_b()


def _branch_a() -> None:
    _pause()


def _branch_b() -> None:
    _pause()


def _pause() -> None:
    """Burn a little, then wait a little: with the switch interval raised
    (``_atomic_ticks``) the sampler runs only while this thread sleeps here."""
    burn(0.001)
    time.sleep(0.001)


def _resumed_from_two_callers(seconds: float) -> None:
    """One generator frame, resumed alternately by two callers: its frame is
    the same object at the same line, but its callers are not the same."""
    gen = _stepper()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        _consume_here(gen)
        _consume_there(gen)


def _stepper() -> Iterator[None]:
    while True:
        _pause(); yield  # noqa: E702 - one line: the frame is at the same line each time


def _consume_here(gen: Iterator[None]) -> None:
    next(gen)


def _consume_there(gen: Iterator[None]) -> None:
    next(gen)


@pytest.fixture
def _atomic_ticks() -> Iterator[None]:
    """Raise the switch interval so that a sampler tick is never interrupted
    by the request thread: a stack is then read at one instant, and a walk of
    only what changed must give exactly what a whole walk gives. (With the
    usual 5 ms interval the request may run on mid-tick; both walks then read
    a stack that moved, each its own way, and neither is the truth.)"""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(60.0)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.usefixtures("_atomic_ticks")
@pytest.mark.parametrize(("work", "expected"), [
    (_alternating, {"_branch_a", "_branch_b"}),
    (_resumed_from_two_callers, {"_consume_here", "_consume_there"}),
], ids=["leaf and caller line change", "generator resumed by another caller"])
def test_samples_from_what_changed_equal_whole_walks(
        monkeypatch: pytest.MonkeyPatch, work: Callable[[float], None], expected: set[str]) -> None:
    """Every sample a request gets from the frames that changed builds the
    same tree as walking its whole stack: each sample is also added, whole,
    to a shadow tree, and the two trees must be identical."""
    shadows: dict[int, tuple[Any, CallTree]] = {}
    incremental: list[int] = []
    real_changes = SamplerEngine._add_changes
    real_stack = SamplerEngine._add_stack

    def shadow(state: Any) -> CallTree:
        return shadows.setdefault(id(state), (state, CallTree(state.tree.max_nodes)))[1]

    def whole(state: Any, leaf: FrameType) -> list[FrameType]:
        stack: list[FrameType] = []
        f: FrameType | None = leaf
        while f is not None:
            stack.append(f)
            if f is state.anchor:
                break
            f = f.f_back
        return stack

    def changes(self: SamplerEngine, state: Any, leaf: FrameType, weight: float,
                hook: Any) -> bool:
        done = real_changes(self, state, leaf, weight, hook)
        if done:
            incremental.append(1)
            stack = whole(state, leaf)  # and its waiting line, if it went to one
            shadow(state).add([WAIT, *stack] if state.wait is not None else stack, weight)
        return done

    def add_stack(state: Any, stack: Any, leaf: FrameType, weight: float, hook: Any) -> None:
        real_stack(state, stack, leaf, weight, hook)
        shadow(state).add([WAIT, *stack] if state.wait is not None else stack, weight)

    monkeypatch.setattr(SamplerEngine, "_add_changes", changes)
    monkeypatch.setattr(SamplerEngine, "_add_stack", staticmethod(add_stack))
    eng = SamplerEngine(Config(threshold=THRESHOLD, sampler_budget=0))
    try:
        profile = run_request(eng, lambda: work(0.6))
    finally:
        eng.close()
    assert profile is not None
    [(state, whole_tree)] = shadows.values()
    assert len(incremental) > 10
    labels = _tree_labels(state.tree)
    assert labels == _tree_labels(whole_tree)
    assert expected <= {label.split(":")[0] for stack, _ in labels for label in stack}


def test_a_waiting_request_is_sampled_without_a_walk(engine: SamplerEngine,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """While a request waits at one line, each sample is one lookup: the
    whole-stack walk runs once (the first sample)."""
    walks: list[int] = []
    original = SamplerEngine._add_stack

    def counted(*args: Any) -> None:
        walks.append(1)
        original(*args)

    monkeypatch.setattr(SamplerEngine, "_add_stack", staticmethod(counted))
    profile = run_request(engine, lambda: sleeping_function(0.6))
    assert profile is not None
    assert profile.sample_count > 20
    assert len(walks) <= 2  # the first sample (and at most one after time.sleep returns)
    assert total_time(profile.session.root_frame(), "sleeping_function") > 0.4


def _rate(eng: SamplerEngine, seconds: float) -> float:
    ticks = eng.ticks
    started = time.perf_counter()
    run_request(eng, lambda: sleeping_function(seconds))
    return (eng.ticks - ticks) / (time.perf_counter() - started)


def test_the_budget_lowers_the_rate_when_samples_get_expensive(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each tick made to cost 3 ms of CPU: without a budget the sampler runs
    flat out (about 300 ticks/s on an idle core, 60 or fewer when the tests
    load both cores, as each tick's 3 ms of CPU then takes far longer); within
    1 % of a core it may afford about 3, held at the floor of 4 a second
    (MAX_PERIOD). The bars are 30 and 15: apart by twice, whatever the load."""
    original = SamplerEngine._tick

    def expensive(self: SamplerEngine, armed: list[Any], frames: Any) -> None:
        deadline = time.thread_time() + 0.003
        while time.thread_time() < deadline:
            pass
        original(self, armed, frames)

    monkeypatch.setattr(SamplerEngine, "_tick", expensive)
    free = SamplerEngine(Config(threshold=THRESHOLD, sampler_budget=0))
    held = SamplerEngine(Config(threshold=THRESHOLD, sampler_budget="1%"))
    try:
        free_rate = _rate(free, 1.0)
        held_rate = _rate(held, 2.0)
        stats = held.stats()
    finally:
        free.close()
        held.close()
    assert free_rate > 30
    assert held_rate < 15
    assert stats["sampler_rate"] < 15
    # the measured share is the thread's own CPU; loose bounds, not a timing test
    assert 0 < stats["sampler_cpu_percent"] < 10


def test_a_collection_in_the_sampler_thread_does_not_blind_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A garbage collection that happens to run in the sampler thread is
    mostly the process's work: the round it made dear counts for at most 20
    times the budget's cost estimate. Before, one 0.3 s collection set the
    estimate to 60 ms, which the 1 % budget turned into the slowest rate, 4
    samples a second, for about 3 s: a request that slept through those
    seconds had next to no samples (5 or 6 a second in the 1.3 s after it).
    Now the rate is back to the budget's within about half a second (about 20
    a second over that 1.3 s; a sleeping request gets about 40 a second).
    Over the rest of a 3 s request (about 2.3 s) that makes 23 to 31 a
    second, against 5 before; the bar is 12. (A round made as dear by the
    sampler's own work does slow it: see the budget test below.)"""
    original = SamplerEngine._tick
    sampler: list[int] = []
    spiked: list[tuple[int, float]] = []  # (ticks, when) once the collection is over
    burned: list[str] = []

    def slow_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and sampler == [threading.get_ident()] and not spiked:
            deadline = time.thread_time() + 0.3
            while time.thread_time() < deadline:
                pass
            burned.append(phase)

    def once(self: SamplerEngine, armed: list[Any], frames: Any) -> None:
        if not spiked and self.ticks >= 20:
            sampler.append(threading.get_ident())
            gc.collect()
            spiked.append((self.ticks, time.perf_counter()))
        original(self, armed, frames)

    monkeypatch.setattr(SamplerEngine, "_tick", once)
    # the collector calls the list it was made with: gc.callbacks itself
    gc.callbacks.append(slow_collection)
    eng = SamplerEngine(Config(threshold=THRESHOLD, sampler_budget="1%"))
    try:
        run_request(eng, lambda: sleeping_function(3.0))
        ended = time.perf_counter()
        ticks = eng.ticks
    finally:
        gc.callbacks.remove(slow_collection)
        eng.close()
    assert spiked, "the sampler never collected"
    assert burned, "the slow collection never ran"
    (ticks_then, then), = spiked
    assert (ticks - ticks_then) / (ended - then) > 12


def test_stats_report_the_samplers_rate_and_cpu_share(make_app: Any) -> None:
    app, perfwatch = make_app()
    assert app.test_client().get("/cpu").status_code == 200
    stats = perfwatch.stats()
    assert stats["sampler_rate"] > 0
    assert stats["sampler_cpu_percent"] > 0
