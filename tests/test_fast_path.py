"""The Flask wrapper's fast path (issue 13): a fast request never calls into
the engine, does not wrap ``start_response``, and yet every behaviour holds
for the slow ones (profile, status, endpoint, nesting, stats)."""

from __future__ import annotations

import io
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from conftest import SLOW, THRESHOLD
from flask import Flask, current_app, send_file
from werkzeug.test import EnvironBuilder

from flask_perfwatch import PerfWatch
from flask_perfwatch.middleware import response_status
from flask_perfwatch.monitor import FAST_SAMPLE, Stats
from flask_perfwatch.profiling.sampler import SamplerEngine
from flask_perfwatch.testing import SignalRecorder

MakeApp = Callable[..., tuple[Flask, PerfWatch]]


def _registry(perfwatch: PerfWatch, app: Flask) -> Any:
    timer = app.extensions["perfwatch"].timer
    assert timer._registry is not None
    return timer._registry


def test_a_fast_request_never_calls_the_engine(make_app: MakeApp,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    for name in ("start", "stop", "collect"):
        original = getattr(SamplerEngine, name)

        def spy(self: Any, *args: Any, _name: str = name, _original: Any = original,
                **kwargs: Any) -> Any:
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(SamplerEngine, name, spy)
    app, perfwatch = make_app(profiler="sampler")
    client = app.test_client()
    for _ in range(3 * FAST_SAMPLE):
        assert client.get("/fast").data == b"fast"
    assert calls == []
    assert _registry(perfwatch, app).requests == {}  # each request took itself out
    stats = perfwatch.stats(app)
    assert stats["requests"] == 3 * FAST_SAMPLE
    assert stats["overhead_per_request_us"] > 0  # sampled, scaled: see the next test


def test_the_fast_path_s_sampled_cost_is_scaled_to_every_request() -> None:
    """One request in FAST_SAMPLE times the fast path; its mean stands for
    every fast-path request. Rare costs (waking the sampler thread, which
    made the first CI run report 1300 µs a request when it was sampled and
    scaled, the checks only sampled requests make) are counted once."""
    stats = Stats()
    for _ in range(10 * FAST_SAMPLE):
        next(stats.fast_requests)
    for cost in (2e-6, 4e-6):
        stats.fast_sample(cost)
    stats.extra(0.003)  # the thread's start
    stats.observed(1e-6)  # one request of the general path
    snapshot = stats.snapshot(queue_depth=0)
    assert snapshot["requests"] == 10 * FAST_SAMPLE + 1
    assert snapshot["overhead_seconds"] == pytest.approx(3e-6 * 10 * FAST_SAMPLE + 0.003 + 1e-6)
    again = stats.snapshot(queue_depth=0)  # reading does not count as requests
    assert again["requests"] == snapshot["requests"]


def test_a_slow_request_keeps_its_profile_status_and_endpoint(
        make_app: MakeApp, signals_recorder: SignalRecorder) -> None:
    app, perfwatch = make_app(profiler="sampler")
    response = app.test_client().get("/cpu")
    assert response.data == b"cpu"
    metrics = signals_recorder.wait_for("slow_request")[0].kwargs["metrics"]
    assert metrics.name == "cpu"  # matched again: Flask had dropped the request
    assert metrics.status_code == 200
    assert metrics.profile is not None
    assert metrics.profile.sample_count > 10
    assert "burn" in metrics.profile.text()
    assert _registry(perfwatch, app).requests == {}
    assert perfwatch.stats(app)["requests"] == 1


def test_a_slow_response_status_is_read_from_the_response(
        make_app: MakeApp, signals_recorder: SignalRecorder) -> None:
    app, _ = make_app(profiler="sampler")
    assert app.test_client().get("/slow").status_code == 201
    assert app.test_client().get(f"/teapot?sleep={SLOW}").status_code == 418
    statuses = {e.kwargs["metrics"].name: e.kwargs["metrics"].status_code
                for e in signals_recorder.wait_for("slow_request", 2)}
    assert statuses == {"slow": 201, "teapot": 418}


def test_a_request_nested_in_another_on_its_thread_is_timed_too(
        make_app: MakeApp, signals_recorder: SignalRecorder) -> None:
    """A view that calls its own app in process: the inner request finds its
    thread registered and takes the general path; both are reported."""
    app = Flask("nested")

    @app.get("/outer")
    def outer() -> str:
        inner = current_app.test_client().get("/inner")
        return "outer+" + inner.get_data(as_text=True)

    @app.get("/inner")
    def inner() -> str:
        time.sleep(SLOW)
        return "inner"

    app, perfwatch = make_app(app=app, profiler="sampler")
    assert app.test_client().get("/outer").data == b"outer+inner"
    events = signals_recorder.wait_for("slow_request", 2)
    by_name = {e.kwargs["metrics"].name: e.kwargs["metrics"] for e in events}
    assert set(by_name) == {"outer", "inner"}
    assert all(m.profile is not None for m in by_name.values())
    assert by_name["outer"].duration >= by_name["inner"].duration
    assert _registry(perfwatch, app).requests == {}
    assert perfwatch.stats(app)["requests"] == 2


def test_a_request_that_raises_leaves_no_registration(make_app: MakeApp,
                                                      signals_recorder: SignalRecorder) -> None:
    app, perfwatch = make_app(profiler="sampler")
    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(ValueError, match="boom"):
        app.test_client().get(f"/boom?sleep={SLOW}")
    metrics = signals_recorder.wait_for("slow_request")[0].kwargs["metrics"]
    assert (metrics.name, metrics.status_code, metrics.error) == ("boom", 500, "ValueError")
    assert _registry(perfwatch, app).requests == {}


# --- response_status: the status of a response the wrapper did not see start ----


def _call(app: Flask, path: str, start_response: Any) -> Any:
    return app.wsgi_app(EnvironBuilder(path=path).get_environ(), start_response)


def test_response_status_from_werkzeug_s_response() -> None:
    app = Flask("status")
    app.get("/made")(lambda: ("made", 202))
    body = _call(app, "/made", lambda status, headers, exc_info=None: None)
    assert response_status(body, lambda *a: None) == 202


def test_a_slow_send_file_on_waitress_has_an_unknown_status(
        make_app: MakeApp, signals_recorder: SignalRecorder) -> None:
    """send_file's body is the file itself (no werkzeug response to read), and
    waitress keeps the status in a closure, not on an object: the alert says
    the status is unknown rather than guess. Waitress serves over a real
    socket on 127.0.0.1 in this process."""
    waitress = pytest.importorskip("waitress")
    app = Flask("files")

    @app.get("/file")
    def file() -> Any:
        time.sleep(SLOW)
        return send_file(io.BytesIO(b"data"), mimetype="text/plain")

    app, _ = make_app(app=app, profiler="sampler")
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.effective_port}/file"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
            assert response.read() == b"data"
        metrics = signals_recorder.wait_for("slow_request")[0].kwargs["metrics"]
        assert (metrics.name, metrics.status_code) == ("file", None)
    finally:
        server.close()
        thread.join(timeout=10)


