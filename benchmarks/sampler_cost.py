"""What the sampler thread costs, as a share of one CPU core, by requests in flight.

    python benchmarks/sampler_cost.py                  # 1, 8, 32, 64 requests; 3 s each
    python benchmarks/sampler_cost.py --seconds 5 --threads 8,64

Each case starts N request threads through the sampler engine's own
``start``/``stop`` (what the WSGI wrapper calls), each holding a 60-frame
stack: N - 1 wait on an event (a request waiting on a database, say) and one
is slow and CPU-bound, spending 70 % of its time in ``share_70`` and 30 % in
``share_30``. Once every request is armed, the sampler thread's own CPU time
(``time.pthread_getcpuclockid``) is read over ``--seconds`` of wall time.

Each case runs twice: with ``PERFWATCH_SAMPLER_BUDGET=0`` (no budget: a
sample every ``PERFWATCH_PROFILE_INTERVAL``) and with the default budget (1 %
of one core). Columns: the sampler's CPU share, its ticks per second, the
samples per second the slow request got, and the share of that request's
profile in ``share_70`` (70 expected; within 10 points is the bar). Both
rows of a count are measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from flask_perfwatch import Config
from flask_perfwatch.config import config_fields
from flask_perfwatch.profiling.sampler import SamplerEngine

DEPTH = 60


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
    """N request threads in flight, one of them slow."""

    def __init__(self, engine: SamplerEngine | None, threads: int) -> None:
        self.engine = engine
        self.stop = threading.Event()
        self.ready = threading.Barrier(threads + 1)
        self.profile: Any = None
        self.slow_seconds = 0.0
        self.threads = [threading.Thread(target=self.request, args=(i == 0,), daemon=True)
                        for i in range(threads)]

    def request(self, slow: bool) -> None:
        engine = self.engine
        handle = engine.start(f"GET /req{'-slow' if slow else ''}") if engine else None
        started = time.perf_counter()

        def leaf() -> None:
            self.ready.wait()
            if not slow:
                self.stop.wait()
                return
            while not self.stop.is_set():
                share_70(0.007)
                share_30(0.003)

        deep(DEPTH, leaf)
        if slow:
            self.slow_seconds = time.perf_counter() - started
            if engine is not None:
                self.profile = engine.stop(handle, keep=True)
        elif engine is not None:
            engine.stop(handle, keep=False)

    def run(self, seconds: float) -> dict[str, float]:
        for thread in self.threads:
            thread.start()
        self.ready.wait()
        time.sleep(0.1)  # every request is past the arming delay
        engine = self.engine
        clock = None
        if engine is not None and engine._thread is not None and engine._thread.ident:
            clock = time.pthread_getcpuclockid(engine._thread.ident)
        ticks0 = engine.ticks if engine else 0
        cpu0 = time.clock_gettime(clock) if clock is not None else 0.0
        wall0 = time.perf_counter()
        time.sleep(seconds)
        wall = time.perf_counter() - wall0
        cpu = (time.clock_gettime(clock) if clock is not None else 0.0) - cpu0
        ticks = (engine.ticks if engine else 0) - ticks0
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        row = {"cpu": cpu / wall * 100, "ticks": ticks / wall, "samples": 0.0, "share": 0.0}
        if self.profile is not None:
            row["samples"] = self.profile.sample_count / self.slow_seconds
            row["share"] = attribution(self.profile.session)
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


def engine_for(budget: str | None) -> SamplerEngine:
    options: dict[str, Any] = {"threshold": 0.3, "hang_after": 0}
    if budget is not None and "sampler_budget" in {f.name for f in config_fields()}:
        options["sampler_budget"] = budget
    return SamplerEngine(Config(**options))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", default="1,8,32,64")
    args = parser.parse_args(argv[1:])
    counts = [int(n) for n in args.threads.split(",")]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * DEPTH))
    print(f"sampler thread CPU, {args.seconds:g} s per case, {DEPTH}-frame stacks, "
          f"Python {sys.version.split()[0]}")
    print(f"{'in flight':>9}  {'budget':<8}{'CPU % core':>11}{'ticks/s':>9}"
          f"{'samples/s':>11}{'share_70 %':>12}")
    for count in counts:
        for label, budget in (("none", "0"), ("default", None)):
            engine = engine_for(budget)
            try:
                row = Case(engine, count).run(args.seconds)
            finally:
                engine.close()
            print(f"{count:>9}  {label:<8}{row['cpu']:>11.2f}{row['ticks']:>9.0f}"
                  f"{row['samples']:>11.0f}{row['share']:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
