"""A real Flask app served over a real socket on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import SLOW, build_app, reports_in
from flask import Flask
from notifiers_for_tests import HangingNotifier
from werkzeug.serving import BaseWSGIServer, make_server

from flask_perfwatch.testing import SignalRecorder


class Served:
    def __init__(self, app: Flask) -> None:
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def serve() -> Iterator[object]:
    servers: list[Served] = []

    def start(app: Flask) -> Served:
        served = Served(app)
        servers.append(served)
        return served

    yield start
    for served in servers:
        served.close()


def fetch(session: requests.Session, url: str) -> tuple[int, dict[str, str], bytes]:
    response = session.get(url, timeout=30)
    headers = {k: v for k, v in response.headers.items() if k.lower() != "date"}
    return response.status_code, headers, response.content


@pytest.mark.slow
def test_over_a_socket_responses_are_identical(serve, make_app, report_dir: Path,
                                               signals_recorder: SignalRecorder) -> None:
    bare = serve(build_app())
    app = build_app()
    app.config["TESTING"] = False  # a real server: unhandled errors become 500s
    watched_app, perfwatch = make_app(app=app)
    watched = serve(watched_app)
    bare_app = bare.server.app
    bare_app.config["TESTING"] = False
    with requests.Session() as session:
        for path in ("/fast", "/slow?x=1", "/boom?sleep=0.5", "/teapot", "/stream?sleep=0.4",
                     "/async", "/echo?a=1&a=2", "/missing"):
            assert fetch(session, watched.url + path) == fetch(session, bare.url + path), path
    assert perfwatch.flush(10, watched_app)
    names = sorted(e.kwargs["metrics"].name for e in signals_recorder.of("slow_request"))
    assert names == ["async_view", "boom", "slow", "stream"]
    [boom] = [e.kwargs["metrics"] for e in signals_recorder.of("slow_request")
              if e.kwargs["metrics"].name == "boom"]
    assert boom.status_code == 500
    assert boom.url == f"{watched.url}/boom?sleep=0.5"
    assert len(reports_in(report_dir)) == 4


@pytest.mark.slow
def test_stuck_notifier_never_delays_responses(serve, make_app) -> None:
    watched_app, perfwatch = make_app(notifiers=["notifiers_for_tests:HangingNotifier"],
                                      dedup_window=0)
    served = serve(watched_app)
    try:
        with requests.Session() as session:
            assert session.get(served.url + "/slow", timeout=30).status_code == 201
            assert HangingNotifier.entered.wait(10)
            # while the delivery thread is stuck, slow and fast requests take
            # what their views take, not the notifier's time
            started = time.monotonic()
            assert session.get(served.url + "/slow", timeout=30).status_code == 201
            assert time.monotonic() - started < SLOW + 3
            started = time.monotonic()
            assert session.get(served.url + "/fast", timeout=30).content == b"fast"
            assert time.monotonic() - started < 3
    finally:
        HangingNotifier.release.set()
    assert perfwatch.flush(10, watched_app)
