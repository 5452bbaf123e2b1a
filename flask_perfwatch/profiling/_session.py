"""From a frozen call tree to pyinstrument's :class:`~pyinstrument.session.Session`.

The sampler never builds a session on the request thread: :meth:`stop
<.sampler.SamplerEngine.stop>` hands over a :class:`SampledProfile` holding a
function that builds the session's JSON from the request's (frozen) call tree,
and the session is made on first use, on the delivery thread. It goes through
pyinstrument's public ``Session.from_json`` format (the dictionary its own
``Session.to_json()`` writes), so the report is pyinstrument's own HTML, with
line numbers and class names, and nothing here depends on its internals beyond
the frame-info string of :func:`frame_info`, which ``tests/test_sampler.py``
pins against pyinstrument's own.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ._calltree import records
from .base import Profile

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import CodeType

    from pyinstrument.session import Session

    from ._calltree import Node

#: pyinstrument's synthetic leaf for time a coroutine spent suspended.
AWAIT_FRAME = "[await]"


def frame_info(code: CodeType, lineno: int) -> str:
    """pyinstrument's frame-info string (``function\\x00file\\x00firstline`` then
    ``\\x01c<class>``, ``\\x01l<line>``, ``\\x01h1`` attributes).

    The class is taken from the code's qualified name (``Class.method`` of the
    class that defines the method), not from ``self``: that would mean reading
    the locals of the user's frames from another thread (see the rule in
    :mod:`.sampler`)."""
    info = f"{code.co_name}\x00{code.co_filename}\x00{code.co_firstlineno}"
    varnames = code.co_varnames
    if code.co_argcount and varnames and varnames[0] in ("self", "cls"):
        parts = code.co_qualname.split(".")
        if len(parts) >= 2 and parts[-2] != "<locals>":
            info += f"\x01c{parts[-2]}"
    if lineno > 0:
        info += f"\x01l{lineno}"
    if "__tracebackhide__" in varnames:
        info += "\x01h1"
    return info


def session_json(root: Node, *, start_time: float, duration: float, interval: float,
                 sample_count: int, description: str) -> dict[str, Any]:
    """A call tree (its root node) as pyinstrument's ``Session.to_json()`` dictionary."""
    frame_records = list(records(root, frame_info, AWAIT_FRAME))
    return {
        "frame_records": frame_records,
        "start_time": start_time,
        "duration": duration,
        "min_interval": interval,
        "max_interval": interval,
        "sample_count": sample_count,
        # the tree's root (the request's outermost frame): pyinstrument trims
        # the stem down to it and no further
        "start_call_stack": [frame_records[0][0][0]] if frame_records else [],
        "target_description": description,
        "cpu_time": 0.0,
        "sys_path": list(sys.path),
        "sys_prefixes": [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix],
    }


class SampledProfile(Profile):
    """A :class:`Profile` whose pyinstrument session is built on first use
    (on the delivery thread), from a frozen call tree."""

    def __init__(self, build: Callable[[], dict[str, Any]], *, sample_count: int,
                 duration: float, note: str | None) -> None:
        self._session: Session | None = None
        self._build: Callable[[], dict[str, Any]] | None = build
        self._sample_count = sample_count
        self._duration = duration
        self.note = note

    @property
    def session(self) -> Session:
        if self._session is None:
            from pyinstrument.session import Session

            assert self._build is not None
            self._session = Session.from_json(self._build())
            self._build = None
        return self._session

    @session.setter
    def session(self, value: Session) -> None:
        self._session = value

    @property
    def sample_count(self) -> int:
        return self._sample_count

    @property
    def duration(self) -> float:
        return self._duration


__all__ = ["AWAIT_FRAME", "SampledProfile", "frame_info", "session_json"]
