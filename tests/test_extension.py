"""PerfWatch on a Flask app, through Flask's test client."""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import SLOW, THRESHOLD, build_app, monitor_of, reports_in
from flask import Flask
from notifiers_for_tests import HangingNotifier, RecordingNotifier

from flask_perfwatch import PerfWatch, quick_setup
from flask_perfwatch.exceptions import ConfigError
from flask_perfwatch.metrics import PerformanceMetrics
from flask_perfwatch.middleware import RequestTimer
from flask_perfwatch.stores import MemoryStore
from flask_perfwatch.testing import SignalRecorder

FAILING = "notifiers_for_tests:FailingNotifier"
RECORDING = "notifiers_for_tests:RecordingNotifier"


def snapshot(response: object) -> tuple[int, list[tuple[str, str]], bytes]:
    return response.status_code, sorted(response.headers.items()), response.get_data()  # type: ignore[attr-defined]


# --- zero intrusion ----------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["/fast", "/slow", "/cpu", "/teapot", "/teapot?sleep=0.5", "/stream", "/stream?sleep=0.5",
     "/async", "/echo?a=1&a=2&password=x", "/missing"],
)
def test_responses_identical_with_and_without(make_app, url: str) -> None:
    bare = build_app().test_client().get(url)
    app, perfwatch = make_app()
    watched = app.test_client().get(url)
    assert snapshot(watched) == snapshot(bare)
    assert perfwatch.flush(10, app)


@pytest.mark.parametrize("url", ["/boom", "/boom?sleep=0.5"])
def test_exceptions_propagate_unchanged(make_app, url: str) -> None:
    with pytest.raises(ValueError, match=r"^boom$"):
        build_app().test_client().get(url)
    app, perfwatch = make_app()
    with pytest.raises(ValueError, match=r"^boom$"):
        app.test_client().get(url)
    assert perfwatch.flush(10, app)


def test_unhandled_exception_without_propagation_is_a_500(make_app) -> None:
    bare_app = build_app()
    bare_app.config["TESTING"] = False
    bare = bare_app.test_client().get("/boom?sleep=0.5")
    app = build_app()
    app.config["TESTING"] = False
    app, _perfwatch = make_app(app=app)
    watched = app.test_client().get("/boom?sleep=0.5")
    assert snapshot(watched) == snapshot(bare)
    assert watched.status_code == 500


# --- a slow request, end to end -------------------------------------------


def test_slow_request_writes_one_report_and_sends_one_alert(
    make_app, report_dir: Path, signals_recorder: SignalRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "flask_perfwatch")
    app, perfwatch = make_app()
    response = app.test_client().get("/cpu?q=shoes&page=2")
    assert response.status_code == 200
    sent = signals_recorder.wait_for("alert_sent")
    assert perfwatch.flush(10, app)

    files = reports_in(report_dir)
    assert len(files) == 1
    assert signals_recorder.count("alert_sent") == 1
    assert signals_recorder.count("slow_request") == 1
    metrics = sent[0].kwargs["metrics"]
    assert sent[0].sender is app
    assert sent[0].kwargs["notifier"].name == "local"
    assert metrics.kind == "request"
    assert metrics.name == "cpu"
    assert metrics.method == "GET"
    assert metrics.path == "/cpu"
    assert metrics.url == "http://localhost/cpu?q=shoes&page=2"
    assert metrics.params == {"q": "shoes", "page": "2"}
    assert metrics.status_code == 200
    assert metrics.threshold == THRESHOLD
    assert SLOW * 0.9 < metrics.duration < SLOW * 5
    assert metrics.started_at.tzinfo is not None
    assert metrics.profile is not None

    page = files[0].read_text()
    assert files[0].name.startswith("perfwatch-")
    assert "-GET-cpu-" in files[0].name
    assert 'id="perfwatch-request"' in page
    assert "GET http://localhost/cpu?q=shoes&amp;page=2" in page
    assert "pyinstrumentHTMLRenderer" in page  # pyinstrument's own report
    assert "burn" in page  # the function that burnt the time is in the profile
    assert f"pid {metrics.pid}" in page
    assert oct(files[0].stat().st_mode & 0o777) == oct(0o600)
    assert str(files[0]) in caplog.text
    assert "Slow request GET" in caplog.text


