"""``discord``: one message per alert in a Discord channel, through a channel
webhook (``PERFWATCH_DISCORD_WEBHOOK_URL``), with the HTML report attached.

One delivery is one ``POST`` to the webhook with ``?wait=true`` (so Discord
answers with the message it created, or with the error, instead of a bare
204), as ``multipart/form-data``: ``payload_json`` (``content``,
``allowed_mentions``, ``flags``, ``attachments``) and ``files[0]``, the report.

Why it is built this way:

- ``allowed_mentions: {"parse": []}`` is always sent: a URL such as
  ``/search?q=@everyone`` or ``<@&123>`` can never ping anyone. On top of
  that, every value from the request is shown as inline code (a backtick in
  it becomes U+02CB, a look-alike), so it never renders as Markdown, a
  mention or a link; and ``flags`` suppresses link previews.
- ``content`` is at most 2000 characters: long values are cut until it fits.
- The URL is posted to with an explicit API version (``/api/v10/webhooks/...``
  when the configured URL has none): unversioned calls go to the deprecated
  default API version, whose 429 answers give ``retry_after`` in
  milliseconds rather than seconds.

Faults: 429 waits for the body's ``retry_after`` (float seconds; the
``Retry-After`` header when the body has none) and retries; 5xx and
transport failures are retried with backoff; 401/403/400 are permanent; 413
(the file is too large for the server) sends the message again at once
without the file, with the report's link or local path; 404 (Unknown
Webhook) means the webhook was deleted: this notifier stops using it, says
so once in the log, and fails later alerts at once without a request (Discord
asks clients not to call a 404 webhook again). After a successful post that
used up the rate-limit bucket (``X-RateLimit-Remaining: 0``), the next post
first waits ``X-RateLimit-Reset-After`` instead of running into a 429.

**At least once.** Discord webhooks take no idempotency key (no ``nonce``),
and a message cannot be found again without its id. When an attempt's
answer is lost (a dropped connection, no answer within
``PERFWATCH_DISCORD_TIMEOUT``), Discord may have created the message; it is
sent again, so a lost alert becomes, at worst, a duplicate. The re-sent
message says it may repeat an earlier one and both carry the same alert id.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from .._redact import secret_url
from .._util import safe_text
from ..config import key_name
from ..exceptions import ConfigError, NotifierError
from ..report import format_size
from ..reportdir import ReportFolder
from ._http import HTTPClient, Response
from ._message import text_lines
from .base import Notifier
from .delivery import Permanent, Retryable, RetryPolicy, deliver, parse_retry_after

if TYPE_CHECKING:
    from pathlib import Path

    from ..config import Config
    from ..metrics import PerformanceMetrics
    from ..report import Report

logger = logging.getLogger(__name__)

#: Discord's limit on a message's ``content``, in characters.
MAX_CONTENT_LENGTH = 2000
#: Longest value (URL, endpoint, error...) shown before it is cut; halved
#: until the message fits :data:`MAX_CONTENT_LENGTH`.
MAX_VALUE_LENGTH = 600
MIN_VALUE_LENGTH = 24
#: The upload limit of a server without boosts (10 MiB). A bigger report is
#: not attached; a 413 lowers it for the process.
DEFAULT_MAX_FILE_SIZE = 10 * 1024 * 1024
#: Room for ``payload_json`` and the multipart envelope around the file.
_MULTIPART_MARGIN = 8 * 1024
#: The API version posted to when the configured URL names none.
API_VERSION = 10
#: ``SUPPRESS_EMBEDS``: no link previews under the alert.
FLAG_SUPPRESS_EMBEDS = 1 << 2
#: Longest wait before a post for a rate-limit bucket a previous answer used up.
MAX_BUCKET_WAIT = 10.0

#: Shown instead of a backtick inside a code span (U+02CB, looks alike).
_NOT_A_BACKTICK = "\u02cb"
#: Characters that start Markdown, a mention, a link or a heading in Discord
#: (a backtick is swapped for :data:`_NOT_A_BACKTICK` instead).
_MARKUP = re.compile(r"([\\*_~|<>#\[\]@])")

_WEBHOOK_PATH = re.compile(
    r"^(?P<prefix>(?:/[^/]+)*?/api)(?:/v(?P<version>\d+))?/webhooks/(?P<id>\d+)/"
    r"(?P<token>[A-Za-z0-9._-]+)$")


class DiscordNotifier(Notifier):
    """Posts each alert to a Discord channel webhook, with the report attached.

    Configured by ``PERFWATCH_DISCORD_WEBHOOK_URL`` (``https://discord.com/
    api/webhooks/<id>/<token>``; the token is a credential and never shown),
    ``PERFWATCH_DISCORD_RETRIES`` and ``PERFWATCH_DISCORD_TIMEOUT``.
    Nothing is sent at construction; :meth:`check` reads the webhook (its
    name and channel) without posting.
    """

    name = "discord"

    #: Reports larger than this are not attached (the message carries their
    #: link or path); lowered for the process when Discord answers 413.
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    #: ``content`` is cut to this many characters.
    max_content_length: int = MAX_CONTENT_LENGTH

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.url, self.webhook_id, token = _validated_url(config)
        self._post_url = _with_query(self.url, wait="true")
        self._secrets = _secrets((config.discord_webhook_url or "", self.url), token)
        self.timeout = config.discord_timeout
        #: How this channel retries; tests replace ``policy.sleep``.
        self.policy = RetryPolicy(retries=config.discord_retries,
                                  budget=min(60.0, config.notifier_timeout * 0.8))
        self._client = HTTPClient(timeout=self.timeout, secrets=self._secrets)
        #: Why the webhook is no longer used (after a 404), or None.
        self.disabled: str | None = None
        #: ``time.monotonic()`` before which the rate-limit bucket is empty.
        self._not_before: float | None = None
        self._lock = threading.Lock()

    # -- Notifier interface ----------------------------------------------------

    def send(self, metrics: PerformanceMetrics, report: Report) -> None:
        if self.disabled is not None:
            raise NotifierError(f"Discord: {self.disabled}", retryable=False)
        d = _Delivery(metrics, report)
        data = report.html.encode("utf-8")
        if len(data) + _MULTIPART_MARGIN > self.max_file_size:
            self._leave_out(d, f"it is {format_size(len(data))}, over the "
                               f"{format_size(self.max_file_size)} Discord accepts")

        def attempt(number: int) -> dict[str, Any]:
            return self._attempt(d, data)

        message = deliver("Discord", attempt, self.policy, alert_id=metrics.id)
        if d.left_out is None and not message.get("attachments") and "id" in message:
            logger.warning("Discord created message %s for alert %s without its attachment; "
                           "report kept at %s", safe_text(str(message["id"]))[:40],
                           metrics.id[:8], self._keep(report))
        logger.debug("Discord message %s posted for alert %s",
                     safe_text(str(message.get("id", "?")))[:40], metrics.id[:8])

    def check(self) -> str:
        """Reads the webhook (``GET``: its name, channel and server; nothing
        is posted)."""
        if self.disabled is not None:
            raise NotifierError(f"Discord: {self.disabled}", retryable=False)
        try:
            response = self._client.get(self.url, what="reading the webhook")
        except Retryable as failure:
            raise NotifierError(f"Discord: {failure.reason}", retryable=True) from None
        if response.status != 200:
            try:
                self._classify(response, what="reading the webhook", disable=False)
            except (Retryable, Permanent) as failure:
                raise NotifierError(f"Discord: {failure.reason}",
                                    retryable=isinstance(failure, Retryable)) from None
            raise NotifierError(f"Discord: reading the webhook answered HTTP {response.status}")
        hook = response.json()
        if not isinstance(hook, dict):
            raise NotifierError("Discord: reading the webhook answered something other than "
                                "a webhook object")
        name = safe_text(str(hook.get("name") or "?"))[:80]
        channel = safe_text(str(hook.get("channel_id") or "?"))[:40]
        guild = safe_text(str(hook.get("guild_id") or "?"))[:40]
        return f"posts as {name!r} to channel {channel} (server {guild}); nothing was posted"

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {secret_url(self.url)} webhook {self.webhook_id}>"

    # -- one attempt -----------------------------------------------------------

    def _attempt(self, d: _Delivery, data: bytes) -> dict[str, Any]:
        self._wait_for_bucket()
        response = self._post(d, data if d.left_out is None else None)
        if response.status == 413 and d.left_out is None:
            # the file (not our short content) is too big: send at once without it
            self.max_file_size = min(self.max_file_size, len(data) + _MULTIPART_MARGIN - 1)
            self._leave_out(d, f"Discord refused the {format_size(len(data))} file as too large "
                               "(413)")
            response = self._post(d, None)
        self._classify(response, what="posting the message")
        self._note_bucket(response)
        message = response.json()
        return message if isinstance(message, dict) else {}

    def _post(self, d: _Delivery, data: bytes | None) -> Response:
        if data is not None:
            attachment = f"attached: `{_code_text(d.report.filename)}`, open it in a browser"
        else:
            attachment = d.left_out or ""
        content = build_content(d.metrics, report_line=attachment,
                                resent=d.maybe_delivered, limit=self.max_content_length)
        payload: dict[str, Any] = {
            "content": content,
            "allowed_mentions": {"parse": []},
            "flags": FLAG_SUPPRESS_EMBEDS,
            "attachments": [],
        }
        fields: dict[str, Any] = {}
        if data is not None:
            payload["attachments"] = [{"id": 0, "filename": d.report.filename,
                                       "description": "flask_perfwatch report (HTML)"}]
        fields["payload_json"] = (None, json.dumps(payload, ensure_ascii=False),
                                  "application/json")
        if data is not None:
            fields["files[0]"] = (d.report.filename, data, "text/html")
        try:
            return self._client.post(self._post_url, what="posting the message", fields=fields)
        except Retryable as failure:
            if failure.maybe_delivered:
                d.maybe_delivered = True
            raise

    def _leave_out(self, d: _Delivery, why: str) -> None:
        link = d.report.url
        if link:
            where = f"open it at {link}"
        else:
            where = f"kept at `{_code_text(str(self._keep(d.report)))}` on " \
                    f"`{_code_text(d.metrics.host)}`"
        d.left_out = f"not attached ({why}); {where}"
        logger.warning("Discord: posting alert %s without the report: %s", d.metrics.id[:8],
                       why)

    def _keep(self, report: Report) -> Path | str:
        """The report's local copy (written now if the pipeline did not)."""
        try:
            return report.write(ReportFolder.from_config(self.config))
        except OSError as exc:
            logger.warning("Discord: keeping the report failed", exc_info=True)
            return f"(not kept: {type(exc).__name__})"

    # -- answers -----------------------------------------------------------------

    def _classify(self, response: Response, *, what: str, disable: bool = True) -> None:
        status = response.status
        if 200 <= status < 300:
            return
        detail = self._detail(response)
        key = key_name("discord_webhook_url")
        if status == 429:
            body = response.json()
            scope = " global" if isinstance(body, dict) and body.get("global") else ""
            raise Retryable(f"{what}: rate limited (429{scope}{detail})",
                            retry_after=_retry_after(response))
        if status == 408 or status >= 500:
            raise Retryable(f"{what}: Discord failed (HTTP {status}{detail})",
                            retry_after=parse_retry_after(response.headers.get("retry-after")))
        if status == 404:
            reason = (f"the webhook is gone (404{detail}): it was deleted or the URL is wrong; "
                      f"set {key} to a webhook's URL and restart")
            if disable:
                self._disable(reason)
            raise Permanent(f"{what}: {reason}")
        if status in (401, 403):
            raise Permanent(f"{what}: the webhook token was refused ({status}{detail}); copy "
                            f"the webhook's URL into {key}")
        if status == 400:
            raise Permanent(f"{what}: Discord rejected the message (400{detail})")
        raise Permanent(f"{what}: HTTP {status}{detail}")

    def _disable(self, reason: str) -> None:
        with self._lock:
            if self.disabled is not None:
                return
            since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            self.disabled = (f"not posting: the webhook answered 404 at {since} and is not "
                             f"used again ({reason})")
        logger.error("Discord webhook %s answered 404 (%s); this process stops using it: later "
                     "alerts fail at once without a request", secret_url(self.url), reason)

    def _detail(self, response: Response) -> str:
        """``": <message> (code <n>)"`` from a Discord error body, or a short
        piece of any other body (a proxy's HTML); secrets removed, escaped, cut."""
        body = response.json()
        message = None
        if isinstance(body, dict) and ("message" in body or "code" in body):
            message = str(body.get("message") or "")
            if body.get("code"):
                message += f" (code {body['code']})"
        return response.detail(message, self._secrets)

    # -- rate-limit buckets --------------------------------------------------------

    def _note_bucket(self, response: Response) -> None:
        """After a post that emptied the bucket, the next one waits for it."""
        if response.headers.get("x-ratelimit-remaining", "").strip() != "0":
            return
        reset_after = parse_retry_after(response.headers.get("x-ratelimit-reset-after"))
        if reset_after:
            self._not_before = time.monotonic() + min(reset_after, MAX_BUCKET_WAIT)

    def _wait_for_bucket(self) -> None:
        not_before, self._not_before = self._not_before, None
        if not_before is None:
            return
        wait = not_before - time.monotonic()
        if wait > 0:
            logger.debug("Discord rate-limit bucket empty: waiting %.2fs before posting", wait)
            self.policy.sleep(wait)


