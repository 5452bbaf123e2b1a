"""``redis://`` and ``rediss://``: a dedupe store shared by several hosts.

Needs the optional ``redis`` driver: ``pip install 'flask-perfwatch[redis]'``.
URL: ``redis://[[user]:password@]host:port/db`` (``rediss://`` for TLS).
Options of ours: ``?retain=1d`` sets how long an entry outlives its window
(below) and ``?max_entries=100000`` caps the entries of one prefix. Any other
option redis-py reads from a URL's query string (``socket_timeout=2``, ...) is
passed to it.

Key layout, for a prefix ``<p>`` (``PERFWATCH_STORE_PREFIX``, by default the
app's name; ``%``, ``{`` and ``}`` in it are written ``%25``, ``%7B``, ``%7D``):

``perfwatch:{<p>}:k:<key>``
    hash ``expires`` (end of the key's window, ms), ``count`` (repeats
    suppressed in it), ``alerted`` (when it alerted, ms).
``perfwatch:{<p>}:g:<group>``
    hash ``expires`` (end of the group's window, ms), ``granted`` (claims
    granted in it), ``count`` (claims the limit refused since the last grant).
    Only claims with a limit touch it.
``perfwatch:{<p>}:index``
    sorted set of the two kinds of keys above, scored by the end of their
    window: what bounds the prefix.

``{<p>}`` is a Redis Cluster hash tag: every key of one prefix lives in one
slot, so the Lua script that claims may touch them all (it names the key, the
index and the group in ``KEYS``; the entries it evicts share their slot).

The script claims atomically (one script runs at a time on a redis server),
using the server's clock so that hosts with skewed clocks agree. Every hash
expires ``retain`` seconds (default one day) after its window, so redis purges
it by itself while the count of a recurring problem still reaches its next
alert. Each granted claim also trims the index: members expired more than
``retain`` ago go first, then, beyond ``max_entries``, those closest to expiry
are deleted with their hashes (at most :data:`EVICT_BATCH` per claim, so one
script never blocks the server long). Evictions are logged at WARNING at most
once a minute per process.

Nothing connects at start-up: the URL and the driver are checked at
``init_app`` and the first claim connects. Claims run on the delivery thread,
with short socket timeouts (1 s by default) and one immediate retry, so an
outage costs the thread little; the pipeline then alerts without dedupe (fail
open) and redis-py reconnects by itself once the server is back. In a forked
child (:mod:`flask_perfwatch._fork`) the connection pool forgets the parent's
connections without closing them, after re-creating its locks: another thread
may have held one at the moment of the fork.

No description of this store (``repr``, errors, ``flask perfwatch check``)
shows the URL's password: it goes through
:func:`flask_perfwatch._redact.redact_url`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .. import _fork
from .._redact import REDACTED, redact_url
from .._util import parse_duration
from ..config import key_name
from ..exceptions import ConfigError
from .base import DUPLICATE, LIMIT, Claim, Store

if TYPE_CHECKING:
    from redis import Redis
    from redis.commands.core import Script

    from ..config import Config

logger = logging.getLogger(__name__)

#: URL schemes of this store (``rediss`` is redis over TLS); checked by
#: :meth:`RedisStore.from_url`, which may be called directly.
SCHEMES = ("redis", "rediss")
#: Default socket (connect and read) timeout, seconds.
SOCKET_TIMEOUT = 1.0
#: Default time an expired entry is kept for its suppressed count, seconds.
RETAIN = 86400.0
#: Default cap on the entries (keys and groups) of one prefix.
MAX_ENTRIES = 100_000
#: Entries one claim deletes at most (expired, then evicted).
EVICT_BATCH = 100
#: Seconds between two eviction warnings of one store.
EVICT_LOG_INTERVAL = 60.0

#: Options this store reads from the URL (the rest go to redis-py).
_OPTIONS = ("retain", "max_entries")
#: Query options whose values are secrets, so never shown in an error.
_SECRET_OPTION = re.compile(r"pass|secret|token|key|auth|credential", re.IGNORECASE)

# KEYS[1] the key's hash, KEYS[2] the prefix's index, KEYS[3] the group's hash
# (only with a limit). ARGV: now in ms ("" = the server's clock), window ms,
# retain ms, limit (0 = none), max_entries, evict batch. Returns {granted,
# suppressed, previous alert in ms or nil, reason or nil, group_suppressed,
# entries evicted}.
_CLAIM_SCRIPT = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local window = tonumber(ARGV[2])
local retain = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local batch = tonumber(ARGV[6])
local ttl = window + retain
local index = KEYS[2]
local entry = redis.call('HMGET', KEYS[1], 'expires', 'count', 'alerted')
local expires = tonumber(entry[1])
if expires and expires > now then
  return {0, redis.call('HINCRBY', KEYS[1], 'count', 1), entry[3], 'duplicate', 0, 0}
end
local group_suppressed = 0
if limit > 0 then
  local group = redis.call('HMGET', KEYS[3], 'expires', 'granted', 'count')
  local group_expires = tonumber(group[1])
  if group_expires and group_expires > now then
    if (tonumber(group[2]) or 0) >= limit then
      return {0, redis.call('HINCRBY', KEYS[3], 'count', 1), false, 'limit', 0, 0}
    end
    redis.call('HINCRBY', KEYS[3], 'granted', 1)
  else
    redis.call('HSET', KEYS[3], 'expires', now + window, 'granted', 1)
    redis.call('PEXPIRE', KEYS[3], ttl)
    redis.call('ZADD', index, now + window, KEYS[3])
  end
  group_suppressed = tonumber(group[3]) or 0
  redis.call('HSET', KEYS[3], 'count', 0)
end
redis.call('HSET', KEYS[1], 'expires', now + window, 'count', 0, 'alerted', now)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', index, now + window, KEYS[1])
local old = redis.call('ZRANGEBYSCORE', index, '-inf', now - retain, 'LIMIT', 0, batch)
if #old > 0 then
  redis.call('DEL', unpack(old))
  redis.call('ZREM', index, unpack(old))
end
local evicted = 0
local over = redis.call('ZCARD', index) - tonumber(ARGV[5])
if over > 0 then
  local victims = redis.call('ZRANGE', index, 0, math.min(over, batch) - 1)
  redis.call('DEL', unpack(victims))
  redis.call('ZREM', index, unpack(victims))
  evicted = #victims
end
if redis.call('PTTL', index) < ttl then
  redis.call('PEXPIRE', index, ttl)
end
return {1, tonumber(entry[2]) or 0, entry[3], false, group_suppressed, evicted}
"""


