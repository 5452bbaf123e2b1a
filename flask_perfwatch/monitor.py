"""The monitor: one configured set of parts (engine, store, notifiers,
delivery worker, pipeline) and its own accounting. The Flask extension keeps
one per app in ``app.extensions["perfwatch"]``; the WSGI middleware and
watched functions outside any app own one each."""

from __future__ import annotations

import copy
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from . import signals
from .metrics import PerformanceMetrics, Redactor
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


class Stats:
    """Counters of what the monitor saw and did, and the time it spent on
    request threads (its overhead as the app experiences it)."""

    COUNTERS = (
        "requests",
        "slow",
        "hung",
        "alerts_sent",
        "alerts_suppressed",
        "alerts_failed",
        "alerts_dropped",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.COUNTERS, 0)
        self._requests = itertools.count()
        self._overhead = 0.0

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def observed(self, overhead: float) -> None:
        """One request (or watched call) seen, costing ``overhead`` seconds of ours.

        The hot path takes no lock: the count is exact (``itertools.count`` is
        atomic), the overhead sum may rarely lose an addition to a thread
        switch, which only makes it a hair low."""
        next(self._requests)
        self._overhead += overhead

    def snapshot(self, queue_depth: int) -> dict[str, Any]:
        with self._lock:
            data: dict[str, Any] = dict(self._counts)
        overhead = self._overhead
        # the next value of a copy of the counter is the number counted so far
        data["requests"] = requests = next(copy.copy(self._requests))
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
        self.redactor = Redactor(config.redact)
        self.engine = create_engine(config)
        self.store = create_store(config, prefix=prefix)
        self.notifiers = create_notifiers(config)
        self.stats = Stats()
        self.worker = Worker(config.queue_size, name="flask-perfwatch-delivery",
                             shutdown_timeout=config.shutdown_timeout)
        self.pipeline = AlertPipeline(self)
        self.next_stats_log = time.perf_counter() + STATS_LOG_INTERVAL
        if config.enabled:
            signals.slow_request.connect(self.pipeline.on_slow, sender=sender, weak=False)
            signals.request_hung.connect(self.pipeline.on_slow, sender=sender, weak=False)

    def report_slow(self, metrics: PerformanceMetrics) -> None:
        """Count and announce a slow request/call (request thread)."""
        self.stats.incr("slow")
        signals.slow_request.send(self.sender, metrics=metrics)

    def report_hung(self, metrics: PerformanceMetrics) -> None:
        """Count and announce a request still running past ``hang_after``."""
        self.stats.incr("hung")
        signals.request_hung.send(self.sender, metrics=metrics)

    def snapshot(self) -> dict[str, Any]:
        return self.stats.snapshot(self.worker.depth)

    def log_stats(self, now: float) -> None:
        """Log :meth:`snapshot` at DEBUG; the request path calls it once
        :attr:`next_stats_log` has passed, every :data:`STATS_LOG_INTERVAL` seconds."""
        self.next_stats_log = now + STATS_LOG_INTERVAL
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("stats: %s", self.snapshot())

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until queued alerts are delivered; False on timeout."""
        return self.worker.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Disconnect, deliver what is queued (within ``timeout``), release resources."""
        signals.slow_request.disconnect(self.pipeline.on_slow, sender=self.sender)
        signals.request_hung.disconnect(self.pipeline.on_slow, sender=self.sender)
        self.worker.close(timeout)
        self.engine.close()
        for notifier in self.notifiers:
            try:
                notifier.close()
            except Exception:
                logger.exception("closing notifier %r failed", notifier.name)
        self.store.close()
