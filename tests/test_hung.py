"""Hung-request alerts end to end: a real Flask app (and the WSGI middleware),
the ``sampler`` engine's thread, the alert pipeline and the local notifier.

A hung request is held open by an :class:`threading.Event` that the test sets
only after ``request_hung`` arrived, so nothing depends on how fast a loaded
machine is: every wait is a poll with a generous timeout, never a fixed sleep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import build_app, find_frame, monitor_of, reports_in, wait_until
from flask import Flask

from flask_perfwatch import Config, PerfWatch, PerfWatchMiddleware
from flask_perfwatch.testing import SignalRecorder

HANG_AFTER = 0.5
THRESHOLD = 0.2
#: the gated view of the main test runs at least this long in all
RUN_AT_LEAST = 2.0
#: how long to wait for anything (a loaded 2-core machine, a cold start)
TIMEOUT = 30.0

SamplerApp = Callable[..., tuple[Flask, PerfWatch]]


def waiting_for_release(release: threading.Event) -> None:
    """Where the gated views spend their time: the profile must show it."""
    while not release.wait(0.01):
        pass


def add_gated_view(app: Flask, release: threading.Event, *, path: str = "/hang",
                   endpoint: str = "hang", at_least: float = 0.0,
                   decorate: Callable[[Any], Any] = lambda view: view) -> None:
    """A view that runs until ``release`` is set (and at least ``at_least`` s)."""

    def view() -> str:
        t0 = time.perf_counter()
        waiting_for_release(release)
        left = at_least - (time.perf_counter() - t0)
        if left > 0:
            time.sleep(left)  # the view's own work: it runs on past its hung alert
        return "released"

    view.__name__ = endpoint
    app.add_url_rule(path, endpoint, decorate(view))


class Background:
    """One request in a thread; ``join()`` returns the response."""

    def __init__(self, wsgi_client: Any, path: str, **kwargs: Any) -> None:
        self.response: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(wsgi_client, path, kwargs),
                                       name=f"request {path}")
        self.thread.start()

    def _run(self, wsgi_client: Any, path: str, kwargs: dict[str, Any]) -> None:
        try:
            self.response = wsgi_client.get(path, **kwargs)
        except BaseException as exc:  # re-raised by join()
            self.error = exc

    def join(self) -> Any:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the request did not finish"
        if self.error is not None:
            raise self.error
        return self.response


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """The gate of the hung views; always opened at the end, so no thread is left."""
    event = threading.Event()
    yield event
    event.set()


def assert_partial_profile_of_the_view(metrics: Any) -> None:
    """The hung alert's profile: sampled frames of the gated view, so far."""
    profile = metrics.profile
    assert profile is not None
    assert "partial" in (profile.note or "")
    assert profile.sample_count > 0
    view = find_frame(profile.session.root_frame(), "view")  # add_gated_view's function
    assert view is not None, profile.text()
    assert view.file_path.endswith("test_hung.py")
    assert find_frame(view, "waiting_for_release") is not None, profile.text()


def assert_redacted(metrics: Any) -> None:
    assert metrics.params == {"token": "[REDACTED]", "id": "7"}
    assert metrics.url is not None
    assert "token=[REDACTED]" in metrics.url
    assert "s3cr3t" not in metrics.url
    assert metrics.headers.get("X-Api-Key") == "[REDACTED]"


QUERY = "?token=s3cr3t&id=7"
HEADERS = {"X-Api-Key": "k3y"}


# --- the Flask extension -----------------------------------------------------------


