"""What is known about one slow request or function call.

Redaction happens here, when the metrics are built: nothing secret ever
reaches a signal receiver, a report, a file name or a message.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, unquote_plus, urlencode

from ._redact import Redactor
from ._util import safe_text

if TYPE_CHECKING:
    from .profiling.base import Profile

#: Hostile requests cannot blow up memory or reports: at most this many params
#: and headers are kept, each value cut to MAX_VALUE characters.
MAX_ITEMS = 100
MAX_VALUE = 1000
MAX_URL = 4000
#: A query pair longer than this is not decoded (see :func:`parse_query`).
MAX_PAIR = 8 * 1024
#: Characters of a query string scanned at most.
MAX_QUERY_SCAN = 128 * 1024
TOO_LONG = "[REDACTED: too long to scan]"
MAX_METHOD = 32

Params = dict[str, str | list[str]]


def _cut(text: str, limit: int = MAX_VALUE) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def wsgi_text(value: Any) -> str:
    """A WSGI environ string (bytes smuggled as latin-1, PEP 3333) as the UTF-8
    text it encodes; bytes that are not UTF-8 become U+FFFD, never an error."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return str(value)
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # not a WSGI string: already text
        return value.encode("utf-8", "replace").decode("utf-8", "replace")


def parse_query(query_string: str | bytes) -> tuple[list[tuple[str, str]], bool]:
    """``(name, value)`` pairs of a raw query string, tolerant of any bytes,
    and whether any were cut. Only the first :data:`MAX_ITEMS` pairs, and at
    most :data:`MAX_QUERY_SCAN` characters in all, are decoded, so a megabyte
    of query string costs no more than a small one. A pair longer than
    :data:`MAX_PAIR` is not decoded at all: its value reads
    :data:`TOO_LONG`, since a secret in it could not be masked reliably from
    a part of it (a URL cut before its ``@`` hides its password's end)."""
    text = wsgi_text(query_string)
    pairs: list[tuple[str, str]] = []
    pos, end = 0, min(len(text), MAX_QUERY_SCAN)
    while pos < end:
        amp = text.find("&", pos)
        stop = len(text) if amp < 0 else amp
        if stop > pos:
            if len(pairs) >= MAX_ITEMS:
                return pairs, True
            raw = text[pos:stop]
            if len(raw) > MAX_PAIR:
                name = raw[:MAX_VALUE].partition("=")[0]
                pairs.append((unquote_plus(name, errors="replace"), TOO_LONG))
            else:
                name, _, value = raw.partition("=")
                pairs.append((unquote_plus(name, errors="replace"),
                              unquote_plus(value, errors="replace")))
        pos = stop + 1
    return pairs, pos < len(text)


def clean(text: str, limit: int = MAX_VALUE) -> str:
    """Request text as it may be shown anywhere: control characters escaped, cut."""
    return _cut(safe_text(text), limit)


def redact_params(redactor: Redactor, pairs: Iterable[tuple[str, str]]) -> Params:
    """Redacted, size-capped, escaped params from ``(name, value)`` pairs."""
    params: Params = {}
    for count, (raw_name, raw_value) in enumerate(pairs):
        if count >= MAX_ITEMS:
            break
        name = clean(redactor.mask(raw_name))
        value = clean(redactor.value(raw_name, raw_value))
        existing = params.get(name)
        if existing is None:
            params[name] = value
        elif isinstance(existing, list):
            existing.append(value)
        else:
            params[name] = [existing, value]
    return params


