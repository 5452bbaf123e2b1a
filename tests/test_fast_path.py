"""The Flask wrapper's fast path (issue 13): a fast request never calls into
the engine, does not wrap ``start_response``, and yet every behaviour holds
for the slow ones (profile, status, endpoint, nesting, stats)."""

from __future__ import annotations

import io
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from conftest import SLOW, THRESHOLD, find_frame, wait_until
from flask import Flask, current_app, send_file
from werkzeug.test import EnvironBuilder

from flask_perfwatch import PerfWatch
from flask_perfwatch.middleware import response_status
from flask_perfwatch.monitor import FAST_SAMPLE, Stats
from flask_perfwatch.profiling import sampler as sampler_module
from flask_perfwatch.profiling.sampler import SamplerEngine
from flask_perfwatch.testing import SignalRecorder

MakeApp = Callable[..., tuple[Flask, PerfWatch]]


def _nothing_in_flight(app: Flask) -> None:
    """The sampler holds no request of the app (a slow one was collected at
    its end; a fast one is forgotten at the sampler's next search)."""
    timer = app.extensions["perfwatch"].timer
    assert timer._registry is not None
    engine = timer._engine
    wait_until(lambda: not engine._found and not engine._states, timeout=10,
               message="the sampler still holds a request that ended")


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
    _nothing_in_flight(app)
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
    _nothing_in_flight(app)
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
    """A view that calls its own app in process: the sampler finds both
    wrapper frames on the thread's stack, and each request gets its own
    profile; both are reported."""
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
    _nothing_in_flight(app)
    assert perfwatch.stats(app)["requests"] == 2


def test_a_request_that_raises_is_reported_and_forgotten(make_app: MakeApp,
                                                      signals_recorder: SignalRecorder) -> None:
    app, _perfwatch = make_app(profiler="sampler")
    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(ValueError, match="boom"):
        app.test_client().get(f"/boom?sleep={SLOW}")
    metrics = signals_recorder.wait_for("slow_request")[0].kwargs["metrics"]
    assert (metrics.name, metrics.status_code, metrics.error) == ("boom", 500, "ValueError")
    _nothing_in_flight(app)


def _engine(app: Flask) -> Any:
    return app.extensions["perfwatch"].timer._engine


def _in_background(app: Flask, path: str) -> threading.Thread:
    thread = threading.Thread(target=lambda: app.test_client().get(path), daemon=True)
    thread.start()
    return thread


def _held_app(name: str, path: str) -> tuple[Flask, threading.Event, threading.Event]:
    """An app whose view at ``path`` sets ``entered`` and waits for ``release``;
    it also serves ``/fast``."""
    app = Flask(name)
    entered, release = threading.Event(), threading.Event()

    @app.get(path)
    def held() -> str:
        entered.set()
        release.wait(30)
        return "done"

    @app.get("/fast")
    def fast() -> str:
        return "fast"

    return app, entered, release


def test_the_sampler_finds_a_request_by_its_wrapper_frame(make_app: MakeApp) -> None:
    """No registration: the sampler thread finds a request in flight by the
    wrapper's frame on its thread's stack, and reads its start and environ."""
    app, entered, release = _held_app("found", "/wait")
    app, _ = make_app(app=app, profiler="sampler")
    engine = _engine(app)
    before = time.perf_counter()
    thread = _in_background(app, "/wait?q=1")
    try:
        assert entered.wait(10)
        [req] = wait_until(lambda: list(engine._found.values()), timeout=10,
                           message="the sampler to find the request")
        start, environ = req[sampler_module._RECORD]
        assert before < start < time.perf_counter()
        assert (environ["PATH_INFO"], environ["QUERY_STRING"]) == ("/wait", "q=1")
        assert str(req[sampler_module._DESCRIPTION]) == "GET /wait"
        assert req[sampler_module._IDENT] == thread.ident
        # and it is sampled once armed, from its own frames
        wait_until(lambda: engine._states, timeout=10, message="a sample")
    finally:
        release.set()
        thread.join(30)
    _nothing_in_flight(app)


def test_a_request_on_an_ignored_path_is_never_found(make_app: MakeApp,
                                                     signals_recorder: SignalRecorder) -> None:
    """The wrapper's frame of an ignored path (or of one handed to the general
    path) has no ``start``: it is not a request, is never sampled, never
    reported hung, and does not keep the sampler thread awake polling."""
    app, entered, release = _held_app("ignored_path", "/stream/feed")
    app, _ = make_app(app=app, profiler="sampler", ignore=["/stream/*"], hang_after=0.5)
    engine = _engine(app)
    assert app.test_client().get("/fast").status_code == 200  # the thread is awake
    thread = _in_background(app, "/stream/feed")
    try:
        assert entered.wait(10)
        wait_until(lambda: engine._skipped, timeout=10, message="the sampler to see the frame")
        wakeups = engine.wakeups
        wait_until(lambda: engine.wakeups > wakeups + 3, timeout=10, message="more rounds")
        assert engine._found == {}
        assert engine._states == {}
        # past idle_after with nothing but the ignored request: asleep until woken
        wait_until(lambda: _registry_idle(app), timeout=10, message="the sampler to sleep")
        asleep = engine.wakeups
        time.sleep(0.2)  # nothing to poll for: it must stay asleep meanwhile
        assert engine.wakeups == asleep
    finally:
        release.set()
        thread.join(30)
    assert signals_recorder.of("request_hung") == []