def _import_driver(url: str, source: str) -> Any:
    try:
        import redis
    except ImportError:
        raise ConfigError(
            f"{key_name('store')}={_describe(url)!r} (from {source}) needs the redis driver: "
            "pip install 'flask-perfwatch[redis]'",
            key=key_name("store"), value=_describe(url), source=source,
            expected="the redis package installed") from None
    return redis


def _hash_tag(prefix: str) -> str:
    """``prefix`` as the text of a hash tag: never empty, never closed early."""
    if not prefix:
        raise ValueError("a redis store needs a non-empty prefix")
    return prefix.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


class RedisStore(Store):
    """Dedupe entries as redis hashes, claimed by a Lua script.

    :param client: a ``redis.Redis`` (its connection pool is used lazily).
    :param prefix: namespace of this app's keys (``PERFWATCH_STORE_PREFIX``).
    :param retain: seconds a hash outlives its window, carrying its count.
    :param max_entries: entries (keys and groups) of this prefix kept at most;
        beyond it the entries closest to expiry are evicted.
    :param clock: Unix time to use instead of the redis server's clock (tests).
    :param url: for messages only (its password is redacted).
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "perfwatch",
        retain: float = RETAIN,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] | None = None,
        url: str = "redis://",
    ) -> None:
        if max_entries < 2:
            raise ValueError(f"max_entries must be at least 2 (a key and its group), "
                             f"not {max_entries}")
        self.client = client
        self.prefix = prefix
        self.retain = retain
        self.max_entries = max_entries
        self.clock = clock
        self.url = _describe(url)
        self._base = f"perfwatch:{{{_hash_tag(prefix)}}}:"
        self._script: Script = client.register_script(_CLAIM_SCRIPT)
        self._evicted = 0
        self._next_evict_log = float("-inf")
        _fork.register(self)

    @classmethod
    def from_url(cls, url: str, *, prefix: str, config: Config | None = None,
                 **kwargs: Any) -> RedisStore:
        """Build from ``redis://`` / ``rediss://`` without connecting."""
        source = config.sources.get("store", "default") if config is not None else "URL"
        driver = _import_driver(url, source)
        secrets = _secrets_in(url)

        def bad(problem: str | None = None) -> ConfigError:
            # our own problems never quote the URL's parts: a password with an
            # unencoded "/" or "#" would show up as a "port" or a "database"
            expected = "a URL like redis://[:password@]host:port/db or rediss://..."
            if problem:
                expected += f" ({_scrub(problem, secrets)})"
            return ConfigError.invalid(key_name("store"), _describe(url), source, expected)

        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise bad("the port is not a number") from None
        if parts.scheme.lower() not in SCHEMES:
            raise bad()
        if not parts.hostname:
            raise bad("no host")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise bad("the database after the host is not a number")
        try:
            query = parse_qsl(parts.query, keep_blank_values=True)
            options = _our_options(query)
            url_for_driver = urlunsplit(parts._replace(
                query=urlencode([(k, v) for k, v in query if k not in _OPTIONS])))
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
            # redis-py's message may quote an option's value: hide the secret ones
            raise bad(str(exc)) from None
        return cls(client, prefix=prefix, url=url, **options)

    def key(self, key: str) -> str:
        """The redis key of a dedupe key: ``perfwatch:{<prefix>}:k:<key>``."""
        return f"{self._base}k:{key}"

    def group_key(self, group: str) -> str:
        """The redis key of a group: ``perfwatch:{<prefix>}:g:<group>``."""
        return f"{self._base}g:{group}"

    @property
    def index_key(self) -> str:
        """The sorted set bounding this prefix: ``perfwatch:{<prefix>}:index``."""
        return f"{self._base}index"

    def claim(self, key: str, window: float, *, group: str | None = None,
              limit: int = 0) -> Claim:
        now = "" if self.clock is None else str(int(self.clock() * 1000))
        keys = [self.key(key), self.index_key]
        if group is not None and limit > 0:
            keys.append(self.group_key(group))
        else:
            limit = 0
        granted, suppressed, previous, reason, group_suppressed, evicted = self._script(
            keys=keys,
            args=[now, max(int(window * 1000), 1), max(int(self.retain * 1000), 0), limit,
                  self.max_entries, EVICT_BATCH],
        )
        if evicted:
            self._log_eviction(int(evicted))
        previous_at = None if previous is None else int(previous) / 1000
        if granted:
            return Claim(granted=True, suppressed=int(suppressed), previous_at=previous_at,
                         group_suppressed=int(group_suppressed))
        if isinstance(reason, bytes):
            reason = reason.decode()
        return Claim(granted=False, suppressed=int(suppressed), previous_at=previous_at,
                     reason=LIMIT if reason == LIMIT else DUPLICATE)

    def __len__(self) -> int:
        """Entries of this prefix, keys and groups together (one ``ZCARD``)."""
        return int(self.client.zcard(self.index_key))

    def check(self) -> str:
        self.client.ping()
        return f"{self.url} answers PING (prefix {self.prefix!r})"

    def close(self) -> None:
        self.client.close()
        self.client.connection_pool.disconnect()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} prefix={self.prefix!r}>"

    def _after_fork_in_child(self) -> None:
        """Forget the parent's connections without closing them, as redis-py's
        own pid check does with ``ConnectionPool.reset()``; first give the pool
        fresh locks, since ``reset()`` takes one another thread may have held
        at the moment of the fork (its pid check would then wait 5 s and raise
        ``ChildDeadlockedError``, or wait for ever inside ``reset()``)."""
        pool = self.client.connection_pool
        for name in ("_fork_lock", "_lock"):
            old = getattr(pool, name, None)
            if old is not None:
                reentrant = isinstance(old, type(threading.RLock()))
                setattr(pool, name, threading.RLock() if reentrant else threading.Lock())
        pool.reset()
        self._next_evict_log = float("-inf")

    def _log_eviction(self, count: int) -> None:
        self._evicted += count
        now = time.monotonic()
        if now >= self._next_evict_log:
            self._next_evict_log = now + EVICT_LOG_INTERVAL
            logger.warning("%r: more than %d dedupe entries; evicted %d closest to expiry so "
                           "far in this process (they may alert again early)", self,
                           self.max_entries, self._evicted)


