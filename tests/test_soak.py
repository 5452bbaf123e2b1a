"""The soak test (``benchmarks/soak.py``) in CI, and the soak's own rules.

``test_soak_under_gunicorn_gthread`` runs the whole soak for 20 s of load:
real gunicorn ``gthread`` on 127.0.0.1, mixed fast, slow and hostile requests,
a flaky notifier and a raising receiver, and asserts every check.

The other tests feed the soak's evaluation a synthetic run that passes, then
break one thing at a time (an unaccounted alert, a leaked thread, a stray
traceback, a secret in a report...) and assert that exactly the check meant
to catch it fails, with evidence in its message: a check that cannot fail
would prove nothing.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


def _load_soak() -> ModuleType:
    """``benchmarks/soak.py`` as a module (``benchmarks/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("perfwatch_soak",
                                                  ROOT / "benchmarks" / "soak.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


soak = _load_soak()


@pytest.mark.slow
def test_soak_under_gunicorn_gthread(tmp_path: Path) -> None:
    result = soak.run_soak(soak.SoakOptions(seconds=20, warmup=4, workdir=tmp_path / "soak"))
    logger.info("SOAK\n%s", result.report())
    assert result.ok, result.report()


# --- the rules, on a synthetic run ------------------------------------------------------

PIDS = [101, 102]
ALERTS = 6  # per worker; the flaky notifier failed 3 of them (raise, Boom, long block)
SLOW = 20


def _stats() -> dict[str, Any]:
    return {"requests": 80, "slow": SLOW, "hung": 0, "alerts": ALERTS,
            "alerts_sent": ALERTS + ALERTS - 3, "alerts_failed": 3,
            "alerts_suppressed": SLOW - ALERTS, "alerts_dropped": 0,
            "receiver_errors": SLOW, "errors": SLOW, "queue_depth": 0,
            "notifiers": {"local": {"sent": ALERTS, "failed": 0},
                          "flaky": {"sent": ALERTS - 3, "failed": 3}}}


def _sample(pid: int) -> dict[str, Any]:
    return {"pid": pid, "stats": _stats(), "rss_kb": 40_000, "threads": 9, "threads_os": 9,
            "pool_threads": 4, "thread_names": ["MainThread"], "fds": 15,
            "flaky": {"sends": ALERTS, "in_flight": 0, "raised": 1, "boom": 1,
                      "long_blocks": 1, "short_blocks": 0, "returned": 4,
                      "expected_failures": 3},
            "receiver_calls": SLOW,
            "config": {"threshold": 0.3, "notifiers": 2, "notifier_timeout": 3.0,
                       "endpoint_alert_limit": 10}}


def _outcome(factory: Callable[..., Any], pid: int, n: int) -> Any:
    probe = factory(random.Random(0), n)
    return soak.Outcome(probe, "load", probe.status, probe.body or probe.contains or b"",
                        pid if probe.by_app else None)


GOOD_LOG = """\
[2026-12-01 10:00:00 +0000] [100] [INFO] Starting gunicorn 27.0.1
[2026-12-01 10:00:00 +0000] [101] [INFO] Booting worker with pid: 101
[2026-12-01 10:00:00 +0000] [102] [INFO] Booting worker with pid: 102
[2026-12-01 10:00:01 +0000] [101] [WARNING] Invalid request from ip=127.0.0.1: Invalid HTTP \
request line: 'GET /slow?q=%ff HTTP/1.1'
2026-12-01 10:00:02,000 [101] [ERROR] flask_perfwatch [swallowed]: error in a receiver of \
signal 'slow-request' (swallowed; the application is not affected): \
tests.soak_app.SoakReceiverError: SOAK-DELIBERATE: the user's slow_request receiver fails
  | msg flask_perfwatch | Traceback (most recent call last):
  | msg flask_perfwatch |   File "tests/soak_app.py", line 1, in failing_receiver
  | msg flask_perfwatch | tests.soak_app.SoakReceiverError: SOAK-DELIBERATE: the user's \
slow_request receiver fails
2026-12-01 10:00:03,000 [102] [ERROR] flask_perfwatch.pipeline: notifier 'flaky' failed for \
Slow request GET http://127.0.0.1/slow?next=%5Cr%5CnFORGED-SOAK-LINE [slow] took 0.5s: \
tests.soak_app.Boom: SOAK-DELIBERATE: flaky notifier raises a BaseException on send #2
  | msg flask_perfwatch.pipeline | Traceback (most recent call last):
  | msg flask_perfwatch.pipeline |   File "flask_perfwatch/dispatch.py", line 1, in send
  | msg flask_perfwatch.pipeline | tests.soak_app.Boom: SOAK-DELIBERATE: flaky notifier \
raises a BaseException on send #2
2026-12-01 10:00:04,000 [102] [ERROR] tests.soak_app: Exception on /boom [GET]
  | tb tests.soak_app | Traceback (most recent call last):
  | tb tests.soak_app |   File "tests/soak_app.py", line 1, in boom
  | tb tests.soak_app | tests.soak_app.SoakViewError: SOAK-DELIBERATE: /boom fails after 0.4s
[2026-12-01 10:00:09 +0000] [100] [INFO] Handling signal: term
[2026-12-01 10:00:09 +0000] [100] [INFO] Shutting down: Master
"""


@dataclass
class Run:
    """Everything :func:`soak.evaluate` reads; tests change one thing."""

    result: Any
    log: str
    report_dir: Path
    store_files: list[Path]
    stopped: bool = True
    returncode: int | None = 0

    def write_report(self, name: str, pid: int, alert_id: str, endpoint: str,
                     body: str = "") -> Path:
        meta = json.dumps({"id": alert_id, "name": endpoint, "pid": pid, "hung": False})
        path = self.report_dir / name
        path.write_text(f"<html><body>{body}<script type=\"application/json\" "
                        f"id=\"perfwatch-metadata\">{meta}</script></body></html>")
        return path

    def checks(self) -> dict[str, Any]:
        checks = soak.evaluate(self.result, self.log.encode("utf-8", "surrogateescape"),
                               self.report_dir, store_files=self.store_files,
                               stopped=self.stopped, returncode=self.returncode)
        return {check.name: check for check in checks}


@pytest.fixture
def run(tmp_path: Path) -> Run:
    result = soak.SoakResult(soak.SoakOptions(store="sqlite"), tmp_path, pids=list(PIDS))
    result.start = {pid: _sample(pid) for pid in PIDS}
    result.end = {pid: _sample(pid) for pid in PIDS}
    result.flush = {pid: {"pid": pid, "flushed": True, "elapsed": 0.1, "timeout": 30,
                          "queue_depth": 0} for pid in PIDS}
    n = iter(range(1, 10_000))
    outcomes = [_outcome(factory, PIDS[0], next(n)) for factory in soak.PRIMER]
    outcomes += [_outcome(soak._junk, PIDS[i % 2], next(n)) for i in range(11)]
    outcomes += [_outcome(soak._fast, PIDS[i % 2], next(n)) for i in range(20)]
    result.outcomes = outcomes
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    store = tmp_path / "dedupe.db"
    store.write_bytes(b"SQLite format 3\x00")
    made = Run(result, GOOD_LOG, report_dir, [store])
    endpoints = ["slow", "junk", "cpu"]
    for pid in PIDS:
        for i in range(ALERTS):
            made.write_report(f"perfwatch-{pid}-{i}.html", pid, f"{pid}-{i}", endpoints[i % 3])
    return made


def test_a_good_run_passes(run: Run) -> None:
    failed = {name: c.detail for name, c in run.checks().items() if not c.ok}
    assert failed == {}


def test_lanes_started_after_the_start_sample_are_flat(run: Run) -> None:
    """A worker whose first alert came during the load (the other worker sent
    the warm-up's) starts its notifier lanes then: two more threads, no leak."""
    lanes = ["flask-perfwatch-notify-local", "flask-perfwatch-notify-flaky"]
    run.result.end[102].update(threads=11, threads_os=11,
                               thread_names=["MainThread", *lanes])
    assert run.checks()["flat"].ok, run.checks()["flat"].detail
    run.result.end[102].update(threads=12, threads_os=12)  # and one more: a leak
    assert not run.checks()["flat"].ok


def _stat(run: Run, key: str, delta: int, pid: int = PIDS[0]) -> None:
    run.result.end[pid]["stats"][key] += delta


def _secret_report(run: Run) -> None:
    run.write_report("perfwatch-x.html", 999, "x", "other",
                     body=f"Authorization: Bearer {soak.SECRET}")


def _bad_fast(run: Run) -> None:
    run.result.outcomes[-1].body = b"fast, slowly"


#: (id, break one thing, the check that must fail, a fragment of its evidence)
BREAKS: list[tuple[str, Callable[[Run], object], str, str]] = [
    ("missing stats key", lambda r: r.result.end[101]["stats"].pop("alerts"),
     "stats-keys", "worker 101: perfwatch.stats() has no 'alerts'"),
    ("flush timed out", lambda r: r.result.flush[102].update(flushed=False, queue_depth=7),
     "flush", "worker 102: perfwatch.flush(timeout=30) returned False"),
    ("slow request unaccounted", lambda r: _stat(r, "slow", 1),
     "accounting",
     "slow 21 + hung 0 + regressions 0 = 21 != alerts 6 + suppressed 14 + dropped 0 = 20"),
    ("notifier outcome lost", lambda r: _stat(r, "alerts_sent", -1),
     "accounting", "alerts_sent 8 + alerts_failed 3 = 11 != alerts 6 x 2 notifiers = 12"),
    ("alert written twice", lambda r: r.write_report("perfwatch-dup.html", 101, "101-0", "slow"),
     "reports", "1 alert(s) written to more than one file"),
    ("alert not on disk", lambda r: _stat(r, "alerts", 1, 102),
     "reports", "worker 102: 6 alerts on disk, 7 counted"),
    ("flaky failure not counted", lambda r: r.result.end[102]["flaky"].update(
        raised=2, expected_failures=4), "notifier-isolation", "alerts_failed 3 != 4"),
    ("receiver skipped", lambda r: r.result.end[101].update(receiver_calls=SLOW - 1),
     "receiver-isolation", "the raising receiver ran 19 times for 20 slow requests"),
    ("other swallowed error", lambda r: _stat(r, "errors", 2),
     "receiver-isolation", "+2 other swallowed errors"),
    ("slow request not seen", lambda r: _stat(r, "slow", -SLOW, 102),
     "seen", "worker 102: perfwatch counted 0 slow"),
    ("endpoint over the limit", lambda r: [
        r.write_report(f"perfwatch-j{i}.html", 102, f"j{i}", "junk") for i in range(9)],
     "endpoint-limit", "endpoint 'junk': 13 alerts > limit 10"),
    ("RSS grew", lambda r: r.result.end[101].update(rss_kb=40_000 + 21 * 1024),
     "flat", "worker 101: RSS grew 21.0 MiB"),
    ("thread leaked", lambda r: r.result.end[102].update(threads=10, threads_os=10),
     "flat", "threads outside gunicorn's pool 5 -> 6"),
    ("lane started twice", lambda r: r.result.end[102].update(
        threads=10, threads_os=10,
        thread_names=["MainThread", *["flask-perfwatch-notify-local"] * 2]),
     "flat", "2 threads named 'flask-perfwatch-notify-local' (one expected)"),
    ("thread leaked beside a late lane", lambda r: r.result.end[102].update(
        threads=11, threads_os=11, thread_names=["MainThread", "flask-perfwatch-notify-local"]),
     "flat", "threads outside gunicorn's pool 6 -> 7"),
    ("fds leaked", lambda r: r.result.end[102].update(fds=18),
     "flat", "fds 15 -> 18 (allowance 2)"),
    ("uncaught exception in a thread", lambda r: setattr(r, "log", r.log + (
        "Exception in thread flask-perfwatch-delivery:\nTraceback (most recent call last):\n"
        '  File "x.py", line 1, in run\ntests.soak_app.Boom: SOAK-DELIBERATE\n')),
     "no-unhandled-exception", "Exception in thread flask-perfwatch-delivery"),
    ("gunicorn error handling a request", lambda r: setattr(r, "log", r.log + (
        "[2026-12-01 10:00:05 +0000] [101] [ERROR] Error handling request /slow\n"
        "Traceback (most recent call last):\nValueError: x\n")),
     "no-unhandled-exception", "Error handling request /slow"),
    ("exception reached the app", lambda r: setattr(r, "log", r.log + (
        "2026-12-01 10:00:05,000 [101] [ERROR] tests.soak_app: Exception on /fast [GET]\n"
        "  | tb tests.soak_app | Traceback (most recent call last):\n"
        "  | tb tests.soak_app | UnicodeDecodeError: 'utf-8' codec can't decode\n")),
     "no-unhandled-exception", "Exception on /fast [GET] ... UnicodeDecodeError"),
    ("worker restarted", lambda r: setattr(r, "log", r.log + (
        "[2026-12-01 10:00:06 +0000] [100] [INFO] Booting worker with pid: 103\n")),
     "no-unhandled-exception", "'Booting worker' 3 times"),
    ("gunicorn exit code", lambda r: setattr(r, "returncode", 1),
     "no-unhandled-exception", "gunicorn exited with 1 after SIGTERM"),
    ("perfwatch's own bug", lambda r: setattr(r, "log", r.log + (
        "2026-12-01 10:00:05,000 [101] [ERROR] flask_perfwatch [swallowed]: error in "
        "finishing a request (swallowed; the application is not affected): KeyError: 'x'\n"
        "  | msg flask_perfwatch | Traceback (most recent call last):\n"
        "  | msg flask_perfwatch | KeyError: 'x'\n")),
     "perfwatch-errors", "error in finishing a request"),
    ("wrong response", lambda r: setattr(r.result.outcomes[0], "status", 500),
     "responses", "hostile:bad-utf8: got 500"),
    ("/fast altered", _bad_fast, "fast-intact", "1 of"),
    ("secret in a report", _secret_report, "no-secrets", "reports/perfwatch-x.html: 1"),
    ("secret in the log", lambda r: setattr(r, "log", r.log + (
        f"2026-12-01 10:00:05,000 [101] [WARNING] flask_perfwatch.notifiers.local: "
        f"Slow request GET /slow?password={soak.SECRET}\n")),
     "no-secrets", "gunicorn.log: 1 line(s)"),
    ("secret in a file name", lambda r: r.write_report(f"perfwatch-{soak.SECRET}.html", 101,
                                                        "101-0", "slow"),
     "no-secrets", "file name perfwatch-<SECRET>.html"),
    ("raw ESC in the log", lambda r: setattr(r, "log", r.log + "GET /slow?c=\x1b[31mred\n"),
     "log-safety", "raw ESC in the log"),
    ("forged log line", lambda r: setattr(r, "log", r.log + (
        "2026-12-01 10:00:05,000 [101] [WARNING] flask_perfwatch: Slow request GET /slow/a\n"
        f"  | msg flask_perfwatch | {soak.FORGED} ...\n")),
     "log-safety", "1 log line(s) start with text a request forged"),
    ("BaseException never provoked", lambda r: r.result.end[101]["flaky"].update(boom=0),
     "exercised", "worker 101: the flaky notifier's BaseException never came"),
    ("no raise in the whole run", lambda r: [r.result.end[pid]["flaky"].update(raised=0)
                                             for pid in r.result.end],
     "exercised", "the flaky notifier's raised = 0 in every worker"),
    ("log rule saw no /boom", lambda r: setattr(r, "log", "\n".join(
        line for line in r.log.split("\n")
        if "Exception on /boom" not in line and "| tb tests.soak_app |" not in line)),
     "exercised", "the log rule saw 2 flask_perfwatch records of the deliberate failures "
                  "and 0 of /boom"),
]


@pytest.mark.parametrize(("breaking", "check", "evidence"),
                         [pytest.param(b, c, e, id=i) for i, b, c, e in BREAKS])
def test_each_check_catches_its_failure(run: Run, breaking: Callable[[Run], object], check: str,
                                        evidence: str) -> None:
    breaking(run)
    result = run.checks()[check]
    assert not result.ok
    assert evidence in result.detail


def test_log_rule_reads_the_app_format() -> None:
    """The rule's parse of the format tests/soak_app.py writes: records, their
    continuation lines, the final exception line, what is attributed to no record."""
    records, other = soak.parse_log(GOOD_LOG)
    assert [(r.logger, r.swallowed, r.has_traceback) for r in records] == [
        ("flask_perfwatch", True, True), ("flask_perfwatch.pipeline", False, True),
        ("tests.soak_app", False, True)]
    assert records[2].final_line.startswith("tests.soak_app.SoakViewError: SOAK-DELIBERATE")
    assert len(other) == 6
    assert all(line.startswith("[2026-12-01") for line in other)
