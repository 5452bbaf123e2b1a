"""``webhook``: each alert as one JSON POST to any URL, signed per the
`Standard Webhooks <https://www.standardwebhooks.com/>`_ specification when a
``whsec_...`` secret is configured.

The body is ``{"type", "timestamp", "data"}``: ``type`` is
``perfwatch.slow_request`` or ``perfwatch.request_hung``, ``timestamp`` when
the request ended (or, for a hung one, when it was seen still running), and
``data`` is :meth:`~flask_perfwatch.metrics.PerformanceMetrics.to_dict` plus
``summary`` (the one-line summary) and ``report_url`` (the report's link,
when ``PERFWATCH_REPORT_BASE_URL`` gives one) or else ``report_path`` (the
local file). The body is built once per alert: every attempt sends the same
bytes.

Headers: ``PERFWATCH_WEBHOOK_HEADERS`` (values treated as secrets), then
``webhook-id`` (``msg_`` + the alert's id; the same on every attempt, so a
receiver can drop a repeat it already processed), and, with a secret,
``webhook-timestamp`` and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``). Every attempt is
signed afresh, with a fresh timestamp: receivers reject timestamps older than
five minutes, and a retry may come later than that after a long
``Retry-After``.

Outcomes: 2xx is sent; 410 Gone disables this notifier until the app
restarts (the receiver said the endpoint is gone for good: one log line says
so, and later alerts fail at once without a request); 408, 429 and 5xx,
timeouts and dropped connections are retried (``Retry-After`` honoured);
any other status is permanent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .. import _fork
from .._redact import REDACTED, mask_text, redact_url
from ..config import key_name
from ..exceptions import ConfigError, NotifierError
from ._http import HTTPClient, Response, check_status, scrubbed_failure
from .base import Notifier
from .delivery import Permanent, Retryable, RetryPolicy, deliver

if TYPE_CHECKING:
    from ..config import Config
    from ..metrics import PerformanceMetrics
    from ..report import Report

logger = logging.getLogger(__name__)

#: The prefix of a Standard Webhooks signing secret.
SECRET_PREFIX = "whsec_"
#: Header names the notifier sets itself; ``PERFWATCH_WEBHOOK_HEADERS`` may not.
RESERVED_HEADERS = frozenset({"content-type", "content-length", "transfer-encoding", "host",
                              "webhook-id", "webhook-timestamp", "webhook-signature"})


def event_type(metrics: PerformanceMetrics) -> str:
    """``perfwatch.request_hung`` for a request still running, else
    ``perfwatch.slow_request`` (``data.kind`` tells a request from a watched
    function)."""
    return "perfwatch.request_hung" if metrics.hung else "perfwatch.slow_request"


def event_time(metrics: PerformanceMetrics) -> str:
    """When the slowness was seen, ISO 8601 in UTC with a ``Z``: the end of a
    slow request, or the moment a hung one was found still running. Derived
    from the metrics, so every attempt (and every channel) says the same."""
    moment = (metrics.started_at + timedelta(seconds=metrics.duration)).astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def masked(value: Any) -> Any:
    """``value`` (JSON-like) with every string masked by value
    (:func:`~flask_perfwatch._redact.mask_text`). The metrics are redacted when
    built; this also covers ``extra``, which receivers and custom code fill.
    Idempotent: already redacted text comes back unchanged."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {mask_text(str(k)): masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(item) for item in value]
    return value

def signing_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (padding optional, as the
    Standard Webhooks libraries accept). :class:`ValueError` saying what is
    wrong, never quoting the secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"the value does not start with {SECRET_PREFIX!r}")
    encoded = secret[len(SECRET_PREFIX):]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the part after {SECRET_PREFIX!r} is not base64") from None
    if not key:
        raise ValueError(f"the part after {SECRET_PREFIX!r} is empty")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">`` (the
    Standard Webhooks ``webhook-signature`` value)."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def build_event(metrics: PerformanceMetrics, report: Report) -> dict[str, Any]:
    """The JSON body of one alert (see the module docstring)."""
    data = masked(metrics.to_dict())
    data["summary"] = metrics.summary()
    if report.url is not None:
        data["report_url"] = report.url
    elif report.path is not None:
        data["report_path"] = str(report.path)
    return {"type": event_type(metrics), "timestamp": event_time(metrics), "data": data}


