"""Profiling engines, resolved by the ``PERFWATCH_PROFILER`` name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._registry import ENGINES
from .base import Engine, OffEngine, Profile
from .pyinstrument_engine import PyinstrumentEngine
from .sampler import SamplerEngine

if TYPE_CHECKING:
    from ..config import Config


def create_engine(config: Config) -> Engine:
    """The engine ``config.profiler`` names (a name :class:`Config` validated
    against :data:`ENGINES`)."""
    cls: type[Engine] = ENGINES.load(config.profiler)
    return cls(config)


__all__ = ["ENGINES", "Engine", "OffEngine", "Profile", "PyinstrumentEngine", "SamplerEngine",
           "create_engine"]