def test_repeat_is_suppressed_other_params_are_not(
    make_app, report_dir: Path, signals_recorder: SignalRecorder
) -> None:
    app, perfwatch = make_app()
    client = app.test_client()
    client.get("/slow?a=1&b=2")
    client.get("/slow?b=2&a=1")  # same params, other order: same key
    client.get("/slow?a=1&b=3")
    assert perfwatch.flush(10, app)
    assert signals_recorder.count("slow_request") == 3
    assert signals_recorder.count("alert_suppressed") == 1
    assert signals_recorder.count("alert_sent") == 2
    assert len(reports_in(report_dir)) == 2
    stats = perfwatch.stats(app)
    assert stats["slow"] == 3
    assert stats["alerts_sent"] == 2
    assert stats["alerts_suppressed"] == 1


def test_dedupe_key_endpoint_ignores_params(make_app, signals_recorder: SignalRecorder) -> None:
    app, perfwatch = make_app(dedup_key="endpoint")
    client = app.test_client()
    client.get("/slow?a=1")
    client.get("/slow?a=2")
    assert perfwatch.flush(10, app)
    assert signals_recorder.count("alert_sent") == 1
    assert signals_recorder.count("alert_suppressed") == 1


def by_user_agent(metrics: PerformanceMetrics) -> str:
    return metrics.headers.get("User-Agent", "")


def test_dedupe_key_callable(make_app, signals_recorder: SignalRecorder) -> None:
    app, perfwatch = make_app(dedup_key="test_extension:by_user_agent")
    client = app.test_client()
    client.get("/slow", headers={"User-Agent": "a"})
    client.get("/cpu", headers={"User-Agent": "a"})
    client.get("/slow", headers={"User-Agent": "b"})
    assert perfwatch.flush(10, app)
    assert signals_recorder.count("alert_sent") == 2


def test_zero_window_disables_dedupe(make_app, signals_recorder: SignalRecorder) -> None:
    app, perfwatch = make_app(dedup_window=0)
    client = app.test_client()
    client.get("/slow")
    client.get("/slow")
    assert perfwatch.flush(10, app)
    assert signals_recorder.count("alert_sent") == 2


def test_suppressed_count_reaches_the_next_alert(make_app, report_dir: Path,
                                                 signals_recorder: SignalRecorder) -> None:
    now = [1_800_000_000.0]  # a fake clock for the dedupe window
    app, perfwatch = make_app(dedup_window="1h", threshold=0.05)
    store = monitor_of(app).store
    assert isinstance(store, MemoryStore)
    store.clock = lambda: now[0]
    client = app.test_client()
    for _ in range(3):  # one alert, two suppressed
        client.get("/named/x?sleep=0.3")
    assert perfwatch.flush(10, app)
    assert signals_recorder.count("alert_sent") == 1
    assert signals_recorder.count("alert_suppressed") == 2
    now[0] += 3601  # the window passes
    client.get("/named/x?sleep=0.3")
    sent = signals_recorder.wait_for("alert_sent", 2)
    metrics = sent[-1].kwargs["metrics"]
    assert metrics.suppressed == 2
    assert metrics.suppressed_since == datetime.fromtimestamp(1_800_000_000.0, UTC)
    newest = max(reports_in(report_dir), key=lambda p: p.stat().st_mtime_ns)
    assert "2 similar slow requests suppressed since 2027-01-15 08:00 UTC" in newest.read_text()


