"""Exceptions raised by flask_perfwatch.

Only configuration problems are ever raised into your code, and only at
start-up (``init_app``, ``Config(...)``, ``PerfWatchMiddleware(...)``).
Everything that goes wrong while the app serves requests is logged under the
``flask_perfwatch`` logger and swallowed.
"""

from __future__ import annotations

from typing import Any

from ._redact import mask_text
from ._util import safe_text


class PerfWatchError(Exception):
    """Base class of every exception flask_perfwatch raises."""


class ConfigError(PerfWatchError, ValueError):
    """A configuration value is invalid.

    The message names the key, the offending value, where it came from and
    what was expected, e.g.::

        PERFWATCH_THRESHOLD='fast' (from app.config): expected a duration in
        seconds such as 1.5, '500ms' or '2s'
    """

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        value: Any = None,
        source: str | None = None,
        expected: str | None = None,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.value = value
        self.source = source
        self.expected = expected

    @classmethod
    def invalid(cls, key: str, value: Any, source: str, expected: str) -> ConfigError:
        """Build the standard "bad value" error for one key. A string value is
        shown with any secret in it masked (a URL's password, a bearer token)
        and its control characters escaped."""
        if isinstance(value, str):
            value = safe_text(mask_text(value))
        return cls(
            f"{key}={value!r} (from {source}): expected {expected}",
            key=key,
            value=value,
            source=source,
            expected=expected,
        )


class NotifierError(PerfWatchError):
    """A notifier could not deliver an alert.

    Notifiers raise it (or any other exception) from
    :meth:`~flask_perfwatch.notifiers.Notifier.send`; the alert pipeline
    catches it, logs it and sends :data:`~flask_perfwatch.signals.alert_failed`.
    ``retryable`` tells whether another attempt could succeed.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
