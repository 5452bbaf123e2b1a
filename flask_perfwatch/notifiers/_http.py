"""HTTP for the webhook-style channels (teams, discord, webhook, pagerduty),
on urllib3: one connection pool per notifier (re-created in a forked child),
timeouts on connect and read, no redirects, and urllib3's own retries off,
because :mod:`.delivery` decides what is retried (some channels re-sign a
retry or read the wait from the body, which urllib3's ``Retry`` cannot).

Every failure becomes a :class:`~.delivery.Retryable` or
:class:`~.delivery.Permanent` whose reason never contains the URL (a
webhook URL is a credential) nor the text of urllib3's exceptions (which
quote it). urllib3's own DEBUG lines quote the request path too: a client
given ``secrets`` scrubs them from those lines while it lives.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError, TimeoutError

from .. import _fork
from .._redact import REDACTED, mask_text
from .._util import safe_text
from .delivery import Permanent, Retryable, parse_retry_after

#: Longest piece of a server's answer quoted in a reason.
MAX_QUOTED = 300
#: Shorter "secrets" are not scrubbed (replacing every "a" would ruin a text
#: and protect nothing).
MIN_SCRUBBED = 4


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret replaced by ``[REDACTED]``: for text a
    server or a library may echo (an error body, urllib3's log line) holding
    a credential whose shape no masking rule knows (a webhook URL's token, a
    header value, a routing key)."""
    for secret in secrets:
        if len(secret) >= MIN_SCRUBBED and secret in text:
            text = text.replace(secret, REDACTED)
    return text


def scrubbed_failure(failure: Retryable | Permanent, secrets: Iterable[str]
                     ) -> Retryable | Permanent:
    """The same outcome, its reason scrubbed of ``secrets``."""
    reason = scrub(failure.reason, secrets)
    if isinstance(failure, Retryable):
        return Retryable(reason, retry_after=failure.retry_after,
                         maybe_delivered=failure.maybe_delivered)
    return Permanent(reason)


class _LogScrubber(logging.Filter):
    """Scrubs the secrets of every live client from urllib3's own log lines
    (``"POST /api/webhooks/1/<token> HTTP/1.1" 204``), so that an app logging
    at DEBUG does not log a credential. One filter, shared by the clients."""

    LOGGERS = ("urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.retry")

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: dict[int, tuple[str, ...]] = {}
        self._keys = itertools.count()

    def add(self, secrets: tuple[str, ...]) -> int:
        """Scrub ``secrets`` from now on; returns the key :meth:`remove` takes."""
        with self._lock:
            if not self._secrets:
                for name in self.LOGGERS:
                    logging.getLogger(name).addFilter(self)
            key = next(self._keys)
            self._secrets[key] = secrets
        return key

    def remove(self, key: int) -> None:
        with self._lock:
            self._secrets.pop(key, None)
            if not self._secrets:
                for name in self.LOGGERS:
                    logging.getLogger(name).removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # not ours to judge; logging reports it
            return True
        with self._lock:
            secrets = [s for group in self._secrets.values() for s in group]
        scrubbed = scrub(message, secrets)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


_log_scrubber = _LogScrubber()


def _user_agent() -> str:
    from .. import __version__

    return f"flask-perfwatch/{__version__}"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    data: bytes

    def json(self) -> Any:
        """The body as JSON, or None if it is not JSON."""
        try:
            return json.loads(self.data)
        except ValueError:
            return None

    def detail(self, message: str | None, secrets: Iterable[str]) -> str:
        """``": <message>"`` for a reason: the error ``message`` a channel read
        from the body (None: a short piece of the body itself, e.g. a proxy's
        HTML), scrubbed of ``secrets`` (an error may quote a credential),
        escaped and cut; ``""`` when there is nothing to say."""
        text = self.quoted() if message is None else message
        text = safe_text(scrub(text, secrets)).strip()
        if len(text) > MAX_QUOTED:
            text = text[:MAX_QUOTED] + "…"
        return f": {text}" if text else ""

    def quoted(self) -> str:
        """A short, masked, escaped piece of the body for a message."""
        text = self.data[:MAX_QUOTED * 2].decode("utf-8", "replace").strip()
        text = safe_text(mask_text(text))
        return text[:MAX_QUOTED] + ("..." if len(text) > MAX_QUOTED else "")


