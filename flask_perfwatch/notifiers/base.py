"""The notifier plug-in interface."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from types import ModuleType
    from typing import Self

    from ..config import Config
    from ..metrics import PerformanceMetrics
    from ..report import Report


class Notifier:
    """Delivers one alert somewhere.

    Subclass it, set :attr:`name`, validate what you need from the
    :class:`~flask_perfwatch.Config` in ``__init__`` (raise
    :class:`~flask_perfwatch.exceptions.ConfigError` there, so a mistake shows
    at ``init_app``), and implement :meth:`send`. ``send`` runs on a thread
    of this notifier's own; raising from it marks the alert as failed for
    this notifier only. Bound your own time (timeouts): past
    ``PERFWATCH_NOTIFIER_TIMEOUT`` the alert counts as failed, and this
    notifier's later alerts wait behind a send that hangs (never another
    notifier's, never the app).
    """

    #: The name used in ``PERFWATCH_NOTIFIERS``.
    name: ClassVar[str] = ""
    #: True for a channel that links to the report rather than attaching it:
    #: the pipeline then writes the report file (and sets ``Report.url`` from
    #: ``PERFWATCH_REPORT_BASE_URL``) before this notifier gets it.
    links_report: ClassVar[bool] = False

    def __init__(self, config: Config) -> None:
        self.config = config

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """Build from the app's configuration (called once, at ``init_app``)."""
        return cls(config)

    def send(self, metrics: PerformanceMetrics, report: Report) -> None:
        """Deliver the alert; raise on failure (after any retries of your own)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement send()")

    def check(self) -> str:
        """Check that the target is reachable without sending an alert; return
        a one-line description, raise on failure. Used by ``flask perfwatch check``."""
        return "no check available"

    def close(self) -> None:
        """Release resources (connections, sessions)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def require_extra(module: str, *, extra: str, notifier: str) -> ModuleType:
    """Import a channel's client library, or raise the
    :class:`~flask_perfwatch.exceptions.ConfigError` that names the extra to
    install (``pip install 'flask-perfwatch[slack]'``), at ``init_app``."""
    from ..config import key_name
    from ..exceptions import ConfigError

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"the {notifier} notifier needs the {module} package: "
                          f"pip install 'flask-perfwatch[{extra}]'", key=key_name("notifiers"),
                          expected=f"{module} installed") from None
