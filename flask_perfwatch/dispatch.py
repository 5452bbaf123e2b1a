"""Delivery through the notifiers, each isolated from the others.

Every notifier has its own :class:`NotifierLane`: a bounded queue and a
thread of its own, so a notifier that is slow, stuck, raising (``BaseException``
included) or returning garbage delays and blocks no other notifier. Each send
runs in a short-lived thread that the lane waits on for at most
``PERFWATCH_NOTIFIER_TIMEOUT`` seconds:

* the send returns: delivered;
* it raises anything: failed, with that error;
* it is still running at the timeout: failed with :class:`NotifierTimeout`.
  A thread cannot be killed, so the send goes on in the background and its
  outcome is ignored. While :data:`MAX_STUCK` such sends of one notifier are
  still running, further alerts to it fail at once (``NotifierStuck``) instead of
  piling up threads, until one of them returns.

The lane never looks at what ``send`` returns. Every outcome reaches the
pipeline's ``on_result`` callback, which counts it, sends ``alert_sent`` or
``alert_failed`` and keeps a failed alert's report on disk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _fork
from .config import key_name
from .exceptions import NotifierError
from .worker import Worker, start_at_exit

if TYPE_CHECKING:
    from .metrics import PerformanceMetrics
    from .notifiers import Notifier
    from .report import Report

#: Sends of one notifier that may still run past their timeout before the
#: notifier counts as stuck (each holds one abandoned thread).
MAX_STUCK = 2


class NotifierTimeout(NotifierError):
    """A notifier did not finish one alert within ``PERFWATCH_NOTIFIER_TIMEOUT``."""


class NotifierStuck(NotifierError):
    """A notifier still has :data:`MAX_STUCK` sends running past their timeout."""


class NotifierBackedUp(NotifierError):
    """A notifier's own queue is full: it is slower than alerts arrive."""


@dataclass
class Alert:
    """One alert on its way: what every lane delivers."""

    sender: Any
    metrics: PerformanceMetrics
    report: Report


#: ``on_result(alert, notifier, error)``: error None means delivered.
ResultCallback = Callable[[Alert, "Notifier", "BaseException | None"], None]


class NotifierLane:
    """Delivers alerts through one notifier on a thread of its own."""

    def __init__(self, notifier: Notifier, *, timeout: float, maxsize: int,
                 on_result: ResultCallback) -> None:
        self.notifier = notifier
        self.timeout = timeout
        self.on_result = on_result
        name = getattr(notifier, "name", "") or type(notifier).__name__
        self.worker = Worker(maxsize, name=f"flask-perfwatch-notify-{name}", shutdown_timeout=0)
        self._stuck: list[threading.Thread] = []
        self._lock = threading.Lock()
        _fork.register(self)

    def submit(self, alert: Alert) -> None:
        """Queue ``alert``; if the lane is full, it fails at once (never blocks)."""
        if not self.worker.submit(lambda: self._deliver(alert)):
            self.on_result(alert, self.notifier, NotifierBackedUp(
                f"its queue is full ({self.worker.maxsize} alerts waiting)"))

    def stuck(self) -> int:
        """Sends still running past their timeout."""
        with self._lock:
            self._stuck = [t for t in self._stuck if t.is_alive()]
            return len(self._stuck)

    def _deliver(self, alert: Alert) -> None:
        stuck = self.stuck()
        if stuck >= MAX_STUCK:
            self.on_result(alert, self.notifier, NotifierStuck(
                f"{stuck} earlier sends are still running after "
                f"{self.timeout:g}s; not trying until one of them returns"))
            return
        outcome: list[BaseException | None] = []
        notifier = self.notifier

        def send() -> None:
            try:
                notifier.send(alert.metrics, alert.report)  # its return value is ignored
            except BaseException as exc:  # a plug-in may raise anything
                outcome.append(exc)
            else:
                outcome.append(None)

        thread = threading.Thread(target=send, name=f"{self.worker.name}-send", daemon=True)
        started = time.monotonic()
        if start_at_exit(thread):
            thread.join(self.timeout)
        else:  # exiting: send here, bounded by the exit flush's own timeout
            send()
        if thread.is_alive():
            with self._lock:
                self._stuck.append(thread)
            self.on_result(alert, notifier, NotifierTimeout(
                f"no result within {time.monotonic() - started:.1f}s "
                f"({key_name('notifier_timeout')}={self.timeout:g}s); the send goes on in "
                "the background and its outcome is ignored"))
            return
        self.on_result(alert, notifier, outcome[0] if outcome else RuntimeError(
            "the send thread ended without an outcome"))

    def flush(self, timeout: float | None) -> bool:
        return self.worker.flush(timeout)

    def close(self, timeout: float | None) -> bool:
        return self.worker.close(timeout)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._stuck = []  # their threads did not survive the fork