def test_a_server_without_a_record_leaves_the_status_unknown() -> None:
    """werkzeug's own servers keep the status in a closure: unknown, not a guess."""
    app = Flask("files")
    app.get("/file")(lambda: send_file(io.BytesIO(b"data"), mimetype="text/plain"))
    body = _call(app, "/file", lambda status, headers, exc_info=None: None)
    assert not hasattr(body, "_callbacks")
    assert response_status(body, lambda *a: None) is None


def test_the_threshold_floor_follows_views_added_later(make_app: MakeApp,
                                                       signals_recorder: SignalRecorder) -> None:
    """The fast path compares with a cached floor; a view with a lower
    threshold added after init_app (before the first request) lowers it."""
    app, perfwatch = make_app(profiler="sampler", threshold=5.0)

    @app.get("/late")
    @perfwatch.threshold(THRESHOLD)
    def late() -> str:
        time.sleep(SLOW)
        return "late"

    assert app.test_client().get("/late").data == b"late"
    assert signals_recorder.wait_for("slow_request")[0].kwargs["metrics"].name == "late"


@pytest.mark.allow_swallowed
def test_an_odd_body_leaves_the_status_unknown_and_says_why(
        caplog: pytest.LogCaptureFixture) -> None:
    class Odd:
        @property
        def _callbacks(self) -> Any:
            raise RuntimeError("odd body")

    assert response_status(Odd(), lambda *a: None) is None  # type: ignore[arg-type]
    assert "reading the status of a slow response" in caplog.text
    assert "RuntimeError: odd body" in caplog.text