def _our_options(query: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``retain`` and ``max_entries`` from the URL's query; ValueError if bad."""
    options: dict[str, Any] = {}
    for name, value in query:
        if name == "retain":
            try:
                options["retain"] = parse_duration(value)
            except ValueError:
                raise ValueError("option retain as a duration such as '1d' or 3600") from None
        elif name == "max_entries":
            if not (value.isascii() and value.isdigit()) or int(value) < 2:
                raise ValueError("option max_entries as an integer >= 2")
            options["max_entries"] = int(value)
    return options


def _secrets_in(url: str) -> list[str]:
    """The secret texts of a URL, raw and decoded, longest first: its password
    and the values of secret-named options. Read leniently (a password with an
    unencoded ``/`` or ``#`` still counts), erring towards hiding too much."""
    found: set[str] = set()
    rest = url.partition("://")[2]
    if "@" in rest:
        password = rest.rpartition("@")[0].partition(":")[2]
        found |= {password, unquote(password)}
    for name, value in parse_qsl(url.partition("?")[2], keep_blank_values=True):
        if _SECRET_OPTION.search(name):
            found |= {value, unquote(value)}
    return sorted((s for s in found if s), key=len, reverse=True)


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def _describe(url: str) -> str:
    """``url`` for a message, a repr or a log line: :func:`redact_url`, and
    then any secret text it missed masked as well."""
    return _scrub(redact_url(url), _secrets_in(url))
