"""Engine ``pyinstrument``: a :class:`pyinstrument.Profiler` per request.

Highest fidelity (every call is seen by the profile hook), but while it is
active CPython stays on its slow path, so a profiled view runs markedly slower
(see the overhead benchmark). Every request and watched call that is not
ignored is profiled, so it suits staging or debugging; in production use the
``sampler`` engine.
"""

from __future__ import annotations

import logging
from typing import Any

from .base import Engine, HangCallback, Profile

logger = logging.getLogger(__name__)


class PyinstrumentEngine(Engine):
    name = "pyinstrument"
    start_in_view = True

    def start(self, description: object, *, is_async: bool = False,
              on_hang: HangCallback | None = None) -> Any:
        from pyinstrument import Profiler

        # "disabled" lets a watched function's profiler nest inside the
        # request's on the same thread; coroutines need "enabled" to see
        # through their awaits.
        profiler = Profiler(
            interval=self.config.profile_interval,
            async_mode="enabled" if is_async else "disabled",
        )
        try:
            profiler.start(target_description=str(description))
        except RuntimeError as exc:
            # another async-aware profiler owns this context: time only
            logger.debug("pyinstrument could not start for %s: %s", description, exc)
            return None
        return profiler

    def stop(self, handle: Any, *, keep: bool) -> Profile | None:
        if handle is None:
            return None
        session = handle.stop()
        if not keep or session is None or not session.frame_records:
            return None
        return Profile(session)
