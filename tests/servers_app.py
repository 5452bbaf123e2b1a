"""The app every server in ``test_servers.py`` loads (``servers_app:app``).

Configured the way a deployment is, by ``PERFWATCH_*`` environment variables
(the test sets the store, report dir, threshold and notifiers). Views:

- ``/cpu``: ``cpu_view`` calls ``burn_cpu``, holding the CPU (and the GIL)
  for ``SERVERS_APP_SLOW`` seconds;
- ``/sleep``: ``sleep_view`` sleeps as long (under gevent, a cooperative
  sleep: the greenlet is parked in the hub);
- ``/fast``: answers at once;
- ``/threads``: this worker's pid and the names of the threads that really
  run in it (a thread object a fork left behind looks alive to
  :mod:`threading`, so each is checked against ``/proc/self/task``).

Each view answers with its own status, headers, a cookie and a body, so the
test can check the server passed them through untouched. The endpoints are
named ``cpu``/``sleep``/``fast``, unlike the view functions: a function name
in a report can then only come from the profile's frames, never from the
report's header.

Two files let the test watch without sleeping (short single ``O_APPEND``
writes, so processes never interleave lines):

- ``SERVERS_APP_EVENTS``: ``boot <pid>`` each time this module is imported
  (once in a pre-forking master, once per worker with ``--lazy-apps``), and
  ``suppressed <endpoint> <pid>`` for each alert dedupe swallowed;
- ``SERVERS_APP_ALERTS``: one JSON line per alert from :class:`AlertLog`, a
  notifier listed in ``PERFWATCH_NOTIFIERS`` beside ``local``.

``SERVERS_APP_WARM=1`` makes the import serve one slow request through the
test client and wait until its alert is delivered (a warm-up, as some
deployments do), so that a pre-forking master has started the sampler and
delivery threads before the fork. ``SERVERS_APP_IMPORT_AFTER=uwsgidecorators``
imports that module last, which replaces ``uwsgi.post_fork_hook`` after
flask_perfwatch chained its own. :func:`run_werkzeug` runs werkzeug's
threaded dev server (``app.run(threaded=True)``).
"""

from __future__ import annotations

import importlib
import json
import os
import threading
import time
from typing import TYPE_CHECKING

from flask import Flask, Response

from flask_perfwatch import PerfWatch, signals
from flask_perfwatch.notifiers import Notifier

if TYPE_CHECKING:
    from flask_perfwatch.metrics import PerformanceMetrics
    from flask_perfwatch.report import Report

SLOW = float(os.environ.get("SERVERS_APP_SLOW", "1.0"))
#: the query parameter of the warm-up request, so its alert is told apart
WARM_PARAM = "warmup"


def append_line(variable: str, line: str) -> None:
    """Append ``line`` to the file named by ``$variable`` (if set), atomically."""
    path = os.environ.get(variable)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def profile_functions(metrics: PerformanceMetrics) -> list[str]:
    """The function names in the alert's profile (empty if it has none)."""
    if metrics.profile is None:
        return []
    records = metrics.profile.to_json()["frame_records"]
    return sorted({ident.split("\x00", 1)[0] for stack, _ in records for ident in stack})


class AlertLog(Notifier):
    """Appends one JSON line per alert to ``SERVERS_APP_ALERTS``: the worker's
    pid, the endpoint, its params and the function names of its profile."""

    name = "servers-app-alert-log"

    def send(self, metrics: PerformanceMetrics, report: Report) -> None:
        append_line("SERVERS_APP_ALERTS", json.dumps({
            "pid": os.getpid(),
            "name": metrics.name,
            "status": metrics.status_code,
            "params": metrics.params,
            "samples": metrics.profile.sample_count if metrics.profile else 0,
            "functions": profile_functions(metrics),
        }))


def burn_cpu(seconds: float) -> int:
    """Hold the CPU in pure Python for ``seconds``."""
    deadline = time.perf_counter() + seconds
    total = 0
    while time.perf_counter() < deadline:
        total += sum(range(200))
    return total


def _response(body: str, status: int, view: str) -> Response:
    response = Response(body, status=status, headers={"X-View": view,
                                                      "X-Worker-Pid": str(os.getpid())})
    response.set_cookie("flavour", view)
    return response


app = Flask("servers_app")


@app.get("/cpu", endpoint="cpu")
def cpu_view() -> Response:
    burn_cpu(SLOW)
    return _response("burnt", 201, "cpu")


@app.get("/sleep", endpoint="sleep")
def sleep_view() -> Response:
    time.sleep(SLOW)
    return _response("slept", 202, "sleep")


@app.get("/fast", endpoint="fast")
def fast_view() -> Response:
    return _response("fast", 200, "fast")


@app.get("/threads", endpoint="threads")
def threads_view() -> dict[str, object]:
    tasks = {int(name) for name in os.listdir("/proc/self/task")}
    running = [t.name for t in threading.enumerate() if t.native_id in tasks]
    return {"pid": os.getpid(), "running": running}


def _on_suppressed(sender: Flask, metrics: PerformanceMetrics, **_: object) -> None:
    append_line("SERVERS_APP_EVENTS", f"suppressed {metrics.name} {os.getpid()}")


signals.alert_suppressed.connect(_on_suppressed, sender=app)

perfwatch = PerfWatch(app)  # everything else from PERFWATCH_* variables


def _warm_up() -> None:
    """One slow request before the server forks, delivered before it does,
    then wait until the sampler thread has parked.

    The wait is for uWSGI, not for us: its master releases the GIL before it
    forks, and a worker forked while another master thread held the GIL
    waits for it forever (``take_gil`` in ``uwsgi_python_master_fixup``,
    before any Python code runs; about one start in 60 here, see
    docs/deployment.rst). The sampler polls for ``idle_after`` (1 s) after
    the last request, then sleeps until woken; the delivery and notifier
    threads are already blocked once :meth:`flush` returns."""
    with app.test_client() as client:
        status = client.get(f"/sleep?{WARM_PARAM}=1").status_code
    if status != 202:
        raise RuntimeError(f"the warm-up request answered {status}")
    if not perfwatch.flush(30, app):
        raise RuntimeError("the warm-up alert was not delivered within 30 s")
    engine = app.extensions["perfwatch"].monitor.engine
    deadline = time.monotonic() + 30
    while not engine._sleeping:  # white-box: the sampler's "parked until woken" flag
        if time.monotonic() > deadline:
            raise RuntimeError("the sampler thread did not go idle within 30 s")
        time.sleep(0.05)


if os.environ.get("SERVERS_APP_WARM") == "1":
    _warm_up()
if os.environ.get("SERVERS_APP_IMPORT_AFTER"):
    importlib.import_module(os.environ["SERVERS_APP_IMPORT_AFTER"])
append_line("SERVERS_APP_EVENTS", f"boot {os.getpid()}")


def run_werkzeug(port: int) -> None:
    """The werkzeug dev server, threaded, as ``flask run`` runs it."""
    app.run(host="127.0.0.1", port=port, threaded=True, use_reloader=False)
