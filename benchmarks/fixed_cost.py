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
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import _before
from flask import Flask
from werkzeug.test import EnvironBuilder

from flask_perfwatch import PerfWatch

#: older versions of the package, by the suffix of their rows
OLDER = {" (before)": _before.load(),
         " (issue 13)": _before.load(_before.ISSUE_13, "flask_perfwatch_issue13")}
VARIANTS = ("bare", "control", "wrapper", "timing-only (before)", "timing-only (issue 13)",
            "timing-only", "sampler (before)", "sampler (issue 13)", "sampler", "pyinstrument")


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


def build(variant: str, report_dir: str) -> Flask:
    app = Flask(f"fixed_cost_{variant.replace('-', '_')}")

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    if variant == "wrapper":
        app.wsgi_app = PassThrough(app.wsgi_app)  # type: ignore[method-assign]
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
