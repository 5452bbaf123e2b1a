"""``teams``: one Adaptive Card per alert in a Microsoft Teams channel,
posted to a Teams *Workflows* webhook (``PERFWATCH_TEAMS_WEBHOOK_URL``; the
legacy Office 365 connectors are retired and refused at ``init_app``).

The card goes out in the envelope the Workflows "Send webhook alerts to a
channel" template expects (``{"type": "message", "attachments": [{
"contentType": "application/vnd.microsoft.card.adaptive", ...}]}``). A card
cannot carry a file, so the report is linked: an ``Action.OpenUrl`` button
to :attr:`Report.url <flask_perfwatch.report.Report.url>` when
``PERFWATCH_REPORT_BASE_URL`` is set, else the local path as text.

Why the card is built the way it is:

- Every value that comes from the request (URL, endpoint, error, host) is a
  ``TextRun`` of a ``RichTextBlock``: text runs are never read as Markdown,
  so ``**bold**`` or ``[a link](https://evil.example)`` in a URL shows as
  typed. ``TextBlock`` (Markdown) only ever holds our own fixed words.
- Teams drops a message over about 28 KB *after* the workflow accepted it
  (the webhook still answers 202), so the JSON is measured before it is
  sent and long values are cut until it fits :data:`MAX_PAYLOAD_BYTES`.

Delivery goes through :func:`~flask_perfwatch.notifiers.delivery.deliver`:
202 (or 200) is sent; 429 and 5xx and transport failures are retried
(honouring ``Retry-After``); 400, 401, 403 and 404 are permanent.

**At least once.** A Workflows webhook has no idempotency key and no call
that reads back what was posted. When an attempt's answer is lost (the
connection dropped, or no answer within ``PERFWATCH_TEAMS_TIMEOUT``) the
workflow may or may not have run; the card is sent again, so a lost alert
becomes, at worst, a duplicate. The re-sent card says it may repeat an
earlier one and both carry the same alert id. A connection that could not be
opened at all cannot have delivered anything and is retried without the note.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

from .._redact import secret_url
from .._util import safe_text
from ..config import key_name
from ..exceptions import ConfigError
from ._http import HTTPClient, Response
from ._message import Fact, alert_facts, headline
from .base import Notifier
from .delivery import Permanent, Retryable, RetryPolicy, deliver, parse_retry_after

if TYPE_CHECKING:
    from ..config import Config
    from ..metrics import PerformanceMetrics
    from ..report import Report

logger = logging.getLogger(__name__)

#: Teams' limit on a posted message is about 28 KB (28,672 bytes) of card
#: JSON; the flow wraps the card further, so the request stays well below.
MAX_PAYLOAD_BYTES = 24 * 1024
#: Longest value (URL, endpoint, error...) shown before it is cut; halved
#: until the card fits :data:`MAX_PAYLOAD_BYTES`.
MAX_VALUE_LENGTH = 2000
#: The shortest a value is cut to when the card is still too large.
MIN_VALUE_LENGTH = 32

CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_VERSION = "1.4"

#: Hosts of the retired Office 365 connectors ("Incoming Webhook").
_LEGACY_HOSTS = ("webhook.office.com", "outlook.office.com", "outlook.office365.com")


class TeamsNotifier(Notifier):
    """Posts each alert as one Adaptive Card to a Teams Workflows webhook.

    Configured by ``PERFWATCH_TEAMS_WEBHOOK_URL`` (the whole URL is a
    credential: its ``sig=`` signs every call, so it is never shown beyond
    its scheme and host), ``PERFWATCH_TEAMS_RETRIES`` and
    ``PERFWATCH_TEAMS_TIMEOUT``. Nothing is sent at construction.
    """

    name = "teams"
    links_report = True

    #: The card JSON is kept under this many bytes (see :data:`MAX_PAYLOAD_BYTES`).
    max_payload_bytes: int = MAX_PAYLOAD_BYTES

    #: Statuses a Workflows webhook answers on success: 202 Accepted (the
    #: flow was started), 200 from flows that answer themselves.
    ok_statuses: ClassVar[frozenset[int]] = frozenset({200, 201, 202, 204})

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.url = _validated_url(config)
        self._secrets = _url_secrets(self.url)
        self.timeout = config.teams_timeout
        #: How this channel retries; tests replace ``policy.sleep``.
        self.policy = RetryPolicy(retries=config.teams_retries,
                                  budget=min(60.0, config.notifier_timeout * 0.8))
        self._client = HTTPClient(timeout=self.timeout, secrets=self._secrets)

    # -- Notifier interface ----------------------------------------------------

    def send(self, metrics: PerformanceMetrics, report: Report) -> None:
        state = _Delivery()

        def attempt(number: int) -> Response:
            body = build_payload(metrics, report, resent=state.maybe_delivered,
                                 max_bytes=self.max_payload_bytes)
            try:
                response = self._client.post(
                    self.url, what="posting the card to the workflow", body=body,
                    headers={"Content-Type": "application/json; charset=utf-8"})
            except Retryable as failure:
                if failure.maybe_delivered:
                    state.maybe_delivered = True
                raise
            self._classify(response)
            return response

        response = deliver("Teams", attempt, self.policy, alert_id=metrics.id)
        logger.debug("Teams workflow accepted alert %s (HTTP %d, run %s)", metrics.id[:8],
                     response.status, safe_text(response.headers.get("x-ms-workflow-run-id",
                                                                     "?"))[:80])

    def check(self) -> str:
        """Local only: a Workflows webhook has no read-only call (any request
        to it may run the flow), so nothing is contacted."""
        signed = "sig" in parse_qs(urlsplit(self.url).query)
        note = ("signed (sig=)" if signed else
                "no sig= parameter: a workflow that only tenant users may trigger will "
                "refuse it")
        return (f"Workflows webhook {secret_url(self.url)} set and well-formed, {note}; "
                "not contacted (no read-only call exists; `flask perfwatch test-alert` "
                "posts a card)")

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {secret_url(self.url)}>"

    # -- answers -----------------------------------------------------------------

    def _classify(self, response: Response) -> None:
        status = response.status
        if status in self.ok_statuses:
            return
        detail = self._detail(response)
        key = key_name("teams_webhook_url")
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if status == 429:
            raise Retryable(f"the workflow is throttled (429{detail})", retry_after=retry_after)
        if status == 408 or status >= 500:
            raise Retryable(f"the workflow service failed (HTTP {status}{detail})",
                            retry_after=retry_after)
        if status == 400:
            raise Permanent(f"the workflow rejected the card (400{detail}); check that the "
                            "workflow takes an Adaptive Card (the 'Send webhook alerts to a "
                            "channel' template does)")
        if status in (401, 403):
            raise Permanent(f"the webhook URL was refused ({status}{detail}): its signature "
                            f"is wrong or was regenerated; copy the workflow's URL into {key}")
        if status == 404:
            raise Permanent(f"no such workflow (404{detail}): it was deleted or the URL is "
                            f"wrong; copy the workflow's URL into {key}")
        raise Permanent(f"HTTP {status}{detail}")

    def _detail(self, response: Response) -> str:
        """``": <code>: <message>"`` from a Workflows error body (``{"error":
        {"code", "message"}}``) or a short piece of any other body; secrets
        removed (an error may quote the signature), escaped, cut."""
        payload = response.json()
        error = payload.get("error") if isinstance(payload, dict) else None
        message = None
        if isinstance(error, dict):
            message = ": ".join(str(error[k]) for k in ("code", "message") if error.get(k))
        return response.detail(message, self._secrets)


@dataclass
class _Delivery:
    """One alert across attempts."""

    #: An attempt's answer was lost after the request may have reached the
    #: workflow: the card sent next says it may repeat an earlier one.
    maybe_delivered: bool = False


# --- the card -------------------------------------------------------------------


def build_payload(metrics: PerformanceMetrics, report: Report, *, resent: bool = False,
                  max_bytes: int = MAX_PAYLOAD_BYTES) -> bytes:
    """The request body (UTF-8 JSON): the message envelope around
    :func:`build_card`, with values cut until it is at most ``max_bytes``."""
    limit = MAX_VALUE_LENGTH
    while True:
        card = build_card(metrics, report, resent=resent, value_limit=limit)
        body = json.dumps(envelope(card), ensure_ascii=False, separators=(",", ":")
                          ).encode("utf-8")
        if len(body) <= max_bytes or limit <= MIN_VALUE_LENGTH:
            break
        limit = max(MIN_VALUE_LENGTH, limit // 2)
    if len(body) > max_bytes:  # only a tiny max_bytes gets here: the bare minimum
        card = build_card(metrics, report, resent=resent, value_limit=MIN_VALUE_LENGTH,
                          minimal=True)
        body = json.dumps(envelope(card), ensure_ascii=False, separators=(",", ":")
                          ).encode("utf-8")
    return body


def envelope(card: dict[str, Any]) -> dict[str, Any]:
    """The ``message`` envelope a Workflows webhook takes, around one card."""
    return {"type": "message",
            "attachments": [{"contentType": CARD_CONTENT_TYPE, "contentUrl": None,
                             "content": card}]}


def build_card(metrics: PerformanceMetrics, report: Report, *, resent: bool = False,
               value_limit: int = MAX_VALUE_LENGTH, minimal: bool = False) -> dict[str, Any]:
    """The Adaptive Card (1.4) of one alert: the headline and facts of
    :mod:`._message`, one row a fact. Values from the request are ``TextRun``
    text (never Markdown), cut to ``value_limit`` characters; ``minimal``
    keeps only the brief facts, for a ``max_bytes`` nothing else fits."""
    m = metrics

    def value(text: str) -> str:
        return _cut(" ".join(text.split()), value_limit)

    h = headline(m)
    color = "Attention" if h.hung else "Warning"
    title = _rich(
        _run(f"{h.lead} ", weight="Bolder", size="Medium", color=color),
        _run(value(h.subject), weight="Bolder", size="Medium", fontType="Monospace"),
        _run(f" {h.verb} {h.duration}", weight="Bolder", size="Medium", color=color))
    body: list[dict[str, Any]] = [title]
    if resent:
        body.append({"type": "TextBlock", "wrap": True, "color": "Attention", "size": "Small",
                     "text": "Possibly a repeat: an earlier attempt to post this alert got no "
                             f"answer. Alert {m.id[:8]}."})
    body.extend(_fact_row(fact, value) for fact in alert_facts(m, brief=minimal))
    body.append(_report_row(report, m, value))
    body.append({"type": "TextBlock", "wrap": True, "size": "Small", "isSubtle": True,
                 "text": f"flask_perfwatch alert {m.id[:8]}"})
    card: dict[str, Any] = {
        "$schema": CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "msteams": {"width": "Full"},
        "body": body,
    }
    if report.url:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open the report",
                            "url": report.url}]
    else:
        card["actions"] = []
    return card


def _fact_row(fact: Fact, value: Callable[[str], str]) -> dict[str, Any]:
    """A fact as a row: a value from the request in a monospace ``TextRun``,
    cut by ``value`` (those shrink until the card fits), our own short text in
    a plain one, cut only at :data:`MAX_VALUE_LENGTH`; both shown as typed,
    never as Markdown."""
    if fact.code:
        shown = _mono(value(fact.value))
    else:
        shown = _run(_cut(" ".join(fact.value.split()), MAX_VALUE_LENGTH))
    return _row(fact.label, shown, *([_run(fact.suffix)] if fact.suffix else []))


def _report_row(report: Report, m: PerformanceMetrics,
                value: Callable[[str], str]) -> dict[str, Any]:
    if report.url:
        return _row("Report", _run("open it with the button below"))
    link = report.link()
    if link:
        return _row("Report", _run("kept at "), _mono(value(link)), _run(" on "),
                    _mono(value(m.host)), _run(f" (set {key_name('report_base_url')} for a "
                                               "link)"))
    return _row("Report", _run("not written (see the server's log)"))


def _rich(*inlines: dict[str, Any]) -> dict[str, Any]:
    return {"type": "RichTextBlock", "inlines": list(inlines)}


def _run(text: str, **style: str) -> dict[str, Any]:
    return {"type": "TextRun", "text": text, **style}


def _mono(text: str) -> dict[str, Any]:
    return _run(text, fontType="Monospace")


def _row(label: str, *runs: dict[str, Any]) -> dict[str, Any]:
    block = _rich(_run(f"{label}: ", weight="Bolder"), *runs)
    block["spacing"] = "None"
    return block


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


# --- configuration and secrets ------------------------------------------------------


def _validated_url(config: Config) -> str:
    key = key_name("teams_webhook_url")
    source = config.sources.get("teams_webhook_url", "default")
    url = config.teams_webhook_url
    if url is None:
        raise ConfigError.invalid(key, None, source,
                                  "a Teams Workflows webhook URL (needed by the teams notifier; "
                                  "create one with the 'Send webhook alerts to a channel' "
                                  "workflow template)")
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if any(host == h or host.endswith("." + h) for h in _LEGACY_HOSTS) \
            or "/webhookb2/" in parts.path.lower():
        raise ConfigError.invalid(key, secret_url(url), source,
                                  "a Teams Workflows webhook URL: this is an Office 365 "
                                  "connector URL, and those are retired; create a workflow "
                                  "from the 'Send webhook alerts to a channel' template and "
                                  "use its URL")
    if parts.username or parts.password:
        raise ConfigError.invalid(key, secret_url(url), source,
                                  "a Teams Workflows webhook URL without user:password@")
    return url


def _url_secrets(url: str) -> tuple[str, ...]:
    """What must never be quoted back from a server's answer: the URL, its
    path and query, the ``sig`` value, and every path segment or query value
    long enough to be an id or a signature, as sent and decoded; longest
    first. (Short, common values such as ``1.0`` or ``manual`` are left
    alone: removing them would garble a message without hiding anything.)"""
    parts = urlsplit(url)
    found = {url, parts.path, parts.query}
    found.update(segment for segment in parts.path.split("/") if len(segment) >= 16)
    for name, values in parse_qs(parts.query).items():
        found.update(v for v in values if len(v) >= 16 or (name.lower() == "sig" and v))
    for piece in parts.query.split("&"):
        name, _, raw = piece.partition("=")
        if len(raw) >= 16 or (name.lower() == "sig" and raw):
            found.add(raw)
    found.update([unquote(s) for s in list(found)])
    return tuple(sorted((s for s in found if len(s) >= 4), key=len, reverse=True))

