"""The delivery worker: bounded, lazy, fork-safe, flushed at exit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import monitor_of, reports_in, wait_until

from flask_perfwatch.worker import Worker

TESTS = Path(__file__).parent


def test_thread_starts_lazily_and_runs_jobs_in_order() -> None:
    worker = Worker(10)
    assert not worker.is_alive
    done: list[int] = []
    for i in range(5):
        assert worker.submit(lambda i=i: done.append(i))
    assert worker.flush(5)
    assert done == [0, 1, 2, 3, 4]
    assert worker.is_alive
    assert worker.close(5)
    wait_until(lambda: not worker.is_alive, message="worker thread to stop")
    assert worker.submit(lambda: None) is False


def test_full_queue_refuses_without_blocking() -> None:
    release = threading.Event()
    worker = Worker(2)
    worker.submit(lambda: release.wait(10))
    wait_until(lambda: worker._queue.qsize() == 0, message="first job to start")
    assert worker.submit(lambda: None)
    assert worker.submit(lambda: None)
    started = time.monotonic()
    assert worker.submit(lambda: None) is False
    assert time.monotonic() - started < 1
    assert worker.depth == 3
    assert worker.flush(0.05) is False
    release.set()
    assert worker.flush(5)
    worker.close(1)


@pytest.mark.allow_swallowed
def test_a_failing_job_does_not_kill_the_thread(caplog: pytest.LogCaptureFixture) -> None:
    worker = Worker(5)
    ran = threading.Event()
    worker.submit(lambda: 1 / 0)  # type: ignore[func-returns-value]
    worker.submit(ran.set)
    assert worker.flush(5)
    assert ran.is_set()
    assert "error in a job of thread" in caplog.text
    assert "ZeroDivisionError: division by zero" in caplog.text
    worker.close(1)


@pytest.mark.slow
def test_survives_fork(make_app, report_dir: Path) -> None:
    """A child forked after the parent's worker started gets its own worker."""
    app, perfwatch = make_app()
    client = app.test_client()
    client.get("/slow?who=parent")
    assert perfwatch.flush(10, app)
    assert monitor_of(app).worker.is_alive
    assert len(reports_in(report_dir)) == 1

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            os.close(read_fd)
            client.get("/slow?who=child")
            flushed = perfwatch.flush(10, app)
            alive = monitor_of(app).worker.is_alive
            count = len(reports_in(report_dir))
            os.write(write_fd, f"{flushed} {alive} {count}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == "True True 2"
    # the parent's worker is untouched and still delivers
    client.get("/slow?who=parent-again")
    assert perfwatch.flush(10, app)
    assert len(reports_in(report_dir)) == 3


SCRIPT = textwrap.dedent("""
    import logging, sys, time
    from flask import Flask
    from flask_perfwatch import PerfWatch
    from flask_perfwatch.notifiers import Notifier

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    class SlowNotifier(Notifier):
        name = "slow"
        def send(self, metrics, report):
            time.sleep(float(sys.argv[2]))
            report.write(self.config.resolved_report_dir)

    app = Flask("exiting")

    @app.get("/slow")
    def slow():
        time.sleep(0.5)
        return "slow"

    PerfWatch(app, threshold=0.1, report_dir=sys.argv[1], notifiers=["__main__:SlowNotifier"],
              shutdown_timeout=float(sys.argv[3]))
    assert app.test_client().get("/slow").data == b"slow"
    print("responded", flush=True)
    # exit right away: the queued alert must still be delivered (or dropped, logged)
""")


@pytest.mark.slow
def test_queued_alert_is_flushed_at_exit(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    report_dir = tmp_path / "reports"
    result = subprocess.run([sys.executable, str(script), str(report_dir), "1.0", "30"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "responded\n"
    assert len(reports_in(report_dir)) == 1


@pytest.mark.slow
def test_exit_waits_at_most_the_shutdown_timeout(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    report_dir = tmp_path / "reports"
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(script), str(report_dir), "60", "1"],
                            capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 30  # not the notifier's 60 s
    assert "still queued after 1.0s at shutdown" in result.stderr
    assert reports_in(report_dir) == []
