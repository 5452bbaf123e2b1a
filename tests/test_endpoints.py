"""Per-endpoint latency statistics and regression alerts (``_endpoints``):
the windows on a fake clock, then the whole path through a real Flask app:
the fast path's recording, ``endpoint_stats()``, the ``endpoint_regressed``
signal and its alert, and ``flask perfwatch endpoints``."""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import monitor_of, reports_in
from flask import Blueprint, Flask

from flask_perfwatch import PerfWatch, _endpoints
from flask_perfwatch._endpoints import (
    BLOCK,
    BLOCK_SECONDS,
    MAX_PROFILES,
    EndpointTracker,
    Window,
    bucket,
    percentile,
    read_snapshots,
)
from flask_perfwatch.cli import perfwatch as perfwatch_cli
from flask_perfwatch.metrics import PerformanceMetrics, utcnow
from flask_perfwatch.testing import record_signals

# --- the windows, on a fake clock -------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tracker:
    """An EndpointTracker on a fake clock."""

    def __init__(self, factor: float = 2.0, min_requests: int = 50) -> None:
        self.clock = Clock()
        self.alerts: list[PerformanceMetrics] = []
        self.tracker = EndpointTracker(factor=factor, min_requests=min_requests,
                                       on_regression=self.alerts.append, clock=self.clock)

    def request(self, seconds: float, *, name: str = "view", gap: float = 0.5) -> None:
        """One request of ``seconds``, ``gap`` seconds after the previous one."""
        self.clock.now += gap
        self.tracker.add(name, name, 1.0, False, seconds, self.clock.now)
        endpoint = self.tracker.by_name[name]
        self.tracker.tick(endpoint, self.clock.now)  # as the fast path's round does

    def run(self, durations: list[float], **kwargs: Any) -> int | None:
        """Send the requests; the index of the one after which the first alert
        came (None if none did)."""
        for index, seconds in enumerate(durations):
            before = len(self.alerts)
            self.request(seconds, **kwargs)
            if len(self.alerts) > before:
                return index
        return None


def _noisy(rng: random.Random, n: int, median: float, sigma: float = 0.35) -> list[float]:
    return [rng.lognormvariate(0, sigma) * median for _ in range(n)]


def test_percentiles_of_the_buckets_are_within_ten_percent() -> None:
    """What ``flask perfwatch endpoints`` merges: fixed-bucket histograms."""
    rng = random.Random(1)
    values = _noisy(rng, 5000, 0.040, sigma=0.8)
    hist = Counter(map(bucket, values))
    ordered = sorted(values)
    for q in (0.5, 0.95, 0.99):
        exact = ordered[math.ceil(q * len(values)) - 1]
        assert percentile(hist, len(values), q, max(values)) == pytest.approx(exact, rel=0.10)
        assert Window(ordered).quantile(q) == exact  # in process: exact


def test_a_three_times_slower_deploy_alerts_within_about_200_requests() -> None:
    rng = random.Random(2)
    t = Tracker()
    assert t.run(_noisy(rng, 600, 0.020), gap=0.01) is None
    at = t.run(_noisy(rng, 400, 0.060), gap=0.01)
    assert at is not None
    assert at < 200, at
    [alert] = t.alerts
    assert (alert.kind, alert.name) == ("regression", "view")
    regression = alert.regression
    assert regression is not None
    baseline, recent = regression["baseline"], regression["recent"]
    assert baseline["count"] >= 50
    assert recent["count"] >= 50
    assert recent["p95"] == alert.duration
    assert alert.threshold == pytest.approx(2.0 * baseline["p95"])
    assert recent["p95"] > 2.0 * baseline["p95"]
    assert baseline["p50"] == pytest.approx(0.020, rel=0.2)
    assert "Regression: endpoint view p95" in alert.summary()


def test_a_slowdown_of_a_quiet_endpoint_alerts_within_minutes() -> None:
    """One request every 2 s: blocks close by time, so the windows fill in
    wall-clock minutes rather than waiting for BLOCK requests each."""
    rng = random.Random(3)
    t = Tracker(min_requests=20)
    assert t.run(_noisy(rng, 300, 0.030), gap=2.0) is None  # 10 minutes
    started = t.clock.now
    assert t.run(_noisy(rng, 300, 0.120), gap=2.0) is not None
    assert t.clock.now - started <= 4 * BLOCK_SECONDS