def redact_headers(redactor: Redactor, pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    result: dict[str, str] = {}
    for count, (name, value) in enumerate(pairs):
        if count >= MAX_ITEMS:
            break
        result[clean(name)] = clean(redactor.value(name, wsgi_text(value)))
    return result


def redacted_url(base_url: str, params: Params) -> str:
    """``base_url`` plus the (already redacted) params as a query string."""
    if not params:
        return _cut(base_url, MAX_URL)
    query = urlencode(list(_pairs(params)), safe="[]/:")
    return _cut(f"{base_url}?{query}", MAX_URL)


def _pairs(params: Params) -> Iterable[tuple[str, str]]:
    for name, value in params.items():
        if isinstance(value, list):
            for item in value:
                yield name, item
        else:
            yield name, value


@lru_cache(maxsize=1)
def _hostname() -> str:
    return socket.gethostname()


@dataclass
class PerformanceMetrics:
    """One slow request (``kind="request"``) or watched call (``kind="function"``).

    ``params``, ``url`` and ``headers`` are already redacted. ``profile`` is
    None when profiling is off or no sample was taken.
    """

    kind: Literal["request", "function", "regression"]
    name: str
    duration: float
    threshold: float
    started_at: datetime
    method: str | None = None
    url: str | None = None
    path: str | None = None
    params: Params = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    status_code: int | None = None
    error: str | None = None
    profile: Profile | None = field(default=None, repr=False, compare=False)
    hung: bool = False
    #: Similar alerts suppressed by dedupe since the previous alert of this key.
    suppressed: int = 0
    #: When the previous alert of this key went out (if ``suppressed``).
    suppressed_since: datetime | None = None
    #: Alerts of this endpoint that ``PERFWATCH_ENDPOINT_ALERT_LIMIT`` suppressed
    #: (whatever their params) since its previous alert.
    endpoint_suppressed: int = 0
    #: The key the dedupe stage grouped this alert by (a hex digest, prefixed
    #: ``hung:`` for a hung request): repeats of the same slow request share
    #: it, so a channel with its own grouping (PagerDuty's ``dedup_key``)
    #: groups what flask_perfwatch groups. None until the pipeline sets it.
    dedupe_key: str | None = None
    params_truncated: bool = False
    #: CPU seconds the request's thread used during it (None: not measured,
    #: e.g. not sampled, gevent, the ``off`` engine).
    cpu_time: float | None = None
    #: The OpenTelemetry trace and span of the request (lower-case hex), when
    #: one was recording.
    trace_id: str | None = None
    span_id: str | None = None
    #: SQL run during the request or call: ``{"statement", "duration",
    #: "calls"}`` per normalised statement (literals replaced by ``?``),
    #: slowest first. Never holds parameter values.
    queries: list[dict[str, Any]] = field(default_factory=list)
    #: For ``kind="regression"``: ``{"factor", "baseline": {...}, "recent":
    #: {...}}``, each window ``{"count", "p50", "p95", "p99", "max", "slow"}``.
    regression: dict[str, Any] | None = None
    host: str = field(default_factory=_hostname)
    pid: int = field(default_factory=os.getpid)
    thread: str = field(default_factory=lambda: threading.current_thread().name)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: Free for receivers and custom notifiers; must stay JSON-serialisable.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cpu_time is None and self.profile is not None:
            self.cpu_time = self.profile.cpu_time

    @property
    def endpoint(self) -> str:
        """Alias of :attr:`name`, the Flask endpoint for requests."""
        return self.name

    @property
    def over_by(self) -> float:
        """How many times the threshold the duration is (2.0 = twice as slow)."""
        return self.duration / self.threshold if self.threshold else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of everything but the profile itself."""
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "method": self.method,
            "url": self.url,
            "path": self.path,
            "params": {k: list(v) if isinstance(v, list) else v for k, v in self.params.items()},
            "params_truncated": self.params_truncated,
            "headers": dict(self.headers),
            "status_code": self.status_code,
            "error": self.error,
            "duration": self.duration,
            "threshold": self.threshold,
            "started_at": self.started_at.isoformat(),
            "hung": self.hung,
            "suppressed": self.suppressed,
            "suppressed_since": self.suppressed_since.isoformat() if self.suppressed_since
            else None,
            "endpoint_suppressed": self.endpoint_suppressed,
            "dedupe_key": self.dedupe_key,
            "host": self.host,
            "pid": self.pid,
            "thread": self.thread,
            "has_profile": self.profile is not None,
            "cpu_time": self.cpu_time,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "queries": [dict(q) for q in self.queries],
            "regression": self.regression,
            "extra": self.extra,
        }

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as JSON; keyword arguments go to :func:`json.dumps`."""
        kwargs.setdefault("default", str)
        return json.dumps(self.to_dict(), **kwargs)

    def summary(self) -> str:
        """One line for logs and message titles."""
        if self.kind == "regression":
            factor = (self.regression or {}).get("factor")
            baseline = self.threshold / factor if isinstance(factor, int | float) \
                and not isinstance(factor, bool) and factor > 0 else None
            was = f" (baseline p95 {baseline:.3f}s)" if baseline is not None else ""
            return (f"Regression: endpoint {self.name} p95 {self.duration:.3f}s is over "
                    f"{self.threshold:.3f}s{was}")
        what = f"{self.method} {self.url or self.path}" if self.method else self.name
        label = "still running after" if self.hung else "took"
        tail = ""
        if self.kind == "request":
            tail = f" -> {self.status_code}" if self.status_code is not None else ""
            if self.name and self.name != what:
                what = f"{what} [{self.name}]"
        else:
            what = f"{self.name}()" + (f" in {self.method} {self.path}" if self.method else "")
        if self.error:
            tail += f" ({self.error})"
        return (f"{'Slow' if not self.hung else 'Hung'} {self.kind} {what} {label} "
                f"{self.duration:.3f}s (threshold {self.threshold:.3f}s){tail}")


def utcnow() -> datetime:
    """Now, as an aware UTC datetime (the form of :attr:`PerformanceMetrics.started_at`)."""
    return datetime.now(UTC)


def request_details(redactor: Redactor, environ: Mapping[str, Any], *,
                    headers: bool = True) -> dict[str, Any]:
    """The redacted request fields of :class:`PerformanceMetrics`, read from a
    WSGI environ whatever it holds: bytes that are not UTF-8, control
    characters, thousands of params, odd methods. Secrets are masked by name
    and by value, control characters escaped, sizes capped. Never raises for
    request data (Flask's own ``request.args`` raises for a query string that
    is not UTF-8, so it is not used)."""
    pairs, truncated = parse_query(environ.get("QUERY_STRING", ""))
    params = redact_params(redactor, pairs)
    path = request_path(redactor, environ)
    return {
        "method": clean(wsgi_text(environ.get("REQUEST_METHOD", "GET")), MAX_METHOD),
        "url": redacted_url(_base_url(redactor, environ), params),
        "path": path,
        "params": params,
        "params_truncated": truncated,
        "headers": redact_headers(redactor, environ_headers(environ)) if headers else {},
    }


def request_path(redactor: Redactor, environ: Mapping[str, Any]) -> str:
    """SCRIPT_NAME + PATH_INFO as text, secrets masked, escaped and cut."""
    path = wsgi_text(environ.get("SCRIPT_NAME", "")) + wsgi_text(environ.get("PATH_INFO", ""))
    return clean(redactor.mask(path or "/"), MAX_URL)


def _base_url(redactor: Redactor, environ: Mapping[str, Any]) -> str:
    scheme = wsgi_text(environ.get("wsgi.url_scheme", "http"))
    host = wsgi_text(environ.get("HTTP_HOST") or "")
    if not host:
        host = wsgi_text(environ.get("SERVER_NAME", "localhost"))
        port = wsgi_text(environ.get("SERVER_PORT", ""))
        if port and (scheme, port) not in (("http", "80"), ("https", "443")):
            host = f"{host}:{port}"
    host = host.rpartition("@")[2]  # never userinfo, whatever the client sent
    path = wsgi_text(environ.get("SCRIPT_NAME", "")) + wsgi_text(environ.get("PATH_INFO", ""))
    url = f"{scheme}://{host}{quote(path or '/', safe=_PATH_SAFE)}"
    return clean(redactor.mask(url), MAX_URL)


_PATH_SAFE = "/:@!$&'()*+,;=-._~%"


def environ_headers(environ: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """Request headers of a WSGI environ, named as HTTP spells them."""
    for key, value in environ.items():
        if not isinstance(key, str):
            continue
        if key.startswith("HTTP_"):
            yield key[5:].replace("_", "-").title(), wsgi_text(value)
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            yield key.replace("_", "-").title(), wsgi_text(value)
