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
from urllib.parse import parse_qsl, urlencode

if TYPE_CHECKING:
    from .profiling.base import Profile

REDACTED = "[REDACTED]"
#: Hostile requests cannot blow up memory or reports: at most this many params
#: and headers are kept, each value cut to MAX_VALUE characters.
MAX_ITEMS = 100
MAX_VALUE = 1000
MAX_URL = 4000

Params = dict[str, str | list[str]]


class Redactor:
    """Decides which names are secret: case-insensitive substring match, with
    ``-`` and ``_`` treated alike (so ``api_key`` covers ``X-Api-Key``)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(_norm(p) for p in patterns if p)
        self.is_secret = lru_cache(maxsize=1024)(self._is_secret)

    def _is_secret(self, name: str) -> bool:
        normalised = _norm(name)
        return any(p in normalised for p in self.patterns)

    def params(self, pairs: Iterable[tuple[str, str]]) -> tuple[Params, bool]:
        """Redacted, size-capped params from ``(name, value)`` pairs; the flag
        says whether anything was cut."""
        params: Params = {}
        truncated = False
        for count, (name, value) in enumerate(pairs):
            if count >= MAX_ITEMS:
                truncated = True
                break
            name = _cut(name)
            value = REDACTED if self.is_secret(name) else _cut(value)
            if name in params:
                existing = params[name]
                if isinstance(existing, list):
                    existing.append(value)
                else:
                    params[name] = [existing, value]
            else:
                params[name] = value
        return params, truncated

    def headers(self, pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
        result: dict[str, str] = {}
        for count, (name, value) in enumerate(pairs):
            if count >= MAX_ITEMS:
                break
            result[_cut(name)] = REDACTED if self.is_secret(name) else _cut(value)
        return result


def _norm(name: str) -> str:
    return name.lower().replace("-", "_")


def _cut(text: str, limit: int = MAX_VALUE) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


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


def parse_query(query_string: str | bytes) -> list[tuple[str, str]]:
    """``(name, value)`` pairs of a raw query string, tolerant of bad input."""
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    return parse_qsl(query_string, keep_blank_values=True, max_num_fields=None,
                     errors="replace")


@lru_cache(maxsize=1)
def _hostname() -> str:
    return socket.gethostname()


@dataclass
class PerformanceMetrics:
    """One slow request (``kind="request"``) or watched call (``kind="function"``).

    ``params``, ``url`` and ``headers`` are already redacted. ``profile`` is
    None when profiling is off or no sample was taken.
    """

    kind: Literal["request", "function"]
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
    params_truncated: bool = False
    host: str = field(default_factory=_hostname)
    pid: int = field(default_factory=os.getpid)
    thread: str = field(default_factory=lambda: threading.current_thread().name)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: Free for receivers and custom notifiers; must stay JSON-serialisable.
    extra: dict[str, Any] = field(default_factory=dict)

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
            "host": self.host,
            "pid": self.pid,
            "thread": self.thread,
            "has_profile": self.profile is not None,
            "extra": self.extra,
        }

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as JSON; keyword arguments go to :func:`json.dumps`."""
        kwargs.setdefault("default", str)
        return json.dumps(self.to_dict(), **kwargs)

    def summary(self) -> str:
        """One line for logs and message titles."""
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
    return datetime.now(UTC)


def request_details(
    redactor: Redactor,
    *,
    method: str,
    base_url: str,
    path: str,
    query_pairs: Iterable[tuple[str, str]],
    header_pairs: Iterable[tuple[str, str]],
) -> dict[str, Any]:
    """The redacted request fields of :class:`PerformanceMetrics`."""
    params, truncated = redactor.params(query_pairs)
    return {
        "method": method,
        "url": redacted_url(base_url, params),
        "path": _cut(path, MAX_URL),
        "params": params,
        "params_truncated": truncated,
        "headers": redactor.headers(header_pairs),
    }


def werkzeug_request_details(redactor: Redactor, req: Any, *, headers: bool = True
                             ) -> dict[str, Any]:
    """:func:`request_details` of a parsed werkzeug (Flask) request object."""
    return request_details(
        redactor, method=req.method, base_url=req.base_url, path=req.path,
        query_pairs=req.args.items(multi=True),
        header_pairs=req.headers.items() if headers else ())


def environ_headers(environ: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """Request headers of a WSGI environ, named as HTTP spells them."""
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            yield key[5:].replace("_", "-").title(), str(value)
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            yield key.replace("_", "-").title(), str(value)
