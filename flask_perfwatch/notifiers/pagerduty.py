"""``pagerduty``: each alert as a PagerDuty Events API v2 ``trigger``.

The event's ``dedup_key`` is ``perfwatch-`` + the key flask_perfwatch's
dedupe stage grouped the alert by (:attr:`~flask_perfwatch.metrics.PerformanceMetrics.dedupe_key`),
so PagerDuty groups into one incident what flask_perfwatch groups, and a
retried trigger (after a timeout or a connection dropped once the event was
accepted) joins the incident the first one opened instead of opening another.

``payload``: ``summary`` (the one-line summary, at most 1024 characters),
``source`` (the host), ``severity`` (``PERFWATCH_PAGERDUTY_SEVERITY``),
``timestamp``, ``component`` (the endpoint), ``class`` (``slow_request``,
``request_hung`` or ``endpoint_regressed``) and ``custom_details`` (the
redacted metrics, with the CPU time, trace id and SQL statements when known,
plus the report's local path when it has no link). ``links`` holds the report's link
when ``PERFWATCH_REPORT_BASE_URL`` gives one.

Outcomes: 202 (any 2xx) is accepted; 400 (an invalid event, a wrong routing
key) and any other 4xx is permanent; 429 and 5xx, timeouts and dropped
connections are retried with backoff (PagerDuty sends no ``Retry-After``;
one is honoured if present). The routing key is a secret: it is never in a
log line, an error or the ``check`` line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import TYPE_CHECKING, Any

from .._redact import REDACTED, mask_text, redact_url
from .._util import safe_text
from ..config import key_name
from ..exceptions import ConfigError
from ._http import HTTPClient, Response, check_status, scrubbed_failure
from .base import Notifier
from .delivery import Permanent, Retryable, RetryPolicy, deliver
from .webhook import event_time, masked

if TYPE_CHECKING:
    from ..config import Config
    from ..metrics import PerformanceMetrics
    from ..report import Report

logger = logging.getLogger(__name__)

#: PagerDuty's limit on ``payload.summary``, in characters.
MAX_SUMMARY = 1024
#: PagerDuty's limit on ``dedup_key``, in characters.
MAX_DEDUP_KEY = 255
#: PagerDuty refuses events over 512 KiB; ``custom_details`` is cut down to
#: stay below this many bytes.
MAX_EVENT_BYTES = 500_000
#: Events API v2 routing (integration) keys: 32 letters and digits. A REST API
#: key (20 characters, often with ``+`` or ``-``) is a common mistake.
ROUTING_KEY_RE = re.compile(r"[A-Za-z0-9]{32}")
DEDUP_PREFIX = "perfwatch-"
#: ``client`` of every event (PagerDuty shows it as the event's origin).
CLIENT = "flask-perfwatch"
#: Left out of ``custom_details`` when the event would be too big.
_BULKY = ("headers", "params", "queries", "extra")


def dedup_key(metrics: PerformanceMetrics) -> str:
    """``perfwatch-`` + the dedupe stage's key; without one (a notifier used
    outside the pipeline), a digest of kind, method and endpoint, marked
    ``hung:`` for a hung request as the pipeline marks it."""
    key = metrics.dedupe_key
    if not key:
        raw = json.dumps([metrics.kind, metrics.method or "", metrics.name], ensure_ascii=False)
        key = ("hung:" if metrics.hung else "") + hashlib.sha256(
            raw.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return (DEDUP_PREFIX + key)[:MAX_DEDUP_KEY]


def cut_summary(text: str, limit: int = MAX_SUMMARY) -> str:
    """``text`` in at most ``limit`` characters, ending in ``…`` when cut."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def build_event(metrics: PerformanceMetrics, report: Report, *, routing_key: str,
                severity: str) -> dict[str, Any]:
    """The Events API v2 ``trigger`` for one alert (see the module docstring)."""
    details = masked(metrics.to_dict())
    details["summary"] = metrics.summary()
    if report.url is None and report.path is not None:
        details["report_path"] = str(report.path)
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key(metrics),
        "client": CLIENT,
        "payload": {
            "summary": cut_summary(metrics.summary()),
            "source": metrics.host or CLIENT,  # required, never blank
            "severity": severity,
            "timestamp": event_time(metrics),
            "component": metrics.name,
            "class": _event_class(metrics),
            "custom_details": details,
        },
    }
    if report.url is not None:
        event["links"] = [{"href": report.url, "text": "Profile report"}]
    return event


