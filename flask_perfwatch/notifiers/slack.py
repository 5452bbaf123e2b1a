"""``slack``: one message per alert in a Slack channel, with the HTML report
uploaded as a file. Built on `slack_sdk <https://docs.slack.dev/tools/python-slack-sdk/>`_
(``pip install 'flask-perfwatch[slack]'``), imported only when this notifier
is configured; a bot token (``PERFWATCH_SLACK_TOKEN``) and a channel ID
(``PERFWATCH_SLACK_CHANNEL``).

One delivery is Slack's external-upload flow: ``files.getUploadURLExternal``
(file name and length), a POST of the report's bytes to the upload URL it
returns, then ``files.completeUploadExternal``, which shares the file in the
channel with the message as its ``initial_comment``. When the report cannot
be uploaded (no ``files:write`` scope, uploads refused, or the upload still
failing on the last attempt), ``chat.postMessage`` carries the same message
with the report's link or local path instead.

Retries. Every attempt goes through :func:`~.delivery.deliver` (backoff with
jitter, ``Retry-After``, a budget per alert). The ``WebClient`` is built with
``retry_handlers=[]``: slack_sdk's own handlers would retry inside one call,
sleeping in this thread outside our budget, and its connection-error handler
would repeat a ``files.completeUploadExternal`` or ``chat.postMessage`` whose
answer was lost, which is how a message gets posted twice.

Never twice. A retry resumes where the previous attempt stopped: the URL and
the uploaded bytes are kept. The two calls that post (completion, and the
``chat.postMessage`` fallback) are never repeated blindly when their outcome
is unknown (a timeout, a dropped connection, a 5xx, ``internal_error``): the
next attempt first asks whether the first one took effect, with ``files.info``
(is the file shared in the channel?) or ``conversations.history`` (is there a
message carrying this alert's id in its metadata?). A completion is also safe
by itself: Slack completes an upload only once. A fallback post whose fate
cannot be checked (no history scope) is not repeated: the alert fails with a
message saying it may have arrived.
"""

from __future__ import annotations

import http.client
import logging
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .._redact import mask_text, redact_url
from .._util import safe_text
from ..config import key_name
from ..exceptions import ConfigError, NotifierError
from ..reportdir import ReportFolder
from ._message import text_lines
from .base import Notifier, require_extra
from .delivery import Permanent, Retryable, RetryPolicy, deliver, parse_retry_after

if TYPE_CHECKING:
    from slack_sdk import WebClient
    from slack_sdk.web import SlackResponse

    from ..config import Config
    from ..metrics import PerformanceMetrics
    from ..report import Report

logger = logging.getLogger(__name__)


#: A conversation ID: public and private channels (``C…``; old private ones ``G…``),
#: direct messages (``D…``).
_CHANNEL_RE = re.compile(r"^[CGD][A-Z0-9]{6,20}$")
#: What Slack's ``error`` field holds; anything else is not quoted.
_ERROR_CODE_RE = re.compile(r"^[a-z0-9_.]{1,64}$")
_SCOPE_RE = re.compile(r"^[a-z0-9_.:,-]{1,200}$")

#: Longest value (URL, endpoint, error) shown in a message before it is cut.
MAX_VALUE_LENGTH = 300
#: ``metadata.event_type`` of a fallback post, whose ``event_payload`` holds
#: the ``alert_id``: how a retry finds out whether a lost post arrived.
METADATA_EVENT_TYPE = "perfwatch_alert"
#: How far back (seconds before the alert started) the history is searched
#: for a post whose answer was lost: room for clock skew.
HISTORY_MARGIN = 600.0

