"""Soak test: flask_perfwatch under a real gunicorn ``gthread`` server on 127.0.0.1.

    python benchmarks/soak.py                  # 60 s of load after a 10 s warm-up
    python benchmarks/soak.py --seconds 20     # shorter (what tests/test_soak.py runs)
    ./dev soak [ARGS]                          # the same, in the project's venv

It serves ``tests/soak_app.py`` with ``gunicorn -k gthread -w 2 --threads 4``
on a free port of 127.0.0.1, drives a bounded mix of fast, slow, CPU-bound,
junk-parameter, failing and hostile requests from a few client threads
(``requests`` and raw sockets), and stops by itself after ``--seconds`` or
``--max-requests``, whichever comes first. The app's ``flaky`` notifier fails
every 3rd send, blocks past ``PERFWATCH_NOTIFIER_TIMEOUT`` now and then and
raises a ``BaseException`` once; a user's ``slow_request`` receiver always
raises. It then prints one table and the verdict of every check, and exits 1
if any check failed.

The checks, each a :class:`Check` (its ``detail`` quotes the evidence):

``stats-keys``      every worker's ``perfwatch.stats()`` has the counters below.
``flush``           ``perfwatch.flush(timeout=30)`` returned True in every worker.
``accounting``      per worker, after the flush: ``slow + hung + regressions == alerts +
                    alerts_suppressed + alerts_dropped``, ``alerts_sent +
                    alerts_failed == alerts * notifiers`` and ``queue_depth == 0``.
``reports``         one report file per alert (``local`` never fails here).
``notifier-isolation``  per worker: every failure of the flaky notifier (each
                    raise, the ``BaseException``, each block past the timeout)
                    and every alert it never got is counted failed, no more.
``receiver-isolation``  the raising receiver ran for every slow request, each
                    error counted in ``receiver_errors``; ``errors`` (swallowed
                    errors) counts nothing else.
``seen``            each worker counted at least the requests (and slow ones)
                    it served to the runner.
``endpoint-limit``  at most ``PERFWATCH_ENDPOINT_ALERT_LIMIT`` reports per
                    endpoint (per worker with the memory store).
``flat``            RSS growth under :data:`RSS_GROWTH_LIMIT_KB`; threads and
                    fds back to their start values (see :func:`_flat_problems`).
``no-unhandled-exception``  the gunicorn log rule of :func:`scan_log`.
``perfwatch-errors``  flask_perfwatch logged tracebacks and swallowed errors
                    only for the failures the app provokes on purpose.
``responses`` / ``fast-intact``  every response as expected; every ``/fast``
                    (hostile ones too) exactly ``200 fast``.
``no-secrets``      ``secret-soak-token`` in no report, file name, log or store file.
``log-safety``      no raw ESC or CR in the log, no line forged by a request.
``exercised``       the run did provoke what it claims (else it proves less).

Used as a module by ``tests/test_soak.py``: :func:`run_soak` returns a
:class:`SoakResult`.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

logger = logging.getLogger("soak")

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
APP = "tests.soak_app:app"
WORKERS = 2
THREADS = 4
#: Text every secret the runner sends contains; it must never be written anywhere.
SECRET = "secret-soak-token"
#: What a request tries to start a forged log line with (after an encoded CR/LF).
FORGED = "FORGED-SOAK-LINE"
#: In the message of every exception the app raises on purpose (tests/soak_app.py).
DELIBERATE = "SOAK-DELIBERATE"
#: The app's logger (``Flask(__name__)`` in tests/soak_app.py).
APP_LOGGER = "tests.soak_app"
#: Counters the checks need from ``perfwatch.stats()``.
REQUIRED_KEYS = ("requests", "slow", "hung", "alerts", "alerts_sent", "alerts_suppressed",
                 "alerts_dropped", "alerts_failed", "receiver_errors", "errors", "queue_depth")

#: RSS may grow at most this much between the sample taken after the warm-up
#: and the one after the flush. Why 20 MiB: after the warm-up every code path
#: has run once (imports, pyinstrument's renderer, sqlite, the notifier
#: threads), so what remains is allocator noise: glibc gives each thread that
#: allocates its own arena (gthread pool, delivery, lanes, short-lived send
#: threads), and fragmentation from rendering reports of a few hundred KB each
#: keeps a few MiB. Measured here: under 1 MiB over 60 s (2,300 requests,
#: 860 slow). What the bound catches over that run: about 9 KB retained per
#: request, or 25 KB per slow request (a kept profile, metrics, a connection).
#: It does not catch a retained report per alert (40 alerts x 80 KB, thanks
#: to the endpoint limit); the 20 s CI run catches leaks three times larger.
RSS_GROWTH_LIMIT_KB = 20 * 1024
#: Threads other than gunicorn's request pool (which grows lazily up to
#: ``--threads`` and is counted apart) must be back to their start count: 0.
THREAD_ALLOWANCE = 0
#: Long-lived threads flask_perfwatch starts on first need, one of each name:
#: the sampler, the delivery thread, and one lane per notifier (not the
#: lanes' short-lived ``-send`` threads). One that first started after the
#: start sample is no leak: with two workers sharing the dedupe store, a
#: worker may send its first alert (and start its lanes) only during the
#: load. A second thread of the same name is.
LAZY_THREAD = re.compile(r"perfwatch-sampler|flask-perfwatch-delivery"
                         r"|flask-perfwatch-notify-.+(?<!-send)")
#: File descriptors may exceed the start count by this much: a keep-alive
#: connection of the load that the worker has not reaped yet when sampled.
#: The end sample is polled (up to the settle deadline) until within bounds,
#: so this only absorbs a race, never a per-request or per-alert leak.
FD_ALLOWANCE = 2

_LOG_RECORD = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[(?P<pid>\d+)\] \[(?P<level>[A-Z]+)\] "
    r"(?P<logger>[^\s:]+)(?P<swallowed> \[swallowed\])?: ")
_CONTINUATION = re.compile(r"^  \| (?P<kind>msg|tb) (?P<logger>\S+) \| (?P<text>.*)$")
_TRACEBACK = "Traceback (most recent call last)"
#: Lines that mean an exception escaped, or a worker died or was replaced.
_BAD_MARKERS = ("Exception in worker process", "Error handling request", "WORKER TIMEOUT",
                "Exception in thread", "Exception ignored in", "--- Logging error ---")
_BAD_PATTERNS = (re.compile(r"Worker \(pid:\d+\) was sent"),
                 re.compile(r"Worker \(pid:\d+\) exited with code"))
_BOOTING = re.compile(r"Booting worker with pid: (\d+)")
_METADATA = re.compile(
    r'<script type="application/json" id="perfwatch-metadata">(.*?)</script>', re.S)


class SoakError(Exception):
    """The soak could not run to the end (gunicorn did not start, a worker vanished)."""


# --- what the clients send ---------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One request and the response it must get.

    ``raw`` requests go over a plain socket exactly as written; the others
    through ``requests``. ``by_app`` False: gunicorn answers it itself (it
    rejects bytes outside printable ASCII in the request line, RFC 9112), so
    the request never reaches the app. ``slow``: served by a view that takes
    longer than the threshold.
    """

    label: str
    target: str = "/"
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    raw: bytes | None = None
    status: int = 200
    body: bytes | None = None
    contains: bytes | None = None
    slow: bool = False
    by_app: bool = True
    fast: bool = False


