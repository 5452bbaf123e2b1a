"""Run by tests/test_sampler_gevent.py in a subprocess: a Flask app under
gevent's own WSGI server, every module monkey-patched first (as gunicorn's
gevent worker does), monitored by the sampler engine.

argv: port, report dir. Prints "ready" when serving."""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402
import time  # noqa: E402

from flask import Flask  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from flask_perfwatch import PerfWatch  # noqa: E402

port, report_dir = int(sys.argv[1]), sys.argv[2]
app = Flask(__name__)
app.config.update(PERFWATCH_THRESHOLD="0.3s", PERFWATCH_REPORT_DIR=report_dir,
                  PERFWATCH_NOTIFIERS=["local"], PERFWATCH_HANG_AFTER="1.2s")


def burn_in_greenlet(seconds: float) -> int:
    """Holds the CPU: no other greenlet (and no gevent-made thread) runs meanwhile."""
    deadline = time.perf_counter() + seconds
    total = 0
    while time.perf_counter() < deadline:
        total += sum(range(200))
    return total


def nap_in_greenlet(seconds: float) -> None:
    time.sleep(seconds)  # gevent.sleep: the greenlet is suspended, the hub runs others


@app.get("/cpu")
def cpu_view() -> str:
    burn_in_greenlet(1.0)
    return "cpu"


@app.get("/nap")
def nap_view() -> str:
    nap_in_greenlet(1.0)
    return "nap"


@app.get("/hang")
def hang_view() -> str:
    nap_in_greenlet(2.0)
    return "hang"


@app.get("/fast")
def fast_view() -> str:
    return "fast"


PerfWatch(app)
server = WSGIServer(("127.0.0.1", port), app, log=None)
server.start()
print("ready", flush=True)
server.serve_forever()
