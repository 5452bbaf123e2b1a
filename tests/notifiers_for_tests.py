"""Notifiers that tests plug in by ``module:Class`` path (tests/ is on sys.path)."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from flask_perfwatch.exceptions import NotifierError
from flask_perfwatch.notifiers import Notifier


class RecordingNotifier(Notifier):
    """Keeps every (metrics, report) it was given, class-wide."""

    name = "recording"
    received: ClassVar[list[tuple[Any, Any]]] = []

    def send(self, metrics: Any, report: Any) -> None:
        type(self).received.append((metrics, report))


class FailingNotifier(Notifier):
    name = "failing"

    def send(self, metrics: Any, report: Any) -> None:
        raise NotifierError("the chat server said no")


class BrokenNotifier(Notifier):
    """Fails with an unexpected bug rather than a NotifierError."""

    name = "broken"

    def send(self, metrics: Any, report: Any) -> None:
        raise ZeroDivisionError("bug in a notifier")


class HangingNotifier(Notifier):
    """Blocks the delivery thread until ``release`` is set (or 30 s pass)."""

    name = "hanging"
    release: ClassVar[threading.Event] = threading.Event()
    entered: ClassVar[threading.Event] = threading.Event()

    def send(self, metrics: Any, report: Any) -> None:
        type(self).entered.set()
        type(self).release.wait(30)


class NotANotifier:
    pass


class Stuck(Notifier):
    """Blocks until ``release`` is set: a notifier that hangs (forever, as far
    as the pipeline can tell)."""

    name = "stuck"
    release: ClassVar[threading.Event] = threading.Event()
    calls: ClassVar[list[str]] = []

    def send(self, metrics: Any, report: Any) -> None:
        type(self).calls.append(metrics.id)
        type(self).release.wait(60)


class Fatal(BaseException):
    """Not an Exception: ``except Exception`` does not stop it."""


class BaseExceptionNotifier(Notifier):
    name = "fatal"

    def send(self, metrics: Any, report: Any) -> None:
        raise Fatal("a BaseException from a plug-in")


class Explosive:
    """Explodes when used in any way (truth, comparison, repr, str)."""

    def __bool__(self) -> bool:
        raise RuntimeError("boom: __bool__")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("boom: __eq__")

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        raise RuntimeError("boom: __repr__")

    def __str__(self) -> str:
        raise RuntimeError("boom: __str__")


class GarbageNotifier(Notifier):
    """Returns an object that explodes when looked at."""

    name = "garbage"

    def send(self, metrics: Any, report: Any) -> Any:  # type: ignore[override]
        return Explosive()
