"""What flask_perfwatch costs a Flask app, measured against the same app without it.

    python benchmarks/overhead.py            # direct WSGI calls, ~2-4 minutes
    python benchmarks/overhead.py --quick    # a shorter run while iterating (~1 minute)
    python benchmarks/overhead.py --server   # real gunicorn on 127.0.0.1, bounded load

Identical apps are built with the public API only (``PerfWatch(app, ...)``), so
the benchmark measures whatever the extension does per request today:

``bare``         the app alone
``control``      a second bare app: its row is the noise floor of the run
``default``      ``PerfWatch(app)`` with the default configuration
``sampler``      ``PerfWatch(app, profiler="sampler")``
``pyinstrument`` ``PerfWatch(app, profiler="pyinstrument")``
``timing-only``  ``PerfWatch(app, profiler="off")``
``... (before)`` the same with the package as it was before issue 13's fast
                 path (``_before.py``: loaded from git beside the current one)
``... (issue 13)`` as it was before issue 14's per-endpoint statistics

Every variant runs the same batch of requests in the same round, in an order
that alternates round by round (A B C ... C B A ...); a variant's overhead in a
round is its batch time over the bare app's batch time in that round. The
table prints the median with [min, max] over the rounds, the fixed cost in µs
per request on ``/hello``, and what ``engine.start`` + ``engine.stop`` cost
alone. No request is slow (the default 1 s threshold), so no report is built.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flask import Flask, render_template_string

VARIANTS: dict[str, dict[str, Any] | None] = {
    "bare": None,
    "control": None,
    "default": {},
    "sampler": {"profiler": "sampler"},
    "pyinstrument": {"profiler": "pyinstrument"},
    "timing-only": {"profiler": "off"},
    "default (before)": {},
    "timing-only (before)": {"profiler": "off"},
    "default (issue 13)": {},
}

TEMPLATE = """<ul>{% for item in items %}
<li class="{{ loop.cycle('odd', 'even') }}">{{ item.name|title }}: {{ item.price }}</li>
{% endfor %}</ul>"""
ITEMS = [{"name": f"item number {i}", "price": i * 1.25} for i in range(200)]

# iteration counts for ~5 ms, set by calibrate()
LOOP_N = 40_000
CALLS_N = 20_000


def _add(a: int, b: int) -> int:
    return a + b


def _step(x: int) -> int:
    return _add(x, 1) & 0xFFFF


def loop_work(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def calls_work(n: int) -> int:
    x = 0
    for _ in range(n):
        x = _step(x)
    return x


def calibrate(target: float = 0.005) -> None:
    """Pick iteration counts so that /loop and /calls take ~5 ms here."""
    global LOOP_N, CALLS_N
    for name, func in (("LOOP_N", loop_work), ("CALLS_N", calls_work)):
        n = 2000
        while True:
            t0 = time.perf_counter()
            func(n)
            elapsed = time.perf_counter() - t0
            if elapsed > 0.002:
                break
            n *= 2
        best = min(_timed(func, n) for _ in range(5))
        globals()[name] = max(1, int(n * target / best))


def _timed(func: Callable[[int], int], n: int) -> float:
    t0 = time.perf_counter()
    func(n)
    return time.perf_counter() - t0


def make_app(variant: str, report_dir: str | None = None) -> Flask:
    app = Flask(f"bench_{variant.replace('-', '_')}")

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    @app.get("/loop")
    def loop() -> str:
        return str(loop_work(LOOP_N))

    @app.get("/calls")
    def calls() -> str:
        return str(calls_work(CALLS_N))

    @app.get("/template")
    def template() -> str:
        return render_template_string(TEMPLATE, items=ITEMS)

    @app.get("/sleep")
    def sleep() -> str:
        time.sleep(0.02)
        return "slept"

    options = VARIANTS[variant]
    if options is not None:
        from flask_perfwatch import PerfWatch

        extension: Any = PerfWatch
        if variant.endswith(("(before)", "(issue 13)")):
            import _before

            before = _before.load() if variant.endswith("(before)") else \
                _before.load(_before.ISSUE_13, "flask_perfwatch_issue13")
            if before is None:
                raise SystemExit(f"{variant}: that version of the package is not available")
            extension = before.PerfWatch
        extension(app, report_dir=report_dir or tempfile.gettempdir(), **options)
    return app


def server_app(variant: str) -> Flask:
    """For gunicorn: ``overhead:server_app("sampler")``."""
    calibrate()
    return make_app(variant)


# --- direct WSGI calls ---------------------------------------------------------


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def wsgi_batch(app: Flask, environ: dict[str, Any], n: int) -> float:
    """Seconds for ``n`` direct WSGI calls of ``app``."""
    wsgi = app  # the app object, as a server calls it (sees any wsgi_app wrapper)
    gc.collect()
    t0 = time.perf_counter()
    for _ in range(n):
        body = wsgi(dict(environ), _start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return time.perf_counter() - t0


VIEWS = {  # path: requests per batch (full mode); quick mode uses a third
    "/hello": 3000,
    "/loop": 30,
    "/calls": 30,
    "/template": 150,
    "/sleep": 8,
}


def run_wsgi(quick: bool, variants: list[str]) -> None:
    from werkzeug.test import EnvironBuilder

    rounds = 7 if quick else 15
    scale = 3 if quick else 1
    calibrate()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; /loop n={LOOP_N}, "
          f"/calls n={CALLS_N}; {rounds} rounds, direct WSGI calls")
    report_dir = tempfile.mkdtemp(prefix="perfwatch-bench-")
    apps = {v: make_app(v, report_dir) for v in variants}
    environs = {path: EnvironBuilder(path=path, base_url="http://localhost/").get_environ()
                for path in VIEWS}
    for app in apps.values():  # warm up: first-request work, template compile, sampler start
        for path in VIEWS:
            wsgi_batch(app, environs[path], 3)

    per_request: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for path, n in VIEWS.items():
            n = max(3, n // scale)
            for v in order:
                t = wsgi_batch(apps[v], environs[path], n) / n
                per_request.setdefault((v, path), []).append(t)
        sys.stderr.write(f"\rround {r + 1}/{rounds}")
        sys.stderr.flush()
    sys.stderr.write("\n")

    header = f"{'variant':<22}" + "".join(f"{p:>24}" for p in VIEWS) + f"{'µs/req /hello':>15}"
    print()
    print("overhead vs bare: median % [min, max] over rounds")
    print(header)
    print("-" * len(header))
    bare_ms = {p: statistics.median(per_request[("bare", p)]) * 1000 for p in VIEWS}
    print(f"{'bare (ms)':<22}" + "".join(f"{bare_ms[p]:>24.3f}" for p in VIEWS)
          + f"{bare_ms['/hello'] * 1000:>15.1f}")
    for v in variants:
        if v == "bare":
            continue
        cells = []
        for p in VIEWS:
            ratios = [a / b - 1 for a, b in zip(per_request[(v, p)], per_request[("bare", p)],
                                                strict=True)]
            cells.append(f"{statistics.median(ratios) * 100:+6.1f}% "
                         f"[{min(ratios) * 100:+.0f},{max(ratios) * 100:+.0f}]")
        fixed = [(a - b) * 1e6 for a, b in zip(per_request[(v, "/hello")],
                                              per_request[("bare", "/hello")], strict=True)]
        print(f"{v:<22}" + "".join(f"{c:>24}" for c in cells)
              + f"{statistics.median(fixed):>+15.2f}")

    print()
    print("engine.start + engine.stop(keep=False) alone, per request:")
    for name in ("sampler", "pyinstrument", "off"):
        print(f"  {name:<13} {engine_cost(name):8.2f} µs")


def engine_cost(name: str, n: int = 20000) -> float:
    from flask_perfwatch import Config
    from flask_perfwatch.profiling import create_engine

    engine = create_engine(Config(profiler=name))
    try:
        if name == "pyinstrument":
            n = 2000
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                engine.stop(engine.start("GET /hello"), keep=False)
            best = min(best, (time.perf_counter() - t0) / n)
        return best * 1e6
    finally:
        engine.close()


# --- real server -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def gunicorn(variant: str, workers: int) -> Iterator[int]:
    port = _free_port()
    here = Path(__file__).resolve().parent
    cmd = [sys.executable, "-m", "gunicorn", "--workers", str(workers),
           "--bind", f"127.0.0.1:{port}", "--chdir", str(here), "--log-level", "warning",
           f'overhead:server_app("{variant}")']
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(here.parent)})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(port, "/hello")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn for {variant} did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _get(port: int, path: str) -> float:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        conn.getresponse().read()
    finally:
        conn.close()
    return time.perf_counter() - t0


def load(port: int, path: str, total: int, concurrency: int) -> tuple[float, list[float]]:
    """``total`` requests from ``concurrency`` client threads: (seconds, latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            latency = _get(port, path)
            with lock:
                latencies.append(latency)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latencies


def run_server(quick: bool, variants: list[str]) -> None:
    rounds = 3 if quick else 6
    paths = {"/hello": 600, "/template": 300, "/loop": 150, "/sleep": 100}
    scale = 2 if quick else 1
    workers, concurrency = 2, 4
    print(f"gunicorn sync workers={workers} on 127.0.0.1, {concurrency} client threads, "
          f"{rounds} rounds, one connection per request")
    with contextlib.ExitStack() as stack:
        ports = {v: stack.enter_context(gunicorn(v, workers)) for v in variants}
        results: dict[tuple[str, str], list[tuple[float, list[float]]]] = {}
        for r in range(rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            for path, total in paths.items():
                for v in order:
                    load(ports[v], path, 20, concurrency)  # settle
                    results.setdefault((v, path), []).append(
                        load(ports[v], path, total // scale, concurrency))
            sys.stderr.write(f"\rround {r + 1}/{rounds}")
            sys.stderr.flush()
        sys.stderr.write("\n")

    print()
    print(f"{'view':<10}{'variant':<14}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'thr ratio':>11}{'p50 ratio':>11}{'p99 ratio':>11}")
    for path in paths:
        base = _summary(results[("bare", path)])
        for v in variants:
            rps, p50, p99 = _summary(results[(v, path)])
            print(f"{path:<10}{v:<14}{rps:>9.0f}{p50 * 1000:>9.2f}{p99 * 1000:>9.2f}"
                  f"{rps / base[0]:>11.3f}{p50 / base[1]:>11.3f}{p99 / base[2]:>11.3f}")


def _summary(runs: list[tuple[float, list[float]]]) -> tuple[float, float, float]:
    rps = statistics.median(len(lat) / secs for secs, lat in runs)
    lat = sorted(x for _, latencies in runs for x in latencies)
    return rps, lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--server", action="store_true",
                        help="real gunicorn on 127.0.0.1 instead of direct WSGI calls")
    parser.add_argument("--variants", default=None,
                        help="comma-separated subset of: " + ", ".join(VARIANTS))
    args = parser.parse_args(argv)
    if args.variants:
        variants = ["bare", *[v for v in args.variants.split(",") if v != "bare"]]
    elif args.server:
        variants = ["bare", "control", "default", "default (before)", "sampler", "pyinstrument"]
    else:
        variants = list(VARIANTS)
    if not args.variants:
        import _before

        if _before.load() is None:  # no git history here: current rows only
            variants = [v for v in variants if not v.endswith(("(before)", "(issue 13)"))]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if args.server:
        run_server(args.quick, variants)
    else:
        run_wsgi(args.quick, variants)


if __name__ == "__main__":
    main()