def test_noise_never_alerts() -> None:
    rng = random.Random(4)
    t = Tracker()
    # 20,000 requests of a noisy endpoint (p95 about 1.8 x its median), with
    # its load going up and down
    for burst in range(40):
        assert t.run(_noisy(rng, 500, 0.015 * (1 + 0.2 * (burst % 3))), gap=0.02) is None


def test_a_single_outlier_and_a_handful_never_alert() -> None:
    rng = random.Random(5)
    t = Tracker()
    assert t.run(_noisy(rng, 500, 0.010, sigma=0.2)) is None
    assert t.run([5.0]) is None  # one request 500 x slower
    assert t.run(_noisy(rng, 200, 0.010, sigma=0.2)) is None
    # four slow ones among a hundred: the p95 of a hundred is their fifth slowest
    mixed = _noisy(rng, 96, 0.010, sigma=0.2) + [2.0] * 4
    rng.shuffle(mixed)
    assert t.run(mixed) is None


def test_a_regression_alerts_once_until_the_endpoint_recovers() -> None:
    """While it stays slow, no second alert (and the slow requests become its
    baseline); once it has recovered and its baseline is fast again, a new
    slowdown alerts again."""
    rng = random.Random(6)
    t = Tracker()
    t.run(_noisy(rng, 500, 0.010, sigma=0.2), gap=0.01)
    t.run(_noisy(rng, 600, 0.050, sigma=0.2), gap=0.01)
    assert len(t.alerts) == 1
    t.run(_noisy(rng, 2500, 0.010, sigma=0.2), gap=0.01)
    assert len(t.alerts) == 1
    assert t.run(_noisy(rng, 300, 0.050, sigma=0.2), gap=0.01) is not None
    assert len(t.alerts) == 2


def test_a_tiny_endpoint_doubling_by_microseconds_is_not_a_regression() -> None:
    """0.3 ms -> 1.2 ms is four times slower but adds under MIN_DELTA: at
    that scale a GC pause or a busy GIL does as much."""
    rng = random.Random(7)
    t = Tracker()
    t.run(_noisy(rng, 500, 0.0003, sigma=0.2), gap=0.01)
    assert t.run(_noisy(rng, 500, 0.0012, sigma=0.2), gap=0.01) is None


def test_factor_zero_and_too_few_requests_never_alert() -> None:
    rng = random.Random(8)
    off = Tracker(factor=0)
    off.run(_noisy(rng, 300, 0.010, sigma=0.2), gap=0.01)
    assert off.run(_noisy(rng, 300, 0.100, sigma=0.2), gap=0.01) is None
    few = Tracker(min_requests=500)
    few.run(_noisy(rng, 300, 0.010, sigma=0.2), gap=0.01)
    assert few.run(_noisy(rng, 300, 0.100, sigma=0.2), gap=0.01) is None


def test_min_requests_above_a_block_widens_the_recent_window() -> None:
    """PERFWATCH_REGRESSION_MIN_REQUESTS=300 needs 300 recent requests: the
    recent window grows to hold them (it used to stay at 100, so such an
    endpoint could never regress)."""
    rng = random.Random(13)
    t = Tracker(min_requests=300)
    assert t.run(_noisy(rng, 1200, 0.010, sigma=0.2), gap=0.01) is None
    at = t.run(_noisy(rng, 600, 0.050, sigma=0.2), gap=0.01)
    assert at is not None
    assert at < 400, at
    regression = t.alerts[0].regression
    assert regression is not None
    assert regression["recent"]["count"] >= 300
    assert regression["baseline"]["count"] >= 300


def test_the_baseline_forgets_what_is_older_than_an_hour() -> None:
    """A slow past does not hide a regression against the recent normal:
    the baseline reaches back at most BASELINE_SECONDS."""
    rng = random.Random(9)
    t = Tracker(min_requests=20)
    t.run(_noisy(rng, 200, 0.200, sigma=0.1), gap=0.01)  # long ago, slow
    t.clock.now += 2 * 3600
    t.run(_noisy(rng, 200, 0.010, sigma=0.1), gap=0.5)
    assert t.run(_noisy(rng, 200, 0.060, sigma=0.1), gap=0.5) is not None