class HTTPClient:
    """POSTs for one notifier. ``timeout`` applies to connecting and to each read."""

    def __init__(self, *, timeout: float, verify: bool = True,
                 secrets: Iterable[str] = ()) -> None:
        self.timeout = timeout
        self.verify = verify
        self.secrets = tuple(s for s in secrets if s)
        self._pool = self._new_pool()
        if self.secrets:
            # dropped at close(), or when the client is collected unclosed
            self._unscrub = weakref.finalize(self, _log_scrubber.remove,
                                             _log_scrubber.add(self.secrets))
        _fork.register(self)

    def _new_pool(self) -> urllib3.PoolManager:
        return urllib3.PoolManager(
            retries=False, timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout),
            cert_reqs="CERT_REQUIRED" if self.verify else "CERT_NONE")

    def _after_fork_in_child(self) -> None:
        # pooled connections belong to the parent
        self._pool = self._new_pool()

    def get(self, url: str, *, what: str) -> Response:
        """One GET (a channel's ``check()``); failures as for :meth:`post`."""
        return self.request("GET", url, what=what)

    def post(self, url: str, *, what: str, body: bytes | None = None,
             json_body: Any = None, fields: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> Response:
        """One POST. Raises :class:`Retryable` for a timeout or a connection
        that failed or was dropped; returns the answer whatever its status
        (see :func:`check_status`). ``what`` names the call in reasons."""
        return self.request("POST", url, what=what, body=body, json_body=json_body,
                            fields=fields, headers=headers)

    def request(self, method: str, url: str, *, what: str, body: bytes | None = None,
             json_body: Any = None, fields: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> Response:
        headers = dict(headers or {})
        # urllib3 drops the pool's default headers when a request passes its own
        headers.setdefault("User-Agent", _user_agent())
        try:
            if fields is not None:
                answer = self._pool.request(method, url, fields=fields, headers=headers,
                                            redirect=False)
            else:
                if json_body is not None:
                    body = json.dumps(json_body, ensure_ascii=False, default=str
                                      ).encode("utf-8")
                    headers.setdefault("Content-Type", "application/json")
                answer = self._pool.request(method, url, body=body, headers=headers,
                                            redirect=False)
        except NewConnectionError as exc:  # a ConnectTimeoutError subclass: first
            raise Retryable(f"{what}: could not connect ({_cause_name(exc)})",
                            maybe_delivered=False) from None
        except TimeoutError:
            raise Retryable(f"{what}: no answer within {self.timeout:g}s") from None
        except ProtocolError as exc:
            raise Retryable(f"{what}: the connection was dropped "
                            f"({_cause_name(exc)})") from None
        except HTTPError as exc:
            raise Retryable(f"{what}: could not connect ({_cause_name(exc)})") from None
        return Response(answer.status, {k.lower(): v for k, v in answer.headers.items()},
                        answer.data or b"")

    def close(self) -> None:
        self._pool.clear()
        if self.secrets:
            self._unscrub()


def _cause_name(exc: BaseException) -> str:
    """The innermost exception's type name (``ConnectionRefusedError``): it says
    what happened without quoting the URL, as urllib3's messages do."""
    inner: BaseException = exc
    seen = 0
    while seen < 8:
        nxt = getattr(inner, "reason", None) or inner.__cause__ or inner.__context__
        if not isinstance(nxt, BaseException) or nxt is inner:
            break
        inner, seen = nxt, seen + 1
    return type(inner).__name__


def check_status(response: Response, what: str) -> None:
    """The policy for plain HTTP APIs: 2xx is sent; 429 and 408 and 5xx are
    retryable (honouring ``Retry-After``); any other status is permanent."""
    status = response.status
    if 200 <= status < 300:
        return
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if status == 429:
        raise Retryable(f"{what}: rate limited (429)", retry_after=retry_after)
    if status == 408 or status >= 500:
        raise Retryable(f"{what}: HTTP {status} {response.quoted()}".rstrip(),
                        retry_after=retry_after)
    raise Permanent(f"{what}: HTTP {status} {response.quoted()}".rstrip())