def test_fast_request_is_timed_but_not_reported(make_app, report_dir: Path,
                                                signals_recorder: SignalRecorder) -> None:
    app, perfwatch = make_app()
    assert app.test_client().get("/fast").data == b"fast"
    assert perfwatch.flush(10, app)
    assert signals_recorder.events == []
    assert reports_in(report_dir) == []
    stats = perfwatch.stats(app)
    assert stats["requests"] == 1
    assert stats["slow"] == 0
    assert stats["overhead_seconds"] > 0
    assert stats["overhead_per_request_us"] == pytest.approx(stats["overhead_seconds"] * 1e6)


# --- what is measured ------------------------------------------------------


def test_exception_is_measured_as_500(make_app, signals_recorder: SignalRecorder) -> None:
    app, _perfwatch = make_app()
    with pytest.raises(ValueError):
        app.test_client().get("/boom?sleep=0.5")
    [event] = signals_recorder.wait_for("slow_request")
    metrics = event.kwargs["metrics"]
    assert metrics.status_code == 500
    assert metrics.error == "ValueError"  # exact: the class name, not the message ("boom")


def test_http_error_keeps_its_status(make_app, signals_recorder: SignalRecorder) -> None:
    app, _ = make_app()
    assert app.test_client().get("/teapot?sleep=0.5").status_code == 418
    [event] = signals_recorder.wait_for("slow_request")
    assert event.kwargs["metrics"].status_code == 418
    assert event.kwargs["metrics"].error is None


def test_streaming_response_still_streams_and_is_measured(
    make_app, signals_recorder: SignalRecorder
) -> None:
    app, _ = make_app()
    response = app.test_client().get("/stream?sleep=0.5")
    assert response.data == b"chunk0\nchunk1\nchunk2\n"
    [event] = signals_recorder.wait_for("slow_request")
    assert event.kwargs["metrics"].name == "stream"


def test_async_view_is_measured(make_app, signals_recorder: SignalRecorder) -> None:
    app, _ = make_app()
    assert app.test_client().get("/async").data == b"async"
    [event] = signals_recorder.wait_for("slow_request")
    assert event.kwargs["metrics"].name == "async_view"
    assert event.kwargs["metrics"].duration > SLOW * 0.9


def test_endpoints_added_after_init_app_are_covered(make_app, signals_recorder: SignalRecorder
                                                    ) -> None:
    app, perfwatch = make_app()

    @app.get("/late")
    @perfwatch.threshold(0.05)
    def late() -> str:
        time.sleep(0.3)
        return "late"

    assert app.test_client().get("/late").data == b"late"
    [event] = signals_recorder.wait_for("slow_request")
    assert event.kwargs["metrics"].name == "late"
    assert event.kwargs["metrics"].threshold == 0.05


def test_per_view_threshold_raises_and_lowers(make_app, signals_recorder: SignalRecorder
                                              ) -> None:
    app = build_app()
    perfwatch = PerfWatch()

    @app.get("/export")
    @perfwatch.threshold("10s")
    def export() -> str:
        time.sleep(SLOW)
        return "export"

    @app.get("/strict")
    @perfwatch.threshold("50ms")
    def strict() -> str:
        time.sleep(0.3)
        return "strict"

    app, _ = make_app(app=app)
    client = app.test_client()
    client.get("/export")
    client.get("/strict")
    [event] = signals_recorder.wait_for("slow_request")
    assert event.kwargs["metrics"].name == "strict"
    assert event.kwargs["metrics"].threshold == 0.05
    assert signals_recorder.count("slow_request") == 1


def test_threshold_decorator_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="expected a positive duration"):
        PerfWatch().threshold("soon")
    with pytest.raises(ConfigError):
        PerfWatch().threshold(0)


def test_ignore_decorator_and_config(make_app, signals_recorder: SignalRecorder) -> None:
    app = build_app()
    perfwatch = PerfWatch()

    @app.get("/health")
    @perfwatch.ignore
    def health() -> str:
        time.sleep(SLOW)
        return "ok"

    @app.get("/admin/report")
    def admin_report() -> str:
        time.sleep(SLOW)
        return "admin"

    app, _ = make_app(app=app, ignore=["static", "cpu", "/admin/*"])
    client = app.test_client()
    for url in ("/health", "/cpu", "/admin/report"):
        assert client.get(url).status_code == 200
    client.get("/slow")
    [event] = signals_recorder.wait_for("slow_request")
    assert event.kwargs["metrics"].name == "slow"
    assert signals_recorder.count("slow_request") == 1


