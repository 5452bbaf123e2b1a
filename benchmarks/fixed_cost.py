"""The fixed per-request cost of flask_perfwatch, in microseconds, on a bare view.

    python benchmarks/fixed_cost.py            # 41 alternating rounds of 2000 requests
    python benchmarks/fixed_cost.py 61 4000    # more rounds / requests per round

Calls ``app.wsgi_app`` directly on a "hello" view for each variant, the
variants alternating round by round, and prints the median of the per-round
differences against the bare app with the interquartile range. ``control`` is
a second bare app: its row is the noise of the run. ``wrapper`` is a
do-nothing WSGI wrapper: the floor any middleware pays. The ``(before)`` rows
run the package as it was before issue 13's fast path, the ``(issue 13)`` rows
as it was before issue 14's per-endpoint statistics (``_before.py``), in the
same rounds. ``overhead.py`` gives the ratios on heavier views; this isolates
the microseconds.

The two ``floor:`` rows are not the package: the least a timing wrapper can
do (two clock reads and a comparison), and that plus the least exact
per-endpoint statistics can do (a view lookup that notes the endpoint, one
dict lookup, a counter and a slot written). They show how much of a row is
the job itself on this machine, and how much is flask_perfwatch.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterable
from typing import Any

import _before
from flask import Flask
from flask.globals import _cv_request
from werkzeug.test import EnvironBuilder

from flask_perfwatch import PerfWatch

#: older versions of the package, by the suffix of their rows
OLDER = {" (before)": _before.load(),
         " (issue 13)": _before.load(_before.ISSUE_13, "flask_perfwatch_issue13")}
VARIANTS = ("bare", "control", "wrapper", "floor: timer", "floor: timer + endpoint",
            "timing-only (before)", "timing-only (issue 13)", "timing-only",
            "sampler (before)", "sampler (issue 13)", "sampler", "pyinstrument")


def _older(variant: str) -> tuple[str, Any]:
    """(engine row name, the older package's module or None) of a variant."""
    for suffix, module in OLDER.items():
        if variant.endswith(suffix):
            return variant[:-len(suffix)], module
    return variant, None


class PassThrough:
    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return self.app(environ, start_response)


class FloorTimer(PassThrough):
    """The least a timer does: two clock reads and a comparison."""

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start = time.perf_counter()
        body = self.app(environ, start_response)
        if time.perf_counter() - start > 1.0:
            print("slow")
        return body


class FloorViews(dict[str, Any]):
    """A view lookup that notes the endpoint in the request's environ."""

    __slots__ = ()

    def __getitem__(self, endpoint: str) -> Any:
        ctx = _cv_request.get(None)
        if ctx is not None:
            ctx.request.environ["floor.endpoint"] = endpoint
        return dict.__getitem__(self, endpoint)


class FloorStats(PassThrough):
    """FloorTimer plus the least exact per-endpoint statistics do: find the
    endpoint's slots, take a number, write the duration (no fold, no check)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        super().__init__(app)
        self.slots: dict[str | None, tuple[Any, array[float]]] = {}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start = time.perf_counter()
        body = self.app(environ, start_response)
        duration = time.perf_counter() - start
        slots = self.slots.get(environ.get("floor.endpoint"))
        if slots is None:
            slots = self.slots[environ.get("floor.endpoint")] = (
                itertools.count(), array("d", [0.0]) * 100)
        slots[1][next(slots[0]) % 100] = duration
        if duration > 1.0:
            print("slow")
        return body


def build(variant: str, report_dir: str) -> Flask:
    app = Flask(f"fixed_cost_{variant.replace('-', '_')}")

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    if variant == "wrapper":
        app.wsgi_app = PassThrough(app.wsgi_app)  # type: ignore[method-assign]
    elif variant == "floor: timer":
        app.wsgi_app = FloorTimer(app.wsgi_app)  # type: ignore[method-assign]
    elif variant == "floor: timer + endpoint":
        app.view_functions = FloorViews(app.view_functions)
        app.wsgi_app = FloorStats(app.wsgi_app)  # type: ignore[method-assign]
    elif variant not in ("bare", "control"):
        name, older = _older(variant)
        profiler = {"timing-only": "off"}.get(name, name)
        extension = older.PerfWatch if older is not None else PerfWatch
        extension(app, profiler=profiler, report_dir=report_dir)
    return app


def main(argv: list[str]) -> int:
    rounds = int(argv[1]) if len(argv) > 1 else 41
    per_round = int(argv[2]) if len(argv) > 2 else 2000
    environ = EnvironBuilder(path="/hello").get_environ()

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    with tempfile.TemporaryDirectory() as report_dir:
        variants = [v for v in VARIANTS
                    if not any(v.endswith(suffix) and module is None
                               for suffix, module in OLDER.items())]
        apps = {v: build(v, report_dir).wsgi_app for v in variants}
        times: dict[str, list[float]] = {v: [] for v in variants}
        for round_no in range(rounds):
            order = variants if round_no % 2 == 0 else variants[::-1]
            for variant in order:
                wsgi = apps[variant]
                started = time.perf_counter()
                for _ in range(per_round):
                    body = wsgi(dict(environ), start_response)
                    body.close()  # type: ignore[attr-defined]
                times[variant].append((time.perf_counter() - started) / per_round * 1e6)
    bare = times["bare"]
    print(f"{rounds} rounds x {per_round} requests; bare app: {statistics.median(bare):.2f} µs"
          " per request")
    print(f"{'variant':<24}{'median µs':>10}   IQR")
    for variant in variants[1:]:
        diffs = [t - b for t, b in zip(times[variant], bare, strict=True)]
        q1, _, q3 = statistics.quantiles(diffs, n=4)
        print(f"{variant:<24}{statistics.median(diffs):>+10.2f}   [{q1:+.2f}, {q3:+.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
