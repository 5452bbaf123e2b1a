"""The app the soak test serves under gunicorn ``gthread`` (``benchmarks/soak.py``,
``tests/test_soak.py``): fast, slow, CPU-bound, junk-parameter and failing
views, a notifier that misbehaves on purpose and a signal receiver that always
raises. The runner sets ``PERFWATCH_STORE`` and ``PERFWATCH_REPORT_DIR``; the
rest is fixed here.

Gunicorn must load it as ``tests.soak_app:app`` (with the project root on the
path): ``PERFWATCH_NOTIFIERS`` names ``tests.soak_app:FlakyNotifier``, and a
second import of this file under another module name would build a second app.

Every deliberate failure carries :data:`DELIBERATE` in its message, so the
runner can tell a traceback it provoked from one it did not.

Logging is configured the way an operator would, with one twist that makes
the runner's rules exact (:class:`SoakFormatter`): every line of a record after
its first is prefixed with ``  | msg <logger> | `` (more lines of the message,
such as the tracebacks flask_perfwatch writes into its messages) or
``  | tb <logger> | `` (a traceback passed as ``exc_info``). So a
``Traceback`` line without a prefix was printed by something other than these
loggers (an uncaught exception in a thread, ``logging``'s own error handler,
gunicorn's log), and a line forged by a request shows as a line of its record.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar

from flask import Flask, Response, jsonify

from flask_perfwatch import PerfWatch, signals
from flask_perfwatch._guard import SWALLOWED
from flask_perfwatch.notifiers import Notifier

if TYPE_CHECKING:
    from flask_perfwatch.metrics import PerformanceMetrics
    from flask_perfwatch.report import Report

#: In the message of every exception raised on purpose.
DELIBERATE = "SOAK-DELIBERATE"
THRESHOLD = 0.3
NOTIFIERS = ["local", "tests.soak_app:FlakyNotifier"]
#: Per-notifier time budget; :data:`LONG_BLOCK` exceeds it, :data:`SHORT_BLOCK` does not.
NOTIFIER_TIMEOUT = 3.0
LONG_BLOCK = 5.0
SHORT_BLOCK = 1.0
ENDPOINT_ALERT_LIMIT = 10
#: View durations, each well above THRESHOLD (a sleep never undershoots; the
#: CPU burn runs on a wall-clock deadline).
SLOW = 0.5
CPU = 0.4
JUNK = 0.4
BOOM = 0.4
#: Prefix of a record's every line after its first: ``CONTINUATION.format(kind, logger)``,
#: kind ``msg`` (the message's own lines) or ``tb`` (the ``exc_info`` traceback).
CONTINUATION = "  | {} {} | "
#: Marks records that flask_perfwatch logged as "swallowed" (its guard's ``extra``).
SWALLOWED_TAG = " [swallowed]"


class SoakFormatter(logging.Formatter):
    """``time [pid] [LEVEL] logger[ [swallowed]]: message``; the record's
    further lines prefixed with :data:`CONTINUATION` (the text after the
    prefix is unaltered, so a forged line still reads as one)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s [%(process)d] [%(levelname)s] %(name)s%(soak_tag)s: "
                         "%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        record.soak_tag = SWALLOWED_TAG if getattr(record, SWALLOWED, False) else ""
        first, *more = self.formatMessage(record).split("\n")
        lines = [first, *(CONTINUATION.format("msg", record.name) + line for line in more)]
        tail = ""
        if record.exc_info:
            tail = self.formatException(record.exc_info)
        if record.stack_info:
            tail += ("\n" if tail else "") + self.formatStack(record.stack_info)
        if tail:
            lines += [CONTINUATION.format("tb", record.name) + line for line in tail.split("\n")]
        return "\n".join(lines)


class RecordHandler(logging.Handler):
    """Writes each record to stderr with one ``write`` call: the two workers
    share the log file, and a record split over several writes (a buffered
    stream writes 8 KB at a time; reports of 8 KB params make long lines)
    could interleave with the other worker's."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            while data:
                data = data[os.write(sys.stderr.fileno(), data):]
        except Exception:
            self.handleError(record)


def _configure_logging(app: Flask) -> None:
    """One stderr handler for flask_perfwatch and the app's logger. Called
    before anything touches ``app.logger``, so Flask does not add its own
    default handler (which would print the /boom tracebacks a second time,
    unprefixed)."""
    handler = RecordHandler()
    handler.setFormatter(SoakFormatter())
    handler.setLevel(logging.INFO)
    for logger in (logging.getLogger("flask_perfwatch"), logging.getLogger(app.name)):
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


class FlakyNotifierError(RuntimeError):
    """The flaky notifier's ordinary failure."""


class Boom(BaseException):
    """Not an ``Exception``: an ``except Exception`` does not stop it."""


class SoakViewError(RuntimeError):
    """What ``/boom`` raises (Flask answers 500)."""


class SoakReceiverError(RuntimeError):
    """What the user's ``slow_request`` receiver raises, every time."""


