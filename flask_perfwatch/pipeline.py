"""The alert pipeline: a receiver of ``slow_request`` that hands each alert to
the delivery thread, where it goes dedupe -> render -> dispatch. Every drop
has a logged reason and a counter."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from . import signals
from ._guard import report_swallowed
from .config import import_string
from .report import Report, render_report

if TYPE_CHECKING:
    from .metrics import PerformanceMetrics
    from .monitor import Monitor
    from .notifiers import Notifier

logger = logging.getLogger(__name__)

#: A store outage is logged at most this often (seconds), not per alert.
STORE_ERROR_LOG_INTERVAL = 60.0


def dedupe_key(kind: str, metrics: PerformanceMetrics) -> str:
    """The key of ``PERFWATCH_DEDUP_KEY`` modes ``endpoint`` / ``endpoint+params``:
    method + endpoint (+ the sorted, redacted params)."""
    parts: list[Any] = [metrics.kind, metrics.method or "", metrics.name]
    if kind == "endpoint+params":
        parts.append(sorted((k, v if isinstance(v, list) else [v])
                            for k, v in metrics.params.items()))
    return json.dumps(parts, separators=(",", ":"), ensure_ascii=False)


class AlertPipeline:
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        config = monitor.config
        self.window = config.dedup_window
        self._custom_key = None if config.dedup_key in ("endpoint", "endpoint+params") \
            else import_string(config.dedup_key)
        self._store_error_logged_at = float("-inf")

    # -- on the request thread: hand over, never block ---------------------

    def on_slow(self, sender: Any, metrics: PerformanceMetrics, **_: Any) -> None:
        """``slow_request`` / ``request_hung`` receiver: queue the alert."""
        monitor = self.monitor
        if not monitor.worker.submit(partial(self.process, sender, metrics)):
            monitor.stats.incr("alerts_dropped")
            logger.warning("alert queue full (%d waiting); dropped: %s",
                           monitor.config.queue_size, metrics.summary())

    # -- on the delivery thread --------------------------------------------

    def process(self, sender: Any, metrics: PerformanceMetrics) -> None:
        if not self.claim(sender, metrics):
            return
        report = render_report(metrics)
        self.dispatch(sender, metrics, report)

    def key_for(self, metrics: PerformanceMetrics) -> str:
        config = self.monitor.config
        raw = None
        if self._custom_key is not None:
            try:
                raw = str(self._custom_key(metrics))
            except Exception:
                report_swallowed(f"PERFWATCH_DEDUP_KEY callable {config.dedup_key}")
        if raw is None:
            mode = config.dedup_key if self._custom_key is None else "endpoint+params"
            raw = dedupe_key(mode, metrics)
        return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:40]

    def claim(self, sender: Any, metrics: PerformanceMetrics) -> bool:
        """Dedupe stage: True if this alert should go out."""
        if self.window <= 0:
            return True
        key = ("hung:" if metrics.hung else "") + self.key_for(metrics)
        try:
            claim = self.monitor.store.claim(key, self.window)
        except Exception as exc:
            # fail open: an unreachable store must not hide a slow request
            now = time.monotonic()
            if now - self._store_error_logged_at >= STORE_ERROR_LOG_INTERVAL:
                self._store_error_logged_at = now
                logger.error("dedupe store %s unavailable (%r); alerting without dedupe "
                             "(logged at most every %ds)", self.monitor.store, exc,
                             STORE_ERROR_LOG_INTERVAL)
            return True
        if not claim.granted:
            self.monitor.stats.incr("alerts_suppressed")
            logger.debug("suppressed (repeat %d within the window): %s", claim.suppressed,
                         metrics.summary())
            self._send_signal(signals.alert_suppressed, sender, metrics=metrics)
            return False
        metrics.suppressed = claim.suppressed
        if claim.suppressed and claim.previous_at is not None:
            metrics.suppressed_since = datetime.fromtimestamp(claim.previous_at, UTC)
        return True

    def dispatch(self, sender: Any, metrics: PerformanceMetrics, report: Report) -> None:
        """Send through every notifier, each isolated from the others."""
        failures: list[tuple[Notifier, Exception]] = []
        for notifier in self.monitor.notifiers:
            try:
                notifier.send(metrics, report)
            except Exception as exc:
                failures.append((notifier, exc))
                continue
            self.monitor.stats.incr("alerts_sent")
            self._send_signal(signals.alert_sent, sender, metrics=metrics, notifier=notifier)
        if not self.monitor.notifiers:
            logger.warning("%s (no notifiers configured)", metrics.summary())
        if not failures:
            return
        kept = self.keep_locally(report)
        for notifier, error in failures:
            self.monitor.stats.incr("alerts_failed")
            logger.error("notifier %r failed for %s: %s; report kept at %s", notifier.name,
                         metrics.summary(), _describe(error), kept,
                         exc_info=error if not _is_expected(error) else None)
            self._send_signal(signals.alert_failed, sender, metrics=metrics, notifier=notifier,
                              error=error)

    def keep_locally(self, report: Report) -> str:
        """Make sure a failed alert's report is on disk; returns where (or why not)."""
        if report.path is not None:
            return str(report.path)
        try:
            return str(report.write(self.monitor.config.resolved_report_dir))
        except OSError as exc:
            return f"nowhere (could not write to {self.monitor.config.resolved_report_dir}: " \
                   f"{exc})"

    @staticmethod
    def _send_signal(signal: Any, sender: Any, **kwargs: Any) -> None:
        try:
            signal.send(sender, **kwargs)
        except Exception:
            report_swallowed(f"a receiver of {signal.name}")


def _is_expected(exc: Exception) -> bool:
    from .exceptions import NotifierError

    return isinstance(exc, NotifierError | OSError)


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