def test_static_files_are_ignored_by_default(make_app, tmp_path: Path,
                                             signals_recorder: SignalRecorder) -> None:
    static = tmp_path / "static"
    static.mkdir()
    (static / "app.css").write_text("body{}")
    app = Flask("static_app", static_folder=str(static))
    app, perfwatch = make_app(app=app, threshold=1e-9)
    response = app.test_client().get("/static/app.css")
    assert response.status_code == 200
    response.close()
    assert perfwatch.flush(10, app)
    assert signals_recorder.events == []
    assert perfwatch.stats(app)["slow"] == 0  # timed (it passes the wrapper), never reported


def test_profiler_off_still_times_and_alerts(make_app, report_dir: Path,
                                             signals_recorder: SignalRecorder) -> None:
    app, _perfwatch = make_app(profiler="off")
    app.test_client().get("/slow")
    [event] = signals_recorder.wait_for("alert_sent")
    assert event.kwargs["metrics"].profile is None
    [path] = reports_in(report_dir)
    page = path.read_text()
    assert "No profile was captured" in page
    assert "pyinstrumentHTMLRenderer" not in page


# --- secrets ----------------------------------------------------------------


def test_secrets_never_reach_metrics_reports_or_names(
    make_app, report_dir: Path, signals_recorder: SignalRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "flask_perfwatch")
    app, _perfwatch = make_app()
    client = app.test_client()
    client.set_cookie("sid", "c00kie")
    client.get(
        "/slow?password=hunter2&Api-Key=k3y&ok=fine&session_id=s3ss",
        headers={"Authorization": "Bearer t0ken", "X-Api-Key": "h3ader"},
    )
    [event] = signals_recorder.wait_for("alert_sent")
    metrics = event.kwargs["metrics"]
    assert metrics.params == {"password": "[REDACTED]", "Api-Key": "[REDACTED]", "ok": "fine",
                              "session_id": "[REDACTED]"}
    assert metrics.headers["Authorization"] == "[REDACTED]"
    assert metrics.headers["X-Api-Key"] == "[REDACTED]"
    assert metrics.headers["Cookie"] == "[REDACTED]"
    [path] = reports_in(report_dir)
    everything = path.read_text() + path.name + metrics.to_json() + caplog.text + metrics.summary()
    for secret in ("hunter2", "k3y", "s3ss", "t0ken", "h3ader", "c00kie"):
        assert secret not in everything
    assert "fine" in metrics.url


def test_hostile_params_are_capped(make_app, signals_recorder: SignalRecorder) -> None:
    app, _ = make_app()
    query = "&".join(f"p{i}={'x' * 1200}" for i in range(300))
    assert app.test_client().get(f"/slow?{query}").status_code == 201
    [event] = signals_recorder.wait_for("alert_sent")
    metrics = event.kwargs["metrics"]
    assert len(metrics.params) == 100
    assert metrics.params_truncated is True
    assert all(len(v) <= 1001 for v in metrics.params.values())
    assert len(metrics.url) <= 4001


# --- notifiers ----------------------------------------------------------------