def test_the_quick_screen_of_a_full_block_decides_as_the_full_check_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold screens a full block by its p95 alone, against the cached
    baseline, before it runs the full check: on the same requests (steps up
    and down, slow and quiet stretches, min_requests above and below a
    block) it must alert exactly when the full check would."""
    def reference_fold(self: EndpointTracker, endpoint: Any, ring: Any, opened: float,
                       now: float) -> None:  # the fold without the quick screen
        block = _endpoints.fold(ring, endpoint.threshold, opened, now)
        if not block.count:
            return
        with self._lock:
            endpoint.count += block.count
            endpoint.high = max(endpoint.high, block.values[-1])
            endpoint.slow += block.slow
            endpoint.blocks.append(block)
            found = self._check(endpoint, now)
        if found is not None:
            self.on_regression(found)

    rng = random.Random(11)
    plan = [(rng.choice([0.005, 0.010, 0.030, 0.090]), rng.randint(20, 700),
             rng.choice([0.01, 0.5, 3.0])) for _ in range(60)]
    for factor, min_requests in [(2.0, 50), (3.0, 150), (1.5, 100)]:
        runs: list[list[tuple[int, float]]] = []
        for quick in (True, False):
            if not quick:
                monkeypatch.setattr(EndpointTracker, "fold", reference_fold)
            t, stream = Tracker(factor=factor, min_requests=min_requests), random.Random(12)
            seen: list[tuple[int, float]] = []
            index = 0
            for median, count, gap in plan:
                for seconds in _noisy(stream, count, median, sigma=0.3):
                    before = len(t.alerts)
                    t.request(seconds, gap=gap)
                    if len(t.alerts) > before:
                        seen.append((index, t.alerts[-1].duration))
                    index += 1
            runs.append(seen)
        quick_alerts, full_alerts = runs
        assert full_alerts, "the plan must contain regressions to compare"
        assert quick_alerts == full_alerts


def test_slow_profiles_kept_for_regression_reports_are_bounded() -> None:
    t = Tracker()
    for i in range(MAX_PROFILES + 5):
        t.request(0.01, name=f"e{i}")
        t.tracker.note_slow(f"e{i}", 2.0, object())  # type: ignore[arg-type]
    held = [e for e in t.tracker.by_name.values() if e.slowest is not None]
    assert len(held) == MAX_PROFILES
    assert {e.name for e in held} == {f"e{i}" for i in range(5, MAX_PROFILES + 5)}


# --- through a real Flask app -----------------------------------------------------


#: how long ``/item`` takes: far above a trivial view's p95 even on a loaded
#: machine (at 2 ms, ``/quick``'s p95 reached 3.2 ms in one CI run)
ITEM_SECONDS = 0.03


def _statistics_app() -> Flask:
    app = Flask("endpoints")

    @app.get("/quick")
    def quick() -> str:
        return "quick"

    @app.get("/item/<int:n>")
    def item(n: int) -> str:
        time.sleep(ITEM_SECONDS)
        return str(n)

    @app.get("/fail")
    def fail() -> str:
        raise ValueError("fail")

    @app.get("/health")
    def health() -> str:
        return "ok"

    return app


def test_endpoint_stats_counts_every_request_by_endpoint(
        make_app: Callable[..., tuple[Flask, PerfWatch]]) -> None:
    app, perfwatch = make_app(app=_statistics_app(), ignore=["health"], threshold=1.0)
    client = app.test_client()
    for _ in range(2 * BLOCK + 7):  # two full blocks through the fast path, and an open one
        assert client.get("/quick").status_code == 200
    for n in range(30):
        assert client.get(f"/item/{n}").status_code == 200
    assert client.get("/nowhere").status_code == 404
    assert client.get("/health").status_code == 200
    assert client.get("/fail").status_code == 500
    assert perfwatch.flush(5)
    stats = perfwatch.endpoint_stats(app)
    assert set(stats) == {"quick", "item", "fail", "<no endpoint>"}
    assert stats["quick"]["count"] == 2 * BLOCK + 7
    assert stats["item"]["count"] == 30
    assert (stats["fail"]["count"], stats["<no endpoint>"]["count"]) == (1, 1)
    item = stats["item"]
    assert ITEM_SECONDS <= item["p50"] <= item["p95"] <= item["p99"] <= item["max"] < 1.0
    assert item["slow"] == 0
    assert stats["quick"]["p95"] < item["p50"]


def test_slow_requests_are_counted_and_views_added_later_are_covered(
        make_app: Callable[..., tuple[Flask, PerfWatch]]) -> None:
    app = _statistics_app()
    app, perfwatch = make_app(app=app, threshold=0.3)
    late = Blueprint("late", __name__)

    @late.get("/late")
    def later() -> str:
        time.sleep(0.4)
        return "late"

    app.register_blueprint(late)
    client = app.test_client()
    assert client.get("/late").status_code == 200
    assert client.get("/quick").status_code == 200
    stats = perfwatch.endpoint_stats(app)
    assert stats["late.later"]["count"] == 1
    assert stats["late.later"]["slow"] == 1
    assert stats["late.later"]["max"] >= 0.4
    assert stats["quick"]["slow"] == 0


def test_close_gives_the_app_back_its_plain_view_functions(
        make_app: Callable[..., tuple[Flask, PerfWatch]]) -> None:
    app = _statistics_app()
    views = dict(app.view_functions)
    app, perfwatch = make_app(app=app)
    assert type(app.view_functions) is not dict
    assert dict(app.view_functions) == views
    perfwatch.close(app)
    assert type(app.view_functions) is dict
    assert app.view_functions == views
    assert app.test_client().get("/quick").data == b"quick"
    perfwatch.init_app(app)  # and again, as a test suite does
    assert app.test_client().get("/quick").status_code == 200
    assert perfwatch.endpoint_stats(app)["quick"]["count"] == 1


def _regressing_app(delay: list[float]) -> Flask:
    app = Flask("regressing")

    @app.get("/report")
    def report() -> str:
        time.sleep(delay[0])
        return "report"

    return app


def test_an_endpoint_that_gets_slower_alerts_through_the_pipeline(
        make_app: Callable[..., tuple[Flask, PerfWatch]], signals_recorder: Any,
        report_dir: Path) -> None:
    """A view at 5 ms for 100 requests, then at 60 ms: endpoint_regressed
    comes within a few hundred requests, goes through dedupe to the notifiers
    (a report file), carries both windows and the profile of the slowest
    recent slow request."""
    delay = [0.005]
    app, perfwatch = make_app(app=_regressing_app(delay), threshold=0.3,
                              notifiers=["local"], regression_min_requests=20)
    client = app.test_client()
    for _ in range(2 * BLOCK):
        client.get("/report")
    delay[0] = 0.4  # one slow request: its profile is kept for the regression report
    client.get("/report")
    delay[0] = 0.06
    sent = 0
    while not perfwatch.stats(app)["regressions"] and sent < 4 * BLOCK:
        client.get("/report")
        sent += 1
        if sent % BLOCK == 0:
            perfwatch.flush(5)  # the blocks are folded on the delivery thread
    assert perfwatch.flush(5)
    assert perfwatch.stats(app)["regressions"] == 1, sent
    assert sent <= 3 * BLOCK
    [event] = signals_recorder.of("endpoint_regressed")
    regressed = event.kwargs["metrics"]
    assert event.sender is app
    assert (regressed.kind, regressed.name) == ("regression", "report")
    assert regressed.regression["recent"]["p95"] >= 0.05  # buckets: within 9 %
    assert regressed.regression["baseline"]["p95"] < 0.03
    assert regressed.profile is not None  # the 0.4 s request's
    stats = perfwatch.stats(app)
    assert stats["slow"] + stats["hung"] + stats["regressions"] == \
        stats["alerts"] + stats["alerts_suppressed"] + stats["alerts_dropped"]
    reports = [p.read_text() for p in reports_in(report_dir)]
    assert any("Regression" in text and "report" in text for text in reports)
    listing = app.test_cli_runner().invoke(perfwatch_cli, ["reports"])
    assert [line for line in listing.stdout.splitlines()
            if "report (regression)" in line], listing.stdout


def test_regression_alerts_are_deduplicated_like_any_other(
        make_app: Callable[..., tuple[Flask, PerfWatch]]) -> None:
    app, perfwatch = make_app(app=_regressing_app([0.0]), notifiers=["local"])
    monitor = monitor_of(app)
    with record_signals(app) as recorder:
        for _ in range(2):
            monitor.report_regression(PerformanceMetrics(
                kind="regression", name="report", duration=0.2, threshold=0.02,
                started_at=utcnow(), regression={"factor": 2.0}))
        assert perfwatch.flush(5)
    stats = perfwatch.stats(app)
    assert (stats["regressions"], stats["alerts"], stats["alerts_suppressed"]) == (2, 1, 1)
    assert [e.kwargs["metrics"].kind for e in recorder.of("alert_suppressed")] == \
        ["regression"]


def test_flask_perfwatch_endpoints_merges_every_process(
        make_app: Callable[..., tuple[Flask, PerfWatch]], report_dir: Path) -> None:
    app, _perfwatch = make_app(app=_statistics_app())
    client = app.test_client()
    for _ in range(20):
        client.get("/quick")
    for n in range(5):
        client.get(f"/item/{n}")
    monitor_of(app).write_endpoint_snapshot()
    # another process's snapshot beside it, and a file that is not one
    other = json.loads(next((report_dir / ".endpoints").glob("*.json")).read_text())
    other["pid"] += 1
    (report_dir / ".endpoints" / "otherhost-1.json").write_text(json.dumps(other))
    (report_dir / ".endpoints" / "broken.json").write_text("{not json")
    runner = app.test_cli_runner()
    result = runner.invoke(perfwatch_cli, ["endpoints", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data) == ["item", "quick"]  # slowest p95 first
    assert data["quick"]["count"] == 40
    assert data["item"]["count"] == 10
    assert "skipped broken.json: JSONDecodeError" in result.stderr
    table = runner.invoke(perfwatch_cli, ["endpoints"])
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert "from 2 process(es)" in lines[0]
    assert lines[1].split() == ["ENDPOINT", "COUNT", "P50", "P95", "P99", "MAX", "SLOW"]
    assert lines[2].split()[:2] == ["item", "10"]
    windows, processes, problems = read_snapshots(report_dir)
    assert processes == 2
    assert len(problems) == 1
    assert windows["quick"].count == 40


def test_flask_perfwatch_endpoints_without_statistics(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from flask.cli import ScriptInfo

    result = CliRunner().invoke(perfwatch_cli, ["endpoints", "--dir", str(tmp_path)],
                                obj=ScriptInfo(create_app=lambda: Flask("none")))
    assert result.exit_code == 0
    assert "No endpoint statistics" in result.stdout


@pytest.mark.parametrize("profiler", ["sampler", "pyinstrument", "off"])
def test_every_engine_and_a_raising_view_are_counted(
        make_app: Callable[..., tuple[Flask, PerfWatch]], profiler: str) -> None:
    """The fast path (sampler, off), the general one (pyinstrument), and a
    view whose exception reaches the WSGI server."""
    app = _statistics_app()
    app.config["PROPAGATE_EXCEPTIONS"] = True
    app, perfwatch = make_app(app=app, profiler=profiler)
    client = app.test_client()
    for _ in range(3):
        client.get("/quick")
    with pytest.raises(ValueError):
        client.get("/fail")
    client.get("/quick")  # not taken for /fail: the endpoint is the thread's, per request
    stats = perfwatch.endpoint_stats(app)
    assert (stats["quick"]["count"], stats["fail"]["count"]) == (4, 1)


_EXITING_APP = """
import sys
from flask import Flask
from flask_perfwatch import PerfWatch