#: The token is wrong, revoked or not allowed: nothing else can work.
AUTH_ERRORS = frozenset({
    "invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
    "not_allowed_token_type", "no_permission", "ekm_access_denied", "team_access_not_granted",
    "org_login_required", "two_factor_setup_required",
})
#: The channel cannot take the bot's messages: nothing else can work either.
CHANNEL_ERRORS = frozenset({
    "channel_not_found", "not_in_channel", "is_archived", "restricted_action",
    "restricted_action_read_only_channel", "restricted_action_thread_only_channel",
    "restricted_action_non_threadable_channel", "team_not_found",
})
#: Slack's transient failures (besides HTTP 429 and 5xx).
RETRYABLE_ERRORS = frozenset({
    "ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout",
})
#: Transient failures after which the call may still have taken effect
#: (Slack: "It's possible some aspect of the operation succeeded").
MAYBE_DONE_ERRORS = frozenset({"internal_error", "fatal_error"})


class _QuietSDKLog(logging.Filter):
    """slack_sdk logs under the logger it is given: a failed request at ERROR,
    requests and answers at DEBUG. We classify, retry and log each failure
    ourselves, so its lines are kept at DEBUG (with any secret masked) on
    ``flask_perfwatch.notifiers.slack.sdk`` and dropped unless that logger
    is enabled for DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg = safe_text(mask_text(record.getMessage()))
        record.args = ()
        return sdk_logger.isEnabledFor(logging.DEBUG)


#: The logger handed to slack_sdk's ``WebClient``.
sdk_logger = logging.getLogger(__name__ + ".sdk")
sdk_logger.addFilter(_QuietSDKLog())


# --- classified failures -----------------------------------------------------------


class _Refused(Permanent):
    """A permanent failure; ``code`` is Slack's error code (None: not an API error)."""

    def __init__(self, reason: str, code: str | None = None) -> None:
        super().__init__(reason)
        self.code = code

    @property
    def ends_delivery(self) -> bool:
        """The token or the channel is the problem: a fallback post would fail too."""
        return self.code in AUTH_ERRORS or self.code in CHANNEL_ERRORS


class _Unsure(Retryable):
    """A retryable failure of a call that may have taken effect anyway (its
    answer was lost, or Slack failed part-way): check before repeating it."""