def _registry_idle(app: Flask) -> bool:
    registry = app.extensions["perfwatch"].timer._registry
    return bool(registry.idle)


def test_two_apps_in_one_process_each_profile_their_own_requests(
        make_app: MakeApp, signals_recorder: SignalRecorder) -> None:
    """Every app's wrapper runs the same code: each engine takes only the
    frames of its own app's wrapper (read from the frame's ``self``), so
    neither profiles the other's requests, even nested one in the other."""
    outer_app = Flask("outer_app")
    inner_app = Flask("inner_app")

    engines: dict[str, Any] = {}
    held: dict[str, set[str]] = {}

    def paths(engine: Any) -> set[str]:
        return {req[sampler_module._RECORD][1]["PATH_INFO"] for req in engine._found.values()}

    @inner_app.get("/inner")
    def inner() -> str:
        started = time.monotonic()
        for name in ("outer", "inner"):  # each engine has searched since both started
            wakeups = engines[name].wakeups
            wait_until(lambda e=engines[name], w=wakeups: e.wakeups > w + 2 and e._found,
                       timeout=10, message=f"the {name} app's sampler to search")
            held[name] = paths(engines[name])
        time.sleep(max(SLOW - (time.monotonic() - started), 0))
        return "inner"

    @outer_app.get("/outer")
    def outer() -> str:
        return "outer+" + inner_app.test_client().get("/inner").get_data(as_text=True)

    outer_app, _ = make_app(app=outer_app, profiler="sampler")
    inner_app, _ = make_app(app=inner_app, profiler="sampler")
    engines.update(outer=_engine(outer_app), inner=_engine(inner_app))
    assert outer_app.test_client().get("/outer").data == b"outer+inner"
    assert held == {"outer": {"/outer"}, "inner": {"/inner"}}
    events = signals_recorder.wait_for("slow_request", 2)
    metrics = {e.kwargs["metrics"].name: e.kwargs["metrics"] for e in events}
    assert set(metrics) == {"outer", "inner"}
    for m in metrics.values():
        assert m.profile is not None
        assert m.profile.sample_count > 10
    # the inner profile is rooted at the inner app's wrapper: no outer view in it
    assert find_frame(metrics["inner"].profile.session.root_frame(), "outer") is None
    assert find_frame(metrics["outer"].profile.session.root_frame(), "inner") is not None
    _nothing_in_flight(outer_app)
    _nothing_in_flight(inner_app)


def test_a_collected_request_is_not_found_again_before_it_returns(make_app: MakeApp) -> None:
    """collect() runs inside the wrapper's frame, which stays on the stack
    until the wrapper returns: a search of the stacks meanwhile must not take
    it for a new request (it would be sampled, and reported hung again)."""
    app = Flask("collected")
    seen: dict[str, Any] = {}

    @app.get("/self-collect")
    def self_collect() -> str:
        timer = current_app.extensions["perfwatch"].timer
        engine = timer._engine
        anchor = sys._getframe()
        while anchor.f_code is not type(timer).__call__.__code__:
            anchor = anchor.f_back
        wait_until(lambda: engine._found, timeout=10, message="the sampler to find it")
        engine.collect(timer._registry, anchor)

        def search() -> None:  # from another thread, as the sampler's does
            with engine._lock:
                engine._discover(sys._current_frames())
            seen["found"] = dict(engine._found)

        searcher = threading.Thread(target=search)
        searcher.start()
        searcher.join(10)
        return "ok"

    app, _ = make_app(app=app, profiler="sampler")
    assert app.test_client().get("/self-collect").data == b"ok"
    assert seen["found"] == {}
    _nothing_in_flight(app)


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
    closing = threading.Event()

    def serve() -> None:
        try:
            server.run()
        except OSError:  # its select() on the socket close() just closed from this thread
            if not closing.is_set():
                raise

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.effective_port}/file"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
            assert response.read() == b"data"
        metrics = signals_recorder.wait_for("slow_request")[0].kwargs["metrics"]
        assert (metrics.name, metrics.status_code) == ("file", None)
    finally:
        closing.set()
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