@dataclass
class _Delivery:
    """One alert across attempts."""

    metrics: PerformanceMetrics
    report: Report
    #: Why the report is not attached (None: it is); kept across attempts.
    left_out: str | None = None
    #: An attempt's answer was lost after the request may have reached
    #: Discord: the message sent next says it may repeat an earlier one.
    maybe_delivered: bool = False


def _retry_after(response: Response) -> float | None:
    """The wait a 429 asks for: the body's ``retry_after`` (float seconds),
    else the ``Retry-After`` header. API v6 (the default when a URL names no
    version) gave ``retry_after`` in milliseconds: a body value far above the
    header's is read as such."""
    header = parse_retry_after(response.headers.get("retry-after"))
    body = response.json()
    value = body.get("retry_after") if isinstance(body, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return header
    seconds = max(float(value), 0.0)
    if header is not None and seconds > header + 1 and seconds / 1000 <= header + 1:
        seconds /= 1000
    return seconds


# --- the message -------------------------------------------------------------------


def build_content(metrics: PerformanceMetrics, *, report_line: str = "", resent: bool = False,
                  limit: int = MAX_CONTENT_LENGTH) -> str:
    """The ``content`` of an alert's message, at most ``limit`` characters.

    Values from the request are inline code (never Markdown, a mention or a
    link); ``report_line`` is ours (it may hold code spans already). They are
    cut shorter until the message fits; if even the shortest do not, only the
    brief facts are kept (as the ``teams`` card does)."""
    value_limit = MAX_VALUE_LENGTH
    while True:
        text = _content(metrics, report_line, resent, value_limit)
        if len(text) <= limit or value_limit <= MIN_VALUE_LENGTH:
            break
        value_limit = max(MIN_VALUE_LENGTH, value_limit // 2)
    if len(text) > limit:
        text = _content(metrics, report_line, resent, MIN_VALUE_LENGTH, brief=True)
    if len(text) > limit:  # a tiny limit: cut (an open code span shows as text)
        text = text[:max(0, limit - 1)] + "…"
    return text


def _content(m: PerformanceMetrics, report_line: str, resent: bool, cap: int, *,
             brief: bool = False) -> str:
    """The headline and facts of :mod:`._message`: a value from the request as
    inline code cut to ``cap`` (the values that can be long shrink until the
    message fits), our own short text escaped and cut only at
    :data:`MAX_VALUE_LENGTH`."""
    def code(value: str) -> str:
        return f"`{_code_text(value, cap)}`"

    lines = text_lines(m, title=":{emoji}: **{lead}** {subject} {verb} **{duration}** ({ratio})",
                       fact="**{label}:** {value}", code=code, plain=_plain, brief=brief)
    if resent:
        lines.insert(1, f"**Possibly a repeat:** an earlier attempt to post alert "
                        f"`{m.id[:8]}` got no answer.")
    if report_line:
        lines.append(f"**Report:** {report_line}")
    lines.append(f"-# flask_perfwatch alert `{m.id[:8]}`")
    return "\n".join(lines)


def _code_text(text: str, limit: int = MAX_VALUE_LENGTH) -> str:
    """Text for inside one inline code span: one line, no backtick (U+02CB
    instead, so the span cannot be closed early), cut to ``limit``."""
    text = " ".join(text.split()).replace("`", _NOT_A_BACKTICK) or "-"
    return text if len(text) <= limit else text[:limit] + "…"


def _plain(text: str, limit: int = MAX_VALUE_LENGTH) -> str:
    """Our own text outside code (numbers, times, an engine's profile note):
    one line, cut to ``limit``, every character that could start Markdown, a
    mention or a link escaped with a backslash, and no backtick, so the only
    backticks in a message delimit code spans. Values from the request are
    never shown this way: they are code."""
    text = " ".join(text.split()).replace("`", _NOT_A_BACKTICK)
    if len(text) > limit:
        text = text[:limit] + "…"
    return _MARKUP.sub(r"\\\1", text)


# --- configuration and secrets ------------------------------------------------------


def _validated_url(config: Config) -> tuple[str, str, str]:
    """``(url to post to, webhook id, token)``; the URL with an API version."""
    key = key_name("discord_webhook_url")
    source = config.sources.get("discord_webhook_url", "default")
    url = config.discord_webhook_url
    expected = ("a Discord webhook URL such as https://discord.com/api/webhooks/<id>/<token> "
                "(Server Settings > Integrations > Webhooks > Copy Webhook URL)")
    if url is None:
        raise ConfigError.invalid(key, None, source, expected + " (needed by the discord "
                                                                "notifier)")
    parts = urlsplit(url)
    match = _WEBHOOK_PATH.match(parts.path)
    if match is None or parts.username or parts.password or parts.fragment:
        raise ConfigError.invalid(key, secret_url(url), source, expected)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "wait"]
    version = match.group("version") or str(API_VERSION)
    path = (f"{match.group('prefix')}/v{version}/webhooks/{match.group('id')}/"
            f"{match.group('token')}")
    base = f"{parts.scheme}://{parts.netloc}{path}"
    return (f"{base}?{urlencode(query)}" if query else base), match.group("id"), \
        match.group("token")


def _with_query(url: str, **params: str) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(params)


def _secrets(urls: tuple[str, ...], token: str) -> tuple[str, ...]:
    found = {*urls, token, unquote(token)}
    return tuple(sorted((s for s in found if len(s) >= 4), key=len, reverse=True))
