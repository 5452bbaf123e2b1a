"""Shared fixtures: an app factory taking config overrides, a signal recorder,
polling helpers, a guard that fails any test in which flask_perfwatch
swallowed an error it did not expect, the class-level state of the test
notifiers reset for every test, a real redis-server, the store URL shared by
several monitors, and the Mattermost stand-in with an app posting to it."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import select
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import notifiers_for_tests
import pytest
from flask import Flask, Response, abort, request, stream_with_context
from redis_server import RedisServer, running_redis

from flask_perfwatch import PerfWatch
from flask_perfwatch._guard import SWALLOWED
from flask_perfwatch.monitor import Monitor
from flask_perfwatch.testing import SignalRecorder, record_signals

#: a crashed xdist worker's fault-handler dump, printed in the summary
pytest_plugins = ["crash_report"]

if TYPE_CHECKING:
    from mattermost_harness import Harness
    from mattermost_server import MattermostStandIn

#: Slow views take this long; tests use thresholds of THRESHOLD. The margin is
#: wide on purpose: a loaded 2-core machine must not turn fast into slow.
SLOW = 0.8
THRESHOLD = 0.3


def burn(seconds: float) -> int:
    """Hold the CPU (and the GIL) for ``seconds`` in pure Python."""
    deadline = time.perf_counter() + seconds
    total = 0
    while time.perf_counter() < deadline:
        total += sum(range(200))
    return total


def run_in_child(child: Callable[[], Any], *, fork: Callable[[], int] = os.fork,
                 deadline: float = 30.0) -> Any:
    """Run ``child()`` in a forked process and return its answer (JSON through
    a pipe). The child never returns into pytest; an exception in it fails
    the test with its repr, and a child still running after ``deadline``
    seconds is killed. ``fork``: how to fork (a test may bypass Python's
    fork hooks with libc's)."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            try:
                result = {"answer": child()}
            except BaseException as exc:  # the parent shows it
                result = {"error": repr(exc)}
            os.write(write_fd, json.dumps(result).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks: list[bytes] = []
    ends = time.monotonic() + deadline
    with os.fdopen(read_fd, "rb") as pipe:
        while select.select([pipe], [], [], max(ends - time.monotonic(), 0))[0]:
            chunk = pipe.read1(65536)
            if not chunk:
                break
            chunks.append(chunk)
    exited: list[int] = []

    def reaped() -> bool:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            exited.append(os.waitstatus_to_exitcode(status))
        return bool(done)

    try:
        wait_until(reaped, timeout=max(ends - time.monotonic(), 1.0),
                   message="the forked child to exit")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    assert exited == [0]
    result = json.loads(b"".join(chunks))
    assert "error" not in result, result["error"]
    return result["answer"]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def build_app(name: str = "testapp") -> Flask:
    """The app every test monitors: fast, slow, failing, streaming and async views."""
    app = Flask(name)
    app.config["TESTING"] = True

    @app.get("/fast")
    def fast() -> str:
        return "fast"

    @app.get("/slow")
    def slow() -> Response:
        time.sleep(SLOW)
        resp = Response("slow", status=201, headers={"X-View": "slow"})
        resp.set_cookie("flavour", "oat")
        return resp

    @app.get("/cpu")
    def cpu() -> str:
        burn(SLOW)
        return "cpu"

    @app.get("/boom")
    def boom() -> str:
        time.sleep(float(request.args.get("sleep", 0)))
        raise ValueError("boom")

    @app.get("/teapot")
    def teapot() -> str:
        time.sleep(float(request.args.get("sleep", 0)))
        abort(418)

    @app.get("/stream")
    def stream() -> Response:
        def generate() -> Iterator[str]:
            for i in range(3):
                yield f"chunk{i}\n"

        time.sleep(float(request.args.get("sleep", 0)))
        return Response(stream_with_context(generate()), mimetype="text/plain")

    @app.get("/async")
    async def async_view() -> str:
        await asyncio.sleep(SLOW)
        return "async"

    @app.get("/named/<path:label>")
    def named(label: str) -> str:
        time.sleep(float(request.args.get("sleep", 0.05)))
        return label

    @app.get("/echo")
    def echo() -> dict[str, Any]:
        return {"args": request.args.to_dict(flat=False)}

    return app


class SwallowCatcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, SWALLOWED, False):
            self.records.append(record)


@pytest.fixture(autouse=True)
def no_swallowed_errors(request: pytest.FixtureRequest) -> Iterator[SwallowCatcher]:
    """Fail the test if flask_perfwatch swallowed an error, unless the test is
    marked ``allow_swallowed`` (it provokes one on purpose)."""
    catcher = SwallowCatcher()
    logger = logging.getLogger("flask_perfwatch")
    logger.addHandler(catcher)
    try:
        yield catcher
    finally:
        logger.removeHandler(catcher)
    if catcher.records and request.node.get_closest_marker("allow_swallowed") is None:
        details = "\n".join(
            f"{r.getMessage()}\n{logging.Formatter().formatException(r.exc_info)}"
            if r.exc_info else r.getMessage()
            for r in catcher.records
        )
        pytest.fail(f"flask_perfwatch swallowed {len(catcher.records)} error(s):\n{details}")


def _notifier_class_state() -> Iterator[list[Any] | threading.Event]:
    """Every list and event held at class level by a notifier in
    notifiers_for_tests (``RecordingNotifier.received``, ``Stuck.calls``,
    ``HangingNotifier.release``...), found by looking, so a new one is covered."""
    for _, cls in inspect.getmembers(notifiers_for_tests, inspect.isclass):
        if cls.__module__ != notifiers_for_tests.__name__:
            continue
        for value in vars(cls).values():
            if isinstance(value, (list, threading.Event)):
                yield value


@pytest.fixture(autouse=True)
def reset_test_notifiers() -> Iterator[None]:
    """The test notifiers keep what they saw at class level (the pipeline
    builds its own instances); each test starts with empty lists and unset
    events. Afterwards the events are set, so a notifier still blocked on
    ``release`` returns instead of holding a thread into the next test."""
    state = list(_notifier_class_state())
    for value in state:
        value.clear()
    yield
    for value in state:
        if isinstance(value, threading.Event):
            value.set()


@pytest.fixture
def report_dir(tmp_path: Path) -> Path:
    return tmp_path / "reports"


@pytest.fixture
def make_app(report_dir: Path) -> Iterator[Callable[..., tuple[Flask, PerfWatch]]]:
    """``app, perfwatch = make_app(threshold=0.5, ...)``: the test app with
    PerfWatch set up by keyword overrides (report_dir defaults to a tmp dir)."""
    created: list[tuple[Flask, PerfWatch]] = []

    def factory(*, app: Flask | None = None, perfwatch: PerfWatch | None = None,
                **overrides: Any) -> tuple[Flask, PerfWatch]:
        app = app or build_app()
        overrides.setdefault("report_dir", str(report_dir))
        overrides.setdefault("threshold", THRESHOLD)
        perfwatch = perfwatch or PerfWatch()
        perfwatch.init_app(app, **overrides)
        created.append((app, perfwatch))
        return app, perfwatch

    yield factory
    for app, perfwatch in created:
        perfwatch.close(app, timeout=5)


@pytest.fixture
def signals_recorder() -> Iterator[SignalRecorder]:
    with record_signals() as recorder:
        yield recorder


def find_frame(frame: Any, function: str) -> Any:
    """The first frame named ``function`` in a pyinstrument frame tree, or None."""
    if frame.function == function:
        return frame
    for child in frame.children:
        found = find_frame(child, function)
        if found is not None:
            return found
    return None


def monitor_of(app: Flask) -> Monitor:
    """The monitor PerfWatch built for ``app``, for white-box tests that need
    a part itself (its engine, store or a notifier instance). This is the one
    place tests reach into ``app.extensions``; the rest use PerfWatch's API."""
    monitor: Monitor = app.extensions["perfwatch"].monitor
    return monitor


def reports_in(directory: Path) -> list[Path]:
    return sorted(directory.glob("perfwatch-*.html")) if directory.exists() else []


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1 (skips without the binary, fails under CI)."""
    with running_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a store that several monitors (or worker processes) share."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/dedupe.db"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def standin() -> Iterator[MattermostStandIn]:
    """The wire-level Mattermost stand-in; fails the test if it saw a bad request."""
    pytest.importorskip("mattermostdriver")
    from mattermost_server import MattermostStandIn

    with MattermostStandIn() as server:
        yield server
    assert not server.errors, server.errors


@pytest.fixture
def mm_app(standin: MattermostStandIn, make_app: Callable[..., tuple[Flask, PerfWatch]]
           ) -> Callable[..., Harness]:
    """``mm_app(notifiers=(...), **overrides)``: the test app posting to the
    stand-in (see :func:`mattermost_harness.build_harness`)."""
    from mattermost_harness import build_harness

    def factory(**overrides: Any) -> Harness:
        return build_harness(standin, make_app, **overrides)

    return factory
