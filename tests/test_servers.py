"""Monitoring under every common WSGI server, each started for real on 127.0.0.1.

Each test starts one server as a subprocess (in a process group of its own,
killed whole at the end) serving ``servers_app.py`` on a free port, with its
own directory for reports, the sqlite dedupe store and logs. The one helper,
:func:`exercise`, then checks what a deployer needs:

- responses unchanged: each view's status, body, headers and cookie arrive
  as the view made them (a server adds only its own ``Date``/``Server``/
  ``Connection``);
- two identical requests to a view that burns the CPU for ~1 s and two to
  one that sleeps ~1 s (threshold 0.3 s), sent at once, give exactly one
  alert per endpoint (the sqlite store is shared by the workers), waited for
  until all four are decided (alerted or suppressed);
- each alert's profile and its HTML report hold the view's own frames
  (``cpu_view`` and ``burn_cpu``; ``sleep_view``), so "No profile was
  captured", or a profile of the server's loop only, fails the test;
- no worker crashed (a segfault shows in uWSGI's log as a respawn).

The command lines are the ones docs/deployment.rst shows. The last tests
repair a process forked without Python's fork hooks (what uWSGI does without
``py-call-osafterfork``) with no server at all: libc's ``fork()`` through
:mod:`ctypes`.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import types
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import THRESHOLD, reports_in, run_in_child, wait_until
from redis_server import HOST, free_port

from flask_perfwatch import _fork
from flask_perfwatch.report import read_report

pytestmark = pytest.mark.slow

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent
BIN = Path(sys.executable).parent
#: seconds each slow view takes
SLOW = 1.0
#: path -> (status, body, X-View) as the view makes them
VIEWS = {"/cpu": (201, "burnt", "cpu"), "/sleep": (202, "slept", "sleep"),
         "/fast": (200, "fast", "fast")}
#: slow endpoint -> the functions its profile must show
FRAMES = {"cpu": {"cpu_view", "burn_cpu"}, "sleep": {"sleep_view"}}
#: headers a server may add to the view's own
SERVER_HEADERS = {"date", "server", "connection", "keep-alive"}
#: what a crashed worker leaves in a server's log
CRASH_MARKS = ("signal 11", "SIGSEGV", "Segmentation fault", "Fatal Python error",
               "DAMN ! worker")

GUNICORN = [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:{port}",
            "--pythonpath", "{tests}", "--timeout", "30", "--graceful-timeout", "10",
            "--keep-alive", "30"]  # see test_gunicorn_dedupe: late requests are not dropped
UWSGI = [str(BIN / "uwsgi"), "--http-socket", "127.0.0.1:{port}", "--master",
         "--processes", "2", "--enable-threads", "--module", "servers_app:app",
         "--pythonpath", "{tests}", "--virtualenv", "{venv}", "--die-on-term", "--need-app"]


class Server:
    """One server serving ``servers_app:app``. ``command`` may hold
    ``{port}``, ``{tests}`` and ``{venv}``; ``boots`` is how many processes
    import the app (the master when it preloads, else each worker)."""

    def __init__(self, directory: Path, command: list[str], *, boots: int = 1,
                 env: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.args = [a.format(port=self.port, tests=TESTS_DIR, venv=sys.prefix)
                     for a in command]
        self.boots = boots
        self.report_dir = directory / "reports"
        self.events_file = directory / "events.log"
        self.alerts_file = directory / "alerts.jsonl"
        self.log_file = directory / "server.log"
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self._events_at_start = 0
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PERFWATCH_", "GUNICORN", "UWSGI", "SERVERS_APP_"))}
        env.update({
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS_DIR), str(ROOT),
                                                        env.get("PYTHONPATH")])),
            "PERFWATCH_THRESHOLD": str(THRESHOLD),
            "PERFWATCH_STORE": f"sqlite:///{self.directory}/dedupe.db",
            "PERFWATCH_REPORT_DIR": str(self.report_dir),
            "PERFWATCH_NOTIFIERS": "local,servers_app:AlertLog",
            "PYTHONFAULTHANDLER": "1",  # a crash prints "Fatal Python error" to the log
            "SERVERS_APP_SLOW": str(SLOW),
            "SERVERS_APP_EVENTS": str(self.events_file),
            "SERVERS_APP_ALERTS": str(self.alerts_file),
            **self.extra_env,
        })
        self._events_at_start = len(self._all_events())
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(self.args, cwd=self.directory, env=env,
                                            stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=log, start_new_session=True)
        wait_until(lambda: self._alive() and len(self.events("boot")) >= self.boots,
                   timeout=timeout, interval=0.05, message=f"{self.boots} app import(s)")
        wait_until(lambda: self._alive() and self._answers(), timeout=timeout,
                   interval=0.05, message=f"{self.url}/fast")

    def _alive(self) -> bool:
        """Still running, and no worker crashed (fail at once, not at a timeout)."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.args[0]} exited ({self.process.returncode}):\n"
                                 f"{self.log()[-3000:]}")
        assert_no_crash(self)
        return True

    def get(self, path: str) -> requests.Response:
        """``GET path``; a dropped connection fails with the server's log
        (given a few seconds to say whether a worker died)."""
        try:
            return requests.get(self.url + path, timeout=60)
        except requests.ConnectionError as exc:
            with contextlib.suppress(AssertionError):
                wait_until(lambda: any(mark in self.log() for mark in CRASH_MARKS),
                           timeout=5, interval=0.1)
            raise AssertionError(f"GET {path}: {exc}\nserver log:\n{self.log()[-3000:]}"
                                 ) from exc

    def _answers(self) -> bool:
        try:
            return requests.get(f"{self.url}/fast", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL to the whole process group (no worker leaks)."""
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def _all_events(self) -> list[list[str]]:
        if not self.events_file.exists():
            return []
        return [line.split() for line in self.events_file.read_text().splitlines()]

    def events(self, kind: str) -> list[list[str]]:
        """Event lines of the current run (since the last :meth:`start`)."""
        return [e for e in self._all_events()[self._events_at_start:] if e[0] == kind]

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts of requests sent by the test (not a warm-up's)."""
        if not self.alerts_file.exists():
            return []
        alerts = [json.loads(line) for line in self.alerts_file.read_text().splitlines()]
        return [a for a in alerts if "warmup" not in a["params"]]

    def decided(self) -> int:
        return len(self.alerts()) + len(self.events("suppressed"))

    def reports(self) -> dict[str, list[str]]:
        """endpoint -> the HTML of its reports (not a warm-up's)."""
        found: dict[str, list[str]] = {}
        for path in reports_in(self.report_dir):
            info = read_report(path)
            if info.endpoint is not None and "warmup" not in (info.url or ""):
                found.setdefault(info.endpoint, []).append(path.read_text())
        return found


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """``serve(command, boots=1, env=None)``: a started :class:`Server`, stopped
    (its process group killed) at teardown, whatever the test did."""
    servers: list[Server] = []

    def start(command: list[str], *, boots: int = 1, env: dict[str, str] | None = None
              ) -> Server:
        server = Server(tmp_path / f"server{len(servers)}", command, boots=boots, env=env)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


def check_response(response: requests.Response, path: str) -> int:
    """The response is what the view made; returns the serving worker's pid."""
    status, body, view = VIEWS[path]
    assert (response.status_code, response.text) == (status, body), path
    assert response.headers["X-View"] == view
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Content-Length"] == str(len(body))
    assert response.headers["Set-Cookie"] == f"flavour={view}; Path=/"
    made = {"x-view", "x-worker-pid", "content-type", "content-length", "set-cookie"}
    added = {name.lower() for name in response.headers} - made
    assert added <= SERVER_HEADERS, f"{path}: headers the view did not make: {added}"
    return int(response.headers["X-Worker-Pid"])


def exercise(server: Server, *, profiles: bool = True) -> dict[str, dict[str, Any]]:
    """Fast requests, then two of each slow view at once, then fast ones
    again; waits for the four slow requests to be decided and checks one
    alert per endpoint whose profile and report show the view's frames (with
    ``profiles=False``: that have no profile). Returns endpoint -> its alert."""
    # a connection per request: uWSGI's --http-socket closes each one
    for _ in range(3):
        check_response(server.get("/fast"), "/fast")
    paths = ["/cpu", "/sleep"] * 2
    with ThreadPoolExecutor(len(paths)) as pool:
        responses = list(pool.map(server.get, paths))
    for path, response in zip(paths, responses, strict=True):
        check_response(response, path)
    for _ in range(3):
        check_response(server.get("/fast"), "/fast")

    wait_until(lambda: server.decided() >= len(paths), timeout=60, interval=0.05,
               message=f"{len(paths)} slow requests alerted or suppressed "
                       f"(alerts {server.alerts()}, log {server.log()[-2000:]})")
    alerts = server.alerts()
    assert Counter(a["name"] for a in alerts) == {"cpu": 1, "sleep": 1}, alerts
    assert len(server.events("suppressed")) == len(paths) - 2
    by_name = {a["name"]: a for a in alerts}
    for name, functions in FRAMES.items():
        alert = by_name[name]
        assert alert["params"] == {}
        # read after the response, not from a start_response wrapper
        assert alert["status"] == VIEWS[f"/{name}"][0], alert
        if profiles:
            missing = functions - set(alert["functions"])
            assert not missing, f"{name}: the profile lacks {missing}: {alert}"
        else:
            assert alert["functions"] == [], alert

    reports = wait_until(lambda: (r := server.reports()) and sum(map(len, r.values())) == 2
                         and r, timeout=30, interval=0.05, message="2 report files")
    assert sorted(reports) == ["cpu", "sleep"]
    for name, functions in FRAMES.items():
        [page] = reports[name]
        assert ("No profile was captured" in page) is not profiles, name
        if profiles:
            for function in functions:
                assert function in page, f"{name}: report without {function}"
    assert_no_crash(server)
    return by_name


def assert_no_crash(server: Server) -> None:
    log = server.log()
    for mark in CRASH_MARKS:
        assert mark not in log, f"{mark!r} in the server's log:\n{log[-3000:]}"
    assert "Traceback (most recent call last)" not in log, log[-3000:]


def need(path: Path) -> None:
    if not shutil.which(str(path)):
        pytest.skip(f"{path} is not installed")


def need_module(name: str) -> None:
    """Skip without ``name``, without importing it here (gevent imported into
    the test process would change what the sampler of other tests sees)."""
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed")


# --- gunicorn ----------------------------------------------------------------


@pytest.mark.parametrize(("options", "boots"), [
    (["--workers", "2", "--worker-class", "sync"], 2),
    (["--workers", "2", "--worker-class", "gthread", "--threads", "4"], 2),
    (["--workers", "2", "--worker-class", "gthread", "--threads", "4", "--preload"], 1),
], ids=["sync", "gthread", "gthread-preload"])
def test_gunicorn(serve: Any, options: list[str], boots: int) -> None:
    need_module("gunicorn")
    exercise(serve([*GUNICORN, *options, "servers_app:app"], boots=boots))


def test_gunicorn_gevent(serve: Any) -> None:
    """Requests are greenlets on one OS thread: the CPU-burning view never
    yields, the sleeping one is parked in gevent's hub. Both must be profiled."""
    need_module("gunicorn")
    need_module("gevent")
    exercise(serve([*GUNICORN, "--workers", "2", "--worker-class", "gevent",
                    "servers_app:app"], boots=2))


# --- uWSGI -------------------------------------------------------------------


def check_workers(server: Server, alerts: dict[str, dict[str, Any]]) -> None:
    """The alerts came from workers, not from the master that imported the
    app; each worker runs its own sampler thread, and each one that alerted
    its own delivery thread (really running: checked by native thread id)."""
    [master] = {int(pid) for _, pid in server.events("boot")}
    alerting = {a["pid"] for a in alerts.values()}
    assert master not in alerting
    running: dict[int, list[str]] = {}

    def ask() -> bool:
        answer = server.get("/threads").json()
        running[answer["pid"]] = answer["running"]
        return len(running) == 2

    wait_until(ask, timeout=30, interval=0.01, message="/threads from both workers")
    for pid, names in running.items():
        assert "perfwatch-sampler" in names, (pid, names)
        if pid in alerting:
            assert "flask-perfwatch-delivery" in names, (pid, names)


def test_uwsgi_prefork(serve: Any) -> None:
    need(BIN / "uwsgi")
    server = serve(UWSGI)
    check_workers(server, exercise(server))


#: uWSGI calls PyOS_AfterFork_Child() without PyOS_BeforeFork(); from Python
#: 3.13 on that releases an import lock nobody took and aborts the worker
OSAFTERFORK_ABORTS = pytest.mark.xfail(
    sys.version_info >= (3, 13), strict=True,
    reason="uWSGI's py-call-osafterfork aborts workers on Python >= 3.13 (uWSGI's bug: "
           "_PyRecursiveMutex_Unlock on the import lock)")


@pytest.mark.parametrize("fork_option", [
    None,
    pytest.param("--py-call-osafterfork", marks=OSAFTERFORK_ABORTS),
    "--py-call-uwsgi-fork-hooks",
], ids=["no-fork-hooks", "osafterfork", "uwsgi-fork-hooks"])
def test_uwsgi_prefork_warm_master(serve: Any, fork_option: str | None) -> None:
    """The master served a slow request (and delivered its alert) before
    forking, so its sampler, delivery and notifier threads existed at the
    fork. With ``--threads`` the workers' request threads get those dead
    threads' stacks at once: without flask_perfwatch's post-fork hook (or a
    fork-hooks option) the first sample segfaults the worker."""
    need(BIN / "uwsgi")
    server = serve([*UWSGI, "--threads", "4", *filter(None, [fork_option])],
                   env={"SERVERS_APP_WARM": "1"})
    check_workers(server, exercise(server))


def test_uwsgi_post_fork_hook_replaced(serve: Any) -> None:
    """uwsgidecorators, imported after the app, replaces the post-fork hook
    flask_perfwatch chained. With ``--threads`` the worker's threads run
    before a request can repair the process, so the master's thread states
    stay: no profiles there (one ERROR per worker says how to fix it), but
    every alert still goes out and nothing crashes."""
    need(BIN / "uwsgi")
    server = serve([*UWSGI, "--threads", "4"],
                   env={"SERVERS_APP_WARM": "1", "SERVERS_APP_IMPORT_AFTER": "uwsgidecorators"})
    exercise(server, profiles=False)
    errors = [line for line in server.log().splitlines()
              if "py-call-uwsgi-fork-hooks = true" in line]
    assert 1 <= len(errors) <= 2, errors  # once per worker that served a request


def test_uwsgi_lazy_apps_sqlite(serve: Any) -> None:
    """Each worker imports the app and opens the one sqlite store at the same
    moment, five starts in a row: every worker comes up every time."""
    need(BIN / "uwsgi")
    server = serve([*UWSGI, "--lazy-apps"], boots=2)
    exercise(server)
    for _ in range(4):
        server.stop()
        server.start()
        assert len({pid for _, pid in server.events("boot")}) == 2
    assert "ConfigError" not in server.log()
    assert "database is locked" not in server.log()
    assert_no_crash(server)


# --- waitress and werkzeug ---------------------------------------------------


def test_waitress(serve: Any) -> None:
    need(BIN / "waitress-serve")
    exercise(serve([str(BIN / "waitress-serve"), "--listen=127.0.0.1:{port}", "--threads=4",
                    "servers_app:app"]))


def test_werkzeug_threaded(serve: Any) -> None:
    exercise(serve([sys.executable, "-c",
                    "import sys, servers_app; servers_app.run_werkzeug(int(sys.argv[1]))",
                    "{port}"]))


# --- forks without Python's fork hooks, as uWSGI's ----------------------------
# The same repair, without a server: libc's fork() through ctypes, which runs
# no Python at-fork hook (as uWSGI's C fork), with the GIL held across it (as
# uWSGI's master holds it), from a process with another thread running.

CHILD_DEADLINE = 30.0


class Hooked:
    """A fork-aware object counting its ``_after_fork_in_child`` calls."""

    def __init__(self) -> None:
        self.calls = 0
        _fork.register(self)

    def _after_fork_in_child(self) -> None:
        self.calls += 1


@pytest.fixture
def parked() -> Iterator[threading.Thread]:
    """A thread of the parent, parked on an event, alive at the fork."""
    release = threading.Event()
    thread = threading.Thread(target=release.wait, args=(CHILD_DEADLINE + 10,), name="parked",
                              daemon=True)
    thread.start()
    yield thread
    release.set()
    thread.join(10)


def fork_without_hooks(child: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``child()`` in a process forked by libc's ``fork()`` (no Python
    fork hooks run); return its answer."""
    answer: dict[str, Any] = run_in_child(child, fork=ctypes.PyDLL(None).fork,  # GIL held
                                          deadline=CHILD_DEADLINE)
    return answer


def thread_state() -> dict[str, Any]:
    """What the child looks like. Its frames are counted only where reading
    them is safe: beside a live thread started on a dead one's stack,
    ``sys._current_frames()`` is the very crash the library avoids."""
    readable = _fork.stacks_readable()
    return {"stale": _fork._leftovers(),
            "frames": len(sys._current_frames()) if readable else None,
            "readable": readable}


def test_fork_without_hooks_clears_the_parents_threads(parked: threading.Thread) -> None:
    """In a child with one thread, ``ensure_current`` runs what ``os.fork()``
    would have: the parent's thread states are gone (``sys._current_frames()``
    sees this thread only), our hooks ran once, and a second call does
    nothing more."""
    hooked = Hooked()

    def child() -> dict[str, Any]:
        before = thread_state()
        _fork.ensure_current()
        after = thread_state()
        _fork.ensure_current()
        started = threading.Thread(target=lambda: None)  # threading works again
        started.start()
        started.join(5)
        return {"before": before, "after": after, "calls": hooked.calls,
                "threads": [t.name for t in threading.enumerate()]}

    answer = fork_without_hooks(child)
    assert "parked" in answer["before"]["stale"]
    assert answer["before"]["frames"] >= 2
    assert answer["after"] == {"stale": [], "frames": 1, "readable": True}
    assert answer["calls"] == 1
    assert answer["threads"] == [threading.current_thread().name]


def test_fork_without_hooks_beside_live_threads_stops_reading_stacks() -> None:
    """When a thread already runs in the child, the parent's states cannot be
    cleared (that would delete the live thread's too): the hooks still run,
    stack reading is declared unsafe, and one ERROR says how to fix it. The
    parent is a fresh interpreter (``fork_beside_live_thread.py``)."""
    result = subprocess.run([sys.executable, str(TESTS_DIR / "fork_beside_live_thread.py")],
                            capture_output=True, text=True, timeout=CHILD_DEADLINE,
                            cwd=TESTS_DIR, check=False)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["exit"] == 0, result.stderr
    answer = outcome["answer"]
    assert answer["state"]["readable"] is False, answer
    assert answer["state"]["stale"], answer  # "parked", or a count if "live" took its id
    assert answer["calls"] == 1
    [message] = answer["messages"]
    assert "py-call-uwsgi-fork-hooks = true" in message


def test_uwsgi_post_fork_hook_is_chained_and_runs_first(monkeypatch: pytest.MonkeyPatch,
                                                         parked: threading.Thread) -> None:
    """In a uWSGI process, registering chains ``uwsgi.post_fork_hook`` (once,
    and again after something replaced it); in the child ours runs first and
    repairs, then the hook it replaced runs in a repaired process."""
    seen: list[dict[str, Any]] = []

    def previous() -> None:  # e.g. uwsgidecorators' @postfork chain
        seen.append(thread_state())

    uwsgi: Any = types.ModuleType("uwsgi")
    uwsgi.worker_id = lambda: 1
    uwsgi.post_fork_hook = previous
    monkeypatch.setitem(sys.modules, "uwsgi", uwsgi)
    hooked = Hooked()
    hook = uwsgi.post_fork_hook
    assert isinstance(hook, _fork.UwsgiPostForkHook)
    assert hook.previous is previous
    Hooked()
    assert uwsgi.post_fork_hook is hook

    def child() -> dict[str, Any]:
        hook()  # what uWSGI calls in each worker
        hook()  # a second call repairs nothing twice
        return {"previous_saw": seen, "calls": hooked.calls}

    answer = fork_without_hooks(child)
    assert answer["previous_saw"] == [{"stale": [], "frames": 1, "readable": True}] * 2
    assert answer["calls"] == 1

    uwsgi.post_fork_hook = previous  # replaced, as uwsgidecorators does
    Hooked()
    assert isinstance(uwsgi.post_fork_hook, _fork.UwsgiPostForkHook)
    assert uwsgi.post_fork_hook.previous is previous
