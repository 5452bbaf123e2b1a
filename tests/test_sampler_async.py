"""The ``sampler`` engine and async views: splicing the coroutine asgiref runs
into the request's samples, the one read of asgiref's frame locals, and the
safe fallback when asgiref is not recognised.

Real asgiref, real threads and event loops. A coroutine that must be sampled
while in a given state waits until the sampler has ticked a few times (polled,
with a timeout), so a loaded machine makes the test slower, not flaky.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import pytest
from conftest import build_app, burn, find_frame
from flask import Flask
from test_sampler import engine, run_request  # the engine fixture and request runner

from flask_perfwatch.profiling import Profile, _asyncstack
from flask_perfwatch.profiling.sampler import SamplerEngine
from flask_perfwatch.testing import SignalRecorder

asgiref_sync = pytest.importorskip("asgiref.sync")
async_to_sync = asgiref_sync.async_to_sync

__all__ = ["engine"]  # the fixture shared with test_sampler, used here


async def sampled_while_suspended(engine: SamplerEngine, ticks: int = 5) -> None:
    """Stay suspended until the sampler has sampled ``ticks`` more times."""
    target = engine.ticks + ticks
    deadline = time.monotonic() + 20
    while engine.ticks < target and time.monotonic() < deadline:
        await asyncio.sleep(0.002)


def functions(profile: Profile) -> set[str]:
    """Every function name in the profile's frame records."""
    return {info.split("\x00")[0] for stack, _ in profile.session.frame_records
            for info in stack}


@pytest.fixture
def recognised() -> _asyncstack.AsgirefHook:
    hook = _asyncstack.find_hook()
    assert hook is not None, "the installed asgiref is not recognised"
    return hook


# --- what is recognised ------------------------------------------------------------


def test_installed_asgiref_is_recognised(recognised: _asyncstack.AsgirefHook) -> None:
    from asgiref.current_thread_executor import CurrentThreadExecutor

    assert recognised.call_code is asgiref_sync.AsyncToSync.__call__.__code__
    assert recognised.run_code is CurrentThreadExecutor.run_until_future.__code__
    assert recognised.wait_code is threading.Condition.wait.__code__
    assert _asyncstack.find_hook() is recognised  # recognised once, then cached


def _fake_asgiref(call: Callable[..., Any]) -> tuple[types.ModuleType, types.ModuleType]:
    sync = types.ModuleType("asgiref.sync")
    executor = types.ModuleType("asgiref.current_thread_executor")
    sync.AsyncToSync = type("AsyncToSync", (), {"__call__": call})  # type: ignore[attr-defined]

    def run_until_future(self: Any, future: Any) -> None:
        return None

    executor.CurrentThreadExecutor = type(  # type: ignore[attr-defined]
        "CurrentThreadExecutor", (), {"run_until_future": run_until_future})
    return sync, executor


def _renamed_local(self: Any, *args: Any) -> None:
    coroutine = args
    del coroutine


def _awaitable_local(self: Any, *args: Any) -> None:
    awaitable = args
    del awaitable


@pytest.mark.parametrize(("call", "recognised"), [
    (_renamed_local, False),
    (_awaitable_local, True),  # the same shape with the right local name is
])
def test_an_asgiref_of_another_shape_is_not_recognised(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        call: Callable[..., Any], recognised: bool) -> None:
    sync, executor = _fake_asgiref(call)
    monkeypatch.setitem(sys.modules, "asgiref.sync", sync)
    monkeypatch.setitem(sys.modules, "asgiref.current_thread_executor", executor)
    with caplog.at_level(logging.WARNING, logger=_asyncstack.__name__):
        first = _asyncstack.find_hook()
        again = _asyncstack.find_hook()
    assert again is first  # recognised once per module, not per tick
    if recognised:
        assert first is not None
        assert first.call_code is _awaitable_local.__code__
        assert not caplog.records
    else:
        assert first is None
        assert len(caplog.records) == 1  # logged once
        assert "'awaitable'" in caplog.records[0].getMessage()