def test_failing_notifier_keeps_report_and_sends_alert_failed(
    make_app, report_dir: Path, signals_recorder: SignalRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    app, perfwatch = make_app(notifiers=[FAILING, RECORDING])
    response = app.test_client().get("/slow")
    assert snapshot(response) == snapshot(build_app().test_client().get("/slow"))
    [failed] = signals_recorder.wait_for("alert_failed")
    signals_recorder.wait_for("alert_sent")
    assert failed.kwargs["notifier"].name == "failing"
    assert "said no" in str(failed.kwargs["error"])
    assert len(RecordingNotifier.received) == 1  # the other notifier still delivered
    [path] = reports_in(report_dir)  # nothing lost: written although `local` is not configured
    assert f"report kept at {path}" in caplog.text
    assert perfwatch.stats(app)["alerts_failed"] == 1


@pytest.mark.allow_swallowed
def test_buggy_signal_receiver_does_not_break_delivery(
    make_app, report_dir: Path, signals_recorder: SignalRecorder
) -> None:
    from flask_perfwatch import signals

    def bad_receiver(sender: object, **kwargs: object) -> None:
        raise RuntimeError("receiver bug")

    app, perfwatch = make_app()
    signals.alert_sent.connect(bad_receiver, sender=app)
    try:
        assert app.test_client().get("/slow").status_code == 201
        assert perfwatch.flush(10, app)
    finally:
        signals.alert_sent.disconnect(bad_receiver)
    assert len(reports_in(report_dir)) == 1


def test_unexpected_notifier_bug_is_logged_with_traceback(
    make_app, signals_recorder: SignalRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = make_app(notifiers=["notifiers_for_tests:BrokenNotifier"])
    app.test_client().get("/slow")
    [failed] = signals_recorder.wait_for("alert_failed")
    assert isinstance(failed.kwargs["error"], ZeroDivisionError)
    [record] = [r for r in caplog.records if "notifier 'broken' failed" in r.getMessage()]
    message = record.getMessage()
    assert "ZeroDivisionError: bug in a notifier" in message
    assert "Traceback (most recent call last)" in message
    assert "in send" in message  # the notifier's own frame


def test_hanging_notifier_does_not_touch_responses(make_app, signals_recorder: SignalRecorder
                                                   ) -> None:
    app, perfwatch = make_app(notifiers=["notifiers_for_tests:HangingNotifier"], queue_size=2,
                              dedup_window=0)
    client = app.test_client()
    try:
        client.get("/slow")
        assert HangingNotifier.entered.wait(10)
        # its lane is stuck; requests carry on, its queue fills, then alerts fail at once
        for _ in range(4):
            started = time.perf_counter()
            assert client.get("/slow").status_code == 201
            assert time.perf_counter() - started < SLOW + 5
        assert client.get("/fast").data == b"fast"
        failed = signals_recorder.wait_for("alert_failed", 2)
        assert {type(e.kwargs["error"]).__name__ for e in failed} == {"NotifierBackedUp"}
        stats = perfwatch.stats(app)
        assert (stats["slow"], stats["alerts"], stats["alerts_dropped"]) == (5, 5, 0)
        assert stats["alerts_failed"] == 2
        assert stats["queue_depth"] == 3  # one stuck in send, two waiting in its lane
    finally:
        HangingNotifier.release.set()
    assert perfwatch.flush(10, app)


def test_several_notifiers_share_one_report(make_app, report_dir: Path,
                                           signals_recorder: SignalRecorder) -> None:
    app, perfwatch = make_app(notifiers=["local", RECORDING])
    app.test_client().get("/slow")
    signals_recorder.wait_for("alert_sent", 2)
    assert perfwatch.flush(10, app)
    # each notifier delivers on its own thread: no order between them
    names = sorted(e.kwargs["notifier"].name for e in signals_recorder.of("alert_sent"))
    assert names == ["local", "recording"]
    [(metrics, report)] = RecordingNotifier.received
    assert report.path == reports_in(report_dir)[0]  # the report is shared
    assert metrics.summary() in report.text


def test_entry_point_notifier(make_app, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              signals_recorder: SignalRecorder) -> None:
    dist = tmp_path / "site" / "perfwatch_chat-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: perfwatch-chat\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[flask_perfwatch.notifiers]\nchat = notifiers_for_tests:RecordingNotifier\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    app, _ = make_app(notifiers=["chat"])
    app.test_client().get("/slow")
    signals_recorder.wait_for("alert_sent")
    assert len(RecordingNotifier.received) == 1


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("carrier-pigeon", "unknown notifier 'carrier-pigeon'; known: local, log, mattermost, "
                           "slack, teams, discord, email, webhook, pagerduty"),
        ("notifiers_for_tests:NotANotifier", "not a flask_perfwatch.notifiers.Notifier"),
        ("notifiers_for_tests:Nope", "has no attribute 'Nope'"),
        ("no_such_module:Thing", "cannot import module 'no_such_module'"),
    ],
)
def test_bad_notifier_names_fail_at_init_app(make_app, name: str, message: str) -> None:
    with pytest.raises(ConfigError, match="PERFWATCH_NOTIFIERS") as info:
        make_app(notifiers=["local", name])
    assert message in str(info.value)
    assert info.value.source == "keyword argument"


