"""``redis://`` and ``rediss://``: a dedupe store shared by several hosts.

Needs the optional ``redis`` driver: ``pip install 'flask-perfwatch[redis]'``.
URL: ``redis://[[user]:password@]host:port/db`` (``rediss://`` for TLS).
``?retain=1d`` sets how long an entry outlives its window (below); any other
option redis-py reads from a URL's query string (``socket_timeout=2``, ...) is
passed to it.

Each key is one small hash, ``perfwatch:<prefix>:<key>`` holding the end of
its window, the repeats suppressed in it and when it alerted. A Lua script
claims it atomically (one script runs at a time on a redis server), using the
server's clock so that hosts with skewed clocks agree. The hash expires
``retain`` seconds (default one day) after its window, so redis purges it by
itself while the count of a recurring problem still reaches its next alert.

Nothing connects at start-up: the URL and the driver are checked at
``init_app`` and the first claim connects. Claims run on the delivery thread,
with short socket timeouts (1 s by default) and one immediate retry, so an
outage costs the thread little; the pipeline then alerts without dedupe (fail
open) and redis-py reconnects by itself once the server is back. The
connection pool is fork-safe (redis-py re-creates it in a child process).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._util import redact_url
from ..config import parse_duration
from ..exceptions import ConfigError
from .base import Claim, Store

if TYPE_CHECKING:
    from redis import Redis
    from redis.commands.core import Script

    from ..config import Config

logger = logging.getLogger(__name__)

#: Default socket (connect and read) timeout, seconds.
SOCKET_TIMEOUT = 1.0
#: Default time an expired entry is kept for its suppressed count, seconds.
RETAIN = 86400.0

# KEYS[1]: the key. ARGV: now in ms ("" = the server's clock), window in ms,
# retain in ms. Returns {granted, suppressed, previous alert in ms or nil}.
_CLAIM_SCRIPT = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local window = tonumber(ARGV[2])
local entry = redis.call('HMGET', KEYS[1], 'expires', 'count', 'alerted')
local expires = tonumber(entry[1])
if expires and expires > now then
  local count = redis.call('HINCRBY', KEYS[1], 'count', 1)
  return {0, count, entry[3]}
end
redis.call('HSET', KEYS[1], 'expires', now + window, 'count', 0, 'alerted', now)
redis.call('PEXPIRE', KEYS[1], window + tonumber(ARGV[3]))
if expires then
  return {1, tonumber(entry[2]) or 0, entry[3]}
end
return {1, 0, false}
"""


def _import_driver(url: str, source: str) -> Any:
    try:
        import redis
    except ImportError:
        raise ConfigError(
            f"PERFWATCH_STORE={redact_url(url)!r} (from {source}) needs the redis driver: "
            "pip install 'flask-perfwatch[redis]'",
            key="PERFWATCH_STORE", value=redact_url(url), source=source,
            expected="the redis package installed") from None
    return redis


class RedisStore(Store):
    """Dedupe entries as redis hashes, claimed by a Lua script.

    :param client: a ``redis.Redis`` (its connection pool is used lazily).
    :param prefix: namespace of this app's keys (``PERFWATCH_STORE_PREFIX``).
    :param retain: seconds a hash outlives its window, carrying its count.
    :param clock: Unix time to use instead of the redis server's clock (tests).
    :param url: for messages only (its password is redacted).
    """

    schemes = ("redis", "rediss")

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "perfwatch",
        retain: float = RETAIN,
        clock: Callable[[], float] | None = None,
        url: str = "redis://",
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.retain = retain
        self.clock = clock
        self.url = redact_url(url)
        self._script: Script = client.register_script(_CLAIM_SCRIPT)

    @classmethod
    def from_url(cls, url: str, *, prefix: str, config: Config | None = None,
                 **kwargs: Any) -> RedisStore:
        """Build from ``redis://`` / ``rediss://`` without connecting."""
        source = config.sources.get("store", "default") if config is not None else "URL"
        driver = _import_driver(url, source)
        parts = urlsplit(url)
        expected = "a URL like redis://[:password@]host:port/db or rediss://..."
        if parts.scheme.lower() not in cls.schemes:
            raise ConfigError.invalid("PERFWATCH_STORE", redact_url(url), source, expected)
        try:
            parts.port  # noqa: B018 - raises ValueError for a bad port
            if not parts.hostname:
                raise ValueError("no host")
            db = parts.path.strip("/")
            if db and not db.isdigit():
                raise ValueError(f"database {db!r} is not a number")
            query = parse_qsl(parts.query, keep_blank_values=True)
            retain = RETAIN
            for name, value in query:
                if name == "retain":
                    retain = parse_duration(value)
            url_for_driver = urlunsplit(parts._replace(
                query=urlencode([(k, v) for k, v in query if k != "retain"])))
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            client = driver.Redis.from_url(
                url_for_driver,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT,
                # one immediate retry: a pooled connection broken by a server
                # restart is replaced at once, a dead server costs one more try
                retry=Retry(NoBackoff(), 1),
                **kwargs,
            )
            # build (not connect) one connection now, so that an unknown URL
            # option is an error at init_app rather than an endless outage
            pool = client.connection_pool
            pool.connection_class(**pool.connection_kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigError.invalid("PERFWATCH_STORE", redact_url(url), source,
                                      f"{expected} ({exc})") from None
        return cls(client, prefix=prefix, retain=retain, url=url)

    def key(self, key: str) -> str:
        """The redis key of a dedupe key: ``perfwatch:<prefix>:<key>``."""
        return f"perfwatch:{self.prefix}:{key}"

    def claim(self, key: str, window: float) -> Claim:
        now = "" if self.clock is None else str(int(self.clock() * 1000))
        granted, suppressed, previous = self._script(
            keys=[self.key(key)],
            args=[now, max(int(window * 1000), 1), max(int(self.retain * 1000), 0)],
        )
        previous_at = None if previous is None else int(previous) / 1000
        return Claim(granted=bool(granted), suppressed=int(suppressed), previous_at=previous_at)

    def close(self) -> None:
        self.client.close()
        self.client.connection_pool.disconnect()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} prefix={self.prefix!r}>"
