"""``log``: each alert as one line at WARNING on the logger
``flask_perfwatch.alerts``, for log-based alerting (Loki, CloudWatch,
Datadog log monitors...). No dependencies, nothing to configure."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._message import insight_summary
from .base import Notifier

if TYPE_CHECKING:
    from ..metrics import PerformanceMetrics
    from ..report import Report

#: The logger alerts go to; route it with your logging configuration.
alerts_logger = logging.getLogger("flask_perfwatch.alerts")


class LogNotifier(Notifier):
    """Logs ``metrics.summary()`` (already redacted and escaped: one line)
    at WARNING to ``flask_perfwatch.alerts``, then what is known of CPU, SQL
    and the trace (:func:`~._message.insight_summary`), then the report's
    link or path when there is one (so an alerting rule can link to it)."""

    name = "log"
    links_report = True

    def send(self, metrics: PerformanceMetrics, report: Report) -> None:
        link = report.link()
        insight = insight_summary(metrics)
        alerts_logger.warning("%s%s%s", metrics.summary(), f"; {insight}" if insight else "",
                              f"; report: {link}" if link else "",
                              extra={"perfwatch_alert": metrics.to_dict(),
                                     "perfwatch_report": link})

    def check(self) -> str:
        if not alerts_logger.isEnabledFor(logging.WARNING):
            raise RuntimeError("the logger flask_perfwatch.alerts drops WARNING records "
                               "(its level or a parent's is above WARNING)")
        return "logs alerts at WARNING to the logger flask_perfwatch.alerts"
