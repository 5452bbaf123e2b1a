"""Issue 9: a monitor that can be trusted inside someone else's production app.

Each test reproduces one finding (hostile input, leaked secrets, one bad part
switching the rest off, unbounded growth, log injection, fork, ignore) through
real parts: a real app over a real socket where it matters, the real delivery
and notifier threads, real files.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import SLOW, THRESHOLD, build_app, monitor_of, reports_in, wait_until
from flask import Flask
from notifiers_for_tests import RecordingNotifier, Stuck
from werkzeug.serving import make_server

from flask_perfwatch import Config, ConfigError, PerfWatch, PerfWatchMiddleware, signals
from flask_perfwatch._guard import swallowed
from flask_perfwatch.metrics import PerformanceMetrics, utcnow
from flask_perfwatch.testing import SignalRecorder

RECORDING = "notifiers_for_tests:RecordingNotifier"
SECRET = "s3cr3t-Pa55w0rd-XYZ"


@pytest.fixture(autouse=True)
def _reset() -> None:
    # notifier state is reset by conftest's reset_test_notifiers
    swallowed.reset()  # stats()["errors"] counts per process


def raw_request(port: int, request_line: bytes, headers: bytes = b"") -> bytes:
    """Send one raw HTTP/1.0 request (any bytes) and return the raw response."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request_line + b"\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def served() -> Iterator[Any]:
    servers = []

    def start(app: Any) -> int:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return int(server.server_port)

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(10)


def all_text(report_dir: Path, caplog: pytest.LogCaptureFixture, rec: SignalRecorder) -> str:
    """Everything that left the monitor: report files, log lines, signal payloads."""
    files = "".join(p.read_text(encoding="utf-8") for p in reports_in(report_dir))
    payloads = "".join(repr(e.kwargs["metrics"].to_dict()) + e.kwargs["metrics"].summary()
                       for e in rec.events if "metrics" in e.kwargs)
    return files + caplog.text + payloads


# -- 1. hostile input never switches monitoring off ------------------------------------


@pytest.mark.slow
def test_invalid_utf8_in_path_and_query_is_reported(served, make_app, report_dir: Path,
                                                    signals_recorder: SignalRecorder) -> None:
    app = build_app()

    @app.get("/any/<path:rest>")
    def any_path(rest: str) -> str:
        time.sleep(SLOW)
        return "ok"

    app, perfwatch = make_app(app=app)
    port = served(app)
    response = raw_request(port, b"GET /any/\xff\xfe%ff?q=%ff%fe\xff&password=" +
                           SECRET.encode() + b" HTTP/1.0")
    assert response.startswith(b"HTTP/1.1 200") or response.startswith(b"HTTP/1.0 200")
    [sent] = signals_recorder.wait_for("alert_sent")
    metrics = sent.kwargs["metrics"]
    assert metrics.name == "any_path"
    # %ff%fe are not UTF-8; werkzeug's server hands the raw byte on as latin-1 "ÿ"
    assert metrics.params["q"] == "\ufffd\ufffdÿ"
    assert metrics.params["password"] == "[REDACTED]"
    assert metrics.path.startswith("/any/")
    assert SECRET not in metrics.to_json()
    assert perfwatch.stats(app)["slow"] == 1
    assert perfwatch.stats(app)["errors"] == 0
    [report] = reports_in(report_dir)
    assert SECRET not in report.read_text(encoding="utf-8")