def _event_class(metrics: PerformanceMetrics) -> str:
    if metrics.kind == "regression":
        return "endpoint_regressed"
    return "request_hung" if metrics.hung else "slow_request"


def encode(event: dict[str, Any]) -> bytes:
    """The event as UTF-8 JSON, ``custom_details`` cut down (headers, params,
    SQL statements and ``extra`` left out, saying so) if it would pass
    PagerDuty's size limit."""
    body = json.dumps(event, ensure_ascii=False, default=str).encode("utf-8")
    if len(body) <= MAX_EVENT_BYTES:
        return body
    details = event["payload"]["custom_details"]
    left_out = [name for name in _BULKY if details.pop(name, None) is not None]
    details["left_out"] = (f"{', '.join(left_out)}: the event would have been over "
                           "PagerDuty's size limit (see the report)")
    return json.dumps(event, ensure_ascii=False, default=str).encode("utf-8")


class PagerDutyNotifier(Notifier):
    """Triggers a PagerDuty event per alert, through the Events API v2
    (``PERFWATCH_PAGERDUTY_ROUTING_KEY``, ``_URL``, ``_SEVERITY``,
    ``_RETRIES``, ``_TIMEOUT``).

    Nothing is sent at construction. :meth:`check` contacts nothing: the
    Events API has no call that tests a routing key without creating an
    event, and its read APIs need a separate REST API token.
    """

    name = "pagerduty"
    links_report = True

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        key = config.pagerduty_routing_key
        if key is None or ROUTING_KEY_RE.fullmatch(key) is None:
            raise ConfigError.invalid(
                key_name("pagerduty_routing_key"), None if key is None else REDACTED,
                config.sources.get("pagerduty_routing_key", "default"),
                "the 32-character integration key of an Events API v2 integration (a "
                "service's Integrations tab; a REST API key will not do)")
        self._routing_key = key
        self.url = config.pagerduty_url
        self.severity = config.pagerduty_severity
        self.policy = RetryPolicy(retries=config.pagerduty_retries,
                                  budget=min(60.0, config.notifier_timeout * 0.8))
        self.client = HTTPClient(timeout=config.pagerduty_timeout)

    # -- Notifier interface ----------------------------------------------------

    def send(self, metrics: PerformanceMetrics, report: Report) -> None:
        event = build_event(metrics, report, routing_key=self._routing_key,
                            severity=self.severity)
        body = encode(event)
        secrets = (self._routing_key,)

        def attempt(number: int) -> Response:
            try:
                response = self.client.post(self.url, what="PagerDuty event", body=body,
                                            headers={"Content-Type": "application/json"})
                if response.status == 400:
                    raise Permanent(f"PagerDuty rejected the event (400): "
                                    f"{_invalid_event(response)}")
                check_status(response, "PagerDuty event")
            except (Retryable, Permanent) as failure:
                raise scrubbed_failure(failure, secrets) from None
            return response

        response = deliver("pagerduty", attempt, self.policy, alert_id=metrics.id)
        logger.debug("PagerDuty accepted alert %s as %s (HTTP %d)", metrics.id[:8],
                     event["dedup_key"], response.status)

    def check(self) -> str:
        return (f"triggers {self.severity} events on {redact_url(self.url)} with routing key "
                f"{REDACTED} (set, 32 characters); not contacted (the Events API cannot test "
                "a key without creating an event)")

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact_url(self.url)}>"


def _invalid_event(response: Response) -> str:
    """PagerDuty's ``message`` and ``errors`` of a 400, else the quoted body
    (masked and escaped; the caller scrubs the routing key)."""
    answer = response.json()
    if not isinstance(answer, dict):
        return response.quoted() or "no explanation"
    parts = [str(answer.get("message") or answer.get("status") or "invalid event")]
    errors = answer.get("errors")
    if isinstance(errors, list) and errors:
        parts.append("; ".join(str(e) for e in errors[:5]))
    text = safe_text(mask_text(": ".join(parts)))
    return text[:300] + ("..." if len(text) > 300 else "")