def test_an_asgiref_without_the_names_is_not_recognised(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "asgiref.sync", types.ModuleType("asgiref.sync"))
    with caplog.at_level(logging.WARNING, logger=_asyncstack.__name__):
        assert _asyncstack.find_hook() is None
        assert _asyncstack.find_hook() is None
    assert len(caplog.records) == 1
    assert "AsyncToSync" in caplog.records[0].getMessage()


# --- splicing ----------------------------------------------------------------------


def test_suspended_and_running_coroutine_frames_are_spliced(engine: SamplerEngine) -> None:
    async def crunch() -> None:
        burn(0.4)  # runs on the loop thread
        await sampled_while_suspended(engine)

    async def view() -> None:
        await crunch()

    profile = run_request(engine, lambda: async_to_sync(view)())
    assert profile is not None
    root = profile.session.root_frame()
    view_frame = find_frame(root, "view")
    assert view_frame is not None, profile.text()
    assert find_frame(view_frame, "burn") is not None  # the loop thread's stack
    assert "[await]" in {info for stack, _ in profile.session.frame_records for info in stack}


def test_each_asgiref_call_is_read_once(engine: SamplerEngine,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The coroutine is read from asgiref's frame once per asgiref call, and
    only from that frame: an async before_request hook then the view make two
    calls in one request, each sampled many times; both are spliced."""
    reads: list[types.CodeType] = []
    read = _asyncstack.AsgirefHook.coroutine

    def counting(self: _asyncstack.AsgirefHook, call_frame: types.FrameType) -> Any:
        reads.append(call_frame.f_code)
        return read(self, call_frame)

    monkeypatch.setattr(_asyncstack.AsgirefHook, "coroutine", counting)
    ticks: list[int] = []

    async def before_hook() -> None:
        await sampled_while_suspended(engine)

    async def crunch() -> None:
        await sampled_while_suspended(engine)

    async def view() -> None:
        await crunch()

    def work() -> None:
        start = engine.ticks
        async_to_sync(before_hook)()
        async_to_sync(view)()
        ticks.append(engine.ticks - start)

    profile = run_request(engine, work)
    assert profile is not None
    assert ticks[0] >= 10
    assert reads == [asgiref_sync.AsyncToSync.__call__.__code__] * 2
    names = functions(profile)
    assert {"before_hook", "crunch", "view"} <= names, profile.text()


def test_unrecognised_asgiref_degrades_to_the_wait(
        monkeypatch: pytest.MonkeyPatch, make_app: Callable[..., tuple[Flask, Any]],
        signals_recorder: SignalRecorder) -> None:
    """With asgiref not recognised (the one lookup says None), an async view
    still gets its profile: its samples end in asgiref's wait."""
    monkeypatch.setattr(_asyncstack, "find_hook", lambda: None)
    app = build_app()

    async def crunch() -> None:
        burn(0.4)
        await asyncio.sleep(0.3)

    @app.get("/async-work")
    async def async_work() -> str:
        await crunch()
        return "done"

    app, perfwatch = make_app(app=app, profiler="sampler")
    assert app.test_client().get("/async-work").data == b"done"
    metrics = signals_recorder.wait_for("slow_request")[0].kwargs["metrics"]
    profile = metrics.profile
    assert profile is not None
    assert profile.sample_count > 10
    names = functions(profile)
    assert "run_until_future" in names, profile.text()  # asgiref's wait
    assert "async_work" not in names  # no coroutine frames without the hook
    assert perfwatch.flush(10, app)


def test_a_failing_splice_is_swallowed_and_sampling_goes_on(
        engine: SamplerEngine, monkeypatch: pytest.MonkeyPatch,
        no_swallowed_errors: Any) -> None:
    def broken(self: _asyncstack.AsgirefHook, call_frame: types.FrameType) -> Any:
        raise RuntimeError("asgiref changed")

    monkeypatch.setattr(_asyncstack.AsgirefHook, "coroutine", broken)

    async def view() -> None:
        await sampled_while_suspended(engine, ticks=10)

    profile = run_request(engine, lambda: async_to_sync(view)())
    assert profile is not None
    assert profile.sample_count >= 10  # every sample kept, with the plain stack
    assert "run_until_future" in functions(profile)
    assert len(no_swallowed_errors.records) == 1
    assert "splicing" in no_swallowed_errors.records[0].getMessage()
    no_swallowed_errors.records.clear()