@dataclass
class Outcome:
    probe: Probe
    phase: str
    status: int | None = None
    body: bytes = b""
    pid: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        p = self.probe
        if self.error is not None or self.status != p.status:
            return False
        if p.body is not None and self.body != p.body:
            return False
        if p.contains is not None and p.contains not in self.body:
            return False
        # the app tags every response with its pid; gunicorn's own answers have none
        return (self.pid is not None) == p.by_app

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.probe.label}: error {self.error}"
        return (f"{self.probe.label}: got {self.status} {self.body[:60]!r} from "
                f"{self.pid or 'gunicorn'}, expected {self.probe.status} "
                f"{self.probe.body or self.probe.contains!r}")


def _raw(request_line: bytes, *headers: bytes) -> bytes:
    lines = [request_line, b"Host: 127.0.0.1", *headers, b"Connection: close", b"", b""]
    return b"\r\n".join(lines)


def _pct(data: bytes) -> str:
    return "".join(f"%{b:02x}" for b in data)


#: (weight, build(rng, n) -> Probe); n is a number unique in the run.
ProbeFactory = Callable[[random.Random, int], Probe]


def _fast(rng: random.Random, n: int) -> Probe:
    return Probe("fast", "/fast", body=b"fast", fast=True)


def _fast_hostile(rng: random.Random, n: int) -> Probe:
    line = (f"GET /fast?q=%ff%fe&c=%0d%0a{FORGED}%1b[31m&password={SECRET}&n={n} HTTP/1.1"
            ).encode()
    return Probe("fast-hostile", raw=_raw(line, f"Authorization: Bearer {SECRET}".encode()),
                 body=b"fast", fast=True)


def _slow(rng: random.Random, n: int) -> Probe:
    return Probe("slow", "/slow?page=1", body=b"slow", slow=True)


def _cpu(rng: random.Random, n: int) -> Probe:
    return Probe("cpu", f"/cpu?n={n % 20}", body=b"cpu", slow=True)


def _junk(rng: random.Random, n: int) -> Probe:
    return Probe("junk", f"/junk?utm_x={n}", body=b"junk", slow=True)


def _boom(rng: random.Random, n: int) -> Probe:
    return Probe("boom", f"/boom?n={n % 20}", status=500, contains=b"Internal Server Error",
                 slow=True)


def _raw_bytes_query(rng: random.Random, n: int) -> Probe:
    return Probe("hostile:raw-bytes-query",
                 raw=_raw(b"GET /slow?q=%ff%fe\xff&r=\xc3\x28&n=" + str(n).encode()
                          + b" HTTP/1.1"),
                 status=400, contains=b"Bad Request", by_app=False)


def _raw_bytes_path(rng: random.Random, n: int) -> Probe:
    return Probe("hostile:raw-bytes-path",
                 raw=_raw(b"GET /slow/%ff\xfe\xff/x HTTP/1.1"),
                 status=400, contains=b"Bad Request", by_app=False)


def _bad_utf8(rng: random.Random, n: int) -> Probe:
    line = f"GET /slow/%ff%fe/%c3%28?q=%ff%fe&%fe%ff=%c3%28&n={n} HTTP/1.1".encode()
    return Probe("hostile:bad-utf8",
                 raw=_raw(line, b"X-Hostile: \xff\xfe\xc3\x28 raw bytes"),
                 body=b"slow", slow=True)


def _crlf_esc(rng: random.Random, n: int) -> Probe:
    line = (f"GET /slow/a%0d%0a{FORGED}%1b[31m?next=%0d%0a{FORGED}&c=%1b[31mred%1b[0m"
            f"&%0d%0a{FORGED}=1&n={n} HTTP/1.1").encode()
    return Probe("hostile:crlf-esc", raw=_raw(line), body=b"slow", slow=True)


def _many_params(rng: random.Random, n: int) -> Probe:
    query = "&".join(f"p{i}={i}" for i in range(500))
    return Probe("hostile:500-params", f"/slow?{query}&n={n}", body=b"slow", slow=True)


def _big_values(rng: random.Random, n: int) -> Probe:
    return Probe("hostile:8kb-values", f"/slow?big={'x' * 8192}&big2={'y' * 8192}&n={n}",
                 body=b"slow", slow=True)


def _propfind(rng: random.Random, n: int) -> Probe:
    return Probe("hostile:PROPFIND", f"/slow?n={n}", method="PROPFIND", body=b"slow",
                 slow=True)


def _x_custom(rng: random.Random, n: int) -> Probe:
    return Probe("hostile:X-CUSTOM", f"/slow?n={n}", method="X-CUSTOM", body=b"slow",
                 slow=True)


def _secrets(rng: random.Random, n: int) -> Probe:
    target = (f"/slow?password={SECRET}&next=https://bob:{SECRET}@h/&pwd={SECRET}"
              f"&userPwd={SECRET}&n={n}")
    headers = (("Authorization", f"Bearer {SECRET}"), ("X-Upstream", f"Bearer {SECRET}"),
               ("Referer", f"https://bob:{SECRET}@example.invalid/page"),
               ("Cookie", f"session={SECRET}"))
    return Probe("hostile:secrets", target, headers=headers, body=b"slow", slow=True)


