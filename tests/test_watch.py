"""``@perfwatch.watch`` on sync and async functions, in and out of apps."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SLOW, THRESHOLD, build_app, reports_in
from flask import Flask

from flask_perfwatch import PerfWatch
from flask_perfwatch.exceptions import ConfigError
from flask_perfwatch.testing import SignalRecorder, record_signals


class Boom(Exception):
    pass


@pytest.fixture
def standalone(report_dir: Path) -> Iterator[PerfWatch]:
    """A PerfWatch used without any app (config from keywords/env/file)."""
    perfwatch = PerfWatch(threshold=THRESHOLD, report_dir=str(report_dir))
    yield perfwatch
    if perfwatch._standalone is not None:
        perfwatch._standalone.close(5)


def test_sync_outside_any_app(standalone: PerfWatch, report_dir: Path,
                              signals_recorder: SignalRecorder) -> None:
    @standalone.watch
    def build_report(n: int, *, label: str = "x") -> tuple[int, str]:
        time.sleep(SLOW)
        return n * 2, label

    assert build_report(21, label="y") == (42, "y")
    [event] = signals_recorder.wait_for("alert_sent")
    assert event.sender is standalone
    metrics = event.kwargs["metrics"]
    assert metrics.kind == "function"
    assert metrics.name == f"{__name__}.test_sync_outside_any_app.<locals>.build_report"
    assert metrics.method is None
    assert metrics.url is None
    assert metrics.duration > SLOW * 0.9
    assert len(reports_in(report_dir)) == 1


def test_fast_call_is_not_reported(standalone: PerfWatch, signals_recorder: SignalRecorder
                                   ) -> None:
    @standalone.watch
    def quick() -> str:
        return "quick"

    assert quick() == "quick"
    assert standalone.flush(5)
    assert signals_recorder.events == []
    assert standalone.stats()["requests"] == 1


def test_exceptions_pass_through_unchanged(standalone: PerfWatch,
                                           signals_recorder: SignalRecorder) -> None:
    original = Boom("kept")

    @standalone.watch(threshold=0.1)
    def fails() -> None:
        time.sleep(0.4)
        raise original

    with pytest.raises(Boom) as info:
        fails()
    assert info.value is original
    [event] = signals_recorder.wait_for("slow_request")
    assert event.kwargs["metrics"].error == f"{__name__}.Boom"


def test_keyword_threshold_and_name(standalone: PerfWatch, signals_recorder: SignalRecorder
                                    ) -> None:
    @standalone.watch(threshold="50ms", name="jobs.nightly")
    def nightly() -> None:
        time.sleep(0.3)

    @standalone.watch(threshold=60)
    def lenient() -> None:
        time.sleep(0.3)

    nightly()
    lenient()
    [event] = signals_recorder.wait_for("slow_request")
    assert event.kwargs["metrics"].name == "jobs.nightly"
    assert event.kwargs["metrics"].threshold == 0.05
    assert standalone.flush(5)
    assert signals_recorder.count("slow_request") == 1


def test_bad_threshold_fails_at_decoration() -> None:
    with pytest.raises(ConfigError, match=r"perfwatch\.watch"):
        PerfWatch().watch(threshold="whenever")


def test_wrapper_keeps_signature_and_metadata(standalone: PerfWatch) -> None:
    def original(a: int, b: str = "b", *args: int, c: float, **kw: object) -> str:
        """Docstring."""
        return f"{a}{b}{args}{c}{kw}"

    watched = standalone.watch(original)
    assert inspect.signature(watched) == inspect.signature(original)
    assert watched.__doc__ == "Docstring."
    assert watched.__name__ == "original"
    assert watched.__wrapped__ is original  # type: ignore[attr-defined]
    assert watched(1, "x", 2, 3, c=4.0, d=5) == original(1, "x", 2, 3, c=4.0, d=5)


def test_async_function(standalone: PerfWatch, signals_recorder: SignalRecorder) -> None:
    @standalone.watch
    async def fetch(delay: float) -> str:
        await asyncio.sleep(delay)
        return "fetched"

    assert inspect.iscoroutinefunction(fetch)
    assert asyncio.run(fetch(0.01)) == "fetched"
    assert asyncio.run(fetch(SLOW)) == "fetched"
    [event] = signals_recorder.wait_for("slow_request")
    metrics = event.kwargs["metrics"]
    assert metrics.name.endswith("fetch")
    assert metrics.duration > SLOW * 0.9


def test_async_exception_passes_through(standalone: PerfWatch) -> None:
    @standalone.watch
    async def fails() -> None:
        await asyncio.sleep(0)
        raise Boom("async")

    with pytest.raises(Boom, match="async"):
        asyncio.run(fails())


def test_inside_a_request_uses_the_app_and_its_request(
    make_app, signals_recorder: SignalRecorder
) -> None:
    app = build_app()
    perfwatch = PerfWatch()

    @perfwatch.watch(threshold=0.1)
    def heavy_query(user: str) -> str:
        time.sleep(0.4)
        return f"rows for {user}"

    @app.get("/report")
    def report() -> str:
        return heavy_query("ann")

    app, _ = make_app(app=app, perfwatch=perfwatch, threshold=5.0)
    assert app.test_client().get("/report?user=ann&token=t0p").data == b"rows for ann"
    [event] = signals_recorder.wait_for("alert_sent")
    assert event.sender is app
    metrics = event.kwargs["metrics"]
    assert metrics.kind == "function"
    assert metrics.name.endswith("heavy_query")
    assert metrics.method == "GET"
    assert metrics.path == "/report"
    assert metrics.params == {"user": "ann", "token": "[REDACTED]"}
    assert "heavy_query" in metrics.profile.text()
    assert signals_recorder.count("slow_request") == 1  # the request itself was under 5 s


def test_in_app_context_without_request(make_app, signals_recorder: SignalRecorder) -> None:
    perfwatch = PerfWatch()
    app, _ = make_app(app=build_app(), threshold=0.1)
    # `make_app` made its own PerfWatch; this one is not set up on the app, so
    # the call falls back to the standalone configuration and sender
    perfwatch._overrides = {"threshold": 0.1, "notifiers": []}

    @perfwatch.watch
    def task() -> None:
        time.sleep(0.3)

    with app.app_context():
        task()
    [event] = signals_recorder.wait_for("slow_request")
    assert event.sender is perfwatch
    assert perfwatch._standalone is not None
    perfwatch._standalone.close(5)


def test_watched_function_uses_app_config_in_app_context(signals_recorder: SignalRecorder,
                                                         report_dir: Path) -> None:
    app = Flask("jobs")
    app.config.update(PERFWATCH_THRESHOLD="100ms", PERFWATCH_REPORT_DIR=str(report_dir))
    perfwatch = PerfWatch(app)

    @perfwatch.watch
    def job() -> None:
        time.sleep(0.4)

    try:
        with app.app_context():
            job()
        [event] = signals_recorder.wait_for("alert_sent")
        assert event.sender is app
        assert event.kwargs["metrics"].threshold == 0.1
    finally:
        perfwatch.close(app, 5)


@pytest.mark.allow_swallowed
def test_broken_standalone_config_runs_function_unmonitored(
    monkeypatch: pytest.MonkeyPatch, signals_recorder: SignalRecorder
) -> None:
    monkeypatch.setenv("PERFWATCH_THRESHOLD", "soon")
    perfwatch = PerfWatch()

    @perfwatch.watch
    def job() -> str:
        return "still runs"

    assert job() == "still runs"
    assert job() == "still runs"
    assert signals_recorder.events == []
    with pytest.raises(RuntimeError, match="standalone configuration failed"):
        perfwatch.stats()


def test_nested_watched_functions_inside_profiled_request(
    make_app, signals_recorder: SignalRecorder
) -> None:
    app = build_app()
    perfwatch = PerfWatch()

    @perfwatch.watch(threshold=0.1)
    def inner() -> int:
        time.sleep(0.3)
        return 1

    @perfwatch.watch(threshold=0.1)
    def outer() -> int:
        return inner() + 1

    @app.get("/nested")
    def nested() -> str:
        return str(outer())

    app, _ = make_app(app=app, perfwatch=perfwatch, threshold=0.1)
    assert app.test_client().get("/nested").data == b"2"
    events = signals_recorder.wait_for("slow_request", 3)
    names = sorted(e.kwargs["metrics"].name.rsplit(".", 1)[-1] for e in events)
    assert names == ["inner", "nested", "outer"]
    assert all(e.kwargs["metrics"].profile is not None for e in events)


def test_outside_an_app_context_the_bound_apps_config_applies(report_dir: Path) -> None:
    """Issue 10, bug 2: a watched call from a background thread (no app
    context) uses the app's configuration and monitor, and so do flush() and
    stats() without app=."""
    app = Flask("bound")
    app.config["PERFWATCH_THRESHOLD"] = 0.1
    app.config["PERFWATCH_REPORT_DIR"] = str(report_dir)
    perfwatch = PerfWatch(app)

    @perfwatch.watch
    def job() -> None:
        time.sleep(0.5)

    try:
        with record_signals() as recorded:
            thread = threading.Thread(target=job)
            thread.start()
            thread.join(10)
            [slow] = recorded.wait_for("slow_request")
            assert slow.sender is app
            assert perfwatch.flush(10)  # the app's queue, not a standalone one
            assert len(reports_in(report_dir)) == 1
            assert perfwatch.stats()["slow"] == 1
            assert perfwatch.config().threshold == 0.1
    finally:
        perfwatch.close(app, 5)


def test_several_apps_and_no_context_must_say_which(report_dir: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    apps = [Flask("one"), Flask("two")]
    perfwatch = PerfWatch(report_dir=str(report_dir), threshold=5.0)
    for app in apps:
        perfwatch.init_app(app)
    try:
        with pytest.raises(RuntimeError, match="serves 2 apps"):
            perfwatch.stats()
        with pytest.raises(RuntimeError, match="serves 2 apps"):
            perfwatch.flush(1)
        assert perfwatch.stats(apps[1])["requests"] == 0

        @perfwatch.watch
        def job() -> int:
            return 7

        assert job() == 7
        assert job() == 7
        warnings = [r for r in caplog.records if "serves 2 apps" in r.getMessage()]
        assert len(warnings) == 1  # once, not per call
    finally:
        perfwatch.close(timeout=5)
