"""Dedupe stores, chosen by the scheme of ``PERFWATCH_STORE``."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .._util import import_string
from ..config import key_name
from ..exceptions import ConfigError
from .base import DUPLICATE, LIMIT, Claim, Store
from .memory import MemoryStore

if TYPE_CHECKING:
    from ..config import Config

#: URL scheme -> ``module:Class`` of the store (imported only when used, so an
#: optional driver is only needed by whoever picks that store).
STORE_SCHEMES: dict[str, str] = {
    "memory": "flask_perfwatch.stores.memory:MemoryStore",
    "sqlite": "flask_perfwatch.stores.sqlite:SQLiteStore",
    "redis": "flask_perfwatch.stores.redis:RedisStore",
    "rediss": "flask_perfwatch.stores.redis:RedisStore",
}


def create_store(config: Config, *, prefix: str) -> Store:
    """The store ``config.store`` names; :class:`ConfigError` if it cannot be built."""
    scheme = urlsplit(config.store).scheme.lower()
    try:
        cls: type[Store] = import_string(STORE_SCHEMES[scheme])
    except (KeyError, ValueError) as exc:
        raise ConfigError.invalid(key_name("store"), config.store,
                                  config.sources.get("store", "default"),
                                  f"a URL with scheme {' / '.join(STORE_SCHEMES)} ({exc})"
                                  ) from None
    return cls.from_url(config.store, prefix=prefix, config=config)


__all__ = ["DUPLICATE", "LIMIT", "STORE_SCHEMES", "Claim", "MemoryStore", "Store",
           "create_store"]