def _random(rng: random.Random, n: int) -> Probe:
    """Random bytes, percent-encoded, as names and values (any byte, any length)."""
    params = "&".join(f"{_pct(rng.randbytes(rng.randint(0, 12)))}="
                      f"{_pct(rng.randbytes(rng.randint(0, 64)))}"
                      for _ in range(rng.randint(1, 6)))
    line = f"GET /slow?{params}&n={n} HTTP/1.1".encode()
    return Probe("hostile:random", raw=_raw(line), body=b"slow", slow=True)


#: The mix, by weight. Fast requests dominate the count; slow ones the time.
MIX: tuple[tuple[int, ProbeFactory], ...] = (
    (50, _fast), (6, _fast_hostile), (5, _slow), (3, _cpu), (8, _junk), (3, _boom),
    (1, _raw_bytes_query), (1, _raw_bytes_path), (2, _bad_utf8), (2, _crlf_esc),
    (1, _many_params), (1, _big_values), (1, _propfind), (1, _x_custom), (3, _secrets),
    (3, _random),
)
#: Sent once each, in this order, before any other load: the hostile requests
#: come first so that their alerts are among the first of their endpoint
#: (``/slow`` gets at most PERFWATCH_ENDPOINT_ALERT_LIMIT alerts per window,
#: and the reports and log lines of these are what the secret and log checks read).
PRIMER: tuple[ProbeFactory, ...] = (
    _bad_utf8, _crlf_esc, _secrets, _many_params, _big_values, _propfind, _x_custom,
    _random, _raw_bytes_query, _raw_bytes_path, _fast_hostile, _fast, _slow, _cpu, _junk,
    _boom,
)


# --- HTTP ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out


def send_raw(port: int, data: bytes, timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is, read the whole response (the request says
    ``Connection: close``); (status, headers, body)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return int(status_line.split()[1]), headers, body


class Client:
    """One load thread's connection state: a ``requests.Session`` (keep-alive)
    for ordinary requests, a fresh socket for each raw one."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base = f"http://{HOST}:{port}"
        self.session = requests.Session()

    def send(self, probe: Probe, phase: str) -> Outcome:
        outcome = Outcome(probe, phase)
        try:
            if probe.raw is not None:
                status, headers, body = send_raw(self.port, probe.raw)
            else:
                response = self.session.request(probe.method, self.base + probe.target,
                                                headers=dict(probe.headers), timeout=60,
                                                allow_redirects=False)
                status, body = response.status_code, response.content
                headers = {k.lower(): v for k, v in response.headers.items()}
        except (OSError, requests.RequestException, ValueError, IndexError) as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"[:300]
            return outcome
        outcome.status, outcome.body = status, body
        pid = headers.get("x-soak-pid")
        outcome.pid = int(pid) if pid and pid.isdigit() else None
        return outcome

    def close(self) -> None:
        self.session.close()


def get_json(url: str, timeout: float = 60.0) -> dict[str, Any] | None:
    """GET on a fresh connection (closed after), so the worker's fd count
    holds exactly one socket of ours; None if it failed."""
    try:
        response = requests.get(url, timeout=timeout, headers={"Connection": "close"})
    except requests.RequestException as exc:
        logger.debug("GET %s failed: %s", url, exc)
        return None
    if response.status_code != 200:
        logger.debug("GET %s: %s", url, response.status_code)
        return None
    data: dict[str, Any] = response.json()
    return data


# --- load ---------------------------------------------------------------------------


class Load:
    """Client threads sending the :data:`MIX` until a deadline or a request budget."""

    def __init__(self, port: int, *, clients: int, seed: int, max_requests: int) -> None:
        self.port = port
        self.clients = clients
        self.seed = seed
        self.max_requests = max_requests
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._budget = itertools.count()
        self._numbers = itertools.count(1)
        self._rounds = itertools.count()

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def prime(self) -> None:
        """Each kind of request once, in order (see :data:`PRIMER`)."""
        rng = random.Random(self.seed)
        client = Client(self.port)
        try:
            for factory in PRIMER:
                self._record(client.send(factory(rng, next(self._numbers)), "primer"))
        finally:
            client.close()

    def run(self, seconds: float, phase: str) -> None:
        """Send the mix from :attr:`clients` threads for ``seconds`` (or until
        the budget is spent); returns when every thread has finished."""
        deadline = time.monotonic() + seconds
        factories = [f for _, f in MIX]
        weights = [w for w, _ in MIX]
        round_no = next(self._rounds)

        def client_loop(index: int) -> None:
            rng = random.Random(self.seed * 1000 + round_no * 100 + index)
            client = Client(self.port)
            try:
                while time.monotonic() < deadline and next(self._budget) < self.max_requests:
                    factory = rng.choices(factories, weights)[0]
                    self._record(client.send(factory(rng, next(self._numbers)), phase))
            finally:
                client.close()

        threads = [threading.Thread(target=client_loop, args=(i,), name=f"soak-client-{i}")
                   for i in range(self.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


# --- gunicorn -----------------------------------------------------------------------


def _gunicorn_has(setting: str) -> bool:
    try:
        from gunicorn.config import KNOWN_SETTINGS  # type: ignore[import-untyped]
    except ImportError:
        return False
    return any(s.name == setting for s in KNOWN_SETTINGS)


class Server:
    """``gunicorn -k gthread -w 2 --threads 4`` serving :data:`APP`; stderr
    (gunicorn's log and the app's) goes to :attr:`log_file`."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_file = workdir / "gunicorn.log"
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "gunicorn", "--worker-class", "gthread",
                "--workers", str(WORKERS), "--threads", str(THREADS),
                "--bind", f"{HOST}:{self.port}", "--timeout", "60",
                "--graceful-timeout", "30", "--log-level", "info",
                # 8 KB query values and 500 params do not fit gunicorn's default
                # 4094-byte request line; a proxy in front may allow them
                "--limit-request-line", "0"]
        if _gunicorn_has("control_socket_disable"):  # gunicorn >= 25 (else $HOME/.gunicorn)
            args.append("--no-control-socket")
        return [*args, APP]

    def start(self, timeout: float) -> list[int]:
        """Start, wait until both workers answer; returns their pids."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PERFWATCH_", "GUNICORN"))}
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with self.log_file.open("ab") as log:  # O_APPEND: whole records, never overlapping
            self.process = subprocess.Popen(self.command(), cwd=self.workdir, env=env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True)
        pids: list[int] = poll(self._booted, timeout, f"{WORKERS} 'Booting worker' lines")
        seen: set[int] = set()

        def both_answer() -> bool:
            self._alive()
            try:
                response = requests.get(f"{self.base}/fast", timeout=10,
                                        headers={"Connection": "close"})
            except requests.RequestException:
                return False
            if response.status_code == 200:
                seen.add(int(response.headers["X-Soak-Pid"]))
            return seen >= set(pids)

        poll(both_answer, timeout, f"GET /fast answered by both workers {pids}")
        return pids

    def _alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise SoakError(f"gunicorn exited ({self.process.returncode}); log tail:\n"
                            f"{self.log()[-3000:]}")

    def _booted(self) -> list[int] | None:
        self._alive()
        pids = [int(p) for p in _BOOTING.findall(self.log())]
        return pids if len(pids) >= WORKERS else None

    def log(self) -> str:
        return self.log_file.read_bytes().decode("utf-8", "replace") \
            if self.log_file.exists() else ""

    def stop(self, timeout: float) -> bool:
        """SIGTERM (graceful: workers finish, flush at exit); False if it had to be killed."""
        process = self.process
        if process is None:
            return True
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return False
        self.returncode = process.returncode
        return True

    def kill(self) -> None:
        """SIGKILL the session gunicorn was started in (its master and workers)."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def poll(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Call ``predicate`` until it returns something truthy; :class:`SoakError` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SoakError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def sample_workers(base: str, pids: Iterable[int], timeout: float,
                   good: Callable[[int, dict[str, Any]], bool] = lambda pid, data: True,
                   ) -> dict[int, dict[str, Any]]:
    """``/__soak/stats`` of every worker in ``pids``: requests land on whichever
    worker accepts the connection, so ask until each has answered with a
    sample that is ``good`` (or, at the deadline, return the latest samples)."""
    wanted = set(pids)
    latest: dict[int, dict[str, Any]] = {}
    done: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        data = get_json(f"{base}/__soak/stats")
        if data is not None and data["pid"] in wanted:
            latest[data["pid"]] = data
            if good(data["pid"], data):
                done.add(data["pid"])
        if done >= wanted:
            return latest
        if time.monotonic() > deadline:
            if set(latest) < wanted:
                raise SoakError(f"/__soak/stats: no answer from worker(s) "
                                f"{sorted(wanted - set(latest))} within {timeout:.0f}s")
            return latest
        time.sleep(0.02)


