"""Wire-level stand-ins for the event channels, on :mod:`http_standin`:

- :class:`WebhookReceiver`: a receiver of Standard Webhooks, as a careful
  one is written: it verifies the signature with the maintained
  ``standardwebhooks`` package (which refuses a timestamp more than five
  minutes old or new), answers 400 to what does not verify, and processes
  each ``webhook-id`` once (a repeat is acknowledged, not processed again).
- :class:`PagerDutyStandIn`: the Events API v2 ``/v2/enqueue`` endpoint,
  validating an event as PagerDuty does (its JSON answers and 202/400
  statuses) and grouping triggers into incidents by ``dedup_key`` as the
  real service does: a trigger whose key has an open incident joins it.
"""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from http_standin import Answer, Hit, StandIn, json_answer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def new_secret() -> str:
    """A fresh Standard Webhooks secret (``whsec_`` + base64 of 32 random bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class WebhookReceiver(StandIn):
    """``POST /hooks/<name>``. With ``secret``, every delivery must verify."""

    def __init__(self, secret: str | None = None) -> None:
        super().__init__()
        self.secret = secret
        #: Deliveries answered 2xx, repeats included: (hit, parsed body).
        self.deliveries: list[tuple[Hit, Any]] = []
        #: Events processed, once per ``webhook-id`` (what a receiver acts on).
        self.events: dict[str, Any] = {}
        #: Deliveries refused: (hit, why).
        self.rejected: list[tuple[Hit, str]] = []
        self.routes["hook"] = ("POST", re.compile(r"^/hooks/[^/]+$"), self._receive)

    @property
    def url(self) -> str:
        return f"{self.base_url}/hooks/perf"

    def _receive(self, hit: Hit, match: re.Match[str]) -> Answer:
        headers = {k.lower(): v for k, v in hit.headers.items()}
        if not headers.get("content-type", "").startswith("application/json"):
            return self._reject(hit, "expected application/json")
        if self.secret is not None:
            try:
                payload = Webhook(self.secret).verify(hit.body, headers)
            except WebhookVerificationError as exc:
                return self._reject(hit, str(exc))
        else:
            payload = hit.json()
        msg_id = headers.get("webhook-id")
        if not msg_id:
            return self._reject(hit, "missing webhook-id")
        with self._lock:
            self.deliveries.append((hit, payload))
            if msg_id in self.events:
                return json_answer(200, {"ok": True, "duplicate": True})
            self.events[msg_id] = payload
        return json_answer(200, {"ok": True})

    def _reject(self, hit: Hit, why: str) -> Answer:
        with self._lock:
            self.rejected.append((hit, why))
        return json_answer(400, {"error": why})


@dataclass
class Incident:
    dedup_key: str
    events: list[dict[str, Any]] = field(default_factory=list)


SEVERITIES = ("critical", "warning", "error", "info")
ACTIONS = ("trigger", "acknowledge", "resolve")


def invalid(*errors: str) -> Answer:
    """PagerDuty's answer to an event it refuses."""
    return json_answer(400, {"status": "invalid event", "message": "Event object is invalid",
                             "errors": list(errors)})


class PagerDutyStandIn(StandIn):
    """``POST /v2/enqueue``; :attr:`routing_key` is the one integration key
    it knows (any other well-formed key is refused as PagerDuty does)."""

    def __init__(self) -> None:
        super().__init__()
        self.routing_key = secrets.token_hex(16)  # 32 characters, like a real key
        #: Accepted events, in order (a retry that was accepted twice is here twice).
        self.events: list[dict[str, Any]] = []
        #: Open incidents by dedup_key (triggers with the same key merge).
        self.incidents: dict[str, Incident] = {}
        self.routes["enqueue"] = ("POST", re.compile(r"^/v2/enqueue$"), self._enqueue)

    @property
    def url(self) -> str:
        return f"{self.base_url}/v2/enqueue"

    def _enqueue(self, hit: Hit, match: re.Match[str]) -> Answer:
        try:
            event = hit.json()
        except ValueError:
            return invalid("Event object is not valid JSON")
        if not isinstance(event, dict):
            return invalid("Event object is invalid")
        errors = self._errors(event)
        if errors:
            return invalid(*errors)
        key = event.get("dedup_key") or uuid.uuid4().hex
        with self._lock:
            self.events.append(event)
            self.incidents.setdefault(key, Incident(key)).events.append(event)
        return json_answer(202, {"status": "success", "message": "Event processed",
                                 "dedup_key": key})

    def _errors(self, event: dict[str, Any]) -> list[str]:
        errors = []
        key = event.get("routing_key")
        if not isinstance(key, str) or len(key) != 32:
            errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
        if isinstance(key, str) and not key.isalnum():
            errors.append("'routing_key' cannot contain non-alphanumeric characters.")
        if errors:
            return errors
        if key != self.routing_key:
            return ["Invalid routing key"]
        if event.get("event_action") not in ACTIONS:
            errors.append("'event_action' is invalid (must be one of the following: "
                          "'trigger', 'acknowledge' or 'resolve')")
        dedup = event.get("dedup_key")
        if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
            errors.append("'dedup_key' is too long (maximum is 255 characters)")
        payload = event.get("payload")
        if not isinstance(payload, dict):
            return [*errors, "'payload' is missing or not an object"]
        summary = payload.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            errors.append("'payload.summary' is missing or blank")
        elif len(summary) > 1024:
            errors.append("'payload.summary' is too long (maximum is 1024 characters)")
        if not isinstance(payload.get("source"), str) or not payload["source"].strip():
            errors.append("'payload.source' is missing or blank")
        if payload.get("severity") not in SEVERITIES:
            errors.append("'payload.severity' is invalid (must be one of the following: "
                          "'critical', 'warning', 'error' or 'info')")
        stamp = payload.get("timestamp")
        if stamp is not None:
            try:
                datetime.fromisoformat(str(stamp))
            except ValueError:
                errors.append("'payload.timestamp' is invalid")
        links = event.get("links", [])
        if not isinstance(links, list) or not all(
                isinstance(link, dict) and isinstance(link.get("href"), str) for link in links):
            errors.append("'links' is invalid")
        return errors
