"""The one "log and swallow" guard around everything that runs in the user's
request or on the delivery thread. A bug in monitoring is logged, counted and
never raised into the app."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

logger = logging.getLogger("flask_perfwatch")

P = ParamSpec("P")
R = TypeVar("R")
D = TypeVar("D")

#: ``extra`` marker on every record the guard logs (tests fail on these).
SWALLOWED = "perfwatch_swallowed"

def report_swallowed(where: str) -> None:
    """Log the exception being handled as swallowed (call from an ``except``)."""
    logger.error("error in %s (swallowed; the application is not affected)", where,
                 extra={SWALLOWED: True})


def guarded(where: str, default: D) -> Callable[[Callable[P, R]], Callable[P, R | D]]:
    """Decorate a hook so that any exception is logged and ``default`` returned."""

    def decorate(func: Callable[P, R]) -> Callable[P, R | D]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | D:
            try:
                return func(*args, **kwargs)
            except Exception:
                report_swallowed(where)
                return default

        return wrapper

    return decorate