def flush_workers(base: str, pids: Iterable[int], timeout: float) -> dict[int, dict[str, Any]]:
    """Call ``/__soak/flush`` until every worker has said True, or has said
    False without using its 30 s (it cannot make progress), or ``timeout``."""
    wanted = set(pids)
    answers: dict[int, dict[str, Any]] = {}
    done: set[int] = set()
    deadline = time.monotonic() + timeout
    while done < wanted and time.monotonic() < deadline:
        data = get_json(f"{base}/__soak/flush", timeout=90)
        if data is None or data["pid"] not in wanted:
            time.sleep(0.05)
            continue
        answers[data["pid"]] = data
        if data["flushed"] or data["elapsed"] < data["timeout"] - 1:
            done.add(data["pid"])
    return answers


# --- the run ------------------------------------------------------------------------


@dataclass
class SoakOptions:
    seconds: float = 60.0
    warmup: float = 10.0
    clients: int = 6
    max_requests: int = 100_000
    store: str = "sqlite"  # or "memory"
    workdir: Path | None = None
    seed: int = 9
    boot_timeout: float = 90.0
    sample_timeout: float = 60.0
    flush_timeout: float = 150.0
    settle_timeout: float = 60.0
    stop_timeout: float = 60.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class SoakResult:
    options: SoakOptions
    workdir: Path
    pids: list[int] = field(default_factory=list)
    start: dict[int, dict[str, Any]] = field(default_factory=dict)
    end: dict[int, dict[str, Any]] = field(default_factory=dict)
    flush: dict[int, dict[str, Any]] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    load_seconds: float = 0.0
    checks: list[Check] = field(default_factory=list)
    table: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def report(self) -> str:
        lines = [self.table, "", "checks:"]
        for check in self.checks:
            lines.append(f"  {'PASS' if check.ok else 'FAIL'}  {check.name}: "
                         + check.detail.replace("\n", "\n        "))
        verdict = "all checks passed" if self.ok else \
            f"{len(self.failures())} check(s) failed: " + ", ".join(
                c.name for c in self.failures())
        lines += ["", verdict, f"(work dir: {self.workdir})"]
        return "\n".join(lines)


def run_soak(options: SoakOptions) -> SoakResult:
    """Run the whole soak and evaluate every check. Raises nothing for a failed
    check; a run that cannot finish yields a single failed ``harness`` check."""
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="perfwatch-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = SoakResult(options, workdir)
    report_dir = workdir / "reports"
    store_url = f"sqlite:///{workdir / 'dedupe.db'}" if options.store == "sqlite" \
        else "memory://"
    server = Server(workdir, {"PERFWATCH_STORE": store_url,
                              "PERFWATCH_REPORT_DIR": str(report_dir)})
    try:
        logger.info("starting %s", " ".join(server.command()))
        result.pids = pids = server.start(options.boot_timeout)
        logger.info("workers %s ready on %s", pids, server.base)
        load = Load(server.port, clients=options.clients, seed=options.seed,
                    max_requests=options.max_requests)
        load.prime()
        load.run(options.warmup, "warmup")
        # the start sample is a quiet one: queues flushed, no notifier send
        # running (a send blocked past its timeout holds a thread for a while)
        flush_workers(server.base, pids, options.flush_timeout)
        result.start = sample_workers(server.base, pids, options.sample_timeout, good=_quiet)
        logger.info("warm-up done (%d requests); load for %.0f s", load.sent, options.seconds)
        started = time.monotonic()
        load.run(options.seconds, "load")
        result.load_seconds = time.monotonic() - started
        logger.info("load done (%d requests in all); flushing", load.sent)
        result.outcomes = load.outcomes
        result.flush = flush_workers(server.base, pids, options.flush_timeout)
        result.end = sample_workers(server.base, pids, options.settle_timeout,
                                    good=lambda pid, data: not _flat_problems(
                                        result.start[pid], data))
        logger.info("stopping gunicorn")
        stopped = server.stop(options.stop_timeout)
    except SoakError as exc:
        server.kill()
        result.checks = [Check("harness", False, str(exc))]
        result.table = "(no table: the soak did not finish)"
        return result
    finally:
        server.kill()
    result.checks = evaluate(result, server.log_file.read_bytes(), report_dir,
                             store_files=sorted(workdir.glob("dedupe.db*")),
                             stopped=stopped, returncode=server.returncode)
    result.table = summary_table(result, report_dir)
    return result


