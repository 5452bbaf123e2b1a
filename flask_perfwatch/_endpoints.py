"""Per-endpoint latency in bounded memory, and regression detection.

The request thread's part is a few instructions (see
:class:`~flask_perfwatch.extension.FlaskRequestTimer`): it writes the
duration into its endpoint's open *block*, a ring of :data:`BLOCK` slots, and
the request that fills a block folds it: one sort into a float32 array kept
for the windows below, and a regression check by bisection (about 10 µs, once
per :data:`BLOCK` requests; handing it to another thread costs more, since a
thread wake-up alone costs 50-100 µs of CPU on a busy 2-core machine). The
per-process snapshots that ``flask perfwatch endpoints`` merges are
fixed-bucket histograms (:data:`BOUNDS`: log-spaced, about 9 % apart, so
their percentiles are within about 9 % of the exact ones, and they merge
exactly), written by the delivery thread.

Windows, counted in requests as well as time so that a busy endpoint alerts
within a few hundred requests of a slowdown, with no wait for wall-clock
minutes, and a quiet one still gets a verdict:

* a block closes after :data:`BLOCK` requests, or :data:`BLOCK_SECONDS` after
  it opened (checked on the fast path's periodic round and on reads);
* **recent**: the newest closed blocks, up to :data:`RECENT_REQUESTS`
  requests (or ``PERFWATCH_REGRESSION_MIN_REQUESTS``, if more), none closed
  more than :data:`RECENT_SECONDS` ago;
* **baseline**: the closed blocks before those, up to
  :data:`BASELINE_REQUESTS` requests and :data:`BASELINE_SECONDS` back.

An endpoint regressed when both windows hold at least
``PERFWATCH_REGRESSION_MIN_REQUESTS`` requests, the recent p95 exceeds
``PERFWATCH_REGRESSION_FACTOR`` times the baseline p95, and by at least
:data:`MIN_DELTA` seconds: at sub-millisecond latencies a GC pause or a busy
GIL doubles p95 without anything having changed. The p95 of a hundred
requests is their fifth slowest, so a single outlier (or four) never moves
it. One alert per regression: the endpoint must recover before it can alert
again, and the alert goes through dedupe like any other.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import secrets
import threading
import time
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._guard import report_swallowed

if TYPE_CHECKING:
    from .metrics import PerformanceMetrics
    from .profiling import Profile

#: Requests per block (one ring on the request path; the unit of the windows).
BLOCK = 100
#: A block with fewer requests closes this long after it opened.
BLOCK_SECONDS = 60.0
RECENT_REQUESTS = 100
RECENT_SECONDS = 300.0
BASELINE_REQUESTS = 2000
BASELINE_SECONDS = 3600.0
#: Closed blocks kept per endpoint: the windows need (RECENT + BASELINE) /
#: BLOCK = 21 full ones. At 4 bytes a duration that is at most 9.6 KB per
#: endpoint (4.8 MB for MAX_ENDPOINTS). A quiet endpoint, whose blocks close
#: every BLOCK_SECONDS with a few requests each, keeps 24 minutes of them.
MAX_BLOCKS = 24
#: A regression must add at least this much to p95 (seconds).
MIN_DELTA = 0.010
#: Endpoints tracked per app; later ones are counted under OTHER.
MAX_ENDPOINTS = 500
OTHER = "<other endpoints>"
#: The name of requests no endpoint matched (404s, say).
NO_ENDPOINT = "<no endpoint>"
#: Profiles of slow requests kept for regression reports, across endpoints.
MAX_PROFILES = 20

#: Histogram bucket upper bounds (seconds): 2**(1/8) apart from 50 µs to
#: about 3 minutes; the last bucket holds everything slower.
BOUNDS: tuple[float, ...] = tuple(5e-5 * 2 ** (i / 8) for i in range(176))
_EMPTY = array("d", [-1.0]) * BLOCK


def bucket(seconds: float) -> int:
    return bisect_left(BOUNDS, seconds)


def _value(index: int) -> float:
    """A representative duration of a bucket: its geometric middle."""
    if index <= 0:
        return BOUNDS[0] / 2
    if index >= len(BOUNDS):
        return BOUNDS[-1]
    return math.sqrt(BOUNDS[index - 1] * BOUNDS[index])


def percentile(hist: Mapping[int, int], count: int, q: float, high: float) -> float:
    """The ``q`` quantile (0..1) of a histogram of ``count`` values whose
    largest is ``high`` (never more than that)."""
    if count <= 0:
        return 0.0
    rank = max(1, math.ceil(q * count))
    seen = 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return min(_value(index), high)
    return high


class Window:
    """Durations of one endpoint over some requests: ``values`` sorted (the
    retained ones), with ``count``, ``max`` and ``slow`` over all of them."""

    __slots__ = ("count", "max", "since", "slow", "values")

    def __init__(self, values: list[float] | None = None, *, count: int | None = None,
                 high: float | None = None, slow: int = 0, since: float | None = None
                 ) -> None:
        self.values = values if values is not None else []
        self.count = len(self.values) if count is None else count
        self.max = (self.values[-1] if self.values else 0.0) if high is None else high
        self.slow = slow
        self.since = since

    def quantile(self, q: float) -> float:
        """Nearest-rank quantile of the retained values."""
        values = self.values
        if not values:
            return 0.0
        return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]

    def summary(self) -> dict[str, Any]:
        """``{"count", "p50", "p95", "p99", "max", "slow"}`` (seconds)."""
        return {"count": self.count, "p50": self.quantile(0.50), "p95": self.quantile(0.95),
                "p99": self.quantile(0.99), "max": self.max, "slow": self.slow}


def merge(blocks: Iterable[Block]) -> Window:
    """One window of several blocks (their sorted runs merge at C speed)."""
    chosen = list(blocks)
    values = sorted(itertools.chain.from_iterable(b.values for b in chosen))
    return Window(values, slow=sum(b.slow for b in chosen),
                  since=min((b.opened for b in chosen), default=None))


class Block:
    """One closed block: its durations sorted (float32: 4 bytes each)."""

    __slots__ = ("closed", "opened", "slow", "values")

    def __init__(self, values: array[float], slow: int, opened: float, closed: float) -> None:
        self.values = values
        self.slow = slow
        self.opened = opened
        self.closed = closed

    @property
    def count(self) -> int:
        return len(self.values)


class Endpoint:
    """One endpoint's open block (written by request threads without a lock:
    a thread switch at the wrong instruction can misplace one duration, never
    more) and its folded history (delivery thread, under the tracker's lock)."""

    __slots__ = ("alerted", "baseline_at", "baseline_p95", "blocks", "checked", "count",
                 "counter", "high",
                 "ignored", "name", "opened", "ring", "slow", "slowest", "threshold")

    def __init__(self, name: str, threshold: float, now: float, *, ignored: bool = False
                 ) -> None:
        self.name = name
        self.threshold = threshold
        self.ignored = ignored
        self.counter = itertools.count()
        self.ring = array("d", _EMPTY)
        self.opened = now
        #: every request folded so far: count, slowest, over the threshold
        self.count = 0
        self.high = 0.0
        self.slow = 0
        self.blocks: deque[Block] = deque(maxlen=MAX_BLOCKS)
        self.alerted = False
        #: the baseline p95 as last computed, and blocks folded since
        self.baseline_p95: float | None = None
        self.baseline_at = 0.0
        self.checked = 0
        #: (duration, perf_counter time, profile) of the slowest recent
        #: slow request with a profile
        self.slowest: tuple[float, float, Profile] | None = None

    def take(self, now: float) -> tuple[array[float], float]:
        """Swap in a fresh ring; returns the full one and when it opened."""
        ring, opened = self.ring, self.opened
        self.ring = array("d", _EMPTY)
        self.counter = itertools.count()
        self.opened = now
        return ring, opened


def fold(ring: Iterable[float], threshold: float, opened: float, closed: float) -> Block:
    """A block from a ring's durations (empty slots are negative): one sort,
    two bisections, all at C speed (about 3 µs for a full ring)."""
    ordered = sorted(ring)
    values = array("f", ordered if not ordered or ordered[0] >= 0.0
                   else ordered[bisect_left(ordered, 0.0):])
    return Block(values, len(values) - bisect_right(values, threshold), opened, closed)


def recent_blocks(blocks: deque[Block], now: float, requests: int = RECENT_REQUESTS) -> int:
    """How many of the newest closed blocks make the recent window (of
    ``requests`` requests at most, give or take a block)."""
    count = taken = 0
    for block in reversed(blocks):
        if count >= requests or now - block.closed > RECENT_SECONDS:
            break
        count += block.count
        taken += 1
    return taken


def windows(blocks: deque[Block], now: float, recent_requests: int = RECENT_REQUESTS
            ) -> tuple[list[Block], list[Block]]:
    """(recent, baseline) blocks of an endpoint's closed ones (oldest first)."""
    ordered = list(blocks)
    split = len(ordered) - recent_blocks(blocks, now, recent_requests)
    baseline: list[Block] = []
    count = 0
    for block in reversed(ordered[:split]):
        if count >= BASELINE_REQUESTS or now - block.closed > BASELINE_SECONDS:
            break
        baseline.append(block)
        count += block.count
    return ordered[split:], baseline


def _over_count(blocks: Iterable[Block], limit: float) -> tuple[int, int]:
    """(values, values over ``limit``) of sorted blocks, by bisection."""
    total = over = 0
    for block in blocks:
        total += len(block.values)
        over += len(block.values) - bisect_right(block.values, limit)
    return total, over


#: The baseline p95 is recomputed after this many blocks, or BLOCK_SECONDS,
#: or to confirm a regression; in between, a cached one screens the recent
#: window.
BASELINE_EVERY = 40
#: The nearest rank of the p95 of n values (1-based), for n up to BLOCK.
_P95_RANK = [math.ceil(0.95 * n) for n in range(BLOCK + 1)]


class EndpointTracker:
    """The per-endpoint statistics of one app (``Monitor.endpoints``).

    ``on_regression(metrics)`` is called when an endpoint regresses, on the
    thread of the request that completed the window; ``after_fold()`` after
    each block is folded (the monitor writes its snapshot from there, off
    the request thread, at most every SNAPSHOT_INTERVAL)."""

    def __init__(self, *, factor: float, min_requests: int,
                 on_regression: Callable[[PerformanceMetrics], None],
                 after_fold: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.factor = factor
        self.min_requests = min_requests
        #: the recent window's size: RECENT_REQUESTS, or min_requests if more
        self.recent_requests = max(RECENT_REQUESTS, min_requests)
        self.on_regression = on_regression
        self.after_fold = after_fold
        self.clock = clock
        #: endpoint name (None: no endpoint matched) -> its Endpoint; read
        #: without a lock on the request path, written under it
        self.by_name: dict[str | None, Endpoint] = {}
        self._lock = threading.Lock()
        self._profiles = 0

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self.by_name.clear()  # the fast path holds this dict
        self._profiles = 0

    # -- request threads --------------------------------------------------------

    def add(self, name: str | None, label: str, threshold: float, ignored: bool,
            duration: float, now: float) -> None:
        """The first request of an endpoint: create its record, then record."""
        endpoint = self.by_name.get(name)
        if endpoint is None:
            with self._lock:
                endpoint = self.by_name.get(name)
                if endpoint is None:
                    if len(self.by_name) >= MAX_ENDPOINTS and not ignored:
                        endpoint = self.by_name.get(OTHER) or Endpoint(OTHER, threshold, now)
                        self.by_name[OTHER] = endpoint
                    else:
                        endpoint = Endpoint(label, threshold, now, ignored=ignored)
                    self.by_name[name] = endpoint
        self.record(endpoint, duration, now)

    def record(self, endpoint: Endpoint, duration: float, now: float) -> None:
        """Every path's record but the fast path's, which inlines it."""
        n = next(endpoint.counter)
        if n < BLOCK:
            endpoint.ring[n] = duration
        if n == BLOCK - 1:
            self.close(endpoint, now)

    def close(self, endpoint: Endpoint, now: float) -> None:
        """Fold a full (or old) block, on the thread of the request that
        filled it: about 10 µs once per BLOCK requests (a sort and a few
        bisections, all at C speed), cheaper than waking another thread."""
        ring, opened = endpoint.take(now)
        if endpoint.ignored:
            return
        try:
            self.fold(endpoint, ring, opened, now)
        except Exception:
            report_swallowed(f"folding the latency of endpoint {endpoint.name!r}")
        self.after_fold()

    def tick(self, endpoint: Endpoint, now: float) -> None:
        """The fast path's periodic round: close a block open too long."""
        if now - endpoint.opened >= BLOCK_SECONDS and endpoint.ring[0] >= 0.0:
            self.close(endpoint, now)

    def note_slow(self, name: str, duration: float, profile: Profile | None) -> None:
        """A slow request's profile, kept if it is its endpoint's slowest
        recent one (for a regression report); at most MAX_PROFILES in all."""
        if profile is None:
            return
        endpoint = self.by_name.get(name)
        if endpoint is None and name == NO_ENDPOINT:
            endpoint = self.by_name.get(None)
        if endpoint is None or endpoint.ignored:
            return
        now = self.clock()
        with self._lock:
            current = endpoint.slowest
            if current is not None and current[0] >= duration \
                    and now - current[1] <= RECENT_SECONDS:
                return
            if current is None:
                if self._profiles >= MAX_PROFILES:
                    self._drop_oldest_profile()
                self._profiles += 1
            endpoint.slowest = (duration, now, profile)

    def _drop_oldest_profile(self) -> None:
        held = [e for e in self.by_name.values() if e.slowest is not None]
        if held:
            oldest = min(held, key=lambda e: e.slowest[1])  # type: ignore[index]
            oldest.slowest = None
            self._profiles -= 1

    # -- the delivery thread ----------------------------------------------------

    def fold(self, endpoint: Endpoint, ring: Iterable[float], opened: float, now: float
             ) -> None:
        block = fold(ring, endpoint.threshold, opened, now)
        count = block.count
        if not count:
            return
        values = block.values
        with self._lock:
            endpoint.count += count
            if values[-1] > endpoint.high:
                endpoint.high = values[-1]
            endpoint.slow += block.slow
            endpoint.blocks.append(block)
            # The usual case, screened in a few instructions: a full block is
            # the whole recent window (when that is BLOCK requests; it holds
            # min_requests too), so its p95 is one index, compared with the
            # cached baseline's limit.
            cached = endpoint.baseline_p95
            if count >= self.recent_requests and cached is not None \
                    and endpoint.checked + 1 < BASELINE_EVERY \
                    and now - endpoint.baseline_at < BLOCK_SECONDS \
                    and values[_P95_RANK[count] - 1] <= self._limit(cached):
                endpoint.checked += 1
                endpoint.alerted = False
                return
            found = self._check(endpoint, now)
        if found is not None:
            self.on_regression(found)

    def _check(self, endpoint: Endpoint, now: float) -> PerformanceMetrics | None:
        """The regression verdict after a fold (under the lock). A cached
        baseline p95 screens the recent window by bisection; only a
        candidate merges the windows and checks against a fresh baseline."""
        if self.factor <= 0:
            return None
        blocks = endpoint.blocks
        endpoint.checked += 1
        if endpoint.baseline_p95 is None or endpoint.checked >= BASELINE_EVERY \
                or now - endpoint.baseline_at >= BLOCK_SECONDS:
            endpoint.baseline_p95 = self._baseline_p95(
                windows(blocks, now, self.recent_requests)[1])
            endpoint.checked, endpoint.baseline_at = 0, now
        taken = recent_blocks(blocks, now, self.recent_requests)
        if not self._screen(itertools.islice(reversed(blocks), taken), endpoint.baseline_p95):
            endpoint.alerted = False
            return None
        recent_list, baseline_list = windows(blocks, now, self.recent_requests)
        baseline = merge(baseline_list)
        endpoint.baseline_p95 = self._baseline_p95(baseline_list, baseline)
        endpoint.checked, endpoint.baseline_at = 0, now
        recent = merge(recent_list)
        if not self._over(recent, endpoint.baseline_p95):
            endpoint.alerted = False
            return None
        if endpoint.alerted:
            return None
        endpoint.alerted = True
        return self._metrics(endpoint, recent, baseline, now)

    def _limit(self, baseline_p95: float) -> float:
        """The recent p95 above which an endpoint regressed."""
        return max(self.factor * baseline_p95, baseline_p95 + MIN_DELTA)

    def _screen(self, recent: Iterable[Block], baseline_p95: float | None) -> bool:
        """Whether the recent p95 may be over the limit (exact for the
        blocks given: the p95 of n values is over x when more than n -
        ceil(0.95 n) of them are)."""
        if baseline_p95 is None:
            return False
        count, over = _over_count(recent, self._limit(baseline_p95))
        return count >= self.min_requests and over > count - math.ceil(0.95 * count)

    def _baseline_p95(self, blocks: list[Block], window: Window | None = None) -> float | None:
        window = window if window is not None else merge(blocks)
        return window.quantile(0.95) if window.count >= self.min_requests else None

    def _over(self, recent: Window, baseline_p95: float | None) -> bool:
        if baseline_p95 is None or recent.count < self.min_requests:
            return False
        return recent.quantile(0.95) > self._limit(baseline_p95)

    def _metrics(self, endpoint: Endpoint, recent: Window, baseline: Window, now: float
                 ) -> PerformanceMetrics:
        from .metrics import PerformanceMetrics

        slowest = endpoint.slowest
        profile = None
        if slowest is not None and now - slowest[1] <= RECENT_SECONDS:
            profile = slowest[2]
        since = recent.since if recent.since is not None else now
        started = datetime.fromtimestamp(time.time() - (self.clock() - since), UTC)
        p95 = recent.quantile(0.95)
        return PerformanceMetrics(
            kind="regression", name=endpoint.name, duration=p95,
            threshold=baseline.quantile(0.95) * self.factor, started_at=started,
            profile=profile,
            regression={"factor": self.factor, "min_delta": MIN_DELTA,
                        "baseline": baseline.summary(), "recent": recent.summary(),
                        "slowest_profiled": slowest[0] if profile is not None and slowest
                        else None})

    # -- reads ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Window]:
        """Every endpoint: count, max and slow over all its requests, and its
        retained durations (the last MAX_BLOCKS blocks, the open one too).
        The sorting happens outside the lock, which request threads take
        when they fold a block."""
        now = self.clock()
        with self._lock:  # what a fold changes, taken as it is; merged after
            taken = [(e, list(e.blocks), e.count, e.high, e.slow)
                     for e in {id(e): e for e in self.by_name.values()}.values()
                     if not e.ignored]
        result: dict[str, Window] = {}
        for endpoint, blocks, count, high, slow in taken:
            current = fold(endpoint.ring, endpoint.threshold, endpoint.opened, now)
            window = merge([*blocks, current])
            window.count = count + current.count
            window.max = max(high, current.values[-1] if current.count else 0.0)
            window.slow = slow + current.slow
            if window.count:
                result[endpoint.name] = window
        return result

    def stats(self) -> dict[str, dict[str, Any]]:
        """``{endpoint: {"count", "p50", "p95", "p99", "max", "slow"}}``."""
        return {name: window.summary() for name, window in self.snapshot().items()}


# -- snapshots on disk, for ``flask perfwatch endpoints`` ----------------------------

SNAPSHOT_DIR = ".endpoints"
#: A process writes its snapshot at most this often (delivery thread).
SNAPSHOT_INTERVAL = 10.0
#: Snapshots of processes not heard from for this long are ignored.
SNAPSHOT_STALE = 3600.0


def snapshot_path(report_dir: Path) -> Path:
    return report_dir / SNAPSHOT_DIR / f"{os.uname().nodename}-{os.getpid()}.json"


#: Snapshot files (and temporary files of a writer that died) untouched for
#: this long are deleted when a process writes its own: processes restarted
#: by gunicorn's max_requests, say, leave one each.
SNAPSHOT_REMOVE_AFTER = 86400.0


def prune_snapshots(directory: Path, *, now: float | None = None) -> int:
    """Delete snapshots (``*.json``, and a dead writer's ``*.tmp``)
    untouched for SNAPSHOT_REMOVE_AFTER; how many went. A file another
    process removes meanwhile is no error."""
    now = time.time() if now is None else now
    removed = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.endswith((".json", ".tmp")):
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - entry.stat(follow_symlinks=False).st_mtime > SNAPSHOT_REMOVE_AFTER:
                    os.unlink(entry.path)
                    removed += 1
    return removed


def write_snapshot(path: Path, app: str, windows_by_name: Mapping[str, Window]) -> None:
    """Write one process's statistics atomically: per endpoint its count,
    max and slow, and a histogram of its retained durations (histograms of
    several processes merge exactly)."""
    from .reportdir import ensure_dir

    ensure_dir(path.parent)  # 0700, like the report folder
    endpoints = {name: {"count": w.count, "max": w.max, "slow": w.slow,
                        "hist": {str(k): v for k, v in Counter(map(bucket, w.values)).items()}}
                 for name, w in windows_by_name.items()}
    data = {"app": app, "pid": os.getpid(), "written": time.time(), "endpoints": endpoints}
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)  # replaces a planted symlink, never follows it
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class Merged:
    """Several processes' statistics of one endpoint (``flask perfwatch endpoints``)."""

    hist: Counter[int] = field(default_factory=Counter)
    count: int = 0
    max: float = 0.0
    slow: int = 0

    @classmethod
    def parse(cls, raw: Any) -> Merged:
        """One process's entry for an endpoint, checked: counts are
        non-negative integers, buckets within BOUNDS and the maximum a
        finite number of seconds (ValueError or TypeError otherwise)."""
        def count_of(value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"not a count: {value!r}")
            return value

        seconds = raw["max"]
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
                or not 0 <= seconds < math.inf:
            raise ValueError(f"not a duration: {seconds!r}")
        hist: Counter[int] = Counter()
        for key, value in raw["hist"].items():
            index = int(key)
            if not 0 <= index <= len(BOUNDS):
                raise ValueError(f"no such bucket: {key!r}")
            hist[index] += count_of(value)
        return cls(hist, count_of(raw["count"]), float(seconds), count_of(raw["slow"]))

    def add(self, other: Merged) -> None:
        self.hist.update(other.hist)
        self.count += other.count
        self.max = max(self.max, other.max)
        self.slow += other.slow

    def summary(self) -> dict[str, Any]:
        retained = sum(self.hist.values())
        return {"count": self.count,
                **{f"p{round(q * 100)}": percentile(self.hist, retained, q, self.max)
                   for q in (0.50, 0.95, 0.99)},
                "max": self.max, "slow": self.slow}


def read_snapshots(report_dir: Path, *, now: float | None = None
                   ) -> tuple[dict[str, Merged], int, list[str]]:
    """Merge every fresh snapshot under ``report_dir``: (windows, how many
    processes, problems with files that could not be read)."""
    now = time.time() if now is None else now
    merged: dict[str, Merged] = {}
    processes = 0
    problems: list[str] = []
    directory = report_dir / SNAPSHOT_DIR
    if not directory.is_dir():
        return merged, 0, problems
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if now - float(data["written"]) > SNAPSHOT_STALE:
                continue
            # the whole file is checked before any of it is merged
            entries = {str(name): Merged.parse(raw) for name, raw in data["endpoints"].items()}
            for name, entry in entries.items():
                merged.setdefault(name, Merged()).add(entry)
            processes += 1
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            problems.append(f"{path.name}: {type(exc).__name__}: {exc}")
    return merged, processes, problems
