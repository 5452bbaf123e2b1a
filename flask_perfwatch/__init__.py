"""flask_perfwatch: find out which Flask requests are slow in production, and why."""

from __future__ import annotations

from . import signals
from .config import Config
from .exceptions import ConfigError, NotifierError, PerfWatchError
from .extension import PerfWatch, quick_setup
from .metrics import PerformanceMetrics
from .middleware import PerfWatchMiddleware
from .report import Report

__version__ = "0.1.0.dev0"

__all__ = [
    "Config",
    "ConfigError",
    "NotifierError",
    "PerfWatch",
    "PerfWatchError",
    "PerfWatchMiddleware",
    "PerformanceMetrics",
    "Report",
    "__version__",
    "quick_setup",
    "signals",
]