# --- evaluation ---------------------------------------------------------------------


def _stat(sample: dict[str, Any], key: str) -> Any:
    return sample.get("stats", {}).get(key)


def _quiet(pid: int, sample: dict[str, Any]) -> bool:
    return sample["flaky"]["in_flight"] == 0 and not _stat(sample, "queue_depth")


def _non_pool_threads(sample: dict[str, Any]) -> int:
    return int(sample["threads"]) - int(sample["pool_threads"])


def _flat_problems(start: dict[str, Any], end: dict[str, Any]) -> list[str]:
    """Why ``end`` is not flat against ``start`` (empty if it is)."""
    problems = []
    growth = end["rss_kb"] - start["rss_kb"]
    if growth > RSS_GROWTH_LIMIT_KB:
        problems.append(f"RSS grew {growth / 1024:.1f} MiB ({start['rss_kb']} -> "
                        f"{end['rss_kb']} kB; limit {RSS_GROWTH_LIMIT_KB / 1024:.0f} MiB)")
    lazy = Counter(name for name in end["thread_names"] if LAZY_THREAD.fullmatch(name))
    problems += [f"{count} threads named {name!r} (one expected)"
                 for name, count in sorted(lazy.items()) if count > 1]
    late = len(set(lazy) - set(start["thread_names"]))
    for label, value in (("threads", _non_pool_threads),
                         ("OS threads", lambda s: int(s["threads_os"]) - int(s["pool_threads"]))):
        before, after = value(start) + late, value(end)
        if after > before + THREAD_ALLOWANCE:
            problems.append(f"{label} outside gunicorn's pool {before} -> {after} "
                            f"(allowance {THREAD_ALLOWANCE}); threads now: "
                            f"{Counter(end['thread_names']).most_common()}")
    if end["pool_threads"] > THREADS:
        problems.append(f"{end['pool_threads']} pool threads (> --threads {THREADS})")
    if end["fds"] > start["fds"] + FD_ALLOWANCE:
        problems.append(f"fds {start['fds']} -> {end['fds']} (allowance {FD_ALLOWANCE})")
    return problems


@dataclass
class LogRecord:
    """One record of the log: a header line and the lines that follow it."""

    first: str
    logger: str | None  # None: gunicorn's own or unattributed output
    swallowed: bool = False
    continuation: list[tuple[str, str]] = field(default_factory=list)  # (kind, text)

    @property
    def has_traceback(self) -> bool:
        return any(_TRACEBACK in text for _, text in self.continuation)

    @property
    def final_line(self) -> str:
        """The last line that is not indented: the exception that was raised
        last (or the header, for a record without a traceback)."""
        for _, text in reversed(self.continuation):
            if text and not text[0].isspace() and text != _TRACEBACK + ":":
                return text
        return self.first


def parse_log(text: str) -> tuple[list[LogRecord], list[str]]:
    """Records of the app's loggers (:class:`tests.soak_app.SoakFormatter`)
    and the lines that belong to no such record (gunicorn's log, anything
    printed)."""
    records: list[LogRecord] = []
    other: list[str] = []
    current: LogRecord | None = None
    for line in text.split("\n"):
        head = _LOG_RECORD.match(line)
        if head:
            current = LogRecord(line, head["logger"], bool(head["swallowed"]))
            records.append(current)
            continue
        cont = _CONTINUATION.match(line)
        if cont and current is not None and cont["logger"] == current.logger:
            current.continuation.append((cont["kind"], cont["text"]))
            continue
        current = None
        if line:
            other.append(line)
    return records, other


def _is_ours(logger_name: str | None) -> bool:
    return logger_name is not None and (logger_name == "flask_perfwatch"
                                        or logger_name.startswith("flask_perfwatch."))


@dataclass
class LogScan:
    """What :func:`scan_log` found."""

    unhandled: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    #: flask_perfwatch records of the deliberate failures (traceback or swallowed)
    deliberate: int = 0
    #: the app logger's records of the deliberate /boom error
    view_errors: int = 0


