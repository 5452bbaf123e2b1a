"""Profiling engines, resolved by the ``PERFWATCH_PROFILER`` name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Engine, OffEngine, Profile
from .pyinstrument_engine import PyinstrumentEngine
from .sampler import SamplerEngine

if TYPE_CHECKING:
    from ..config import Config

#: Engine name -> class. ``PERFWATCH_PROFILER`` must name one of these.
ENGINES: dict[str, type[Engine]] = {
    "sampler": SamplerEngine,
    "pyinstrument": PyinstrumentEngine,
    "off": OffEngine,
}


def create_engine(config: Config) -> Engine:
    """The engine ``config.profiler`` names (validated by :class:`Config`)."""
    return ENGINES[config.profiler](config)


__all__ = ["ENGINES", "Engine", "OffEngine", "Profile", "PyinstrumentEngine", "create_engine"]