def test_unwritable_report_dir_fails_at_init_app(make_app, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(ConfigError, match="PERFWATCH_REPORT_DIR"):
        make_app(report_dir=str(blocker / "reports"))


def test_no_notifiers_still_logs(make_app, signals_recorder: SignalRecorder,
                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "flask_perfwatch")
    app, perfwatch = make_app(notifiers=[])
    app.test_client().get("/slow")
    assert perfwatch.flush(10, app)
    assert "no notifiers configured" in caplog.text


# --- app factory, quick_setup, stats --------------------------------------------


def test_one_instance_serves_several_apps(report_dir: Path, signals_recorder: SignalRecorder
                                          ) -> None:
    perfwatch = PerfWatch(report_dir=str(report_dir))
    first, second = build_app("first"), build_app("second")
    first.config["PERFWATCH_THRESHOLD"] = THRESHOLD
    second.config["PERFWATCH_THRESHOLD"] = 5.0
    perfwatch.init_app(first)
    perfwatch.init_app(second)
    try:
        first.test_client().get("/slow")
        second.test_client().get("/slow")
        [event] = signals_recorder.wait_for("slow_request")
        assert event.sender is first
        assert perfwatch.stats(first)["slow"] == 1
        assert perfwatch.stats(second)["slow"] == 0
        assert perfwatch.stats(second)["requests"] == 1
        with second.app_context():
            assert perfwatch.config().threshold == 5.0
    finally:
        perfwatch.close(timeout=5)


def test_quick_setup(report_dir: Path, signals_recorder: SignalRecorder) -> None:
    app = build_app()
    perfwatch = quick_setup(app, threshold=THRESHOLD, notifiers=["local"],
                            report_dir=str(report_dir))
    try:
        assert isinstance(perfwatch, PerfWatch)
        app.test_client().get("/slow")
        signals_recorder.wait_for("alert_sent")
        assert len(reports_in(report_dir)) == 1
    finally:
        perfwatch.close(app, 5)


def test_stats_needs_init_app() -> None:
    with pytest.raises(RuntimeError, match="not set up"):
        PerfWatch().stats(Flask("other"))


def test_disabled_installs_nothing(make_app, signals_recorder: SignalRecorder) -> None:
    app, perfwatch = make_app(enabled=False)
    assert app.test_client().get("/slow").status_code == 201
    assert perfwatch.stats(app)["requests"] == 0
    assert signals_recorder.events == []
    assert app.before_request_funcs.get(None, []) == []
    assert not isinstance(app.wsgi_app, RequestTimer)


def test_periodic_stats_log(make_app, caplog: pytest.LogCaptureFixture,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("flask_perfwatch.monitor.STATS_LOG_INTERVAL", 0.0)
    caplog.set_level(logging.DEBUG, "flask_perfwatch.monitor")
    app, _ = make_app()
    monitor_of(app).next_stats_log = 0.0
    app.test_client().get("/fast")
    assert "stats: {'requests': 1" in caplog.text


def test_module_is_importable_without_side_effects() -> None:
    import subprocess

    code = ("import threading, flask_perfwatch, flask_perfwatch.notifiers; "
            "print(threading.active_count(), 'mattermostdriver' in __import__('sys').modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["1", "False"]
