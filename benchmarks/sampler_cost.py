"""What the sampler thread costs, as a share of one CPU core, by requests in flight.

    python benchmarks/sampler_cost.py                  # 1, 8, 32, 64 requests; 3 s each
    python benchmarks/sampler_cost.py --seconds 5 --threads 8,64

Each case serves N requests at once through a Flask app set up with
``PerfWatch(profiler="sampler")``, each on its own thread calling the app's
``wsgi_app`` (what a threaded server does), each view holding a 60-frame
stack: N - 1 wait on an event (a request waiting on a database, say) and one
is slow and CPU-bound, spending 70 % of its time in ``share_70`` and 30 % in
``share_30``. The sampler finds them by the extension's frame on their
stacks, as in production. Once every request is armed, the sampler thread's
own CPU time (``time.pthread_getcpuclockid``) is read over ``--seconds`` of
wall time.

Each case runs twice: with ``PERFWATCH_SAMPLER_BUDGET=0`` (no budget: a
sample every ``PERFWATCH_PROFILE_INTERVAL``) and with the default budget (1 %
of one core). Columns: the sampler's CPU share, its ticks per second, the
samples per second the slow request got, and the share of that request's
profile in ``share_70`` (70 expected; within 10 points is the bar where it
got 100 samples or more: from fewer, the share's own statistical error is
that large). Both rows of a count are measured in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask
from werkzeug.test import EnvironBuilder

from flask_perfwatch import PerfWatch
from flask_perfwatch.testing import record_signals

DEPTH = 60
_apps = itertools.count()


def spin(seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


def share_70(seconds: float) -> None:
    spin(seconds)


def share_30(seconds: float) -> None:
    spin(seconds)


def deep(depth: int, leaf: Callable[[], None]) -> None:
    if depth:
        deep(depth - 1, leaf)
    else:
        leaf()


class Case:
    """N requests in flight through a Flask app, one of them slow."""

    def __init__(self, budget: str | None, threads: int, report_dir: str) -> None:
        self.stop = threading.Event()
        self.ready = threading.Barrier(threads + 1)
        self.app = app = Flask(f"sampler_cost_{next(_apps)}")
        options: dict[str, Any] = {"profiler": "sampler", "threshold": 0.3, "hang_after": 0,
                                   "report_dir": report_dir, "notifiers": []}
        if budget is not None:
            options["sampler_budget"] = budget
        self.perfwatch = PerfWatch(app, **options)
        self.engine: Any = app.extensions["perfwatch"].timer._engine

        @app.get("/wait")
        def wait() -> str:
            deep(DEPTH, self.wait_leaf)
            return "waited"

        @app.get("/slow")
        def slow() -> str:
            deep(DEPTH, self.slow_leaf)
            return "slow"

        self.threads = [threading.Thread(target=self.request, args=("/slow" if i == 0 else
                                                                    "/wait",), daemon=True)
                        for i in range(threads)]

    def wait_leaf(self) -> None:
        self.ready.wait()
        self.stop.wait()

    def slow_leaf(self) -> None:
        self.ready.wait()
        while not self.stop.is_set():
            share_70(0.007)
            share_30(0.003)

    def request(self, path: str) -> None:
        environ = EnvironBuilder(path=path).get_environ()
        body: Any = self.app.wsgi_app(environ, lambda *args: None)
        body.close()

    def run(self, seconds: float) -> dict[str, float]:
        with record_signals() as recorder:
            started = time.perf_counter()
            for thread in self.threads:
                thread.start()
            self.ready.wait()
            time.sleep(0.1)  # every request is past the arming delay
            engine = self.engine
            clock = None
            if engine._thread is not None and engine._thread.ident:
                clock = time.pthread_getcpuclockid(engine._thread.ident)
            ticks0 = engine.ticks
            cpu0 = time.clock_gettime(clock) if clock is not None else 0.0
            wall0 = time.perf_counter()
            time.sleep(seconds)
            wall = time.perf_counter() - wall0
            cpu = (time.clock_gettime(clock) if clock is not None else 0.0) - cpu0
            ticks = engine.ticks - ticks0
            self.stop.set()
            for thread in self.threads:
                thread.join(30)
            slow_seconds = time.perf_counter() - started
            events = recorder.wait_for("slow_request", len(self.threads))
        [event] = [e for e in events if e.kwargs["metrics"].name == "slow"]
        self.perfwatch.close(self.app, timeout=5)
        profile = event.kwargs["metrics"].profile
        row = {"cpu": cpu / wall * 100, "ticks": ticks / wall, "samples": 0.0, "share": 0.0}
        if profile is not None:
            row["samples"] = profile.sample_count / slow_seconds
            row["share"] = attribution(profile.session)
        return row


def attribution(session: Any) -> float:
    """The share (in %) of share_70 in the time of share_70 + share_30."""
    totals = {"share_70": 0.0, "share_30": 0.0}

    def walk(frame: Any) -> None:
        if frame.function in totals:
            totals[frame.function] += frame.time
            return
        for child in frame.children:
            walk(child)

    root = session.root_frame()
    if root is not None:
        walk(root)
    both = totals["share_70"] + totals["share_30"]
    return totals["share_70"] / both * 100 if both else 0.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", default="1,8,32,64")
    args = parser.parse_args(argv[1:])
    counts = [int(n) for n in args.threads.split(",")]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * DEPTH))
    logging.getLogger("flask_perfwatch").setLevel(logging.ERROR)  # every request is slow
    print(f"sampler thread CPU, {args.seconds:g} s per case, {DEPTH}-frame stacks, "
          f"Python {sys.version.split()[0]}")
    print(f"{'in flight':>9}  {'budget':<8}{'CPU % core':>11}{'ticks/s':>9}"
          f"{'samples/s':>11}{'share_70 %':>12}")
    report_dir = tempfile.mkdtemp(prefix="sampler_cost-")
    for count in counts:
        for label, budget in (("none", "0"), ("default", None)):
            row = Case(budget, count, report_dir).run(args.seconds)
            print(f"{count:>9}  {label:<8}{row['cpu']:>11.2f}{row['ticks']:>9.0f}"
                  f"{row['samples']:>11.0f}{row['share']:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