class _CannotUpload(Exception):
    """The report cannot be uploaded for this alert: post with its link instead."""

    def __init__(self, reason: str, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass
class _Answer:
    data: dict[str, Any]
    headers: dict[str, str]  # lower-case names


@dataclass
class _Delivery:
    """One alert's state across attempts: what already succeeded is not redone."""

    metrics: PerformanceMetrics
    report: Report
    data: bytes
    file_id: str | None = None
    upload_url: str | None = None
    uploaded: bool = False
    #: a completion was sent and its outcome is unknown
    completion_unsure: bool = False
    #: why the report is linked instead of uploaded (None: uploading)
    fallback: str | None = None
    #: a fallback post was sent and its outcome is unknown
    post_unsure: bool = False
    #: the fallback's line with the report's link or path (the file is written once)
    link_line: str | None = None


class SlackNotifier(Notifier):
    """Posts each alert to a Slack channel with the HTML report uploaded.

    Configured by ``PERFWATCH_SLACK_TOKEN`` (a bot token, ``xoxb-…``),
    ``PERFWATCH_SLACK_CHANNEL`` (a channel ID), ``PERFWATCH_SLACK_API_URL``,
    ``PERFWATCH_SLACK_RETRIES`` and ``PERFWATCH_SLACK_TIMEOUT``. Nothing is
    sent at import or construction; :meth:`check` tests the token and the
    channel without posting.

    ``slack_sdk``'s ``WebClient`` opens a connection per request (urllib), so
    there is nothing to re-create after a fork.
    """

    name = "slack"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        sdk = require_extra("slack_sdk", extra="slack", notifier="slack")
        sources = config.sources
        token = config.slack_token
        if not token or not token.strip():
            raise ConfigError.invalid(key_name("slack_token"), None,
                                      sources.get("slack_token", "default"),
                                      "a Slack bot token (xoxb-...) with the chat:write and "
                                      "files:write scopes (needed by the slack notifier)")
        if not token.strip().startswith("xox") or any(c.isspace() for c in token.strip()):
            raise ConfigError.invalid(key_name("slack_token"), "[REDACTED]",
                                      sources.get("slack_token", "default"),
                                      "a Slack token as Slack shows it, starting with 'xoxb-' "
                                      "(without 'Bearer' or quotes)")
        channel = config.slack_channel
        if channel is None or not _CHANNEL_RE.match(channel.strip()):
            raise ConfigError.invalid(key_name("slack_channel"), channel,
                                      sources.get("slack_channel", "default"),
                                      "a channel ID such as 'C0123456789' (in Slack: the "
                                      "channel's name -> About; not its '#name')")
        self.channel = channel.strip()
        self.api_url = config.slack_api_url
        self.timeout = config.slack_timeout
        #: Retries, backoff and budget; tests replace ``policy.sleep``.
        self.policy = RetryPolicy(retries=config.slack_retries,
                                  budget=min(60.0, config.notifier_timeout * 0.8))
        from .. import __version__

        self._client: WebClient = sdk.WebClient(
            token=token.strip(), base_url=self.api_url,
            # urllib takes a float; slack_sdk's annotation says int
            timeout=cast(int, self.timeout),
            retry_handlers=[], logger=sdk_logger,
            user_agent_suffix=f"flask-perfwatch/{__version__}")
        #: set once Slack said the token may not upload (``missing_scope``):
        #: later alerts go straight to ``chat.postMessage``
        self._uploads_off: str | None = None

    # -- Notifier interface ------------------------------------------------------

    def send(self, metrics: PerformanceMetrics, report: Report) -> None:
        d = _Delivery(metrics, report, report.html.encode("utf-8"), fallback=self._uploads_off)
        deliver("Slack", lambda number: self._attempt(d, number), self.policy,
                alert_id=metrics.id)

    def check(self) -> str:
        try:
            auth = self._api("auth.test", lambda c: c.auth_test())
            bot = _shown(auth.data.get("user"))
            line = (f"posts as @{bot} on {_shown(auth.data.get('team'))} "
                    f"({_shown(auth.data.get('url'))})")
            try:
                info = self._api("conversations.info",
                                 lambda c: c.conversations_info(channel=self.channel))
            except _Refused as exc:
                if exc.code != "missing_scope":
                    raise
                line += (f" to channel {self.channel} (not looked up: {exc.reason}; "
                         "channels:read / groups:read let check() confirm it)")
            else:
                channel = info.data.get("channel") or {}
                where = f"#{_shown(channel.get('name'))} ({self.channel})"
                if channel.get("is_archived"):
                    raise _Refused(f"channel {where} is archived", "is_archived")
                if channel.get("is_member") is False:
                    raise _Refused(f"the bot @{bot} is not a member of {where}: invite it "
                                   f"with /invite @{bot} in the channel", "not_in_channel")
                line += f" to {where}"
        except (Retryable, Permanent) as exc:
            raise NotifierError(f"Slack: {exc.reason}",
                                retryable=isinstance(exc, Retryable)) from None
        scopes = auth.headers.get("x-oauth-scopes")
        if scopes is not None and "files:write" not in scopes.replace(" ", "").split(","):
            line += "; reports will be linked, not uploaded (the token lacks files:write)"
        return line

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.channel} via {redact_url(self.api_url)}>"

    # -- one attempt ---------------------------------------------------------------

    def _attempt(self, d: _Delivery, number: int) -> None:
        if d.fallback is None:
            try:
                self._upload_and_share(d)
                return
            except _CannotUpload as exc:
                d.fallback = exc.reason
                if exc.code == "missing_scope":
                    self._uploads_off = exc.reason
                    logger.warning("Slack: the token may not upload files (%s); alerts are "
                                   "posted with the report's link until the app restarts",
                                   exc.reason)
                else:
                    logger.warning("Slack: the report of %s cannot be uploaded (%s); posting "
                                   "the message with its link", d.metrics.id[:8], exc.reason)
            except Retryable as exc:
                if number <= self.policy.retries or d.completion_unsure:
                    raise
                # the last attempt: the message matters more than the file
                d.fallback = f"the upload kept failing: {exc.reason}"
                logger.warning("Slack: the report of %s could not be uploaded (%s); posting "
                               "the message with its link", d.metrics.id[:8], exc.reason)
        self._post_message(d)

    def _upload_and_share(self, d: _Delivery) -> None:
        if d.completion_unsure and self._shared(d):
            return
        if d.file_id is None:
            answer = self._upload_step(lambda: self._api(
                "files.getUploadURLExternal",
                lambda c: c.files_getUploadURLExternal(filename=d.report.filename,
                                                       length=len(d.data))))
            file_id, url = answer.data.get("file_id"), answer.data.get("upload_url")
            if not isinstance(file_id, str) or not isinstance(url, str) \
                    or not url.lower().startswith(("https://", "http://")):
                raise _CannotUpload("files.getUploadURLExternal answered without a file id "
                                    "and an http(s) upload URL")
            d.file_id, d.upload_url, d.uploaded = file_id, url, False
        if not d.uploaded:
            self._upload(d)
            d.uploaded = True
        file_id = d.file_id
        text = build_message(d.metrics, attachment=(
            f"The profile report is attached: download {_code(d.report.filename)} and open "
            "it in a browser."))
        try:
            self._api("files.completeUploadExternal",
                      lambda c: c.files_completeUploadExternal(
                          files=[{"id": file_id, "title": d.report.filename}],
                          channel_id=self.channel, initial_comment=text),
                      effect=True)
        except _Unsure:
            d.completion_unsure = True
            raise
        except _Refused as exc:
            if d.completion_unsure:
                # Slack completes a file once: refused now, the lost one may have worked
                if self._shared(d):
                    return
                raise _Refused(f"{exc.reason}; an earlier completion whose answer was lost "
                               "may have posted the alert, so it is not posted again",
                               exc.code) from None
            if exc.ends_delivery:
                raise
            raise _CannotUpload(exc.reason, exc.code) from None

    def _upload_step(self, call: Callable[[], _Answer]) -> _Answer:
        """A call of the upload flow: a refusal that is not about the token or
        the channel means "post with the link instead"."""
        try:
            return call()
        except _Refused as exc:
            if exc.ends_delivery:
                raise
            raise _CannotUpload(exc.reason, exc.code) from None

    def _upload(self, d: _Delivery) -> None:
        """POST the bytes to the upload URL (no token: the URL is the credential)."""
        assert d.upload_url is not None
        what = "uploading the report"
        status, headers = self._post_bytes(d.upload_url, d.data, what)
        if 200 <= status < 300:
            return
        retry_after = parse_retry_after(headers.get("retry-after"))
        if status == 429:
            raise Retryable(f"{what}: rate limited (429)", retry_after=retry_after)
        if status >= 500 or status == 408:
            raise Retryable(f"{what}: HTTP {status}", retry_after=retry_after)
        # an expired or refused upload URL: a new one may work for the next alert
        raise _CannotUpload(f"{what}: HTTP {status}")

    def _post_bytes(self, url: str, data: bytes, what: str) -> tuple[int, dict[str, str]]:
        """One POST with urllib, as slack_sdk's own ``files_upload_v2`` does,
        through the client's proxy and TLS context; no redirects."""
        handlers: list[urllib.request.BaseHandler] = [
            _NoRedirects(), urllib.request.HTTPSHandler(context=self._client.ssl)]
        if self._client.proxy:
            handlers.append(urllib.request.ProxyHandler({"http": self._client.proxy,
                                                         "https": self._client.proxy}))
        opener = urllib.request.build_opener(*handlers)
        request = urllib.request.Request(url, data=data, method="POST", headers={
            "Content-Type": "application/octet-stream"})
        try:
            with opener.open(request, timeout=self.timeout) as answer:
                answer.read(4096)
                return int(answer.status), {k.lower(): v for k, v in answer.headers.items()}
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, {k.lower(): v for k, v in (exc.headers or {}).items()}
            finally:
                exc.close()
        except (OSError, http.client.HTTPException) as exc:
            raise _network_failure(what, exc, self.timeout, effect=False) from None

    def _shared(self, d: _Delivery) -> bool:
        """Whether the file is shared in the channel already (``files.info``):
        the answer of a completion was lost, did it take effect?"""
        file_id = d.file_id
        assert file_id is not None
        try:
            answer = self._api("files.info", lambda c: c.files_info(file=file_id))
        except _Refused as exc:
            if exc.code == "file_not_found":  # not completed (yet)
                return False
            if exc.ends_delivery:
                raise
            logger.warning("Slack: cannot tell whether the completion of %s took effect (%s); "
                           "completing again, which Slack accepts only once",
                           d.metrics.id[:8], exc.reason)
            return False
        shared = self.channel in _share_channels(answer.data.get("file"))
        if shared:
            logger.info("Slack: the alert %s was posted although the answer to its "
                        "completion was lost", d.metrics.id[:8])
        return shared

    def _post_message(self, d: _Delivery) -> None:
        """The fallback: the message with the report's link, by ``chat.postMessage``."""
        if d.post_unsure and self._posted(d):
            return
        if d.link_line is None:
            d.link_line = self._link_line(d)
        text = build_message(d.metrics, attachment=d.link_line)
        metadata = {"event_type": METADATA_EVENT_TYPE,
                    "event_payload": {"alert_id": d.metrics.id}}
        try:
            self._api("chat.postMessage",
                      lambda c: c.chat_postMessage(channel=self.channel, text=text, mrkdwn=True,
                                                   unfurl_links=False, unfurl_media=False,
                                                   metadata=metadata),
                      effect=True)
        except _Unsure:
            d.post_unsure = True
            raise

    def _posted(self, d: _Delivery) -> bool:
        """Whether a fallback post whose answer was lost is in the channel
        (``conversations.history``, matched by the alert id in its metadata)."""
        oldest = d.metrics.started_at.timestamp() - HISTORY_MARGIN
        try:
            answer = self._api("conversations.history", lambda c: c.conversations_history(
                channel=self.channel, oldest=f"{oldest:.6f}", limit=200,
                include_all_metadata=True))
        except _Refused as exc:
            if exc.ends_delivery:
                raise
            raise _Refused(f"the answer to chat.postMessage was lost and the channel's "
                           f"history cannot be read to see whether it arrived ({exc.reason}); "
                           "it is not posted again, to avoid a duplicate (the channels:history "
                           "or groups:history scope lets the notifier check)", exc.code
                           ) from None
        for message in answer.data.get("messages") or []:
            metadata = message.get("metadata") if isinstance(message, dict) else None
            payload = metadata.get("event_payload") if isinstance(metadata, dict) else None
            if isinstance(payload, dict) and metadata is not None \
                    and metadata.get("event_type") == METADATA_EVENT_TYPE \
                    and payload.get("alert_id") == d.metrics.id:
                logger.info("Slack: the alert %s was posted although the answer to its "
                            "chat.postMessage was lost", d.metrics.id[:8])
                return True
        return False

    def _link_line(self, d: _Delivery) -> str:
        why = _plain(d.fallback or "unknown")
        report = d.report
        if report.url is not None:
            return f"The report could not be attached ({why}): {_link(report.url, 'open it')}."
        path: Path | str | None = report.path
        if path is None:
            try:
                path = report.write(ReportFolder.from_config(self.config))
            except OSError as exc:
                logger.warning("Slack: keeping the report of %s failed", d.metrics.id[:8],
                               exc_info=True)
                return (f"The report could not be attached ({why}) nor kept on "
                        f"{_code(d.metrics.host)}: writing it failed ({type(exc).__name__}).")
        return (f"The report could not be attached ({why}); it is kept on "
                f"{_code(d.metrics.host)} at {_code(str(path))}.")

    # -- one API call ----------------------------------------------------------------

    def _api(self, method: str, call: Callable[[WebClient], SlackResponse], *,
             effect: bool = False) -> _Answer:
        """Run one Web API call; every failure becomes :class:`Retryable`
        (:class:`_Unsure` when ``effect`` and the call may have worked) or
        :class:`_Refused`. Reasons never quote the token, a URL or an answer's body."""
        from slack_sdk.errors import SlackApiError, SlackRequestError

        try:
            response = call(self._client)
        except SlackApiError as exc:
            raise self._api_failure(method, exc.response, effect) from None
        except SlackRequestError as exc:
            raise _Refused(f"{method}: {_shown(str(exc))}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise _network_failure(method, exc, self.timeout, effect=effect) from None
        data = response.data
        if not isinstance(data, dict):
            raise _Refused(f"{method}: the answer is not Slack's JSON (check "
                           f"{key_name('slack_api_url')})")
        return _Answer(data, {k.lower(): str(v) for k, v in (response.headers or {}).items()})

    def _api_failure(self, method: str, response: Any, effect: bool) -> Exception:
        status = int(getattr(response, "status_code", 0) or 0)
        data = getattr(response, "data", None)
        data = data if isinstance(data, dict) else {}
        code = _error_code(data.get("error"))
        headers = {str(k).lower(): str(v) for k, v in (getattr(response, "headers", None)
                                                        or {}).items()}
        if status == 429 or code == "ratelimited":
            wait = parse_retry_after(headers.get("retry-after"))
            detail = f"HTTP {status}" + (f" {code}" if code else "")
            asked = f", Retry-After {wait:g}s" if wait is not None else ""
            return Retryable(f"{method}: rate limited ({detail}{asked})", retry_after=wait)
        if status >= 500 or status == 408 or code in RETRYABLE_ERRORS:
            detail = " ".join(part for part in (
                f"HTTP {status}" if status != 200 else "", code or "") if part)
            maybe_done = status >= 500 or code in MAYBE_DONE_ERRORS
            cls = _Unsure if effect and maybe_done else Retryable
            return cls(f"{method}: Slack failed ({detail})")
        if code is None:
            return _Refused(f"{method}: HTTP {status}, not Slack's JSON answer (check "
                            f"{key_name('slack_api_url')})")
        return _Refused(f"{method}: {self._explain(code, data)}", code)

    def _explain(self, code: str, data: dict[str, Any]) -> str:
        """What a permanent error code means here, and what to change."""
        channel = self.channel
        if code in AUTH_ERRORS:
            return f"the token was rejected ({code}); check {key_name('slack_token')}"
        if code == "channel_not_found":
            return (f"channel {channel} not found ({code}); check {key_name('slack_channel')} "
                    "holds the channel's ID, and for a private channel that the bot is in it")
        if code == "not_in_channel":
            return (f"the bot is not a member of channel {channel} ({code}); invite it with "
                    "/invite @<the bot's name> in the channel")
        if code == "is_archived":
            return f"channel {channel} is archived ({code})"
        if code in CHANNEL_ERRORS:
            return f"the workspace does not let the bot post in channel {channel} ({code})"
        if code == "missing_scope":
            needed = data.get("needed")
            scope = needed if isinstance(needed, str) and _SCOPE_RE.match(needed) else "?"
            return (f"the token lacks the {scope} scope ({code}); add it under OAuth & "
                    "Permissions and reinstall the app")
        return f"Slack refused the request ({code})"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """An upload URL does not redirect; a redirect answer is a failure."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _network_failure(what: str, exc: BaseException, timeout: float, *,
                     effect: bool) -> Exception:
    """A failure below HTTP, by the innermost exception's type (urllib's
    messages may quote the URL)."""
    inner: BaseException = exc
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        inner = exc.reason
    name = type(inner).__name__
    if isinstance(inner, TimeoutError):
        reason = f"{what}: no answer within {timeout:g}s ({key_name('slack_timeout')})"
        return _Unsure(reason) if effect else Retryable(reason)
    if isinstance(inner, ssl.SSLCertVerificationError):
        return _Refused(f"{what}: TLS failed ({name}): the server's certificate is not trusted")
    if isinstance(inner, ConnectionRefusedError) or (
            isinstance(exc, urllib.error.URLError) and not isinstance(inner, ConnectionError)):
        # nothing was sent (refused, DNS, unreachable): safe to repeat
        return Retryable(f"{what}: could not connect ({name})")
    reason = f"{what}: the connection was dropped ({name})"
    return _Unsure(reason) if effect else Retryable(reason)


def _share_channels(file: Any) -> set[str]:
    """The channels a ``files.info`` file object says it is shared in."""
    if not isinstance(file, dict):
        return set()
    found: set[str] = set()
    shares = file.get("shares")
    if isinstance(shares, dict):
        for kind in ("public", "private"):
            if isinstance(shares.get(kind), dict):
                found.update(str(k) for k in shares[kind])
    for key in ("channels", "groups", "ims"):
        if isinstance(file.get(key), list):
            found.update(str(c) for c in file[key])
    return found


def _error_code(value: Any) -> str | None:
    return value if isinstance(value, str) and _ERROR_CODE_RE.match(value) else None


# --- the message ---------------------------------------------------------------------


def build_message(metrics: PerformanceMetrics, *, attachment: str = "") -> str:
    """The text of an alert's message, in Slack's ``mrkdwn``: the headline and
    facts of :mod:`._message`, one bullet a fact.

    Every value that comes from the request (path, URL, endpoint, error) is a
    code span with ``&``, ``<`` and ``>`` escaped as Slack requires, so a URL
    parameter such as ``<!everyone>`` can neither mention anyone nor make a
    link; our own text is escaped the same way. ``attachment`` (already
    mrkdwn) ends the message.
    """
    lines = text_lines(metrics, title=":{emoji}: *{lead}* {subject} {verb} *{duration}* ({ratio})",
                       fact="• *{label}:* {value}", code=_code, plain=_plain)
    if attachment:
        lines.append(attachment)
    return "\n".join(lines)


def escape(text: str) -> str:
    """Slack's escaping of text: ``&``, ``<`` and ``>`` as entities (the only
    characters Slack's markup needs escaped; without ``<`` and ``>`` no
    ``<!channel>``, ``<@U…>`` or ``<url|label>`` can be formed)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _one_line(value: str) -> str:
    """``value`` on one line (control characters escaped), cut to
    :data:`MAX_VALUE_LENGTH`; not escaped."""
    text = " ".join(safe_text(str(value)).split())
    return text if len(text) <= MAX_VALUE_LENGTH else text[:MAX_VALUE_LENGTH] + "…"


def _code(value: str) -> str:
    """``value`` as one code span: on one line, cut, escaped. A backtick in it
    would end the span, so it is shown as an apostrophe (mrkdwn has no escape)."""
    return "`" + escape((_one_line(value) or "-").replace("`", "'")) + "`"


def _plain(value: str) -> str:
    """Text outside code: one line, cut, escaped."""
    return escape(_one_line(value))


def _link(url: str, label: str) -> str:
    """``<url|label>``; in the URL, ``|`` and ``>`` would end the link."""
    target = escape(url.replace("|", "%7C"))
    return f"<{target}|{escape(label)}>"


def _shown(value: Any) -> str:
    """A server's value in a check line or a reason: masked, escaped, short."""
    text = safe_text(mask_text(str(value if value is not None else "?")))
    return text if len(text) <= 200 else text[:200] + "…"
