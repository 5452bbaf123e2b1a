"""The dedupe store interface: "claim this key for the window, or tell me it is taken"."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ..config import Config


@dataclass(frozen=True)
class Claim:
    """The answer of :meth:`Store.claim`.

    ``granted``: this caller may alert. ``suppressed``: when granted, how many
    repeats were suppressed since the previous alert of the key (so the alert
    can say "N similar since ..."); when refused, the count so far, this one
    included. ``previous_at``: Unix time of the previous alert of the key, if
    the store still knows it.
    """

    granted: bool
    suppressed: int = 0
    previous_at: float | None = None


class Store(ABC):
    """A dedupe store. Implementations must make :meth:`claim` atomic across
    every process that shares the store."""

    #: URL schemes this store serves, e.g. ``("memory",)``.
    schemes: ClassVar[tuple[str, ...]]

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, *, prefix: str, config: Config) -> Store:
        """Build from a ``PERFWATCH_STORE`` URL; raise ConfigError for a bad one."""

    @abstractmethod
    def claim(self, key: str, window: float) -> Claim:
        """Atomically take ``key`` for ``window`` seconds if it is free (or its
        window has passed); otherwise count one more suppressed repeat."""

    def purge(self) -> int:
        """Drop expired entries; returns how many (stores with TTLs return 0)."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
