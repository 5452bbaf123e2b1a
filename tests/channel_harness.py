"""One harness for the end-to-end tests of every channel: a real Flask app
(the ``make_app`` fixture) whose notifier of one class talks to a stand-in
or a real server, with the backoff waits recorded in ``delays`` instead of
slept and the reports the notifier was given kept in ``reports``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from conftest import monitor_of
from flask import Flask

from flask_perfwatch import PerfWatch
from flask_perfwatch.exceptions import NotifierError
from flask_perfwatch.metrics import PerformanceMetrics
from flask_perfwatch.notifiers import Notifier
from flask_perfwatch.report import Report
from flask_perfwatch.testing import SignalRecorder

N = TypeVar("N", bound=Notifier)


@dataclass
class Channel(Generic[N]):
    """A Flask app alerting through ``notifier``."""

    app: Flask
    perfwatch: PerfWatch
    notifier: N
    delays: list[float] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)

    def get(self, path: str = "/slow") -> Any:
        return self.app.test_client().get(path)

    def flush(self) -> None:
        assert self.perfwatch.flush(20, self.app), "alerts still queued after 20s"

    def failure(self, signals: SignalRecorder, *, retryable: bool) -> NotifierError:
        """The error of the one alert that failed (once every queued alert is
        done), checked to be a :class:`NotifierError` that is, or is not,
        ``retryable``."""
        [failed] = signals.wait_for("alert_failed")
        self.flush()
        error = failed.kwargs["error"]
        assert isinstance(error, NotifierError), repr(error)
        assert error.retryable is retryable, str(error)
        return error


def channel_app(make_app: Callable[..., tuple[Flask, PerfWatch]], notifier_class: type[N], *,
                notifiers: Sequence[str], **overrides: Any) -> Channel[N]:
    """``make_app(notifiers=..., **overrides)`` (dedupe off unless given),
    observed through a :class:`Channel` of its ``notifier_class`` notifier."""
    overrides.setdefault("dedup_window", 0)
    app, perfwatch = make_app(notifiers=list(notifiers), **overrides)
    notifier = next(n for n in monitor_of(app).notifiers if isinstance(n, notifier_class))
    channel = Channel(app, perfwatch, notifier)
    notifier.policy.sleep = channel.delays.append  # type: ignore[attr-defined]
    original = notifier.send

    def send(metrics: PerformanceMetrics, report: Report) -> None:
        channel.reports.append(report)
        original(metrics, report)

    notifier.send = send  # type: ignore[method-assign]
    return channel
