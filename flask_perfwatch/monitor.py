"""The monitor: one configured set of parts (engine, store, notifiers,
delivery worker, pipeline) and its own accounting. The Flask extension keeps
one per app in ``app.extensions["perfwatch"]``; the WSGI middleware and
watched functions outside any app own one each."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from . import _endpoints, _fork, _sql, signals
from ._guard import report_swallowed, send_safely, swallowed
from ._redact import Redactor
from ._util import import_string
from .config import key_name
from .metrics import PerformanceMetrics
from .notifiers import create_notifiers
from .pipeline import AlertPipeline
from .profiling import create_engine
from .stores import create_store
from .worker import Worker

if TYPE_CHECKING:
    from .config import Config

logger = logging.getLogger(__name__)

#: How often (seconds) the monitor logs its own stats at DEBUG.
STATS_LOG_INTERVAL = 300.0

#: The Flask wrapper's fast path times its own cost on one request in this many
#: (two more clock reads), and ``overhead_seconds`` scales that mean to all of
#: them; a power of two (the test is ``not n & (FAST_SAMPLE - 1)``).
FAST_SAMPLE = 16


class Stats:
    """Counters of what the monitor saw and did, and the time it spent on
    request threads (its overhead as the app experiences it)."""

    #: Every slow or hung request and every endpoint regression ends as
    #: exactly one of ``alerts`` (passed dedupe, went to the notifiers),
    #: ``alerts_suppressed`` or ``alerts_dropped`` (queue full); once the
    #: queue is empty, ``slow + hung + regressions == alerts +
    #: alerts_suppressed + alerts_dropped``. Each alert
    #: then counts once per notifier in ``alerts_sent`` or ``alerts_failed``.
    COUNTERS = (
        "slow",
        "hung",
        "alerts",
        "alerts_sent",
        "alerts_suppressed",
        "alerts_failed",
        "alerts_dropped",
        "receiver_errors",
        "regressions",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.COUNTERS, 0)
        self._notifiers: dict[str, dict[str, int]] = {}
        self._requests = itertools.count()
        #: Requests timed on the Flask wrapper's fast path, which counts them
        #: itself (``next()``) and times its own cost on one in
        #: :data:`FAST_SAMPLE` of them (:meth:`fast_sample`).
        self.fast_requests = itertools.count()
        #: how many times snapshot() drew from each counter (under the lock)
        self._reads = 0
        self._fast_reads = 0
        self._overhead = 0.0
        self._fast_sum = 0.0
        self._fast_samples = 0
        _fork.register(self)

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def notifier_outcome(self, notifier: str, outcome: str) -> None:
        """One alert ``sent`` or ``failed`` by one notifier."""
        with self._lock:
            self._counts[f"alerts_{outcome}"] += 1
            counts = self._notifiers.setdefault(notifier, {"sent": 0, "failed": 0})
            counts[outcome] += 1

    def _after_fork_in_child(self) -> None:
        # a request thread may have held the lock at fork time (gunicorn --preload)
        self._lock = threading.Lock()

    def observed(self, overhead: float) -> None:
        """One request (or watched call) seen, costing ``overhead`` seconds of ours.

        The hot path takes no lock: the count is exact (``itertools.count`` is
        atomic), the overhead sum may rarely lose an addition to a thread
        switch, which only makes it a hair low."""
        next(self._requests)
        self._overhead += overhead

    def fast_sample(self, overhead: float) -> None:
        """The measured cost of one fast-path request (one in :data:`FAST_SAMPLE`)."""
        self._fast_sum += overhead
        self._fast_samples += 1

    def extra(self, overhead: float) -> None:
        """Time spent on a request already counted (a slow request's reporting)."""
        self._overhead += overhead

    def snapshot(self, queue_depth: int) -> dict[str, Any]:
        with self._lock:
            data: dict[str, Any] = dict(self._counts)
            data["notifiers"] = {name: dict(c) for name, c in self._notifiers.items()}
        data["errors"] = swallowed.total()
        # next() is the one atomic read of an itertools.count (copying it is
        # deprecated since Python 3.12): it has counted every request and
        # every earlier read, and the reads are counted here
        with self._lock:
            requests = next(self._requests) - self._reads
            self._reads += 1
            fast = next(self.fast_requests) - self._fast_reads
            self._fast_reads += 1
        overhead = self._overhead
        if self._fast_samples:  # the fast path's mean cost, for every fast-path request
            overhead += self._fast_sum / self._fast_samples * fast
        requests += fast
        data = {"requests": requests, **data}
        data["queue_depth"] = queue_depth
        data["overhead_seconds"] = overhead
        data["overhead_per_request_us"] = overhead / requests * 1e6 if requests else 0.0
        return data


class Monitor:
    """Builds and owns the parts for one :class:`~flask_perfwatch.Config`.

    Building it validates everything that can only be checked by building
    (notifier settings, the store URL, the report dir), so a mistake raises
    :class:`~flask_perfwatch.exceptions.ConfigError` at ``init_app``.
    """

    def __init__(self, config: Config, *, sender: Any, prefix: str) -> None:
        self.config = config
        self.sender = sender
        self.redactor = Redactor(config.redact, hook=import_string(config.redact_hook)
                                 if config.redact_hook else None,
                                 on_error=self._redact_hook_failed)
        self.engine = create_engine(config)
        self.store = create_store(config, prefix=prefix)
        self.notifiers = create_notifiers(config)
        self.stats = Stats()
        self.worker = Worker(config.queue_size, name="flask-perfwatch-delivery",
                             shutdown_timeout=config.shutdown_timeout,
                             at_exit=self._snapshot_at_exit)
        self.pipeline = AlertPipeline(config, store=self.store, notifiers=self.notifiers,
                                      worker=self.worker, stats=self.stats,
                                      send_signal=self.send_signal)
        self.next_stats_log = time.perf_counter() + STATS_LOG_INTERVAL
        #: per-endpoint latency and regressions (fed by the Flask extension)
        self.endpoints = _endpoints.EndpointTracker(
            factor=config.regression_factor, min_requests=config.regression_min_requests,
            on_regression=self.report_regression, after_fold=self._snapshot_if_due)
        self._snapshot_due = 0.0
        self._prune_due = 0.0
        self._snapshot_app = getattr(sender, "name", None) or prefix
        _fork.register(self)
        if config.enabled:
            # weak: a signal must not keep the monitor, and with it the app, alive
            signals.slow_request.connect(self.pipeline.on_slow, sender=sender)
            signals.request_hung.connect(self.pipeline.on_slow, sender=sender)
            signals.endpoint_regressed.connect(self.pipeline.on_slow, sender=sender)
            if config.capture_sql:  # once per process; a no-op without SQLAlchemy
                _sql.install()

    def _redact_hook_failed(self, exc: BaseException) -> None:
        report_swallowed(f"{key_name('redact_hook')} {self.config.redact_hook} (the value "
                         "was redacted)", exc)

    def _receiver_failed(self) -> None:
        self.stats.incr("receiver_errors")

    def report_slow(self, metrics: PerformanceMetrics) -> None:
        """Count and announce a slow request/call (request thread). The alert
        pipeline runs first; a user's receiver that raises is logged and
        counted, and stops nothing."""
        self.stats.incr("slow")
        send_safely(signals.slow_request, self.sender, on_error=self._receiver_failed,
                    metrics=metrics)

    def report_regression(self, metrics: PerformanceMetrics) -> None:
        """Count and announce an endpoint regression (on the thread of the
        request that completed its window)."""
        self.stats.incr("regressions")
        logger.warning("%s", metrics.summary())
        send_safely(signals.endpoint_regressed, self.sender, on_error=self._receiver_failed,
                    metrics=metrics)

    def _snapshot_at_exit(self) -> None:
        """The last endpoint snapshot of a monitor the app never closed (a dev
        server stopped with Ctrl-C, a gunicorn worker that exits), run by the
        delivery worker's exit hook: without it, a process that served fewer
        than a block's requests per endpoint would leave nothing for ``flask
        perfwatch endpoints``. Only into a report folder that still exists."""
        if self.endpoints.by_name and self.config.resolved_report_dir.is_dir():
            self.write_endpoint_snapshot()

    def _snapshot_if_due(self) -> None:
        """After a block is folded: have the delivery thread write this
        process's snapshot for ``flask perfwatch endpoints``, at most every
        SNAPSHOT_INTERVAL seconds."""
        now = time.monotonic()
        if now >= self._snapshot_due:
            self._snapshot_due = now + _endpoints.SNAPSHOT_INTERVAL
            self.worker.submit(self.write_endpoint_snapshot)

    def write_endpoint_snapshot(self) -> None:
        """This process's endpoint histograms, under the report folder (and,
        at most every SNAPSHOT_STALE, the snapshots of processes long gone
        removed)."""
        try:
            path = _endpoints.snapshot_path(self.config.resolved_report_dir)
            _endpoints.write_snapshot(path, self._snapshot_app, self.endpoints.snapshot())
            now = time.monotonic()
            if now >= self._prune_due:
                self._prune_due = now + _endpoints.SNAPSHOT_STALE
                _endpoints.prune_snapshots(path.parent)
        except Exception:
            report_swallowed("writing the endpoint statistics for `flask perfwatch endpoints`")

    def _after_fork_in_child(self) -> None:
        self.endpoints.after_fork()

    def report_hung(self, metrics: PerformanceMetrics) -> None:
        """Count and announce a request still running past ``hang_after``."""
        self.stats.incr("hung")
        send_safely(signals.request_hung, self.sender, on_error=self._receiver_failed,
                    metrics=metrics)

    def send_signal(self, signal: Any, **kwargs: Any) -> None:
        """Send one of the ``alert_*`` signals (delivery threads), receivers isolated."""
        send_safely(signal, self.sender, on_error=self._receiver_failed, **kwargs)

    def snapshot(self) -> dict[str, Any]:
        data = self.stats.snapshot(self.worker.depth
                                   + sum(lane.worker.depth for lane in self.pipeline.lanes))
        data.update(self.engine.stats())
        return data

    def log_stats(self, now: float) -> None:
        """Log :meth:`snapshot` at DEBUG; the request path calls it once
        :attr:`next_stats_log` has passed, every :data:`STATS_LOG_INTERVAL` seconds."""
        self.next_stats_log = now + STATS_LOG_INTERVAL
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("stats: %s", self.snapshot())

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until queued alerts are delivered (by every notifier); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(deadline - time.monotonic(), 0.0)

        flushed = self.worker.flush(left())
        for lane in self.pipeline.lanes:
            flushed = lane.flush(left()) and flushed
        return flushed

    def close(self, timeout: float | None = None) -> None:
        """Disconnect, deliver what is queued (within ``timeout``), release resources."""
        signals.slow_request.disconnect(self.pipeline.on_slow, sender=self.sender)
        signals.request_hung.disconnect(self.pipeline.on_slow, sender=self.sender)
        signals.endpoint_regressed.disconnect(self.pipeline.on_slow, sender=self.sender)
        if self.endpoints.by_name:
            self.write_endpoint_snapshot()
        deadline = time.monotonic() + (self.config.shutdown_timeout if timeout is None
                                       else timeout)
        self.worker.close(max(deadline - time.monotonic(), 0.0))
        for lane in self.pipeline.lanes:
            lane.close(max(deadline - time.monotonic(), 0.0))
        self.engine.close()
        self.pipeline.close()
        for notifier in self.notifiers:
            try:
                notifier.close()
            except Exception:
                report_swallowed(f"closing notifier {notifier.name!r}")
        self.store.close()
