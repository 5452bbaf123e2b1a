"""Dedupe under a real gunicorn: 4 sync workers (and a gthread variant)
serving ``gunicorn_app.py`` on 127.0.0.1, 20 concurrent identical slow
requests, alerts counted as report files of the ``local`` notifier.

- sqlite and redis stores: exactly one alert, across workers and restarts;
  a short window expires and the next alert carries the suppressed count.
- memory store (the documented contrast): one alert per worker that served
  a slow request, since each process keeps its own window.
- redis killed mid-test: every response intact, alerts keep flowing (fail
  open), and dedupe is back once redis is, without restarting gunicorn.

The app logs an event line per decision (sent / suppressed), so the tests
wait until all requests are decided instead of sleeping.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from conftest import reports_in, wait_until
from redis_server import HOST, RedisServer, free_port

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent
WORKERS = 4
CONCURRENT = 20
#: (gunicorn worker class, threads per worker)
KINDS = {"sync": ("sync", 1), "gthread": ("gthread", 4)}


class Gunicorn:
    """One gunicorn master serving ``gunicorn_app:app``; :meth:`stop` then
    :meth:`start` is a restart (a deploy) on the same port."""

    def __init__(self, directory: Path, *, store: str, kind: str = "sync",
                 env: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.store = store
        self.worker_class, self.threads = KINDS[kind]
        self.port = free_port()
        self.events_file = directory / "events.log"
        self.report_dir = directory / "reports"
        self.log_file = directory / "gunicorn.log"
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self._events_at_start = 0
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PERFWATCH_", "GUNICORN"))}
        env.update({
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                        env.get("PYTHONPATH")])),
            "PERFWATCH_STORE": self.store,
            "PERFWATCH_REPORT_DIR": str(self.report_dir),
            "PERFWATCH_THRESHOLD": "0.3",
            "GUNICORN_APP_EVENTS": str(self.events_file),
            **self.extra_env,
        })
        self._events_at_start = len(self.all_events())
        args = [sys.executable, "-m", "gunicorn", "--workers", str(WORKERS),
                "--worker-class", self.worker_class, "--threads", str(self.threads),
                "--bind", f"{HOST}:{self.port}", "--pythonpath", str(TESTS_DIR),
                "--timeout", "30", "--graceful-timeout", "10", "--log-level", "warning",
                # gthread closes a connection whose request has not arrived
                # within keepalive (2 s): a client thread of this loaded test
                # process can be that late between connect and send
                "--keep-alive", "30",
                "gunicorn_app:app"]
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(args, cwd=self.directory, env=env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        # every worker has loaded the app (and PerfWatch), then the port answers
        wait_until(lambda: self._check_alive() and len(self.events("boot")) >= WORKERS,
                   timeout=timeout, interval=0.05, message=f"{WORKERS} gunicorn workers")
        wait_until(self._fast_ok, timeout=timeout, interval=0.05, message="GET /fast")

    def _check_alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"gunicorn exited ({self.process.returncode}):\n"
                                 f"{self.log()[-3000:]}")
        return True

    def _fast_ok(self) -> bool:
        try:
            return requests.get(f"{self.url}/fast", timeout=5).text == "fast"
        except requests.RequestException:
            return False

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (graceful: workers finish and flush their alerts), then wait."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            raise AssertionError("gunicorn did not stop on SIGTERM") from None

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def all_events(self) -> list[tuple[str, int]]:
        if not self.events_file.exists():
            return []
        lines = self.events_file.read_text().splitlines()
        return [(name, int(pid)) for name, pid in (line.split() for line in lines)]

    def events(self, name: str | None = None) -> list[tuple[str, int]]:
        """Events of the current run (since the last :meth:`start`)."""
        events = self.all_events()[self._events_at_start:]
        return [e for e in events if name is None or e[0] == name]

    def decisions(self) -> Counter[str]:
        return Counter(name for name, _ in self.events() if name in ("sent", "suppressed"))

    def fire(self, n: int = CONCURRENT, query: str = "") -> list[int]:
        """``n`` concurrent identical ``GET /slow``; checks every response and
        returns the pid of the worker that served each."""

        def get(_: int) -> requests.Response:
            return requests.get(f"{self.url}/slow{query}", timeout=60)

        try:
            with ThreadPoolExecutor(n) as pool:
                responses = list(pool.map(get, range(n)))
        except requests.ConnectionError as exc:  # a worker died: gunicorn's log says why
            raise AssertionError(f"{exc}\ngunicorn's log:\n{self.log()[-3000:]}") from exc
        assert [(r.status_code, r.text) for r in responses] == [(200, "slow")] * n
        return [int(r.headers["X-Worker-Pid"]) for r in responses]

    def settle(self, decided: int, timeout: float = 30.0) -> Counter[str]:
        """Wait until ``decided`` slow requests of this run are sent or suppressed."""
        wait_until(lambda: sum(self.decisions().values()) >= decided, timeout=timeout,
                   interval=0.05, message=f"{decided} dedupe decisions "
                   f"(have {self.decisions()})")
        return self.decisions()

    def reports(self) -> list[Path]:
        return reports_in(self.report_dir)


def scheme(url: str) -> str:
    return url.partition(":")[0]


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """``gunicorn(store=..., kind="sync")``: a started server, stopped at teardown."""
    servers: list[Gunicorn] = []

    def start(*, store: str, kind: str = "sync", env: dict[str, str] | None = None
              ) -> Gunicorn:
        server = Gunicorn(tmp_path / f"gunicorn{len(servers)}", store=store, kind=kind,
                          env=env)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        try:
            server.stop()
        finally:
            server.kill()


@pytest.mark.parametrize("kind", ["sync", "gthread"])
def test_one_alert_across_workers(gunicorn: Callable[..., Gunicorn], shared_store: str,
                                  kind: str) -> None:
    server = gunicorn(store=shared_store, kind=kind)
    pids = server.fire()
    decided = server.settle(CONCURRENT)
    logger.info("COUNT %s-%s: %d alert(s), %d suppressed, %d worker(s) served",
                scheme(shared_store), kind, decided["sent"], decided["suppressed"],
                len(set(pids)))
    assert decided == {"sent": 1, "suppressed": CONCURRENT - 1}
    assert len(server.reports()) == 1


@pytest.mark.parametrize("kind", ["sync", "gthread"])
def test_memory_store_alerts_once_per_worker(gunicorn: Callable[..., Gunicorn],
                                             kind: str) -> None:
    """The contrast: each process keeps its own window, so every worker that
    served one of the slow requests alerts once (at most 4 for 4 workers)."""
    server = gunicorn(store="memory://", kind=kind)
    pids = server.fire()
    decided = server.settle(CONCURRENT)
    serving = len(set(pids))
    logger.info("COUNT memory-%s: %d alert(s), %d suppressed, %d worker(s) served", kind,
                decided["sent"], decided["suppressed"], serving)
    assert decided["sent"] == serving <= WORKERS
    assert len(server.reports()) == serving
    if kind == "sync":  # a sync worker serves one request at a time: 20 need several
        assert decided["sent"] > 1


def test_dedupe_survives_restart(gunicorn: Callable[..., Gunicorn], shared_store: str) -> None:
    server = gunicorn(store=shared_store)
    server.fire()
    assert server.settle(CONCURRENT) == {"sent": 1, "suppressed": CONCURRENT - 1}
    server.stop()  # a deploy: every worker process goes away
    server.start()
    server.fire(8)
    decided = server.settle(8)
    logger.info("COUNT %s after restart: %d alert(s), %d suppressed", scheme(shared_store),
                decided["sent"], decided["suppressed"])
    assert decided == {"suppressed": 8}
    assert len(server.reports()) == 1


def test_short_window_expires(gunicorn: Callable[..., Gunicorn], shared_store: str) -> None:
    window = 3.0
    server = gunicorn(store=shared_store, env={"PERFWATCH_DEDUP_WINDOW": str(window)})
    server.fire(4)
    assert server.settle(4) == {"sent": 1, "suppressed": 3}
    first_reports = set(server.reports())
    decided_at = time.time()  # every claim of the round happened before this
    wait_until(lambda: time.time() > decided_at + window, timeout=window + 5,
               interval=0.05, message="the dedupe window to pass")
    server.fire(1)
    decided = server.settle(5)
    logger.info("COUNT %s window expiry: %d alert(s) for 4 requests in the window, %d "
                "after it", scheme(shared_store), 1, decided["sent"] - 1)
    assert decided == {"sent": 2, "suppressed": 3}
    (new_report,) = set(server.reports()) - first_reports
    assert re.search(r"\b3 similar slow requests\b", new_report.read_text())


def test_redis_outage_fails_open_and_recovers(gunicorn: Callable[..., Gunicorn],
                                              redis_server: RedisServer) -> None:
    server = gunicorn(store=redis_server.url)
    server.fire(8, "?round=1")
    assert server.settle(8) == {"sent": 1, "suppressed": 7}

    redis_server.kill()
    server.fire(8, "?round=2")  # every response intact, asserted by fire()
    during = server.settle(16) - Counter({"sent": 1, "suppressed": 7})
    assert during == {"sent": 8}  # fail open: no slow request goes unreported
    outage_lines = [line for line in server.log().splitlines() if "unavailable" in line]
    assert 1 <= len(outage_lines) <= WORKERS  # once per process per interval

    redis_server.start()  # same port, empty; gunicorn is not restarted
    server.fire(8, "?round=3")
    after = server.settle(24) - Counter({"sent": 9, "suppressed": 7})
    logger.info("COUNT redis outage: before 1 sent/7 suppressed, during %d sent, after "
                "recovery %d sent/%d suppressed; %d outage log line(s)", during["sent"],
                after["sent"], after["suppressed"], len(outage_lines))
    assert after == {"sent": 1, "suppressed": 7}
    assert len(server.reports()) == 10


def test_flask_perfwatch_endpoints_counts_every_workers_requests(
        gunicorn: Callable[..., Gunicorn]) -> None:
    """Per-endpoint statistics across a real gunicorn's workers: each worker
    writes its snapshot when it exits (here a few dozen requests, less than
    a block, so exit is the only time it writes), and the CLI merges them."""
    from click.testing import CliRunner
    from flask.cli import ScriptInfo

    from flask_perfwatch._endpoints import read_snapshots
    from flask_perfwatch.cli import perfwatch as perfwatch_cli

    server = gunicorn(store="memory://")

    def get(n: int) -> int:
        response = requests.get(f"{server.url}/item/{n}", timeout=60)
        assert (response.status_code, response.text) == (200, str(n))
        return int(response.headers["X-Worker-Pid"])

    with ThreadPoolExecutor(8) as pool:
        pids = set(pool.map(get, range(60)))
    server.stop()
    # every worker that served writes one as it exits; polled, because the
    # master can be gone a few milliseconds before the last file is in place
    # (a 3.12 CI run read three of four, all four there moments later)
    windows, _processes, problems = wait_until(
        lambda: (found := read_snapshots(server.report_dir))[1] >= len(pids) and found,
        timeout=15, message=f"snapshots of the {len(pids)} workers that served")
    assert problems == []
    assert windows["item"].count == 60
    result = CliRunner().invoke(perfwatch_cli, ["endpoints", "--json", "--dir",
                                                str(server.report_dir)],
                                obj=ScriptInfo(create_app=lambda: None))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["item"]["count"] == 60