class WebhookNotifier(Notifier):
    """POSTs each alert as JSON to ``PERFWATCH_WEBHOOK_URL``, signed with
    ``PERFWATCH_WEBHOOK_SECRET`` (Standard Webhooks) when set, with the extra
    ``PERFWATCH_WEBHOOK_HEADERS``; retried ``PERFWATCH_WEBHOOK_RETRIES``
    times, each request bounded by ``PERFWATCH_WEBHOOK_TIMEOUT``.

    Nothing is sent at construction; :meth:`check` cannot test an arbitrary
    URL without delivering something, so it only describes the settings.
    """

    name = "webhook"
    links_report = True

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        sources = config.sources
        if config.webhook_url is None:
            raise ConfigError.invalid(key_name("webhook_url"), None,
                                      sources.get("webhook_url", "default"),
                                      "an http(s) URL to POST alerts to (needed by the "
                                      "webhook notifier)")
        self.url: str = config.webhook_url
        self._key: bytes | None = None
        if config.webhook_secret is not None:
            try:
                self._key = signing_key(config.webhook_secret)
            except ValueError as exc:
                raise ConfigError.invalid(key_name("webhook_secret"), REDACTED,
                                          sources.get("webhook_secret", "default"),
                                          f"'{SECRET_PREFIX}' followed by the base64 of the "
                                          f"key, as Standard Webhooks secrets are ({exc})"
                                          ) from None
        reserved = sorted(name for name, _ in config.webhook_headers
                          if name.lower() in RESERVED_HEADERS)
        if reserved:
            raise ConfigError.invalid(key_name("webhook_headers"),
                                      {name: REDACTED for name, _ in config.webhook_headers},
                                      sources.get("webhook_headers", "default"),
                                      f"headers other than {', '.join(reserved)} (the webhook "
                                      "notifier sets those itself)")
        self.headers: dict[str, str] = dict(config.webhook_headers)
        #: What must never show in a message: header values and the secret.
        self._secrets = tuple(v for v in (*self.headers.values(), config.webhook_secret) if v)
        self.policy = RetryPolicy(retries=config.webhook_retries,
                                  budget=min(60.0, config.notifier_timeout * 0.8))
        # urllib3 logs the request path at DEBUG: keep the header values, the
        # signing secret and a query string (tokens often live there) out of it
        self.client = HTTPClient(timeout=config.webhook_timeout,
                                 secrets=(*self._secrets, urlsplit(self.url).query))
        #: Seconds since the epoch for ``webhook-timestamp`` (tests turn it back).
        self.clock: Callable[[], float] = time.time
        #: Why this endpoint is no longer used (a 410), or None.
        self.disabled: str | None = None
        self._lock = threading.Lock()
        _fork.register(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # the HTTP client re-creates its own pool

    # -- Notifier interface ----------------------------------------------------

    def send(self, metrics: PerformanceMetrics, report: Report) -> None:
        if self.disabled is not None:
            raise NotifierError(f"webhook: {self.disabled}", retryable=False)
        body = json.dumps(build_event(metrics, report), ensure_ascii=False,
                          separators=(",", ":"), default=str).encode("utf-8")
        msg_id = "msg_" + metrics.id

        def attempt(number: int) -> Response:
            try:
                response = self.client.post(self.url, what="webhook POST", body=body,
                                            headers=self._headers_for(msg_id, body))
                if response.status == 410:
                    raise Permanent(self._gone())
                check_status(response, "webhook POST")
            except (Retryable, Permanent) as failure:
                raise scrubbed_failure(failure, self._secrets) from None
            return response

        response = deliver("webhook", attempt, self.policy, alert_id=metrics.id)
        logger.debug("webhook %s delivered alert %s (HTTP %d)", msg_id, metrics.id[:8],
                     response.status)

    def check(self) -> str:
        if self.disabled is not None:
            raise NotifierError(f"webhook: {self.disabled}", retryable=False)
        signed = "signed (Standard Webhooks)" if self._key is not None else "unsigned"
        extra = f", with {len(self.headers)} extra header(s)" if self.headers else ""
        return (f"POSTs {signed} JSON to {redact_url(self.url)}{extra}; not contacted "
                "(any POST would deliver an alert)")

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact_url(self.url)}>"

    # -- helpers -----------------------------------------------------------------

    def _headers_for(self, msg_id: str, body: bytes) -> dict[str, str]:
        """This attempt's headers: signed now, with a fresh timestamp."""
        timestamp = int(self.clock())
        headers = {**self.headers, "Content-Type": "application/json",
                   "webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, msg_id, timestamp, body)
        return headers

    def _gone(self) -> str:
        """Disable the endpoint after a 410 (logged once); the reason."""
        reason = (f"the endpoint {redact_url(self.url)} answered 410 Gone, so the webhook "
                  "notifier is disabled until the app restarts")
        with self._lock:
            first = self.disabled is None
            self.disabled = reason
        if first:
            logger.error("%s; later alerts fail without a request. Fix %s and restart.",
                         reason, key_name("webhook_url"))
        return reason