app = Flask("exiting")
PerfWatch(app, report_dir=sys.argv[1])

@app.get("/few")
def few():
    return "ok"

client = app.test_client()
for _ in range(3):
    client.get("/few")
if sys.argv[2] == "remove":  # the report folder goes away before the process ends
    import shutil
    shutil.rmtree(sys.argv[1])
"""


def test_a_process_that_exits_without_closing_leaves_its_statistics(tmp_path: Path) -> None:
    """A dev server stopped with Ctrl-C or a worker that exits never calls
    close(), and three requests never fill a block: the snapshot is written
    at exit, so `flask perfwatch endpoints` sees them; into a report folder
    that still exists only."""
    import subprocess
    import sys

    kept, removed = tmp_path / "kept", tmp_path / "removed"
    for folder, mode in ((kept, "keep"), (removed, "remove")):
        folder.mkdir()
        done = subprocess.run([sys.executable, "-c", _EXITING_APP, str(folder), mode],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
    windows, processes, problems = read_snapshots(kept)
    assert (processes, problems) == (1, [])
    assert windows["few"].count == 3
    assert not removed.exists()


def test_snapshots_of_processes_long_gone_are_deleted(
        make_app: Callable[..., tuple[Flask, PerfWatch]], report_dir: Path) -> None:
    import os

    app, _perfwatch = make_app(app=_statistics_app())
    app.test_client().get("/quick")
    folder = report_dir / ".endpoints"
    folder.mkdir(parents=True, exist_ok=True)
    day = _endpoints.SNAPSHOT_REMOVE_AFTER
    old = [folder / "gone-1.json", folder / ".gone-2.json.ab12.tmp"]
    recent = folder / "alive-3.json"
    other = folder / "notes.txt"
    for path in (*old, recent, other):
        path.write_text("{}")
    for path in (*old, other):
        os.utime(path, (time.time() - day - 60,) * 2)
    os.utime(recent, (time.time() - day + 600,) * 2)
    monitor_of(app).write_endpoint_snapshot()
    assert not any(path.exists() for path in old)
    assert recent.exists()
    assert other.exists()  # not ours
    [own] = [p for p in folder.glob("*.json") if p != recent]
    assert json.loads(own.read_text())["endpoints"]["quick"]["count"] == 1


@pytest.mark.parametrize("entry", [
    {"count": -5, "max": 0.1, "slow": 0, "hist": {"10": 1}},
    {"count": 5, "max": float("nan"), "slow": 0, "hist": {"10": 1}},
    {"count": 5, "max": 1e400, "slow": 0, "hist": {"10": 1}},
    {"count": 5, "max": 0.1, "slow": True, "hist": {"10": 1}},
    {"count": 5, "max": 0.1, "slow": 0, "hist": {"-1": 1}},
    {"count": 5, "max": 0.1, "slow": 0, "hist": {"100000": 1}},
    {"count": 5, "max": 0.1, "slow": 0, "hist": {"10": 2.5}},
    {"count": 5, "max": "0.1", "slow": 0, "hist": {"10": 1}},
    {"count": 5, "max": 0.1, "slow": 0, "hist": ["10"]},
    {"count": 5, "max": 0.1, "slow": 0},
])
def test_a_snapshot_with_a_bad_entry_is_skipped_whole(tmp_path: Path,
                                                      entry: dict[str, Any]) -> None:
    """A file another process (or someone) wrote is read as untrusted: one
    bad entry skips the whole file with a note, and nothing of it is merged
    (not even its good entries)."""
    folder = tmp_path / ".endpoints"
    folder.mkdir()
    good = {"count": 3, "max": 0.05, "slow": 0, "hist": {"80": 3}}
    (folder / "good-1.json").write_text(json.dumps(
        {"app": "a", "pid": 1, "written": time.time(), "endpoints": {"view": good}}))
    (folder / "bad-2.json").write_text(json.dumps(
        {"app": "a", "pid": 2, "written": time.time(),
         "endpoints": {"view": good, "other": entry}}))
    windows, processes, problems = read_snapshots(tmp_path)
    assert processes == 1
    assert [p.split(":")[0] for p in problems] == ["bad-2.json"]
    assert set(windows) == {"view"}
    assert windows["view"].count == 3
