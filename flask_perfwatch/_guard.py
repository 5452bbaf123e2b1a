"""The one "log and swallow" guard around everything that runs in the user's
request or on the background threads. A bug in monitoring, in a notifier or in
a user's signal receiver is logged, counted and never raised into the app.

Every swallowed error is logged with its type and traceback, so an operator
can find out why monitoring failed, and counted per site (``stats()`` shows
the counts). The log is rate-limited per site: the first error of a site is
logged at once, then at most one line per :data:`LOG_INTERVAL` seconds saying
how many more happened meanwhile, so a hostile flood cannot flood the log.

The traceback goes into the log message as text, not as ``exc_info``: the
exception messages in it are passed through the redactor's value masking and
their control characters escaped first (an exception message may quote a
request's URL, with a password or a forged log line in it), which a handler's
formatter would not do.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from . import _fork
from ._redact import mask_text
from ._util import safe_text

logger = logging.getLogger("flask_perfwatch")

P = ParamSpec("P")
R = TypeVar("R")
D = TypeVar("D")

#: ``extra`` marker on every record the guard logs (tests fail on these).
SWALLOWED = "perfwatch_swallowed"
#: A site logs at most once per this many seconds (the first error at once).
LOG_INTERVAL = 60.0
#: Frames of a chained exception shown at most.
MAX_CHAIN = 5


def _clean(text: str) -> str:
    """One line of exception text as it may be logged: secrets masked,
    control characters escaped."""
    return safe_text(mask_text(text))


def format_error(exc: BaseException) -> str:
    """``Type: message`` of ``exc``, masked and escaped: safe for one log line."""
    name = type(exc).__qualname__
    module = type(exc).__module__
    if module not in ("builtins", "__main__"):
        name = f"{module}.{name}"
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ raises is still reported
        text = "<unprintable>"
    return f"{name}: {_clean(text)}" if text else name


def format_traceback(exc: BaseException) -> str:
    """The whole traceback of ``exc`` (with its causes), each message masked
    and escaped; the frames (file, line, code) are shown as Python prints them."""
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen and len(chain) < MAX_CHAIN:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, (
                "The above exception was the direct cause of the following exception:")
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, (
                "During handling of the above exception, another exception occurred:")
        else:
            current = None
    parts: list[str] = []
    for error, link in reversed(chain):
        frames = "".join(traceback.format_tb(error.__traceback__))
        parts.append("Traceback (most recent call last):\n" + frames + format_error(error))
        if link:
            parts.append(link)
    return "\n\n".join(parts)


class _Site:
    __slots__ = ("count", "next_log", "unlogged")

    def __init__(self) -> None:
        self.count = 0
        self.unlogged = 0
        self.next_log = float("-inf")


class SwallowedErrors:
    """Per-site counts of swallowed errors, process-wide."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sites: dict[str, _Site] = {}
        _fork.register(self)

    def record(self, where: str, now: float) -> int | None:
        """Count one error at ``where``; returns how many went unlogged before
        it if this one should be logged now, else None."""
        with self._lock:
            site = self._sites.get(where)
            if site is None:
                if len(self._sites) >= 1000:  # sites are code locations: never this many
                    where = "<other>"
                site = self._sites.setdefault(where, _Site())
            site.count += 1
            if now < site.next_log:
                site.unlogged += 1
                return None
            unlogged, site.unlogged = site.unlogged, 0
            site.next_log = now + LOG_INTERVAL
            return unlogged

    def total(self) -> int:
        with self._lock:
            return sum(site.count for site in self._sites.values())

    def reset(self) -> None:
        with self._lock:
            self._sites.clear()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()


#: Every error the library swallowed in this process, by site.
swallowed = SwallowedErrors()


def report_swallowed(where: str, exc: BaseException | None = None, *,
                     log: logging.Logger | None = None, level: int = logging.ERROR) -> None:
    """Log and count a swallowed error (call from an ``except`` block, or pass
    ``exc``): its type, its traceback, where it happened. Rate-limited per
    ``where``; never raises."""
    try:
        if exc is None:
            import sys

            exc = sys.exc_info()[1]
        unlogged = swallowed.record(where, time.monotonic())
        if unlogged is None:
            return
        more = (f" ({unlogged} more here since the last report, not logged: at most one "
                f"report per {LOG_INTERVAL:.0f} s per site)") if unlogged else ""
        if exc is None:
            (log or logger).log(level, "error in %s (swallowed; the application is not "
                                "affected)%s", safe_text(where), more, extra={SWALLOWED: True})
            return
        (log or logger).log(
            level, "error in %s (swallowed; the application is not affected): %s%s\n%s",
            safe_text(where), format_error(exc), more, format_traceback(exc),
            extra={SWALLOWED: True, "perfwatch_error_type": type(exc).__name__})
    except Exception:  # the guard itself must never raise into the app
        return


class RateLimitedLog:
    """A warning that a flood may repeat (a full queue, an evicting store):
    logged at most once per ``interval`` seconds, saying how many were skipped."""

    def __init__(self, log: logging.Logger, interval: float = LOG_INTERVAL) -> None:
        self.log = log
        self.interval = interval
        self._next = float("-inf")
        self._skipped = 0
        self._lock = threading.Lock()
        _fork.register(self)

    def warning(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._skipped += 1
                return
            skipped, self._skipped = self._skipped, 0
            self._next = now + self.interval
        if skipped:
            message += f" ({skipped} similar warnings in the last {self.interval:.0f} s " \
                       "not logged)"
        self.log.warning(message, *args)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()


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


def send_safely(signal: Any, sender: Any, *, on_error: Callable[[], None] | None = None,
                **kwargs: Any) -> None:
    """Send a blinker signal so that no receiver can stop another: each
    receiver runs in turn, an error in one is logged (type and traceback) and
    counted, and the rest still run. Built-in receivers (marked
    ``__perfwatch_builtin__``) run first, so a user's slow receiver cannot
    delay the alert pipeline. Blinker's own ``send`` stops at the first
    receiver that raises."""
    if getattr(signal, "is_muted", False):
        return
    receivers = list(signal.receivers_for(sender))
    if not receivers:
        return
    receivers.sort(key=lambda r: not getattr(r, "__perfwatch_builtin__", False))
    for receiver in receivers:
        try:
            receiver(sender, **kwargs)
        except Exception:
            if on_error is not None:
                with contextlib.suppress(Exception):
                    on_error()
            report_swallowed(f"a receiver of signal {signal.name!r} "
                             f"({_receiver_name(receiver)})")


def _receiver_name(receiver: Any) -> str:
    func = getattr(receiver, "__func__", receiver)
    module = getattr(func, "__module__", None) or "?"
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}.{name}"