@pytest.mark.parametrize("method", ["PROPFIND", "X-CUSTOM", "GET\r\nX: y", "\x1b[2J" * 20])
def test_odd_methods_and_huge_params_give_a_sane_alert(tmp_path: Path,
                                                       signals_recorder: SignalRecorder,
                                                       method: str) -> None:
    def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        time.sleep(SLOW)
        start_response("200 OK", [])
        return [b"ok"]

    middleware = PerfWatchMiddleware(wsgi, config=Config(threshold=THRESHOLD,
                                                         report_dir=str(tmp_path)))
    query = "&".join(f"p{i}={'v' * 20000 if i == 0 else i}" for i in range(5000))
    environ = {"REQUEST_METHOD": method, "QUERY_STRING": query, "HTTP_X_EVIL": "a\r\nb\x1b[31m",
               "PATH_INFO": "/odd", "SERVER_NAME": "h", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http"}
    try:
        body = middleware(environ, lambda status, headers, exc_info=None: None)
        assert list(body) == [b"ok"]
        body.close()  # type: ignore[attr-defined]
        [sent] = signals_recorder.wait_for("alert_sent")
    finally:
        middleware.close()
    metrics = sent.kwargs["metrics"]
    assert len(metrics.params) == 100
    assert metrics.params_truncated
    assert len(metrics.params["p0"]) <= 1001
    assert len(metrics.method) <= 33
    for text in (metrics.method, metrics.summary(), metrics.headers["X-Evil"]):
        assert "\r" not in text
        assert "\n" not in text
        assert "\x1b" not in text
    assert metrics.headers["X-Evil"] == "a\\r\\nb\\x1b[31m"


# -- 2. secrets under common names and inside values ------------------------------------


@pytest.mark.parametrize(("query", "header"), [
    (f"pwd={SECRET}", {}),
    (f"userPwd={SECRET}", {}),
    (f"next=https://alice:{SECRET}@host.example/", {}),
    (f"db=postgresql://app:{SECRET}@db/x", {}),
    (f"forward=Bearer%20{SECRET}", {}),
    ("ok=1", {"Referer": f"https://bob:{SECRET}@shop.example/"}),
    ("ok=1", {"X-Upstream": f"Bearer {SECRET}"}),
])
def test_secrets_by_name_and_by_value_never_leave(make_app, report_dir: Path,
                                                  caplog: pytest.LogCaptureFixture,
                                                  signals_recorder: SignalRecorder,
                                                  query: str, header: dict[str, str]) -> None:
    caplog.set_level(logging.DEBUG, "flask_perfwatch")
    app, perfwatch = make_app()
    app.test_client().get(f"/slow?{query}", headers=header)
    signals_recorder.wait_for("alert_sent")
    assert perfwatch.flush(10, app)
    assert len(reports_in(report_dir)) == 1
    assert SECRET not in all_text(report_dir, caplog, signals_recorder)


def test_a_secret_in_the_path_is_masked(make_app, report_dir: Path,
                                        caplog: pytest.LogCaptureFixture,
                                        signals_recorder: SignalRecorder) -> None:
    app, _ = make_app()
    app.test_client().get(f"/named/https://u:{SECRET}@h/x", query_string={"sleep": SLOW})
    [sent] = signals_recorder.wait_for("alert_sent")
    assert "[REDACTED]" in sent.kwargs["metrics"].path
    assert SECRET not in all_text(report_dir, caplog, signals_recorder)


def test_user_names_add_to_the_builtin_list_and_a_hook_runs(make_app,
                                                           signals_recorder: SignalRecorder
                                                           ) -> None:
    app, _ = make_app(redact=["iban"], redact_hook="test_trust:mask_digits")
    app.test_client().get("/slow?iban=DE001&password=x&card=4111111111111111&q=ok")
    [slow] = signals_recorder.wait_for("slow_request")
    params = slow.kwargs["metrics"].params
    assert params == {"iban": "[REDACTED]", "password": "[REDACTED]",
                      "card": "################", "q": "ok"}


def mask_digits(name: str, value: str) -> str:
    return "#" * len(value) if value.isdigit() else value


def explode(name: str, value: str) -> str:
    raise RuntimeError("hook bug")


@pytest.mark.allow_swallowed
def test_a_failing_hook_redacts_the_value(make_app, signals_recorder: SignalRecorder,
                                          caplog: pytest.LogCaptureFixture) -> None:
    app, _ = make_app(redact_hook="test_trust:explode")
    app.test_client().get("/slow?q=visible")
    [slow] = signals_recorder.wait_for("slow_request")
    assert slow.kwargs["metrics"].params == {"q": "[REDACTED]"}
    assert "RuntimeError: hook bug" in caplog.text


# -- 3. one bad notifier does not starve the others --------------------------------------


def test_a_stuck_notifier_before_local_blocks_nothing(make_app, report_dir: Path,
                                                      signals_recorder: SignalRecorder) -> None:
    app, perfwatch = make_app(notifiers=["notifiers_for_tests:Stuck", "local"],
                              notifier_timeout=1.0, dedup_window=0)
    client = app.test_client()
    client.get("/slow?n=1")
    [sent] = signals_recorder.wait_for("alert_sent", 1, timeout=5)
    assert sent.kwargs["notifier"].name == "local"  # did not wait for the stuck one
    # the stuck send times out: counted as failed, the report kept
    [failed] = signals_recorder.wait_for("alert_failed", 1, timeout=10)
    assert failed.kwargs["notifier"].name == "stuck"
    assert "no result within" in str(failed.kwargs["error"])
    # later alerts still reach local at once; the stuck notifier is skipped, reported failed
    client.get("/slow?n=2")
    client.get("/slow?n=3")
    signals_recorder.wait_for("alert_sent", 3, timeout=5)
    signals_recorder.wait_for("alert_failed", 3, timeout=10)
    assert len(Stuck.calls) == 2  # MAX_STUCK threads at most, then it fails fast
    assert len(reports_in(report_dir)) == 3
    stats = perfwatch.stats(app)
    assert stats["notifiers"] == {"local": {"sent": 3, "failed": 0},
                                  "stuck": {"sent": 0, "failed": 3}}
    Stuck.release.set()


@pytest.mark.parametrize("bad", ["notifiers_for_tests:BaseExceptionNotifier",
                                 "notifiers_for_tests:GarbageNotifier"])
def test_raising_or_garbage_notifier_does_not_stop_the_rest(make_app, bad: str,
                                                            signals_recorder: SignalRecorder
                                                            ) -> None:
    app, perfwatch = make_app(notifiers=[bad, RECORDING], dedup_window=0)
    for n in range(2):
        app.test_client().get(f"/slow?n={n}")
    assert perfwatch.flush(10, app)
    assert len(RecordingNotifier.received) == 2
    stats = perfwatch.stats(app)
    assert stats["alerts"] == 2
    if "BaseException" in bad:
        assert stats["notifiers"]["fatal"] == {"sent": 0, "failed": 2}
        errors = [e.kwargs["error"] for e in signals_recorder.of("alert_failed")]
        assert [type(e).__name__ for e in errors] == ["Fatal", "Fatal"]
    else:  # what send() returns is never looked at
        assert stats["notifiers"]["garbage"] == {"sent": 2, "failed": 0}
    assert stats["errors"] == 0


# -- 4. a raising signal receiver cannot switch alerting off ------------------------------


@pytest.mark.allow_swallowed
def test_a_raising_slow_request_receiver_stops_nothing(make_app, report_dir: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    app, perfwatch = make_app()
    calls = []

    def bad(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("user receiver bug")

    def good(sender: Any, **kwargs: Any) -> None:
        calls.append(kwargs["metrics"].name)

    signals.slow_request.connect(bad, sender=app)
    signals.slow_request.connect(good, sender=app)
    try:
        assert app.test_client().get("/slow").status_code == 201
        assert perfwatch.flush(10, app)
    finally:
        signals.slow_request.disconnect(bad)
        signals.slow_request.disconnect(good)
    assert calls == ["slow"]  # other receivers still ran
    assert len(reports_in(report_dir)) == 1  # the pipeline still ran
    stats = perfwatch.stats(app)
    assert (stats["requests"], stats["slow"], stats["alerts_sent"]) == (1, 1, 1)
    assert stats["receiver_errors"] == 1
    assert "RuntimeError: user receiver bug" in caplog.text
    assert "Traceback (most recent call last)" in caplog.text


def test_a_slow_receiver_does_not_delay_the_pipeline(make_app,
                                                     signals_recorder: SignalRecorder) -> None:
    app, perfwatch = make_app(notifiers=[RECORDING])
    release = threading.Event()
    queued_first = []

    def slow_receiver(sender: Any, **kwargs: Any) -> None:
        # the built-in receiver already queued the alert before this one runs
        queued_first.append(perfwatch.stats(app)["queue_depth"]
                            + perfwatch.stats(app)["alerts"])
        release.wait(10)

    signals.slow_request.connect(slow_receiver, sender=app)
    try:
        thread = threading.Thread(target=app.test_client().get, args=("/slow",))
        thread.start()
        wait_until(lambda: RecordingNotifier.received, message="alert delivered meanwhile")
        release.set()
        thread.join(10)
    finally:
        signals.slow_request.disconnect(slow_receiver)
    assert queued_first == [1]


# -- 5. junk parameters cannot defeat dedupe ---------------------------------------------


def test_junk_params_hit_the_endpoint_alert_limit(make_app, report_dir: Path,
                                                  signals_recorder: SignalRecorder) -> None:
    app, perfwatch = make_app(endpoint_alert_limit=10, dedup_window="1h")
    client = app.test_client()
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda n: client.get(f"/slow?utm_x={n}").status_code,
                                 range(40)))
    assert statuses == [201] * 40
    assert perfwatch.flush(20, app)
    stats = perfwatch.stats(app)
    assert (stats["slow"], stats["alerts"]) == (40, 10)
    # the rest were suppressed by the limit, or dropped before that: at most a
    # tenth of the queue (10) may wait per endpoint, and 20 finish at once
    assert stats["alerts_suppressed"] + stats["alerts_dropped"] == 30
    assert stats["alerts_suppressed"] >= 10
    assert len(reports_in(report_dir)) == 10
    # another endpoint has its own budget
    client.get("/cpu")
    assert perfwatch.flush(20, app)
    assert perfwatch.stats(app)["alerts"] == 11


def test_limit_suppressed_count_reaches_the_next_alert(make_app,
                                                       signals_recorder: SignalRecorder) -> None:
    app, perfwatch = make_app(endpoint_alert_limit=1, dedup_window="1h", notifiers=[RECORDING])
    monitor = monitor_of(app)
    for n in range(4):
        monitor.report_slow(junk_metrics("export", n))
    assert perfwatch.flush(10, app)
    assert perfwatch.stats(app)["alerts"] == 1
    # the window passes (a fake clock on the memory store)
    store = monitor.store
    store.clock = lambda: time.time() + 7200
    monitor.report_slow(junk_metrics("export", 99))
    assert perfwatch.flush(10, app)
    metrics, report = RecordingNotifier.received[-1]
    assert metrics.endpoint_suppressed == 3
    assert "3 more alerts of this endpoint" in report.text


def junk_metrics(name: str, n: int) -> PerformanceMetrics:
    return PerformanceMetrics(kind="request", name=name, duration=1.0, threshold=THRESHOLD,
                              started_at=utcnow(), method="GET", params={"utm_x": str(n)})


_gate = threading.Event()
_entered = threading.Event()


def blocking_key(metrics: PerformanceMetrics) -> str:
    """A dedupe key callable that holds the delivery thread until ``_gate`` opens."""
    _entered.set()
    _gate.wait(30)
    return f"{metrics.name}:{metrics.params}"


def test_a_flood_on_one_endpoint_cannot_push_out_another(make_app,
                                                         signals_recorder: SignalRecorder
                                                         ) -> None:
    _gate.clear()
    _entered.clear()
    app, perfwatch = make_app(queue_size=20, dedup_key="test_trust:blocking_key",
                              notifiers=[RECORDING], endpoint_alert_limit=0)
    monitor = monitor_of(app)
    try:
        monitor.report_slow(junk_metrics("junk", 0))
        assert _entered.wait(10)  # the delivery thread is busy with it
        for n in range(1, 30):
            monitor.report_slow(junk_metrics("junk", n))
        monitor.report_slow(junk_metrics("real", 0))
    finally:
        _gate.set()
    assert perfwatch.flush(20, app)
    names = [m.name for m, _ in RecordingNotifier.received]
    assert "real" in names
    stats = perfwatch.stats(app)
    quota = 2  # a tenth of the queue per endpoint
    assert stats["alerts_dropped"] == 30 - 1 - quota  # one was being processed
    assert stats["slow"] == stats["alerts"] + stats["alerts_suppressed"] + stats["alerts_dropped"]


# -- 7. log injection --------------------------------------------------------------------


INJECTED = "/x\r\n2026-12-01 INFO forged line\x1b[31m\u202e"
#: the same as a WSGI environ carries it (UTF-8 bytes as latin-1, PEP 3333)
INJECTED_WSGI = INJECTED.encode("utf-8").decode("latin-1")


def assert_clean_logs(caplog: pytest.LogCaptureFixture) -> None:
    records = [r for r in caplog.records if r.name.startswith("flask_perfwatch")]
    assert records
    for record in records:
        message = record.getMessage()
        assert "\r" not in message
        assert "\x1b" not in message
        assert "\u202e" not in message
        assert "\n2026-12-01 INFO" not in message


def test_middleware_escapes_control_characters_in_logs(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture,
                                                       signals_recorder: SignalRecorder) -> None:
    def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        time.sleep(SLOW)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    caplog.set_level(logging.DEBUG, "flask_perfwatch")
    middleware = PerfWatchMiddleware(wsgi, config=Config(threshold=THRESHOLD,
                                                         report_dir=str(tmp_path)))
    try:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": INJECTED_WSGI, "SERVER_NAME": "h",
                   "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
        body = middleware(environ, lambda status, headers, exc_info=None: None)
        assert list(body) == [b"ok"]
        body.close()  # type: ignore[attr-defined]
        assert middleware.flush(10)
    finally:
        middleware.close()
    [sent] = signals_recorder.wait_for("alert_sent")
    assert sent.kwargs["metrics"].name == "/x\\r\\n2026-12-01 INFO forged line\\x1b[31m\\u202e"
    assert_clean_logs(caplog)


def test_watched_function_escapes_control_characters_in_logs(make_app,
                                                             caplog: pytest.LogCaptureFixture,
                                                             signals_recorder: SignalRecorder
                                                             ) -> None:
    caplog.set_level(logging.DEBUG, "flask_perfwatch")
    app = build_app()
    perfwatch = PerfWatch()

    @perfwatch.watch(threshold=THRESHOLD)
    def work() -> None:
        time.sleep(SLOW)

    @app.errorhandler(404)  # a path with CR/LF matches no route
    def not_found(error: Exception) -> tuple[str, int]:
        work()
        return "nothing here", 404

    make_app(app=app, perfwatch=perfwatch, threshold=5.0)
    app.test_client().get("/w/x", environ_overrides={"PATH_INFO": "/w" + INJECTED_WSGI})
    assert perfwatch.flush(10, app)
    [slow] = signals_recorder.wait_for("slow_request")
    assert slow.kwargs["metrics"].kind == "function"
    assert_clean_logs(caplog)


# -- 9. fork: every lock is re-created in the child -----------------------------------------


def fork_and_check(holder: Any, child_work: Any) -> None:
    """Fork while ``holder._lock`` is held by this (parent) thread; the child
    must still get through ``child_work`` (exit 0) within 20 s."""
    holder._lock.acquire()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            signal.alarm(20)
            try:
                child_work()
            except BaseException:
                os._exit(1)
            os._exit(0)
    finally:
        holder._lock.release()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung on a lock held at fork time")


@pytest.mark.skipif(sys.platform != "linux", reason="fork")
def test_stats_lock_held_at_fork_is_recreated(make_app) -> None:
    app, perfwatch = make_app()
    stats = monitor_of(app).stats
    fork_and_check(stats, lambda: (stats.incr("slow"), perfwatch.stats(app)))


@pytest.mark.skipif(sys.platform != "linux", reason="fork")
def test_memory_store_lock_held_at_fork_is_recreated(make_app) -> None:
    app, _ = make_app()
    store = monitor_of(app).store
    fork_and_check(store, lambda: store.claim("k", 10.0))


@pytest.mark.skipif(sys.platform != "linux", reason="fork")
def test_pipeline_lock_held_at_fork_is_recreated(make_app) -> None:
    app, _ = make_app(notifiers=[])
    monitor = monitor_of(app)
    fork_and_check(monitor.pipeline,
                   lambda: (monitor.report_slow(junk_metrics("x", 1)), monitor.flush(10)))


# -- 11. ignore means ignore ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["decorator", "endpoint", "path"])
def test_nothing_inside_an_ignored_request_is_reported(make_app, report_dir: Path,
                                                       signals_recorder: SignalRecorder,
                                                       how: str) -> None:
    app = Flask("ignoring")
    perfwatch = PerfWatch()

    @perfwatch.watch
    def send_mail() -> None:
        time.sleep(SLOW)

    def reset(token: str) -> str:
        send_mail()
        return "sent"

    view = perfwatch.ignore(reset) if how == "decorator" else reset
    app.add_url_rule("/reset-password/<token>", "reset", view)
    ignore = {"decorator": ["static"], "endpoint": ["reset"], "path": ["/reset-password/*"]}[how]
    make_app(app=app, perfwatch=perfwatch, ignore=ignore)
    assert app.test_client().get(f"/reset-password/{SECRET}").data == b"sent"
    assert perfwatch.flush(10, app)
    assert signals_recorder.events == []
    assert reports_in(report_dir) == []


@pytest.mark.slow
def test_no_hung_alert_inside_an_ignored_request(make_app,
                                                 signals_recorder: SignalRecorder) -> None:
    app = Flask("ignoring-hung")
    perfwatch = PerfWatch()

    @app.get("/reset/<token>")
    @perfwatch.ignore
    def reset(token: str) -> str:
        time.sleep(1.5)
        return "ok"

    @app.get("/hangs")
    def hangs() -> str:
        time.sleep(1.5)
        return "ok"

    make_app(app=app, perfwatch=perfwatch, hang_after=0.5, threshold=0.2)
    client = app.test_client()
    client.get(f"/reset/{SECRET}")
    client.get("/hangs")  # the control: this one is reported as hung
    [hung] = signals_recorder.wait_for("request_hung")
    assert hung.kwargs["metrics"].name == "hangs"
    assert perfwatch.flush(10, app)
    assert [e.kwargs["metrics"].name for e in signals_recorder.of("request_hung")] == ["hangs"]


# -- swallowed errors: type, traceback, rate limit, count ------------------------------------


@pytest.mark.allow_swallowed
def test_swallowed_errors_are_logged_with_traceback_counted_and_rate_limited(
        make_app, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    app, perfwatch = make_app()
    timer = app.wsgi_app  # the timing wrapper init_app installed

    def broken_slow(*args: Any, **kwargs: Any) -> None:
        raise KeyError(f"https://user:{SECRET}@db/\r\nforged")

    monkeypatch.setattr(timer, "_slow", broken_slow)
    swallowed.reset()
    client = app.test_client()
    for _ in range(5):
        assert client.get("/slow").status_code == 201
    records = [r for r in caplog.records if "finishing a request" in r.getMessage()]
    assert len(records) == 1  # rate-limited: one line per site per minute
    message = records[0].getMessage()
    assert "KeyError" in message
    assert "Traceback (most recent call last)" in message
    assert "broken_slow" in message
    assert SECRET not in message
    assert "\r" not in message
    stats = perfwatch.stats(app)
    assert stats["errors"] == 5
    assert stats["requests"] == 5  # still counted


def test_guard_tolerates_an_exception_whose_str_raises(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    from flask_perfwatch._guard import format_error

    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert format_error(Weird()).endswith("Weird: <unprintable>")


_RAW_FORK_APP = """
import ctypes, os, sys, time
from flask import Flask
from flask_perfwatch import PerfWatch

app = Flask("rawfork")

@app.get("/slow")
def slow():
    time.sleep(0.5)
    return "slow"

perfwatch = PerfWatch(app, threshold=0.1, report_dir=sys.argv[1])
client = app.test_client()
client.get("/slow?who=parent")          # starts the delivery, lane and sampler threads
assert perfwatch.flush(10, app)
# fork(2) itself, as uWSGI does: no Python hooks. PyDLL keeps the GIL held
# across the call: with CDLL another thread could hold it at the fork, and the
# child would wait for it forever (what uWSGI risks too: docs/deployment.rst)
pid = ctypes.PyDLL(None).fork()
if pid == 0:
    code = 3
    try:
        client.get("/slow?who=child")
        code = 0 if perfwatch.flush(10, app) and perfwatch.stats(app)["alerts_sent"] == 2 else 1
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="fork(2) through ctypes")
def test_a_fork_without_python_hooks_still_delivers(tmp_path: Path) -> None:
    """uWSGI forks workers in C: the child notices the new pid itself and
    re-creates its threads, so its alerts are delivered."""
    script = tmp_path / "app.py"
    script.write_text(_RAW_FORK_APP)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "reports")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0", result.stderr
    assert len(reports_in(tmp_path / "reports")) == 2


def test_docs_list_every_builtin_secret_name() -> None:
    from flask_perfwatch._redact import DEFAULT_NAMES

    text = (Path(__file__).parent.parent / "docs" / "security.rst").read_text()
    listed = text.split("The built-in list:", 1)[1].split("``PERFWATCH_REDACT``", 1)[0]
    assert {n.strip() for n in listed.replace("\n", " ").split(",")} == set(DEFAULT_NAMES)


# -- 2. configuration never echoes a secret ------------------------------------------------


def test_a_yaml_syntax_error_never_prints_the_line(tmp_path: Path) -> None:
    path = tmp_path / "perfwatch.yaml"
    path.write_text(f'perfwatch:\n  mattermost_token: "{SECRET}\n  threshold: 0.5\n')
    with pytest.raises(ConfigError) as info:
        Config.load(environ={"PERFWATCH_CONFIG_FILE": str(path)})
    message = str(info.value)
    assert "not valid YAML" in message
    assert "line 4, column 1" in message
    assert SECRET not in message


@pytest.mark.parametrize("config", [
    {"mattermost_url": f"https://bot:{SECRET}@chat.example.com:99999",
     "notifiers": ["mattermost"]},
    {"store": f"redis://127.0.0.1:6379/x?password={SECRET}"},
    {"store": f"redis://:{SECRET}@127.0.0.1:1/0?socket_timeout=bad"},
    # a key with no mask of its own: ConfigError masks any value it shows
    {"dedup_key": f"https://user:{SECRET}@h/x"},
])
def test_config_errors_never_echo_a_password(config: dict[str, Any]) -> None:
    app = Flask("leaky")
    with pytest.raises(ConfigError) as info:
        PerfWatch(app, **config)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value.value)


@pytest.mark.allow_swallowed
def test_store_descriptions_and_outage_logs_never_show_a_password(
        make_app, caplog: pytest.LogCaptureFixture, signals_recorder: SignalRecorder) -> None:
    from redis_server import free_port

    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0?password={SECRET}"
    app, _perfwatch = make_app(store=url)
    monitor = monitor_of(app)
    described = repr(monitor.config) + repr(monitor.config.describe()) + repr(monitor.store)
    assert SECRET not in described
    app.test_client().get("/slow")  # nothing listens there: the store is down
    signals_recorder.wait_for("alert_sent")  # fail open
    assert "dedupe store" in caplog.text
    assert "unavailable" in caplog.text
    assert SECRET not in caplog.text


# -- 10. a report that cannot be written is not lost -----------------------------------------


# closing the app then fails to write its endpoint statistics there too (logged, counted)
@pytest.mark.allow_swallowed
def test_an_unwritable_report_folder_logs_the_report_text(tmp_path: Path, make_app,
                                                          caplog: pytest.LogCaptureFixture,
                                                          signals_recorder: SignalRecorder
                                                          ) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the report folder should be")
    app, _ = make_app(notifiers=["notifiers_for_tests:FailingNotifier"],
                      report_dir=str(blocker / "reports"))
    app.test_client().get("/slow?q=keep-me")
    signals_recorder.wait_for("alert_failed")
    [record] = [r for r in caplog.records if "notifier 'failing' failed" in r.getMessage()]
    message = record.getMessage()
    assert "the report could not be written" in message
    assert "Slow request GET http://localhost/slow?q=keep-me" in message
    assert list(tmp_path.iterdir()) == [blocker]  # nothing half-written anywhere


def test_a_value_too_long_to_scan_is_redacted_whole() -> None:
    """A value is masked whole, then cut: a secret cannot hide behind the cut."""
    from flask_perfwatch._redact import Redactor
    from flask_perfwatch.metrics import request_details

    long_password = SECRET * 1000  # a URL whose '@' comes after the first 8 KiB
    environ = {"PATH_INFO": "/p",
               "QUERY_STRING": f"a=1&next=https://u:{long_password}@h/&b=2"}
    details = request_details(Redactor(), environ)
    assert details["params"] == {"a": "1", "next": "[REDACTED: too long to scan]", "b": "2"}
    medium = f"https://u:{SECRET * 100}@h/"  # longer than shown (1000), short enough to scan
    details = request_details(Redactor(), {"PATH_INFO": "/p", "QUERY_STRING": f"next={medium}"})
    assert SECRET[:8] not in details["params"]["next"]
