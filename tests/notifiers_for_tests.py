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
