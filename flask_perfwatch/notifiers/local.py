"""``local``: the HTML report as a file in ``PERFWATCH_REPORT_DIR``."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import TYPE_CHECKING

from ..exceptions import ConfigError
from .base import Notifier

if TYPE_CHECKING:
    from ..config import Config
    from ..metrics import PerformanceMetrics
    from ..report import Report

logger = logging.getLogger(__name__)


class LocalFileNotifier(Notifier):
    """Writes each report to ``PERFWATCH_REPORT_DIR`` (the system temp dir by
    default) as ``perfwatch-<UTC time>-<method>-<endpoint>-<id>.html``, mode
    0600, and logs a WARNING with the one-line summary and the path."""

    name = "local"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.directory = config.resolved_report_dir
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError.invalid("PERFWATCH_REPORT_DIR", str(self.directory),
                                      config.sources.get("report_dir", "default"),
                                      f"a directory that can be created ({exc.strerror})"
                                      ) from None
        if not self.directory.is_dir() or not os.access(self.directory, os.W_OK | os.X_OK):
            raise ConfigError.invalid("PERFWATCH_REPORT_DIR", str(self.directory),
                                      config.sources.get("report_dir", "default"),
                                      "a writable directory")

    def send(self, metrics: PerformanceMetrics, report: Report) -> None:
        path = report.write(self.directory)
        logger.warning("%s; report: %s", metrics.summary(), path)

    def check(self) -> str:
        # really write (os.access says yes to root even where writes fail)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.directory, prefix=".perfwatch-check-"):
                pass
        except OSError as exc:
            raise OSError(f"cannot write to {self.directory}: {exc.strerror}") from None
        return f"writes reports to {self.directory}"
