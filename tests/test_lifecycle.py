"""PerfWatch.close(): init_app undone, threads stopped; and an app that is let
go is freed (no global signal connection keeps it alive)."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path

import pytest
from conftest import build_app, reports_in, wait_until
from flask import Flask

from flask_perfwatch import PerfWatch
from flask_perfwatch.testing import SignalRecorder


def perfwatch_threads() -> set[str]:
    return {t.name for t in threading.enumerate()
            if t.name.startswith(("flask-perfwatch", "perfwatch-"))}


def test_close_undoes_init_app_and_stops_its_threads(report_dir: Path,
                                                     signals_recorder: SignalRecorder) -> None:
    app = build_app()
    original = app.wsgi_app
    perfwatch = PerfWatch(app, threshold=0.3, report_dir=str(report_dir))
    before = perfwatch_threads()
    assert app.test_client().get("/slow").status_code == 201
    signals_recorder.wait_for("alert_sent")
    assert perfwatch_threads() - before  # delivery, lane and sampler threads started
    perfwatch.close(timeout=5)
    assert "perfwatch" not in app.extensions
    assert app.wsgi_app == original
    for thread in threading.enumerate():
        if thread.name in perfwatch_threads() - before:
            thread.join(5)
    assert perfwatch_threads() - before == set()
    # the app serves on, unmonitored; and init_app may run again
    assert app.test_client().get("/fast").data == b"fast"
    perfwatch.init_app(app, threshold=0.3, report_dir=str(report_dir))
    app.test_client().get("/slow?again=1")
    assert perfwatch.flush(10)
    assert len(reports_in(report_dir)) == 2
    perfwatch.close(app, timeout=5)
    with pytest.raises(RuntimeError, match="not set up"):
        perfwatch.close(app)


def test_an_app_let_go_is_freed(report_dir: Path) -> None:
    def make() -> weakref.ref[Flask]:
        app = build_app("transient")
        perfwatch = PerfWatch(app, threshold=5.0, report_dir=str(report_dir))
        assert app.test_client().get("/fast").status_code == 200
        perfwatch.close(timeout=5)
        return weakref.ref(app)

    ref = make()
    gc.collect()
    assert ref() is None


def test_an_app_let_go_without_close_is_freed_too(report_dir: Path) -> None:
    """Signal connections are weak: a test suite creating an app per test does
    not keep every app (and its monitor) for the life of the process. (The
    sampler holds the frame of a request it found until its next search of
    the stacks finds it gone, a few tens of milliseconds: hence the wait.)"""
    refs = []
    for _ in range(3):
        app = build_app("leaky")
        PerfWatch(app, threshold=5.0, report_dir=str(report_dir), notifiers=[])
        assert app.test_client().get("/fast").status_code == 200
        refs.append(weakref.ref(app))
        del app

    def all_freed() -> bool:
        gc.collect()
        return all(r() is None for r in refs)

    wait_until(all_freed, timeout=10, interval=0.05, message="every app to be freed")


def test_every_new_app_gets_its_alert_pipeline_connected(tmp_path: Path) -> None:
    """Apps built and closed one after another (a test suite, an app factory):
    each new app's alert pipeline must receive its slow requests, even where
    a new pipeline reuses the address of a freed one. blinker 1.7 cached
    bound-method references by id() and, in about 1 case in 11 here, handed
    the new pipeline's connection a dead one: its alerts were silently never
    queued (CI caught it as deliveries that never came). blinker >= 1.8 is
    required since."""
    from flask_perfwatch import signals

    missing = 0
    for i in range(300):
        app = Flask(f"factory{i % 3}")
        perfwatch = PerfWatch(app, threshold=0.5, report_dir=str(tmp_path), notifiers=[],
                              profiler="off")
        connected = [getattr(r, "__name__", "") for r in signals.slow_request.receivers_for(app)]
        missing += "on_slow" not in connected
        perfwatch.close(app, timeout=1)
        del app, perfwatch
        if i % 7 == 0:
            gc.collect()
    assert missing == 0
