"""``local``: the HTML report as a file in ``PERFWATCH_REPORT_DIR``."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import TYPE_CHECKING

from ..config import key_name
from ..exceptions import ConfigError
from ..reportdir import ReportFolder, ensure_dir
from .base import Notifier

if TYPE_CHECKING:
    from ..config import Config
    from ..metrics import PerformanceMetrics
    from ..report import Report

logger = logging.getLogger(__name__)


class LocalFileNotifier(Notifier):
    """Writes each report to ``PERFWATCH_REPORT_DIR`` (by default a private
    per-user folder under the system temp dir) as
    ``perfwatch-<UTC time>-<method>-<endpoint>-<id>.html``, and logs a WARNING
    with the one-line summary and the path.

    Writes go through the process's :class:`~flask_perfwatch.reportdir.ReportFolder`
    for the configured folder: atomic, mode 0600, never over or through a
    planted file or symlink, and counted toward ``PERFWATCH_REPORT_MAX_BYTES``.
    A folder it has to create is made 0700 (each missing level)."""

    name = "local"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.folder = ReportFolder.from_config(config)
        self.directory = self.folder.directory
        try:
            ensure_dir(self.directory)
        except OSError as exc:
            raise ConfigError.invalid(key_name("report_dir"), str(self.directory),
                                      config.sources.get("report_dir", "default"),
                                      f"a directory that can be created ({exc.strerror})"
                                      ) from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise ConfigError.invalid(key_name("report_dir"), str(self.directory),
                                      config.sources.get("report_dir", "default"),
                                      "a writable directory")

    def send(self, metrics: PerformanceMetrics, report: Report) -> None:
        path = report.write(self.folder)
        logger.warning("%s; report: %s", metrics.summary(), path)

    def check(self) -> str:
        # really write (os.access says yes to root even where writes fail)
        try:
            ensure_dir(self.directory)
            with tempfile.NamedTemporaryFile(dir=self.directory, prefix=".perfwatch-check-"):
                pass
        except OSError as exc:
            raise OSError(f"cannot write to {self.directory}: {exc.strerror}") from None
        return f"writes reports to {self.directory}"
