"""Reading other threads' frames with the collector off on CPython 3.11
(:mod:`flask_perfwatch.profiling._stacks`).

On 3.11 a garbage collection can run inside the creation of another
thread's frame object (``sys._current_frames()``, ``f_back``); its
finalizers let the GIL go, the other thread returns from that very frame,
and the read goes on in a reused stack slot: a segfault, or ``f_back``
returning a function. ``HAZARD`` below is that, in a few lines: a reader
walking two busy threads' stacks while collections with GIL-releasing
finalizers run. On 3.11.7 it segfaulted in 2 of 3 ten-second runs with the
collector left on during the walk, and ran clean with it off (and on 3.12.1
and 3.13.0, which collect only from the eval loop, either way).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import run_in_child, wait_until
from flask import Flask

from flask_perfwatch import PerfWatch
from flask_perfwatch.profiling import SamplerEngine, _stacks
from flask_perfwatch.profiling._stacks import COLLECTS_IN_ALLOCATION, reading_stacks
from flask_perfwatch.testing import SignalRecorder, record_signals

only_311 = pytest.mark.skipif(not COLLECTS_IN_ALLOCATION,
                              reason="3.12+ never collects inside an allocation")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def collector_on() -> Iterator[None]:
    """The collector on, as an application has it (and back as it was)."""
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


# -- the section -------------------------------------------------------------------------

@only_311
def test_the_collector_is_off_inside_and_back_on_after(collector_on: None) -> None:
    with reading_stacks:
        assert not gc.isenabled()
        with reading_stacks:  # nested: still off, and still off after the inner one
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


@only_311
def test_an_application_that_turned_the_collector_off_keeps_it_off() -> None:
    was = gc.isenabled()
    gc.disable()
    try:
        with reading_stacks:
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        if was:
            gc.enable()


@contextmanager
def section_on_another_thread() -> Iterator[None]:
    """Another thread inside a section until the block ends."""
    inside = threading.Event()
    leave = threading.Event()

    def other() -> None:
        with reading_stacks:
            inside.set()
            leave.wait(30)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert inside.wait(10)
        yield
    finally:
        leave.set()
        thread.join(10)


@only_311
def test_sections_overlapping_on_two_threads_end_with_the_last(collector_on: None) -> None:
    with section_on_another_thread():
        with reading_stacks:
            assert not gc.isenabled()
        assert not gc.isenabled()  # the other thread's section is still open
    assert gc.isenabled()


@only_311
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_during_another_threads_section_has_the_collector_on(
        collector_on: None) -> None:
    def child() -> dict[str, Any]:
        # the fork hook ended the section the other thread (gone here) had open
        repaired = {"on": gc.isenabled(), "depth": _stacks._depth}
        with reading_stacks:
            inside = gc.isenabled()
        return {**repaired, "inside": inside, "after": gc.isenabled()}

    with section_on_another_thread():
        assert not gc.isenabled()  # the parent: the other thread's section is open
        assert run_in_child(child) == {"on": True, "depth": 0, "inside": False,
                                       "after": True}
    assert gc.isenabled()


@only_311
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_section_that_forks_ends_once_in_the_child(collector_on: None) -> None:
    """The child of a fork made inside a section: the fork hook ended it, so
    leaving it ends nothing more, and the next section works as ever."""
    def child() -> dict[str, Any]:
        reading_stacks.__exit__(None, None, None)  # leaving the parent's section
        after = {"on": gc.isenabled(), "depth": _stacks._depth}
        with reading_stacks:
            inside = gc.isenabled()
        return {**after, "inside": inside, "after": gc.isenabled()}

    with reading_stacks:
        answer = run_in_child(child)
    assert answer == {"on": True, "depth": 0, "inside": False, "after": True}
    assert gc.isenabled()


# -- every cross-thread read of the sampler is inside a section ---------------------------

@only_311
def test_the_sampler_reads_other_threads_only_with_the_collector_off(
        make_app: Callable[..., tuple[Flask, PerfWatch]], signals_recorder: SignalRecorder,
        monkeypatch: pytest.MonkeyPatch, collector_on: None) -> None:
    """Every ``sys._current_frames()`` the sampler thread makes, and every
    stack it walks or searches, happens with the collector off; after the
    slow request, it is on again."""
    seen: list[tuple[str, bool]] = []
    real_current_frames = sys._current_frames

    def current_frames() -> dict[int, Any]:
        seen.append(("_current_frames", gc.isenabled()))
        return real_current_frames()

    def spy(name: str) -> None:
        real = getattr(SamplerEngine, name)

        def wrapper(self: SamplerEngine, *args: Any, **kwargs: Any) -> Any:
            seen.append((name, gc.isenabled()))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(SamplerEngine, name, wrapper)

    monkeypatch.setattr(sys, "_current_frames", current_frames)
    for name in ("_discover", "_stack", "_add_changes"):
        spy(name)
    app, _ = make_app()
    app.test_client().get("/slow")
    signals_recorder.wait_for("slow_request")
    names = {name for name, _ in seen}
    assert {"_current_frames", "_discover", "_stack"} <= names, names
    assert [entry for entry in seen if entry[1]] == []  # never with the collector on
    wait_until(gc.isenabled, message="the collector back on")


# -- the hazard itself -------------------------------------------------------------------

HAZARD = '''
import gc, sys, threading, time, types
from flask_perfwatch.profiling._stacks import reading_stacks

stop = time.monotonic() + float(sys.argv[1])

def f0(n): return n
def f1(n): return f0(n) + 1
def down(n):
    return down(n - 1) if n else f1(0)

def busy():  # calls and returns all the time: frames come and go
    while time.monotonic() < stop:
        down(20)

class Finalizer:
    def __init__(self): self.cycle = self
    def __del__(self): time.sleep(0.0002)  # lets the GIL go to a busy thread

def reader():
    me = threading.get_ident()
    while time.monotonic() < stop:
        gc.collect(0)
        for _ in range(3):
            Finalizer()  # garbage with a finalizer for the next collection
        with reading_stacks:
            for ident, f in sys._current_frames().items():
                depth = 60
                while ident != me and f is not None and depth:
                    if type(f) is not types.FrameType:
                        print("not a frame:", type(f).__name__, flush=True)
                        raise SystemExit(3)
                    f.f_code, f.f_lineno
                    f = f.f_back
                    depth -= 1

gc.set_threshold(8, 1000, 1000)  # a collection every few allocations: inside the walk
threads = [threading.Thread(target=busy) for _ in range(2)] + [threading.Thread(target=reader)]
for t in threads: t.start()
for t in threads: t.join()
print("clean")
'''


@only_311
@pytest.mark.slow
def test_walking_busy_threads_under_collections_does_not_crash(tmp_path: Path) -> None:
    """The reader above, with :data:`reading_stacks`: no segfault, no
    non-frame. (The same program without it segfaults within seconds.)"""
    script = tmp_path / "hazard.py"
    script.write_text(HAZARD)
    result = subprocess.run([sys.executable, "-X", "faulthandler", str(script), "4"],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert (result.returncode, result.stdout.strip()) == (0, "clean"), result.stderr[-3000:]


def test_a_signal_that_never_comes_shows_what_every_other_thread_waits_on() -> None:
    """``SignalRecorder.wait_for`` gives up with each other thread's stack,
    outermost first, with its source lines (read after the walk)."""
    release = threading.Event()

    def parked_in_a_named_function() -> None:
        release.wait(30)  # the line the message must show

    thread = threading.Thread(target=parked_in_a_named_function, name="parked-here")
    thread.start()
    try:
        with record_signals() as recorder, pytest.raises(AssertionError) as raised:
            recorder.wait_for("slow_request", timeout=0.2)
    finally:
        release.set()
        thread.join(10)
    message = str(raised.value)
    block = message[message.index("Thread parked-here:"):]
    block = block[:block.index("\n\n") if "\n\n" in block else len(block)]
    assert block.index("in _bootstrap") < block.index("in parked_in_a_named_function")
    assert "release.wait(30)  # the line the message must show" in block
