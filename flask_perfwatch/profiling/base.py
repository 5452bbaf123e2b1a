"""The small protocol every profiling engine implements.

An engine is asked to :meth:`~Engine.start` when a request (or watched call)
begins, on that thread, and to :meth:`~Engine.stop` when it ends, with
``keep=True`` only when the request turned out slow. Whatever it keeps is a
:class:`Profile`, which renders pyinstrument's reports on demand (on the
delivery thread, never on the request thread).
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import quote

from .._guard import report_swallowed

if TYPE_CHECKING:
    from types import CodeType, FrameType

    from pyinstrument.session import Session

    from ..config import Config


def safe_description(description: str) -> str:
    """The target description with markup characters percent-encoded:
    pyinstrument embeds it unescaped in a ``<script>`` of its HTML report, and
    it holds the request path (a path with ``</script>`` must not become markup)."""
    return quote(description, safe=_SAFE)


_SAFE = " /:@!$&'()*+,;=-._~?#[]%"

#: ``on_hang(partial_profile, elapsed_seconds)``, see :meth:`Engine.start`.
HangCallback = Callable[["Profile | None", float], None]

#: What the engine learns of a request it found (see :class:`Registry`): its
#: start (``time.perf_counter()``) and its WSGI environ.
Record = tuple[float, Any]


class RegistryOwner(Protocol):
    """The WSGI wrapper that owns a :class:`Registry`: it names a request the
    engine found and hears when one hangs (on the engine's thread)."""

    def describe(self, record: Record) -> str:
        """The profile's description of a request (``"GET /path"``)."""
        ...  # pragma: no cover

    def hung_record(self, record: Record, profile: Profile | None, elapsed: float) -> None:
        """The request is still running after ``hang_after``."""
        ...  # pragma: no cover


class Registry:
    """How a WSGI wrapper's requests are found without the wrapper telling
    the engine anything: the engine's thread finds each request in flight
    by the wrapper's frame on its thread's stack (code ``anchor``), and reads
    three of that frame's local variables: ``self`` (the :attr:`owner`),
    ``start`` (its ``time.perf_counter()``) and ``environ``. A frame without
    ``start`` yet (or ever: an ignored path, a request the wrapper hands to
    :meth:`Engine.start`) is not a request. A fast request therefore costs
    the engine nothing; a slow one's profile is taken at its end with
    :meth:`Engine.collect` and the wrapper's frame.

    ``open`` is False while the engine cannot find requests this way (its
    requests are gevent greenlets, which share a thread and whose stacks
    are not the thread's; or stacks cannot be read; or it was closed): the
    wrapper then calls :meth:`Engine.start` and :meth:`Engine.stop`. ``idle``
    is True while the engine's thread sleeps (or was not started), and
    always while not ``open``, so the fast path reads one attribute: when it
    is True, the wrapper calls :meth:`wake` if ``open`` (which may close it:
    gevent is found when the thread starts), then takes the general path if
    not ``open``."""

    __slots__ = ("anchor", "engine", "idle", "open", "owner")

    def __init__(self, engine: Engine, owner: RegistryOwner, anchor: CodeType) -> None:
        self.engine = engine
        #: weak: the engine's thread must not keep the wrapper (and its app) alive
        self.owner: weakref.ref[RegistryOwner] = weakref.ref(owner)
        #: the code of the wrapper's frame that runs the app: a profile's root
        self.anchor = anchor
        self.open = True
        self.idle = True

    def wake(self) -> None:
        """Wake the engine's thread (start it the first time); never raises."""
        try:
            self.engine.wake()
        except Exception:
            report_swallowed("waking the profiler's thread")


class Profile:
    """A captured profile: a pyinstrument :class:`~pyinstrument.session.Session`
    plus rendering helpers. ``note`` says what the engine wants a reader to
    know (e.g. how much of the start was not sampled)."""

    def __init__(self, session: Session, note: str | None = None) -> None:
        self.session = session
        self.note = note

    #: CPU seconds the profiled thread used over the profile (None: not
    #: measured). Engines that can read it set it.
    cpu_time: float | None = None
    #: Where the profiled thread waited in a C call, heaviest first: one
    #: ``{"line", "function", "file", "lineno", "seconds"}`` per calling
    #: line (``line`` reads e.g. ``"line 16: time.sleep(0.2)"``). Empty when
    #: the engine does not know.
    waits: list[dict[str, Any]] = []  # noqa: RUF012 (replaced, never mutated)

    @property
    def sample_count(self) -> int:
        return int(self.session.sample_count)

    @property
    def duration(self) -> float:
        return float(self.session.duration)

    def html(self) -> str:
        """pyinstrument's interactive HTML report (a whole page)."""
        from pyinstrument.renderers import HTMLRenderer

        session = self.session
        session.target_description = safe_description(session.target_description)
        return str(HTMLRenderer().render(session))

    def text(self, *, color: bool = False) -> str:
        """pyinstrument's console tree as plain text."""
        from pyinstrument.renderers import ConsoleRenderer

        renderer = ConsoleRenderer(unicode=True, color=color, short_mode=True)
        return str(renderer.render(self.session))

    def to_json(self) -> dict[str, Any]:
        """The session in pyinstrument's own ``.pyisession`` JSON format."""
        return dict(self.session.to_json())

    #: Frames :meth:`thinned` merged into their callers (0 for a full profile).
    merged_frames: int = 0

    def thinned(self, min_fraction: float) -> Profile:
        """A smaller copy for a report under a size cap: every frame whose
        total time is under ``min_fraction`` of the whole profile's is merged
        into its caller (the frame, and everything it called, is cut from the
        call stacks, so its time becomes its caller's self time), and repeated
        calls are merged into one per call path. Totals, sample count and
        duration are unchanged; :attr:`merged_frames` says how many frames went.

        Works on pyinstrument's session JSON (``frame_records``: one call stack
        of frame-info strings and its time per record). A frame is a call path
        of frame identifiers (function, file, first line), as in the call tree
        a reader sees, so its total is summed over every record through it. A
        child's total never exceeds its parent's, so cutting each stack at its
        first light frame removes exactly the light frames (an outermost frame
        is always kept). The records are then summed per exact stack (frame-info
        strings keep their line numbers) and ordered depth first, each call
        path in first-call order: pyinstrument's tree then has one node per
        call path, where the raw timeline has one per run of samples (a loop
        alternating two calls makes thousands). The timeline view of a thinned
        profile therefore shows each call path once."""
        from pyinstrument.frame_info import frame_info_get_identifier
        from pyinstrument.session import Session

        data = dict(self.session.to_json())
        records: list[tuple[list[str], float]] = data["frame_records"]
        threshold = min_fraction * sum(t for _, t in records)
        # the call tree as a trie: node = [total time, {identifier: node}, rank
        # among its siblings in first-call order]
        root: list[Any] = [0.0, {}, 0]
        for stack, t in records:
            node = root
            for info in stack:
                key = frame_info_get_identifier(info)
                children = node[1]
                child = children.get(key)
                if child is None:
                    child = children[key] = [0.0, {}, len(children)]
                child[0] += t
                node = child
        summed: dict[tuple[str, ...], list[Any]] = {}  # stack -> [time, sort key]
        for stack, t in records:
            node = root
            ranks: list[int] = []
            for info in stack:
                child = node[1][frame_info_get_identifier(info)]
                if child[0] < threshold and ranks:  # keep an outermost frame
                    break
                node = child
                ranks.append(child[2])
            kept = tuple(stack[:len(ranks)])
            entry = summed.get(kept)
            if entry is None:
                summed[kept] = [t, ranks]
            else:
                entry[0] += t
        ordered = sorted(summed.items(), key=lambda item: item[1][1])
        light = 0
        pending = [root]
        while pending:
            for child in pending.pop()[1].values():
                if child[0] < threshold:
                    light += 1
                pending.append(child)
        data["frame_records"] = [(list(stack), entry[0]) for stack, entry in ordered]
        data["sample_count"] = self.sample_count
        data["duration"] = self.duration
        profile = Profile(Session.from_json(data), note=self.note)
        # outermost frames are never cut; count only what really went
        profile.merged_frames = light - sum(1 for child in root[1].values()
                                            if child[0] < threshold)
        return profile


class Engine(ABC):
    """A profiling engine. Subclasses set :attr:`name` and register in
    :data:`flask_perfwatch.profiling.ENGINES`."""

    name: ClassVar[str]
    #: Start from a ``before_request`` hook (where the endpoint is known, so
    #: ignored views are never profiled) rather than from the WSGI wrapper.
    #: For engines whose start is costly.
    start_in_view: ClassVar[bool] = False
    #: False for an engine that never captures anything (``off``): callers
    #: then skip :meth:`start` and :meth:`stop` altogether.
    profiles: ClassVar[bool] = True
    #: Why this engine cannot profile in this process (shown by ``flask
    #: perfwatch check``), or None when it can.
    unavailable: str | None = None

    def __init__(self, config: Config) -> None:
        self.config = config

    def stats(self) -> dict[str, Any]:
        """The engine's own figures for ``perfwatch.stats()`` (none by default)."""
        return {}

    @abstractmethod
    def start(self, description: object, *, is_async: bool = False,
              on_hang: HangCallback | None = None) -> Any:
        """Begin observing the current thread; returns a handle for :meth:`stop`
        (None when nothing was started). Must be cheap and must not raise.

        ``description``: what is observed; its ``str()`` (``"GET /path"``) is
        taken only when a profile is kept, so callers may pass an object that
        formats itself lazily.

        ``on_hang``: engines that watch in-flight work from another thread call
        it once, from that thread, when the work is still running after
        ``config.hang_after`` seconds (if > 0), with the partial profile (or
        None) and the seconds elapsed. Engines that cannot observe in-flight
        work ignore it."""

    @abstractmethod
    def stop(self, handle: Any, *, keep: bool) -> Profile | None:
        """Stop observing; return the profile if ``keep`` and anything was
        captured, else drop what was collected and return None."""

    def registry(self, owner: RegistryOwner, anchor: CodeType) -> Registry | None:
        """A :class:`Registry` for a WSGI wrapper (``owner``, whose frame of
        code ``anchor`` runs the app), if this engine watches in-flight
        requests from its own thread; None (the default) if the wrapper must
        call :meth:`start` and :meth:`stop`."""
        return None

    def wake(self) -> None:  # noqa: B027 - optional hook
        """See :attr:`Registry.idle`."""

    def collect(self, registry: Registry, anchor: FrameType) -> Profile | None:
        """End a request of ``registry`` that may be slow, run by the frame
        ``anchor`` (the wrapper's, on the calling thread): return its profile,
        or None if nothing was captured, and forget it."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release threads or other resources (app/middleware shut down)."""


class OffEngine(Engine):
    """Timing only: requests are timed and alerted, reports carry the metadata."""

    name = "off"
    profiles = False

    def start(self, description: object, *, is_async: bool = False,
              on_hang: HangCallback | None = None) -> None:
        return None

    def stop(self, handle: Any, *, keep: bool) -> None:
        return None
