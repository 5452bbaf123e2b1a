"""The Flask app posting to the Mattermost stand-in, shared by the tests that
need one (the ``mm_app`` fixture in conftest.py builds it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conftest import monitor_of
from flask import Flask
from mattermost_server import MattermostStandIn

from flask_perfwatch import PerfWatch
from flask_perfwatch.metrics import PerformanceMetrics
from flask_perfwatch.notifiers.mattermost import MattermostNotifier
from flask_perfwatch.report import Report


@dataclass
class Harness:
    """A Flask app whose only (or second) notifier posts to the stand-in."""

    app: Flask
    perfwatch: PerfWatch
    notifier: MattermostNotifier
    delays: list[float] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)

    def get(self, path: str = "/slow") -> Any:
        return self.app.test_client().get(path)

    def flush(self) -> None:
        assert self.perfwatch.flush(20, self.app), "alerts still queued after 20s"


def build_harness(standin: MattermostStandIn, make_app: Callable[..., tuple[Flask, PerfWatch]],
                  *, notifiers: tuple[str, ...] = ("mattermost",), **overrides: Any) -> Harness:
    """The test app posting to ``standin``. Backoff sleeps are recorded in
    ``harness.delays`` instead of slept; the reports the notifier was given are
    kept in ``harness.reports``."""
    overrides.setdefault("mattermost_url", standin.url)
    overrides.setdefault("mattermost_token", standin.token)
    if "mattermost_channel_id" not in overrides:
        overrides.setdefault("mattermost_team", standin.team_name)
        overrides.setdefault("mattermost_channel", "perf-alerts")
    overrides.setdefault("mattermost_timeout", 3.0)
    overrides.setdefault("dedup_window", 0)
    app, perfwatch = make_app(notifiers=list(notifiers), **overrides)
    monitor = monitor_of(app)
    notifier = next(n for n in monitor.notifiers if isinstance(n, MattermostNotifier))
    harness = Harness(app, perfwatch, notifier)
    notifier.policy.sleep = harness.delays.append
    original = notifier.send

    def send(metrics: PerformanceMetrics, report: Report) -> None:
        harness.reports.append(report)
        original(metrics, report)

    notifier.send = send  # type: ignore[method-assign]
    return harness