def scan_log(text: str, returncode: int | None, stopped: bool) -> LogScan:
    """The log rule.

    *Unhandled* (``no-unhandled-exception``): a ``Traceback`` line that is
    not part of a record of flask_perfwatch's or the app's logger (so it was
    printed by Python for an uncaught exception, by ``logging``'s error
    handler, or logged by gunicorn); a traceback of the app's logger other
    than Flask's log of the deliberate ``/boom`` error (another one means an
    exception reached the app); gunicorn's markers of an error in a worker or
    a worker's death (:data:`_BAD_MARKERS`, :data:`_BAD_PATTERNS`); "Booting
    worker" other than exactly twice (a restart); gunicorn killed or exiting
    non-zero at SIGTERM.

    *Unexpected* (``perfwatch-errors``): a flask_perfwatch record with a
    traceback, or marked swallowed, whose final exception line lacks
    :data:`DELIBERATE`: flask_perfwatch logging a traceback for the flaky
    notifier's or the receiver's failures is expected; for anything else it
    is a bug of its own.
    """
    records, other = parse_log(text)
    scan = LogScan()
    unhandled = scan.unhandled
    for line in other:
        if _TRACEBACK in line or any(m in line for m in _BAD_MARKERS) \
                or any(p.search(line) for p in _BAD_PATTERNS):
            unhandled.append(line)
    for record in records:
        deliberate = DELIBERATE in record.final_line
        if record.logger == APP_LOGGER:
            if not record.has_traceback:
                continue
            if deliberate and "SoakViewError" in record.final_line:
                scan.view_errors += 1
            else:
                unhandled.append(f"{record.first} ... {record.final_line}")
        elif _is_ours(record.logger):
            if not (record.has_traceback or record.swallowed):
                continue
            if deliberate:
                scan.deliberate += 1
            else:
                scan.unexpected.append(f"{record.first[:300]} ... {record.final_line[:300]}")
        elif record.has_traceback:
            unhandled.append(f"{record.first} ... {record.final_line}")
    booting = _BOOTING.findall(text)
    if len(booting) != WORKERS:
        unhandled.append(f"'Booting worker' {len(booting)} times (pids {booting}), "
                         f"expected {WORKERS}: a worker was restarted")
    if not stopped:
        unhandled.append("gunicorn did not stop within the timeout after SIGTERM (killed)")
    elif returncode != 0:
        unhandled.append(f"gunicorn exited with {returncode} after SIGTERM")
    return scan


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """``text`` with control characters escaped: evidence quoted from a
    hostile log must not drive the terminal it is printed on."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _examples(items: list[str], n: int = 3) -> str:
    shown = "\n".join(f"  {_printable(item[:400])}" for item in items[:n])
    more = f"\n  ... and {len(items) - n} more" if len(items) > n else ""
    return shown + more


def _reports(report_dir: Path) -> list[tuple[Path, dict[str, Any] | None]]:
    found = []
    for path in sorted(report_dir.glob("perfwatch-*.html")) if report_dir.exists() else []:
        match = _METADATA.search(path.read_text("utf-8", "replace"))
        try:
            meta = json.loads(match.group(1)) if match else None
        except ValueError:
            meta = None
        found.append((path, meta))
    return found


def evaluate(result: SoakResult, log: bytes, report_dir: Path, *, store_files: list[Path],
             stopped: bool, returncode: int | None) -> list[Check]:
    checks: list[Check] = []
    pids, start, end = result.pids, result.start, result.end
    outcomes = result.outcomes

    def add(name: str, problems: list[str], passed: str) -> None:
        checks.append(Check(name, not problems, "\n".join(problems) if problems else passed))

    # stats keys
    missing = {pid: [k for k in REQUIRED_KEYS if k not in end[pid].get("stats", {})]
               for pid in pids}
    add("stats-keys", [f"worker {pid}: perfwatch.stats() has no {', '.join(map(repr, keys))}"
                       for pid, keys in missing.items() if keys],
        f"all of {', '.join(REQUIRED_KEYS)} present")

    def need(pid: int, *keys: str) -> str | None:
        absent = [k for k in keys if k not in end[pid].get("stats", {})]
        return (f"worker {pid}: cannot check, perfwatch.stats() has no "
                f"{', '.join(map(repr, absent))}") if absent else None

    # flush
    problems = []
    for pid in pids:
        answer = result.flush.get(pid)
        if answer is None:
            problems.append(f"worker {pid}: never answered /__soak/flush")
        elif not answer["flushed"]:
            problems.append(f"worker {pid}: perfwatch.flush(timeout=30) returned False after "
                            f"{answer['elapsed']:.1f}s, queue_depth {answer['queue_depth']}")
    add("flush", problems, "every worker flushed its queue")

    # accounting
    problems = []
    for pid in pids:
        s = end[pid]["stats"]
        if (why := need(pid, "slow", "hung", "alerts", "alerts_suppressed", "alerts_dropped",
                        "alerts_sent", "alerts_failed", "queue_depth")):
            problems.append(why)
            continue
        n_notifiers = end[pid]["config"]["notifiers"]
        regressions = s.get("regressions", 0)  # endpoint regressions alert too
        lhs = s["slow"] + s["hung"] + regressions
        rhs = s["alerts"] + s["alerts_suppressed"] + s["alerts_dropped"]
        if lhs != rhs:
            problems.append(
                f"worker {pid}: slow {s['slow']} + hung {s['hung']} + regressions "
                f"{regressions} = {lhs} != alerts "
                f"{s['alerts']} + suppressed {s['alerts_suppressed']} + dropped "
                f"{s['alerts_dropped']} = {rhs} ({lhs - rhs:+d} unaccounted)")
        if s["alerts_sent"] + s["alerts_failed"] != s["alerts"] * n_notifiers:
            problems.append(
                f"worker {pid}: alerts_sent {s['alerts_sent']} + alerts_failed "
                f"{s['alerts_failed']} = {s['alerts_sent'] + s['alerts_failed']} != alerts "
                f"{s['alerts']} x {n_notifiers} notifiers = {s['alerts'] * n_notifiers}")
        if s["queue_depth"] != 0:
            problems.append(f"worker {pid}: queue_depth {s['queue_depth']} after the flush")
    add("accounting", problems,
        "per worker: slow + hung == alerts + suppressed + dropped; sent + failed == "
        "alerts x notifiers; queue empty")

    # reports on disk
    reports = _reports(report_dir)
    alerts_on_disk = {meta["id"]: meta for _, meta in reports if meta}
    problems = []
    files_per_alert = Counter(meta["id"] for _, meta in reports if meta)
    twice = {i: n for i, n in files_per_alert.items() if n > 1}
    if twice:
        names = [p.name for p, meta in reports if meta and meta["id"] in twice]
        problems.append(f"{len(twice)} alert(s) written to more than one file "
                        f"({sum(twice.values())} files):\n{_examples(names, 6)}")
    unreadable = [p.name for p, meta in reports if meta is None]
    if unreadable:
        problems.append(f"{len(unreadable)} report file(s) without readable metadata: "
                        f"{unreadable[:3]}")
    by_pid = Counter(meta.get("pid") for meta in alerts_on_disk.values())
    for pid in pids:
        if (why := need(pid, "alerts")):
            problems.append(why)
        elif by_pid[pid] != end[pid]["stats"]["alerts"]:
            problems.append(f"worker {pid}: {by_pid[pid]} alerts on disk, "
                            f"{end[pid]['stats']['alerts']} counted")
    add("reports", problems, f"{len(reports)} report files, exactly one per alert")

    # notifier isolation
    problems = []
    for pid in pids:
        if (why := need(pid, "alerts", "alerts_failed")):
            problems.append(why)
            continue
        s, flaky = end[pid]["stats"], end[pid]["flaky"]
        never_got = s["alerts"] - flaky["sends"]
        expected = flaky["expected_failures"] + never_got
        if never_got < 0:
            problems.append(f"worker {pid}: the flaky notifier got {flaky['sends']} sends for "
                            f"{s['alerts']} alerts")
        if s["alerts_failed"] != expected:
            problems.append(
                f"worker {pid}: alerts_failed {s['alerts_failed']} != {expected} = flaky "
                f"raised {flaky['raised']} + BaseException {flaky['boom']} + blocked past the "
                f"timeout {flaky['long_blocks']} + alerts it never got {never_got} "
                f"(local never fails)")
        per = s.get("notifiers", {})
        if per.get("local", {}).get("failed"):
            problems.append(f"worker {pid}: local failed {per['local']['failed']} time(s)")
    add("notifier-isolation", problems,
        "every failure of the flaky notifier counted, none of local; "
        + "; ".join(f"worker {pid}: flaky {end[pid]['flaky']}" for pid in pids))

    # receiver isolation
    problems = []
    for pid in pids:
        if (why := need(pid, "slow", "receiver_errors", "errors")):
            problems.append(why)
            continue
        s, calls = end[pid]["stats"], end[pid]["receiver_calls"]
        if calls != s["slow"]:
            problems.append(f"worker {pid}: the raising receiver ran {calls} times for "
                            f"{s['slow']} slow requests")
        if s["receiver_errors"] != calls:
            problems.append(f"worker {pid}: receiver_errors {s['receiver_errors']} != "
                            f"{calls} receiver calls (each raised)")
        if s["errors"] != s["receiver_errors"]:
            problems.append(f"worker {pid}: errors (swallowed) {s['errors']} != "
                            f"receiver_errors {s['receiver_errors']}: "
                            f"{s['errors'] - s['receiver_errors']:+d} other swallowed errors")
    add("receiver-isolation", problems,
        "the receiver ran and failed for every slow request, counted; nothing else swallowed")

    # seen
    served = Counter(o.pid for o in outcomes if o.pid is not None)
    slow_served = Counter(o.pid for o in outcomes if o.pid is not None and o.probe.slow
                          and o.ok)
    problems = []
    for pid in pids:
        if (why := need(pid, "requests", "slow")):
            problems.append(why)
            continue
        s = end[pid]["stats"]
        if s["requests"] < served[pid]:
            problems.append(f"worker {pid}: perfwatch counted {s['requests']} requests, it "
                            f"served {served[pid]} to the runner")
        if s["slow"] < slow_served[pid]:
            problems.append(f"worker {pid}: perfwatch counted {s['slow']} slow, it served "
                            f"{slow_served[pid]} slow responses to the runner")
    add("seen", problems, "every request and slow request the workers served was counted")

    # endpoint limit
    limit = end[pids[0]]["config"]["endpoint_alert_limit"]
    shared = result.options.store == "sqlite"
    groups = Counter((meta.get("name"), None if shared else meta.get("pid"))
                     for meta in alerts_on_disk.values()
                     if not meta.get("hung") and meta.get("kind") != "regression")
    add("endpoint-limit",
        [f"endpoint {name!r}{'' if shared else f' in worker {pid}'}: {n} alerts > limit "
         f"{limit}" for (name, pid), n in sorted(groups.items(), key=str) if n > limit],
        f"at most {limit} alerts per endpoint {'(shared store)' if shared else 'per worker'}: "
        + ", ".join(f"{name}{'' if shared else f'@{pid}'}={n}"
                    for (name, pid), n in sorted(groups.items(), key=str)))

    # flat
    problems = []
    for pid in pids:
        problems += [f"worker {pid}: {p}" for p in _flat_problems(start[pid], end[pid])]
    add("flat", problems, "; ".join(
        f"worker {pid}: RSS {(end[pid]['rss_kb'] - start[pid]['rss_kb']) / 1024:+.1f} MiB, "
        f"threads {_non_pool_threads(start[pid])}->{_non_pool_threads(end[pid])} (+pool "
        f"{end[pid]['pool_threads']}), fds {start[pid]['fds']}->{end[pid]['fds']}"
        for pid in pids))

    # the log
    text = log.decode("utf-8", "replace")
    scan = scan_log(text, returncode, stopped)
    add("no-unhandled-exception", [_examples(scan.unhandled, 5)] if scan.unhandled else [],
        f"no stray traceback, no worker error or restart; 'Booting worker' x{WORKERS}; "
        f"exit {returncode}; {scan.view_errors} logged /boom errors (deliberate)")
    add("perfwatch-errors", [
        f"{len(scan.unexpected)} flask_perfwatch record(s) with a traceback or swallowed "
        f"error not provoked on purpose:\n{_examples(scan.unexpected)}"]
        if scan.unexpected else [],
        f"flask_perfwatch logged tracebacks only for the deliberate failures "
        f"({scan.deliberate} records)")

    # responses
    wrong = [o for o in outcomes if not o.ok]
    by_label = Counter(o.probe.label for o in wrong)
    add("responses", [] if not wrong else [
        f"{len(wrong)} of {len(outcomes)} responses wrong ({dict(by_label)}):\n"
        + _examples([o.describe() for o in wrong], 5)],
        f"all {len(outcomes)} responses as expected")
    fast = [o for o in outcomes if o.probe.fast]
    fast_wrong = [o for o in fast if not o.ok]
    add("fast-intact", [] if not fast_wrong else [
        f"{len(fast_wrong)} of {len(fast)} /fast responses wrong:\n"
        + _examples([o.describe() for o in fast_wrong])],
        f"{len(fast)} /fast responses, every one 200 b'fast' from a worker")

    # secrets
    problems = []
    needle = SECRET.encode()
    files = [p for p in report_dir.rglob("*") if p.is_file()] if report_dir.exists() else []
    for path in [*files, *store_files]:
        if SECRET in path.name:
            problems.append(f"file name {path.name.replace(SECRET, '<SECRET>')}")
        data = path.read_bytes()
        if needle in data:
            at = data.index(needle)
            context = data[max(0, at - 80):at + 40].replace(needle, b"<SECRET>")
            problems.append(f"{path.relative_to(result.workdir)}: {data.count(needle)} "
                            f"occurrence(s), e.g. ...{context!r}...")
    if needle in log:
        lines = [line.replace(SECRET, "<SECRET>") for line in text.split("\n")
                 if SECRET in line]
        problems.append(f"gunicorn.log: {len(lines)} line(s), e.g.\n{_examples(lines)}")
    add("no-secrets", problems,
        f"not in {len(files)} report-dir files, {len(store_files)} store files or the log")

    # log safety
    problems = []
    for byte, name in ((b"\x1b", "ESC"), (b"\r", "CR")):
        if byte in log:
            at = log.index(byte)
            problems.append(f"raw {name} in the log ({log.count(byte)}x), e.g. "
                            f"{log[max(0, at - 100):at + 20]!r}")
    forged = [line for line in text.split("\n")
              if ((m := _CONTINUATION.match(line)) and m["text"].startswith(FORGED))
              or line.startswith(FORGED)]
    if forged:
        problems.append(f"{len(forged)} log line(s) start with text a request forged:\n"
                        + _examples(forged))
    add("log-safety", problems, "no raw ESC or CR, no forged line")

    # exercised
    problems = []
    for pid in pids:
        # the BaseException comes with a worker's first send; how many more
        # sends a worker gets is up to the accept race and, with a shared
        # store, to which worker claims an alert first (one CI run: 38 and 2)
        if end[pid]["flaky"]["boom"] < 1:
            problems.append(f"worker {pid}: the flaky notifier's BaseException never came "
                            "(the run did not provoke it; run longer)")
        if end[pid]["receiver_calls"] < 1:
            problems.append(f"worker {pid}: the raising receiver never ran")
    for key in ("raised", "long_blocks"):
        total = sum(end[pid]["flaky"][key] for pid in pids)
        if total < 1:
            problems.append(f"the flaky notifier's {key} = 0 in every worker (the run did not "
                            "provoke it; run longer)")
    reached = {o.probe.label for o in outcomes if o.ok}
    kinds = {f(random.Random(0), 0).label for f in PRIMER}
    if kinds - reached:
        problems.append(f"never answered correctly: {sorted(kinds - reached)}")
    junk_slow = sum(1 for o in outcomes if o.probe.label == "junk" and o.ok)
    if junk_slow <= limit * (1 if shared else len(pids)):
        problems.append(f"only {junk_slow} /junk requests: the endpoint limit ({limit}) was "
                        "not reached")
    if scan.deliberate < 1 or scan.view_errors < 1:
        problems.append(f"the log rule saw {scan.deliberate} flask_perfwatch records of the "
                        f"deliberate failures and {scan.view_errors} of /boom: the log "
                        "format and the rule disagree, or nothing was logged")
    add("exercised", problems,
        "BaseException in every worker, raises and blocks past the timeout in the run; "
        f"every kind of request answered; {junk_slow} /junk requests against a limit of {limit}")
    return checks


def summary_table(result: SoakResult, report_dir: Path) -> str:
    pids, start, end = result.pids, result.start, result.end
    outcomes = result.outcomes
    served = Counter(o.pid for o in outcomes)
    slow_served = Counter(o.pid for o in outcomes if o.probe.slow and o.ok)

    def stat(key: str) -> list[str]:
        values = [_stat(end[pid], key) for pid in pids]
        total = sum(values) if all(isinstance(v, int) for v in values) else None
        return [("-" if v is None else str(v)) for v in values] + \
            ["-" if total is None else str(total)]

    def per(fn: Callable[[int], Any], total: Any = "") -> list[str]:
        return [str(fn(pid)) for pid in pids] + [str(total)]

    rss = [(start[pid]["rss_kb"], end[pid]["rss_kb"]) for pid in pids]
    rows: list[tuple[str, list[str]]] = [
        ("requests sent (by runner)", per(lambda p: served[p],
                                          f"{len(outcomes)} ({served[None]} answered by "
                                          "gunicorn/failed)")),
        ("requests (perfwatch)", stat("requests")),
        ("slow served (by runner)", per(lambda p: slow_served[p], sum(slow_served.values()))),
        ("slow (perfwatch)", stat("slow")),
        ("hung", stat("hung")),
        ("alerts (passed dedupe)", stat("alerts")),
        ("alerts sent", stat("alerts_sent")),
        ("alerts suppressed", stat("alerts_suppressed")),
        ("alerts dropped", stat("alerts_dropped")),
        ("alerts failed", stat("alerts_failed")),
        ("receiver errors", stat("receiver_errors")),
        ("errors (swallowed)", stat("errors")),
        ("flaky sends / expected fails", per(
            lambda p: f"{end[p]['flaky']['sends']} / {end[p]['flaky']['expected_failures']}")),
        ("RSS MiB start -> end", per(
            lambda p: f"{start[p]['rss_kb'] / 1024:.1f} -> {end[p]['rss_kb'] / 1024:.1f}",
            f"{sum(e - s for s, e in rss) / 1024:+.1f}")),
        ("threads start -> end", per(
            lambda p: f"{start[p]['threads']} -> {end[p]['threads']}")),
        ("  of which gunicorn pool", per(
            lambda p: f"{start[p]['pool_threads']} -> {end[p]['pool_threads']}")),
        ("fds start -> end", per(lambda p: f"{start[p]['fds']} -> {end[p]['fds']}")),
    ]
    header = ["", *(f"worker {pid}" for pid in pids), "total"]
    widths = [max(len(r[0]) for r in rows)] + [
        max(len(header[i + 1]), *(len(r[1][i]) for r in rows)) for i in range(len(pids) + 1)]
    lines = [f"flask_perfwatch soak: gunicorn gthread, {WORKERS} workers x {THREADS} threads, "
             f"store {result.options.store}, {result.load_seconds:.0f} s load after "
             f"{result.options.warmup:.0f} s warm-up, {result.options.clients} clients, "
             f"{len(_reports(report_dir))} report files",
             "  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    for label, cells in rows:
        lines.append("  ".join([label.ljust(widths[0]),
                                *(c.rjust(w) for c, w in zip(cells, widths[1:], strict=True))]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="seconds of load after the warm-up (default 60)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of warm-up load before the start sample "
                             "(default: a sixth of --seconds, 3 to 10)")
    parser.add_argument("--clients", type=int, default=6, help="client threads (default 6)")
    parser.add_argument("--max-requests", type=int, default=100_000,
                        help="stop the load after this many requests (default 100000)")
    parser.add_argument("--store", choices=["sqlite", "memory"], default="sqlite",
                        help="dedupe store (default sqlite, shared by the workers)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the log, reports and store go (default: a new temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="soak: %(message)s")
    warmup = args.warmup if args.warmup is not None else min(10.0, max(3.0, args.seconds / 6))
    result = run_soak(SoakOptions(seconds=args.seconds, warmup=warmup, clients=args.clients,
                                  max_requests=args.max_requests, store=args.store,
                                  workdir=args.workdir))
    print(result.report())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
