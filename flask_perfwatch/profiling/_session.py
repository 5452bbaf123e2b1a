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

A waiting line (:data:`._calltree.WAIT`) becomes a frame of its own below the
waiting function, named by the line (``line 16: time.sleep(0.2)``, see
:func:`wait_info`); :attr:`SampledProfile.waits` lists them. The line's
source is read (``linecache``) when the session or the list is first built,
on the delivery thread, never while sampling.
"""

from __future__ import annotations

import linecache
import sys
from typing import TYPE_CHECKING, Any

from ._calltree import records, wait_times
from .base import Profile

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import CodeType

    from pyinstrument.session import Session

    from ._calltree import Node

#: pyinstrument's synthetic leaf for time a coroutine spent suspended.
AWAIT_FRAME = "[await]"
#: A waiting line's source is cut to this many characters.
LINE_TEXT_MAX = 120
#: :attr:`SampledProfile.waits` lists at most this many lines.
WAITS_MAX = 10


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


def line_label(filename: str, lineno: int) -> str:
    """``"line 16: time.sleep(0.2)"``: the line number and its stripped source
    (cut to :data:`LINE_TEXT_MAX` characters), or ``"line 16"`` when the
    source cannot be read. Never holds pyinstrument's separators."""
    text = linecache.getline(filename, lineno).strip()
    if not text:
        return f"line {lineno}"
    if len(text) > LINE_TEXT_MAX:
        text = text[:LINE_TEXT_MAX - 3] + "..."
    return f"line {lineno}: " + text.replace("\x00", " ").replace("\x01", " ")


def wait_info(code: CodeType, lineno: int) -> str:
    """The frame-info string of a waiting line: a frame named by the line
    (:func:`line_label`) in the waiting function's file, at that line, so
    that pyinstrument's renderers show ``line 16: time.sleep(0.2)`` as the
    function and ``file.py:16`` as its place."""
    filename = code.co_filename
    return f"{line_label(filename, lineno)}\x00{filename}\x00{lineno}\x01l{lineno}"


def waits(root: Node) -> list[dict[str, Any]]:
    """The waiting lines of a call tree for :attr:`Profile.waits
    <.base.Profile.waits>`: heaviest first, at most :data:`WAITS_MAX`."""
    heaviest = sorted(wait_times(root).items(), key=lambda item: -item[1])[:WAITS_MAX]
    return [{"line": line_label(code.co_filename, lineno), "function": code.co_qualname,
             "file": code.co_filename, "lineno": lineno, "seconds": seconds}
            for (code, lineno), seconds in heaviest]


def session_json(root: Node, *, start_time: float, duration: float, interval: float,
                 sample_count: int, description: str,
                 cpu_time: float | None = None) -> dict[str, Any]:
    """A call tree (its root node) as pyinstrument's ``Session.to_json()``
    dictionary. ``cpu_time`` None (not measured) is written as 0.0, the only
    value pyinstrument's format allows; :meth:`SampledProfile.html` then hides
    the figure."""
    frame_records = list(records(root, frame_info, AWAIT_FRAME, wait_label=wait_info))
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
        "cpu_time": 0.0 if cpu_time is None else cpu_time,
        "sys_path": list(sys.path),
        "sys_prefixes": [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix],
    }


#: Put into the report page when the CPU time is not known: pyinstrument's
#: page always shows "CPU utilization" (the session's ``cpu_time`` over its
#: duration; its format has no "unknown"), which would read 0 %. The script
#: runs after the page's app has drawn its header and hides that one metric;
#: it does nothing if a later pyinstrument words it differently.
HIDE_CPU_SCRIPT = """<script>/* flask_perfwatch: this request's CPU time was not measured */
for (const metric of document.querySelectorAll(".metric")) {
  if (metric.textContent.trim().startsWith("CPU utilization")) metric.style.display = "none";
}
</script>
"""


class SampledProfile(Profile):
    """A :class:`Profile` whose pyinstrument session is built on first use
    (on the delivery thread), from a frozen call tree, and whose
    :attr:`waits` are listed from that tree on first use. With
    :attr:`cpu_time` unknown (None), :meth:`html` hides pyinstrument's CPU
    utilization (see :data:`HIDE_CPU_SCRIPT`)."""

    def __init__(self, build: Callable[[], dict[str, Any]] | None, *, sample_count: int,
                 duration: float, note: str | None, cpu_time: float | None = None,
                 find_waits: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self._session: Session | None = None
        self._build: Callable[[], dict[str, Any]] | None = build
        self._sample_count = sample_count
        self._duration = duration
        self.note = note
        self.cpu_time = cpu_time
        self._waits: list[dict[str, Any]] | None = None
        self._find_waits = find_waits

    @property  # read lazily (a plain list on Profile)
    def waits(self) -> list[dict[str, Any]]:
        if self._waits is None:
            find, self._find_waits = self._find_waits, None
            self._waits = find() if find is not None else []
        return self._waits

    @waits.setter
    def waits(self, value: list[dict[str, Any]]) -> None:
        self._waits = value

    def html(self) -> str:
        page = super().html()
        if self.cpu_time is not None:
            return page
        head, body_end, tail = page.rpartition("</body>")
        return head + HIDE_CPU_SCRIPT + body_end + tail if body_end else page

    def thinned(self, min_fraction: float) -> Profile:
        """:meth:`Profile.thinned`, keeping :attr:`cpu_time`, :attr:`waits`
        (of the whole profile) and the hidden CPU utilization."""
        thin = super().thinned(min_fraction)
        copy = SampledProfile(None, sample_count=self._sample_count,
                              duration=self._duration, note=thin.note,
                              cpu_time=self.cpu_time)
        copy.session = thin.session
        copy.merged_frames = thin.merged_frames
        copy.waits = self.waits
        return copy

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


__all__ = ["AWAIT_FRAME", "HIDE_CPU_SCRIPT", "LINE_TEXT_MAX", "WAITS_MAX", "SampledProfile",
           "frame_info", "line_label", "session_json", "wait_info", "waits"]
