"""The alert pipeline: a receiver of ``slow_request`` that hands each alert to
the delivery thread, where it goes dedupe -> render -> dispatch (one lane per
notifier, :mod:`flask_perfwatch.dispatch`). Every drop has a logged reason and
a counter.

Bounds, so that hostile traffic cannot turn monitoring into a flood:

* **per endpoint in the queue**: at most :attr:`AlertPipeline.quota` alerts of
  one endpoint wait for the delivery thread at once (a tenth of
  ``PERFWATCH_QUEUE_SIZE``), so a flood on one endpoint cannot fill the queue
  and push out a real alert of another; the excess is dropped and counted;
* **per endpoint per window**: at most ``PERFWATCH_ENDPOINT_ALERT_LIMIT``
  alerts whatever the params (``?utm_x=<n>`` makes every request a new dedupe
  key); the store enforces it atomically with the dedupe claim, the rest are
  suppressed and the next alert says how many;
* **the report folder**: pruned by age and total size on the delivery thread;
  an S3 report store (``PERFWATCH_REPORT_STORE=s3://...``) by age, there too.

With an S3 report store, each alert's report is uploaded on the delivery
thread before dispatch, so that every notifier gets its presigned link
(``Report.url``). A failed upload loses nothing: the report stays in the
local folder, every notifier still gets the alert (with the local path, or
the ``PERFWATCH_REPORT_BASE_URL`` link), and the failure is logged with its
code, counted under the store's name (``s3``) and sent as ``alert_failed``
with the store as ``notifier``; a successful upload counts and signals as
``alert_sent``, so ``stats()["notifiers"]["s3"]`` shows both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from . import _fork, signals
from ._guard import RateLimitedLog, format_error, format_traceback, report_swallowed
from ._util import import_string
from .config import key_name
from .dispatch import Alert, NotifierLane
from .exceptions import NotifierError
from .report import Report, render_report
from .reportdir import ReportFolder
from .reportstore import create_report_store

if TYPE_CHECKING:
    from .config import Config
    from .metrics import PerformanceMetrics
    from .monitor import Stats
    from .notifiers import Notifier
    from .reportstore import S3ReportStore
    from .stores import Store
    from .worker import Worker

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
    return _digest(json.dumps(parts, separators=(",", ":"), ensure_ascii=False))


def endpoint_group(metrics: PerformanceMetrics) -> str:
    """What ``PERFWATCH_ENDPOINT_ALERT_LIMIT`` counts by: the endpoint (or
    function), whatever its method and params."""
    return _digest(json.dumps([metrics.kind, metrics.name], ensure_ascii=False))


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:40]


class AlertPipeline:
    """Dedupe -> render -> dispatch, for one monitor's alerts.

    Its collaborators are given, not looked up: the ``store`` it claims dedupe
    keys in, the ``notifiers`` (one :class:`~flask_perfwatch.dispatch.NotifierLane`
    each), the delivery ``worker`` it queues alerts on, the ``stats`` it
    counts in, and ``send_signal`` for the ``alert_*`` signals (the monitor's,
    which knows the sender and isolates receivers).
    """

    def __init__(self, config: Config, *, store: Store, notifiers: list[Notifier],
                 worker: Worker, stats: Stats,
                 send_signal: Callable[..., None]) -> None:
        self.config = config
        self.store = store
        self.worker = worker
        self.stats = stats
        self.send_signal = send_signal
        self.window = config.dedup_window
        self.limit = config.endpoint_alert_limit
        self._custom_key = None if config.dedup_key in ("endpoint", "endpoint+params") \
            else import_string(config.dedup_key)
        self._store_error_logged_at = float("-inf")
        #: one lane per notifier: each delivers on its own thread
        self.lanes = [NotifierLane(notifier, timeout=config.notifier_timeout,
                                   maxsize=config.queue_size, on_result=self.on_result)
                      for notifier in notifiers]
        #: alerts of one endpoint that may wait for the delivery thread at once
        self.quota = max(1, config.queue_size // 10)
        self._waiting: dict[str, int] = {}
        self._lock = threading.Lock()
        self._drop_log = RateLimitedLog(logger)
        #: shared with the ``local`` notifier: one size estimate per folder
        self.report_folder = ReportFolder.from_config(config)
        #: where each report is uploaded for a link any host can open
        #: (``PERFWATCH_REPORT_STORE``); None: the local folder only
        self.report_store: S3ReportStore | None = create_report_store(config)
        #: write the report before dispatch, for a link (see :meth:`link`)
        self._links = self.report_store is not None or config.report_base_url is not None \
            or any(getattr(notifier, "links_report", False) for notifier in notifiers)
        _fork.register(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._waiting = {}  # the parent's queue is abandoned with its jobs

    # -- on the request thread: hand over, never block ---------------------

    def on_slow(self, sender: Any, metrics: PerformanceMetrics, **_: Any) -> None:
        """``slow_request`` / ``request_hung`` receiver: queue the alert."""
        group = endpoint_group(metrics)
        with self._lock:
            waiting = self._waiting.get(group, 0)
            if waiting >= self.quota:
                reason = (f"{waiting} alerts of {metrics.name!r} already wait for delivery "
                          f"(at most {self.quota} per endpoint)")
            else:
                self._waiting[group] = waiting + 1
                reason = ""
        if not reason:
            if self.submit(sender, metrics, group=group):
                return
            self._done_waiting(group)
            reason = f"alert queue full ({self.config.queue_size} waiting)"
        self.stats.incr("alerts_dropped")
        self._drop_log.warning("%s; dropped: %s", reason, metrics.summary())

    on_slow.__perfwatch_builtin__ = True  # type: ignore[attr-defined]

    def submit(self, sender: Any, metrics: PerformanceMetrics, *, group: str | None = None,
               dedupe: bool = True, on_report: Callable[[Report], None] | None = None
               ) -> bool:
        """Queue one alert for the delivery thread without blocking; False if
        the queue is full or closed. ``group``: the endpoint's share of the
        queue it was counted in (see :meth:`on_slow`). ``dedupe=False`` skips
        the dedupe stage (``flask perfwatch test-alert``); ``on_report`` is
        given the rendered report."""
        return self.worker.submit(partial(self.process, sender, metrics, group,
                                          dedupe=dedupe, on_report=on_report))

    def _done_waiting(self, group: str) -> None:
        with self._lock:
            waiting = self._waiting.get(group, 0) - 1
            if waiting > 0:
                self._waiting[group] = waiting
            else:
                self._waiting.pop(group, None)

    # -- on the delivery thread --------------------------------------------

    def process(self, sender: Any, metrics: PerformanceMetrics, group: str | None, *,
                dedupe: bool = True, on_report: Callable[[Report], None] | None = None
                ) -> None:
        if group is not None:
            self._done_waiting(group)
        metrics.dedupe_key = ("hung:" if metrics.hung else "") + self.key_for(metrics)
        if dedupe and not self.claim(sender, metrics, group or endpoint_group(metrics)):
            return
        self.stats.incr("alerts")
        try:
            report = render_report(metrics, max_bytes=self.config.report_file_max_bytes)
        except Exception:
            report_swallowed("rendering a report (sent with the summary only)")
            report = Report(html=f"<pre>{metrics.summary()}</pre>", text=metrics.summary(),
                            filename=f"perfwatch-{metrics.id}.html")
        if self._links:
            self.link(sender, metrics, report)
        if on_report is not None:
            on_report(report)
        self.dispatch(sender, metrics, report)
        self.prune()

    def key_for(self, metrics: PerformanceMetrics) -> str:
        if self._custom_key is not None:
            try:
                return _digest(str(self._custom_key(metrics)))
            except Exception:
                report_swallowed(f"{key_name('dedup_key')} callable {self.config.dedup_key}")
            return dedupe_key("endpoint+params", metrics)
        return dedupe_key(self.config.dedup_key, metrics)

    def claim(self, sender: Any, metrics: PerformanceMetrics, group: str) -> bool:
        """Dedupe stage: True if this alert should go out."""
        if self.window <= 0:
            return True
        prefix = "hung:" if metrics.hung else ""
        key = metrics.dedupe_key or prefix + self.key_for(metrics)
        try:
            claim = self.store.claim(key, self.window, group=prefix + group, limit=self.limit)
        except Exception as exc:
            # fail open: an unreachable store must not hide a slow request
            now = time.monotonic()
            if now - self._store_error_logged_at >= STORE_ERROR_LOG_INTERVAL:
                self._store_error_logged_at = now
                logger.error("dedupe store %s unavailable (%s); alerting without dedupe "
                             "(logged at most every %ds)", self.store,
                             format_error(exc), STORE_ERROR_LOG_INTERVAL)
            return True
        if not claim.granted:
            self.stats.incr("alerts_suppressed")
            if claim.reason == "limit":
                logger.debug("suppressed (endpoint at %s=%d per window): %s",
                             key_name("endpoint_alert_limit"), self.limit, metrics.summary())
            else:
                logger.debug("suppressed (repeat %d within the window): %s", claim.suppressed,
                             metrics.summary())
            self.send_signal(signals.alert_suppressed, metrics=metrics)
            return False
        metrics.suppressed = claim.suppressed
        metrics.endpoint_suppressed = claim.group_suppressed
        if claim.suppressed and claim.previous_at is not None:
            metrics.suppressed_since = datetime.fromtimestamp(claim.previous_at, UTC)
        return True

    def dispatch(self, sender: Any, metrics: PerformanceMetrics, report: Report) -> None:
        """Hand the alert to every notifier's lane (none waits for another)."""
        if not self.lanes:
            logger.warning("%s (no notifiers configured)", metrics.summary())
            return
        alert = Alert(sender, metrics, report)
        for lane in self.lanes:
            lane.submit(alert)

    # -- on the lanes' threads ----------------------------------------------

    def on_result(self, alert: Alert, notifier: object, error: BaseException | None, *,
                  role: str = "notifier", then: str = "") -> None:
        """One notifier's (or the report store's: ``role``) outcome for one
        alert: count it, signal it, and keep a failed alert's report on disk;
        ``then`` says in the error line what happens next."""
        name = getattr(notifier, "name", "") or type(notifier).__name__
        if error is None:
            self.stats.notifier_outcome(name, "sent")
            self.send_signal(signals.alert_sent, metrics=alert.metrics, notifier=notifier)
            return
        self.stats.notifier_outcome(name, "failed")
        kept = self.keep_locally(alert)
        detail = "" if _is_expected(error) else "\n" + format_traceback(error)
        logger.error("%s %r failed for %s: %s; %s%s%s", role, name, alert.metrics.summary(),
                     format_error(error), kept, then, detail)
        self.send_signal(signals.alert_failed, metrics=alert.metrics, notifier=notifier,
                         error=error)

    def link(self, sender: Any, metrics: PerformanceMetrics, report: Report) -> None:
        """Write the report file before dispatch, for channels that link to it
        rather than attach it, and give it its ``url``: the presigned link of
        its upload to the report store, or, without one (no store, or the
        upload failed), ``PERFWATCH_REPORT_BASE_URL`` + its name when that says
        where the folder is served."""
        path = None
        try:
            path = report.write(self.report_folder)
        except OSError:
            report_swallowed("writing the report for its link" + (
                " (it is still uploaded)" if self.report_store is not None
                else " (channels get no link)"))
        if self.report_store is not None and self.upload(sender, metrics, report):
            return
        if path is not None and self.config.report_base_url is not None:
            report.url = self.config.report_base_url + quote(path.name)

    def upload(self, sender: Any, metrics: PerformanceMetrics, report: Report) -> bool:
        """Upload the report to the report store and set its presigned ``url``
        (delivery thread); True if it worked. A failure is logged with its
        code, counted, and sent as ``alert_failed`` (``notifier`` the store);
        the report is kept locally and the alert goes on without the link."""
        store = self.report_store
        if store is None:
            return False
        error: Exception | None = None
        try:
            report.url = store.upload(report)
        except Exception as exc:
            error = exc
        self.on_result(Alert(sender, metrics, report), store, error,
                       role="report store",
                       then="; the notifiers get the alert without the stored link")
        return error is None

    def keep_locally(self, alert: Alert) -> str:
        """Make sure a failed alert's report is on disk; says where, or, if it
        cannot be written, logs the report's text so that nothing is lost."""
        report = alert.report
        if report.path is not None:
            return f"report kept at {report.path}"
        try:
            return f"report kept at {report.write(self.report_folder)}"
        except OSError as exc:
            error = format_error(exc)
        return (f"the report could not be written to {self.report_folder.directory} "
                f"({error}), so here is its text:\n{report.text}")

    def prune(self) -> None:
        """Keep the report folder within its retention and size, and the
        report store within its retention (delivery thread; each at most once
        per its interval)."""
        try:
            self.report_folder.prune_if_due()
        except Exception:
            report_swallowed("pruning the report folder")
        if self.report_store is not None:
            try:
                self.report_store.prune_if_due()
            except Exception:
                report_swallowed("pruning the report store")

    def close(self) -> None:
        """Release the report store's client (the monitor's ``close`` calls it)."""
        if self.report_store is not None:
            self.report_store.close()


def _is_expected(exc: BaseException) -> bool:
    return isinstance(exc, NotifierError | OSError)
