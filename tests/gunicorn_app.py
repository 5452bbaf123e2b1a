"""The app gunicorn serves in ``test_gunicorn_dedupe.py``.

Configured the way a deployment is, by ``PERFWATCH_*`` environment variables
(store, report dir, threshold, window). It also appends one line per event to
the file named by ``GUNICORN_APP_EVENTS`` (``boot``, ``sent``,
``suppressed``, each with the worker's pid), so the test can wait for every
slow request to be decided instead of sleeping. Lines are short single
``O_APPEND`` writes, so workers never interleave them.
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask, Response

from flask_perfwatch import PerfWatch, signals

SLOW = float(os.environ.get("GUNICORN_APP_SLOW", "0.8"))
EVENTS = os.environ.get("GUNICORN_APP_EVENTS")


def record(event: str) -> None:
    if not EVENTS:
        return
    fd = os.open(EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{event} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


app = Flask("gunicorn_app")


@app.get("/fast")
def fast() -> Response:
    return Response("fast", headers={"X-Worker-Pid": str(os.getpid())})


@app.get("/item/<int:n>")
def item(n: int) -> Response:
    return Response(str(n), headers={"X-Worker-Pid": str(os.getpid())})


@app.get("/slow")
def slow() -> Response:
    time.sleep(SLOW)
    return Response("slow", headers={"X-Worker-Pid": str(os.getpid())})


def _on_sent(sender: Any, **_: Any) -> None:
    record("sent")


def _on_suppressed(sender: Any, **_: Any) -> None:
    record("suppressed")


signals.alert_sent.connect(_on_sent, sender=app)
signals.alert_suppressed.connect(_on_suppressed, sender=app)

perfwatch = PerfWatch(app)  # everything else from PERFWATCH_* variables
record("boot")
