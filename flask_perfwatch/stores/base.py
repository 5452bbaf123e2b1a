"""The dedupe store interface: "claim this key for the window, or tell me it is taken"."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from ..config import Config

#: :attr:`Claim.reason` of a key still within its window.
DUPLICATE: Final = "duplicate"
#: :attr:`Claim.reason` of a claim refused because its group is at its limit.
LIMIT: Final = "limit"


@dataclass(frozen=True)
class Claim:
    """The answer of :meth:`Store.claim`.

    ``granted``: this caller may alert. ``suppressed``: when granted, how many
    repeats of the key were suppressed since its previous alert (so the alert
    can say "N similar since ..."); when refused as a duplicate, the key's count
    so far, this one included; when refused by the limit, the group's count of
    limit refusals so far, this one included. ``previous_at``: Unix time of the
    previous alert of the key, if the store still knows it (None for a limit
    refusal: the key was never recorded).
    """

    granted: bool
    suppressed: int = 0
    previous_at: float | None = None
    #: why refused: "duplicate" (the key is within its window) or "limit" (its
    #: group is at its limit); None when granted
    reason: Literal["duplicate", "limit"] | None = None
    #: when granted: how many claims of the group the limit refused since the
    #: group's previous grant
    group_suppressed: int = 0


class Store(ABC):
    """A dedupe store. Implementations must make :meth:`claim` atomic across
    every process that shares the store, and keep their size bounded."""

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, *, prefix: str, config: Config) -> Store:
        """Build from a ``PERFWATCH_STORE`` URL; raise ConfigError for a bad one."""

    @abstractmethod
    def claim(self, key: str, window: float, *, group: str | None = None,
              limit: int = 0) -> Claim:
        """Atomically decide one alert, in this order:

        1. ``key`` is within its window: refused (reason ``"duplicate"``), one
           more suppressed repeat of the key.
        2. ``group`` is given, ``limit > 0`` and the group already granted
           ``limit`` claims in its current window: refused (reason ``"limit"``),
           one more limit refusal of the group, and *no* entry for ``key`` (so a
           flood of distinct keys in one group adds at most ``limit`` entries
           per window).
        3. Granted: ``key`` is taken for ``window`` seconds (returning its
           previous window's count and time), and the group counts one more
           grant. A group's window starts at its first grant and lasts
           ``window``; a grant returns and resets the group's limit refusals
           as :attr:`Claim.group_suppressed`.

        With ``group=None`` or ``limit=0`` only steps 1 and 3 apply to the key.
        """

    def purge(self) -> int:
        """Drop expired entries; returns how many (stores with TTLs return 0)."""
        return 0

    def check(self) -> str:
        """Reach the store without claiming anything: a one-line description,
        or an exception saying why it cannot be used (``flask perfwatch check``)."""
        return f"{self!r} (no check available for this store)"

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