class FlakyNotifier(Notifier):
    """A plug-in that misbehaves, by the number ``n`` (from 1) of each send in
    this process: ``n == 2`` raises :class:`Boom` (once); every 3rd raises
    :class:`FlakyNotifierError`; ``n == 1`` and ``n % 7 == 4`` block
    :data:`LONG_BLOCK` seconds (past the notifier timeout) and ``n % 7 == 6``
    blocks :data:`SHORT_BLOCK` (within it), then return as if delivered. The
    first three sends of a worker thus meet every kind of failure.

    Its counters (:meth:`counters`) say how many sends must count as failed
    (every raise and every block past the timeout) and how many are still
    running (``in_flight``).
    """

    name = "flaky"
    _lock: ClassVar[threading.Lock] = threading.Lock()
    _sends: ClassVar[itertools.count[int]] = itertools.count(1)
    counts: ClassVar[dict[str, int]] = dict.fromkeys(
        ("sends", "in_flight", "raised", "boom", "long_blocks", "short_blocks", "returned"), 0)

    @classmethod
    def _count(cls, key: str, amount: int = 1) -> None:
        with cls._lock:
            cls.counts[key] += amount

    @classmethod
    def counters(cls) -> dict[str, int]:
        with cls._lock:
            data = dict(cls.counts)
        data["expected_failures"] = data["raised"] + data["boom"] + data["long_blocks"]
        return data

    def send(self, metrics: PerformanceMetrics, report: Report) -> None:
        with self._lock:
            n = next(self._sends)
            self.counts["sends"] += 1
            self.counts["in_flight"] += 1
        try:
            self._misbehave(n)
        finally:
            self._count("in_flight", -1)

    def _misbehave(self, n: int) -> None:
        if n == 2:
            self._count("boom")
            raise Boom(f"{DELIBERATE}: flaky notifier raises a BaseException on send #{n}")
        if n % 3 == 0:
            self._count("raised")
            raise FlakyNotifierError(f"{DELIBERATE}: flaky notifier fails send #{n}")
        if n == 1 or n % 7 == 4:
            self._count("long_blocks")
            time.sleep(LONG_BLOCK)
        elif n % 7 == 6:
            self._count("short_blocks")
            time.sleep(SHORT_BLOCK)
        self._count("returned")


app = Flask(__name__)
_configure_logging(app)
_receiver_calls = itertools.count()


# Connected before PerfWatch(app), so that if blinker called receivers in
# connection order this one would run before the built-in pipeline.
@signals.slow_request.connect_via(app)
def failing_receiver(sender: Any, **_: Any) -> None:
    next(_receiver_calls)
    raise SoakReceiverError(f"{DELIBERATE}: the user's slow_request receiver fails")


def burn(seconds: float) -> int:
    """Hold the CPU (and the GIL) for ``seconds`` of wall-clock time."""
    deadline = time.perf_counter() + seconds
    total = 0
    while time.perf_counter() < deadline:
        total += sum(range(200))
    return total


ODD_METHODS = ["GET", "PROPFIND", "X-CUSTOM"]


@app.get("/fast")
def fast() -> str:
    return "fast"


@app.route("/slow", methods=ODD_METHODS)
@app.route("/slow/<label>", methods=ODD_METHODS)  # one segment, line breaks included
@app.route("/slow/<path:label>", methods=ODD_METHODS)  # several (never a line break)
def slow(label: str = "") -> str:
    time.sleep(SLOW)
    return "slow"


@app.get("/cpu")
def cpu() -> str:
    burn(CPU)
    return "cpu"


@app.get("/junk")
def junk() -> str:
    time.sleep(JUNK)
    return "junk"


@app.get("/boom")
def boom() -> str:
    time.sleep(BOOM)
    raise SoakViewError(f"{DELIBERATE}: /boom fails after {BOOM}s")


@app.after_request
def tag_worker(response: Response) -> Response:
    """Every response names the worker that served it (the runner counts per worker)."""
    response.headers["X-Soak-Pid"] = str(os.getpid())
    return response


def _proc_status() -> dict[str, str]:
    with open("/proc/self/status", encoding="ascii") as fh:
        return dict(line.split(":", 1) for line in fh.read().splitlines() if ":" in line)


perfwatch = PerfWatch(app, threshold=THRESHOLD, notifiers=NOTIFIERS,
                      notifier_timeout=NOTIFIER_TIMEOUT,
                      endpoint_alert_limit=ENDPOINT_ALERT_LIMIT)


@app.get("/__soak/stats")
@perfwatch.ignore
def soak_stats() -> Response:
    """This process's monitor stats and resources. ``pool_threads`` counts the
    threads of the pool serving this request (gunicorn's gthread pool, which
    grows lazily up to ``--threads``), told apart by the name prefix it gives
    its threads."""
    status = _proc_status()
    names = sorted(t.name for t in threading.enumerate())
    pool_prefix = threading.current_thread().name.rpartition("_")[0]
    return jsonify({
        "pid": os.getpid(),
        "stats": perfwatch.stats(),
        "rss_kb": int(status["VmRSS"].split()[0]),
        "threads": threading.active_count(),
        "threads_os": int(status["Threads"]),
        "pool_threads": sum(1 for name in names
                            if pool_prefix and name.rpartition("_")[0] == pool_prefix),
        "thread_names": names,
        "fds": len(os.listdir("/proc/self/fd")),
        "flaky": FlakyNotifier.counters(),
        "receiver_calls": next(copy.copy(_receiver_calls)),
        "config": {"threshold": THRESHOLD, "notifiers": len(NOTIFIERS),
                   "notifier_timeout": NOTIFIER_TIMEOUT,
                   "endpoint_alert_limit": ENDPOINT_ALERT_LIMIT},
    })


@app.get("/__soak/flush")
@perfwatch.ignore
def soak_flush() -> Response:
    """Wait (at most 30 s) until this worker's queued alerts are delivered."""
    started = time.monotonic()
    flushed = perfwatch.flush(timeout=30)
    return jsonify({"pid": os.getpid(), "flushed": flushed, "timeout": 30,
                    "elapsed": time.monotonic() - started,
                    "queue_depth": perfwatch.stats().get("queue_depth")})