def test_hung_request_alerts_once_then_the_final_slow_alert(
        make_app: SamplerApp, signals_recorder: SignalRecorder, report_dir: Path,
        release: threading.Event) -> None:
    app = build_app()
    add_gated_view(app, release, at_least=RUN_AT_LEAST)
    app, perfwatch = make_app(app=app, profiler="sampler", hang_after=HANG_AFTER,
                              threshold=THRESHOLD)
    request = Background(app.test_client(), "/hang" + QUERY, headers=HEADERS)

    [hung] = signals_recorder.wait_for("request_hung", timeout=TIMEOUT)
    assert request.thread.is_alive()  # gated: it cannot have finished
    assert hung.sender is app
    metrics = hung.kwargs["metrics"]
    assert metrics.hung is True
    assert metrics.status_code is None
    assert metrics.error is None
    assert metrics.name == "hang"
    assert metrics.method == "GET"
    assert metrics.threshold == THRESHOLD
    assert metrics.duration >= HANG_AFTER
    # built on the sampler thread, from the environ: redacted all the same
    assert_redacted(metrics)
    assert_partial_profile_of_the_view(metrics)

    # the hung alert goes out while the request is still running
    [sent] = signals_recorder.wait_for("alert_sent", timeout=TIMEOUT)
    assert sent.kwargs["metrics"] is metrics
    [report] = wait_until(lambda: reports_in(report_dir), timeout=TIMEOUT,
                          message="the hung request's report")
    page = report.read_text()
    assert "still running" in page
    assert "s3cr3t" not in page
    assert "k3y" not in page
    assert request.thread.is_alive()

    release.set()
    assert request.join().data == b"released"
    [slow] = signals_recorder.wait_for("slow_request", timeout=TIMEOUT)
    final = slow.kwargs["metrics"]
    assert slow.sender is app
    assert final.hung is False
    assert final.status_code == 200
    assert final.name == "hang"
    assert final.duration >= RUN_AT_LEAST
    assert final.profile is not None
    assert "partial" not in (final.profile.note or "")
    assert final.profile.duration > metrics.profile.duration
    assert_redacted(final)

    # dedupe keeps hung and final apart: both alerts go out
    assert perfwatch.flush(TIMEOUT, app)
    signals_recorder.wait_for("alert_sent", 2, timeout=TIMEOUT)
    assert signals_recorder.count("alert_suppressed") == 0
    assert signals_recorder.count("request_hung") == 1  # once, though it ran 4x hang_after
    assert signals_recorder.count("slow_request") == 1
    pages = [p.read_text() for p in reports_in(report_dir)]
    assert len(pages) == 2
    assert sum("still running" in p for p in pages) == 1
    stats = perfwatch.stats(app)
    assert (stats["hung"], stats["slow"], stats["alerts_sent"]) == (1, 1, 2)


def test_hang_after_zero_disables(make_app: SamplerApp, signals_recorder: SignalRecorder
                                  ) -> None:
    app, perfwatch = make_app(profiler="sampler", hang_after=0, threshold=THRESHOLD)
    # runs 5x past where hang_after=0.5 would have fired
    assert app.test_client().get(f"/named/long?sleep={HANG_AFTER * 5}").data == b"long"
    signals_recorder.wait_for("slow_request", timeout=TIMEOUT)
    assert perfwatch.flush(TIMEOUT, app)
    # a hung alert is sent while the request runs, so it would be here by now
    assert signals_recorder.count("request_hung") == 0
    assert perfwatch.stats(app)["hung"] == 0


