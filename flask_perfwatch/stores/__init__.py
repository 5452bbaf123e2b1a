"""Dedupe stores, chosen by the scheme of ``PERFWATCH_STORE``."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .._registry import STORES
from .base import DUPLICATE, LIMIT, Claim, Store
from .memory import MemoryStore

if TYPE_CHECKING:
    from ..config import Config

def create_store(config: Config, *, prefix: str) -> Store:
    """The store ``config.store`` names (a URL whose scheme :class:`Config`
    validated against :data:`STORES`); the store class checks the rest of the
    URL and raises :class:`ConfigError` for a bad one."""
    cls: type[Store] = STORES.load(urlsplit(config.store).scheme.lower())
    return cls.from_url(config.store, prefix=prefix, config=config)


__all__ = ["DUPLICATE", "LIMIT", "STORES", "Claim", "MemoryStore", "Store",
           "create_store"]
