"""``PerfWatchMiddleware`` around plain WSGI apps and Flask apps."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SLOW, THRESHOLD, build_app, reports_in
from werkzeug.test import Client

from flask_perfwatch import Config, PerfWatchMiddleware
from flask_perfwatch.testing import SignalRecorder


def plain_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """A WSGI app with no Flask: slow when asked, streaming with a slow body."""
    path = environ["PATH_INFO"]
    if path == "/error":
        raise KeyError("plain")
    if path == "/slow":
        time.sleep(SLOW)
    start_response("202 Accepted", [("Content-Type", "text/plain"), ("X-Plain", "1")])
    if path == "/slow-body":
        return slow_body()
    return [b"plain ", path.encode()]


class slow_body:
    closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield b"first "
        time.sleep(SLOW)
        yield b"last"

    def close(self) -> None:
        type(self).closed = True


@pytest.fixture
def wrap(report_dir: Path) -> Iterator[Any]:
    made: list[PerfWatchMiddleware] = []

    def factory(app: Any, **overrides: Any) -> PerfWatchMiddleware:
        overrides.setdefault("threshold", THRESHOLD)
        overrides.setdefault("report_dir", str(report_dir))
        middleware = PerfWatchMiddleware(app, config=Config(**overrides))
        made.append(middleware)
        return middleware

    yield factory
    for middleware in made:
        middleware.close(5)


def test_plain_wsgi_app_slow_request(wrap: Any, report_dir: Path,
                                     signals_recorder: SignalRecorder) -> None:
    middleware = wrap(plain_app)
    response = Client(middleware).get("/slow?id=7&secret=s", buffered=True)
    assert response.status == "202 Accepted"
    assert response.headers["X-Plain"] == "1"
    assert response.get_data() == b"plain /slow"
    [event] = signals_recorder.wait_for("alert_sent")
    assert event.sender is middleware
    metrics = event.kwargs["metrics"]
    assert metrics.name == "/slow"
    assert metrics.status_code == 202
    assert metrics.params == {"id": "7", "secret": "[REDACTED]"}
    assert metrics.url == "http://localhost/slow?id=7&secret=[REDACTED]"
    assert len(reports_in(report_dir)) == 1


def test_timing_covers_the_body_until_close(wrap: Any, signals_recorder: SignalRecorder
                                            ) -> None:
    slow_body.closed = False
    middleware = wrap(plain_app)
    response = Client(middleware).get("/slow-body")
    assert response.get_data() == b"first last"
    response.close()
    assert slow_body.closed
    [event] = signals_recorder.wait_for("slow_request")
    assert event.kwargs["metrics"].duration > SLOW * 0.9


def test_exception_propagates_and_is_counted(wrap: Any, signals_recorder: SignalRecorder
                                             ) -> None:
    middleware = wrap(plain_app, threshold=1e-9)
    with pytest.raises(KeyError, match="plain"):
        Client(middleware).get("/error", buffered=True)
    [event] = signals_recorder.wait_for("slow_request")
    assert event.kwargs["metrics"].status_code == 500
    assert event.kwargs["metrics"].error == "KeyError"


def test_identical_responses_around_flask(wrap: Any) -> None:
    bare = build_app()
    watched = build_app()
    watched.wsgi_app = wrap(watched.wsgi_app)  # type: ignore[method-assign]
    for url in ("/fast", "/slow", "/echo?a=1", "/teapot", "/stream", "/missing"):
        expected = bare.test_client().get(url, buffered=True)
        got = watched.test_client().get(url, buffered=True)
        assert (got.status, sorted(got.headers.items()), got.get_data()) == (
            expected.status, sorted(expected.headers.items()), expected.get_data())


def test_flask_endpoint_name_is_used(wrap: Any, signals_recorder: SignalRecorder) -> None:
    app = build_app()
    app.wsgi_app = wrap(app.wsgi_app)  # type: ignore[method-assign]
    app.test_client().get("/slow", buffered=True)
    [event] = signals_recorder.wait_for("slow_request")
    assert event.kwargs["metrics"].name == "slow"


def test_path_globs_are_ignored(wrap: Any, signals_recorder: SignalRecorder) -> None:
    middleware = wrap(plain_app, ignore=["/sl*"])
    Client(middleware).get("/slow", buffered=True)
    assert middleware.flush(5)
    assert signals_recorder.events == []
    assert middleware.stats()["requests"] == 0


def test_config_from_environment_and_keywords(monkeypatch: pytest.MonkeyPatch,
                                              report_dir: Path) -> None:
    monkeypatch.setenv("PERFWATCH_THRESHOLD", "2s")
    monkeypatch.setenv("PERFWATCH_REPORT_DIR", str(report_dir))
    middleware = PerfWatchMiddleware(plain_app)
    assert middleware.config.threshold == 2.0
    assert middleware.config.sources["threshold"] == "environment"
    middleware.close()
    middleware = PerfWatchMiddleware(plain_app, threshold=0.5)
    assert middleware.config.threshold == 0.5
    middleware.close()
    middleware = PerfWatchMiddleware(plain_app, config=Config(threshold=3), threshold=4)
    assert middleware.config.threshold == 4
    middleware.close()


def test_disabled_passes_straight_through(wrap: Any, signals_recorder: SignalRecorder) -> None:
    middleware = wrap(plain_app, enabled=False, threshold=1e-9)
    assert Client(middleware).get("/fast", buffered=True).get_data() == b"plain /fast"
    assert middleware.stats()["requests"] == 0
    assert signals_recorder.events == []


def test_a_body_read_to_the_end_is_over_without_close(wrap: Any,
                                                      signals_recorder: SignalRecorder) -> None:
    """werkzeug's test Client does not close an unbuffered response unless the
    caller does: the request still ends when its body is exhausted."""
    middleware = wrap(plain_app)
    response = Client(middleware).get("/slow")  # not buffered, never closed
    assert response.get_data() == b"plain /slow"
    [slow] = signals_recorder.wait_for("slow_request")
    assert slow.kwargs["metrics"].duration > SLOW * 0.9
    fast = Client(middleware).get("/fast")
    assert fast.get_data() == b"plain /fast"
    assert middleware.flush(10)
    # the sampler no longer holds either request: no false "hung" alert can come
    assert middleware.monitor.engine._active == {}
    assert middleware.stats()["requests"] == 2


def test_a_body_dropped_unread_and_unclosed_still_ends(wrap: Any,
                                                       signals_recorder: SignalRecorder) -> None:
    middleware = wrap(plain_app)
    body = middleware({"REQUEST_METHOD": "GET", "PATH_INFO": "/slow", "SERVER_NAME": "h",
                       "SERVER_PORT": "80", "wsgi.url_scheme": "http"},
                      lambda status, headers, exc_info=None: None)
    del body  # a careless caller: neither iterated nor closed
    [slow] = signals_recorder.wait_for("slow_request")
    assert slow.kwargs["metrics"].name == "/slow"
    assert middleware.monitor.engine._active == {}