def test_no_hung_alert_below_the_views_threshold_or_for_ignored_views(
        make_app: SamplerApp, signals_recorder: SignalRecorder,
        release: threading.Event) -> None:
    """Three requests hang side by side; only the ordinary one alerts. The
    view with its own 30 s threshold is not slow at ``hang_after``, the
    ignored view is never reported."""
    perfwatch = PerfWatch()
    app = build_app()
    add_gated_view(app, release)  # the control: it does alert
    add_gated_view(app, release, path="/patient", endpoint="patient",
                   decorate=perfwatch.threshold(30))
    add_gated_view(app, release, path="/skipped", endpoint="skipped",
                   decorate=PerfWatch.ignore)
    app, _ = make_app(app=app, perfwatch=perfwatch, profiler="sampler",
                      hang_after=HANG_AFTER, threshold=THRESHOLD)
    requests = [Background(app.test_client(), path)
                for path in ("/patient", "/skipped", "/hang")]
    [hung] = signals_recorder.wait_for("request_hung", timeout=TIMEOUT)
    assert hung.kwargs["metrics"].name == "hang"
    # white box: the engine has called on_hang for all three (the others were
    # then judged not hung), so nothing more can come
    engine = monitor_of(app).engine
    wait_until(lambda: sum(s.hang_fired for s in list(engine._states.values())) == 3,
               timeout=TIMEOUT, message="on_hang for the three requests")
    release.set()
    for request in requests:
        assert request.join().data == b"released"
    [slow] = signals_recorder.wait_for("slow_request", timeout=TIMEOUT)
    assert slow.kwargs["metrics"].name == "hang"
    assert perfwatch.flush(TIMEOUT, app)
    assert signals_recorder.count("request_hung") == 1
    assert signals_recorder.count("slow_request") == 1  # patient: 30 s; skipped: ignored
    assert perfwatch.stats(app)["hung"] == 1


def test_pyinstrument_engine_never_reports_hung_requests(
        make_app: SamplerApp, signals_recorder: SignalRecorder) -> None:
    """pyinstrument observes a request from its own thread only: nothing can
    see it while it runs, so ``hang_after`` does not apply (documented)."""
    app, perfwatch = make_app(profiler="pyinstrument", hang_after=HANG_AFTER,
                              threshold=THRESHOLD)
    assert monitor_of(app).engine.name == "pyinstrument"
    assert app.test_client().get(f"/named/long?sleep={HANG_AFTER * 3}").data == b"long"
    [slow] = signals_recorder.wait_for("slow_request", timeout=TIMEOUT)
    assert slow.kwargs["metrics"].profile is not None
    assert perfwatch.flush(TIMEOUT, app)
    assert signals_recorder.count("request_hung") == 0
    assert perfwatch.stats(app)["hung"] == 0


# --- the WSGI middleware --------------------------------------------------------------


def test_middleware_hung_request(signals_recorder: SignalRecorder, report_dir: Path,
                                 release: threading.Event) -> None:
    app = Flask("plain")  # no extension: only the middleware watches
    add_gated_view(app, release)
    middleware = PerfWatchMiddleware(app.wsgi_app, config=Config(
        profiler="sampler", hang_after=HANG_AFTER, threshold=THRESHOLD,
        report_dir=str(report_dir)))
    app.wsgi_app = middleware  # type: ignore[method-assign]
    try:
        # buffered: the client closes the body, which is when the middleware's timing ends
        request = Background(app.test_client(), "/hang" + QUERY, headers=HEADERS,
                             buffered=True)
        [hung] = signals_recorder.wait_for("request_hung", timeout=TIMEOUT)
        assert request.thread.is_alive()
        assert hung.sender is middleware
        metrics = hung.kwargs["metrics"]
        assert metrics.hung is True
        assert metrics.status_code is None
        assert metrics.name == "/hang"  # the endpoint is not known until the response
        assert_redacted(metrics)
        assert_partial_profile_of_the_view(metrics)
        [report] = wait_until(lambda: reports_in(report_dir), timeout=TIMEOUT,
                              message="the hung request's report")
        assert "still running" in report.read_text()

        release.set()
        assert request.join().data == b"released"
        [slow] = signals_recorder.wait_for("slow_request", timeout=TIMEOUT)
        assert slow.sender is middleware
        assert slow.kwargs["metrics"].hung is False
        assert slow.kwargs["metrics"].status_code == 200
        assert middleware.flush(TIMEOUT)
        signals_recorder.wait_for("alert_sent", 2, timeout=TIMEOUT)
        assert signals_recorder.count("request_hung") == 1
        assert len(reports_in(report_dir)) == 2
        assert middleware.stats()["hung"] == 1
    finally:
        release.set()
        middleware.close(5)
