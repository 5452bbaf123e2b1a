"""Helpers for testing code that uses flask_perfwatch (ours and yours)."""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from blinker import Signal

from . import signals as _signals
from .profiling._stacks import reading_stacks

ALL_SIGNALS: dict[str, Signal] = {
    "slow_request": _signals.slow_request,
    "request_hung": _signals.request_hung,
    "alert_suppressed": _signals.alert_suppressed,
    "alert_sent": _signals.alert_sent,
    "alert_failed": _signals.alert_failed,
    "endpoint_regressed": _signals.endpoint_regressed,
}


@dataclass
class Recorded:
    signal: str
    sender: Any
    kwargs: dict[str, Any]


@dataclass
class SignalRecorder:
    """What :func:`record_signals` saw, thread-safe (alerts arrive from the
    delivery thread)."""

    events: list[Recorded] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def _receiver(self, name: str) -> Callable[..., None]:
        def receive(sender: Any, **kwargs: Any) -> None:
            with self._cond:
                self.events.append(Recorded(name, sender, kwargs))
                self._cond.notify_all()

        return receive

    def of(self, name: str) -> list[Recorded]:
        """The events of one signal, in order."""
        with self._cond:
            return [e for e in self.events if e.signal == name]

    def count(self, name: str) -> int:
        return len(self.of(name))

    def wait_for(self, name: str, count: int = 1, timeout: float = 30.0) -> list[Recorded]:
        """Wait until ``name`` was sent ``count`` times; AssertionError on timeout.

        The default timeout is generous on purpose: it only matters when the
        signal does not come, and a test suite on a loaded CI machine (four
        pytest-xdist workers on two cores, a report rendered per alert) has
        been seen to need more than 10 s for one delivery."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events if e.signal == name]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [e.signal for e in self.events]
                    raise AssertionError(f"waited {timeout}s for {count}x {name}; saw {seen}\n"
                                         f"{_other_threads()}")
                self._cond.wait(remaining)


def _other_threads() -> str:
    """Every other thread's stack: what a signal that never came waits on."""
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident()
    # walk the frames with the collector off (see profiling._stacks); read the
    # source lines, which is file I/O, only after
    with reading_stacks:
        stacks = [(ident, traceback.StackSummary.extract(traceback.walk_stack(frame),
                                                         lookup_lines=False))
                  for ident, frame in sys._current_frames().items() if ident != me]
    return "\n".join(f"Thread {names.get(ident, ident)}:\n" + "".join(stack.format()[::-1])
                     for ident, stack in stacks)


@contextmanager
def record_signals(sender: Any = None) -> Iterator[SignalRecorder]:
    """Record every flask_perfwatch signal (from ``sender`` only, if given).

    .. code-block:: python

        with record_signals(app) as rec:
            client.get("/slow")
            rec.wait_for("alert_sent")
    """
    recorder = SignalRecorder()
    receivers = []
    for name, signal in ALL_SIGNALS.items():
        receiver = recorder._receiver(name)
        receivers.append((signal, receiver))
        if sender is None:
            signal.connect(receiver, weak=False)
        else:
            signal.connect(receiver, sender=sender, weak=False)
    try:
        yield recorder
    finally:
        for signal, receiver in receivers:
            signal.disconnect(receiver)
