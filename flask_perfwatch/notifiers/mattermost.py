"""``mattermost``: one post per alert in a Mattermost channel, with the HTML
report attached. Built on :mod:`mattermostdriver` (``pip install
'flask-perfwatch[mattermost]'``), which is imported only when this notifier
is configured.

One delivery is: ``GET /users/me`` (once, it checks the token and gives the
user id), the channel lookup by team + name (once, cached; again after a
404), ``POST /files`` with the report (shrunk or left out if too big), then
``POST /posts`` referencing it.

Retrying is the shared delivery policy's (:mod:`.delivery`): one attempt
classifies each failure as :class:`~.delivery.Retryable` (connection errors,
timeouts, 5xx, 429 with its ``Retry-After`` or ``X-RateLimit-Reset``) or
:class:`~.delivery.Permanent` (400, 401, 403, 405, a 413 on the post: what to
change is in the reason), and :func:`~.delivery.deliver` decides whether and
how long to wait. Each attempt resumes where the previous one stopped: a
report already uploaded is not uploaded again, and every alert carries its
own ``pending_post_id`` so the server treats a repeated post as the same post.
A 413 on the upload, a 501 (uploads disabled) and a 404 after the channel was
re-created are handled inside the attempt, never retried as such.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .. import _fork
from .._redact import mask_text
from .._util import safe_text
from ..config import key_name
from ..exceptions import ConfigError, NotifierError
from ..report import format_size, render_report
from ..reportdir import ReportFolder
from ._message import text_lines
from .base import Notifier, require_extra
from .delivery import MAX_RETRY_AFTER, Permanent, Retryable, RetryPolicy, deliver, parse_retry_after

if TYPE_CHECKING:
    from pathlib import Path

    from ..config import Config
    from ..metrics import PerformanceMetrics
    from ..report import Report

logger = logging.getLogger(__name__)

#: The server's limit on a post's message, in characters (runes).
MAX_MESSAGE_LENGTH = 16383
#: Assumed upload limit until the server says otherwise (Mattermost's
#: ``FileSettings.MaxFileSize`` is 100 MB by default; proxies often allow less).
DEFAULT_MAX_FILE_SIZE = 50 * 1024 * 1024
#: Room left for the multipart envelope around the file.
_MULTIPART_MARGIN = 4096
#: Longest value (URL, endpoint, error) shown in a message before it is cut.
MAX_VALUE_LENGTH = 2000

_ID_RE = re.compile(r"^[a-z0-9]{26}$")
_NAME_RE = re.compile(r"^[a-z0-9_-]{1,64}$")


class _Step(enum.StrEnum):
    """One call to the server; its value is how messages name it."""

    TOKEN = "checking the token (GET /users/me)"
    CHANNEL = "looking up the channel"
    POST = "creating the post"
    UPLOAD = "uploading the report (POST /files)"


class _Refused(Exception):
    """A refusal the attempt handles itself before the delivery policy sees it:
    ``kind`` is ``not_found`` (404: look the channel up again), ``too_large``
    (413: upload a smaller report) or ``disabled`` (501: post without it).
    Where it cannot be handled, :meth:`MattermostNotifier._attempt` turns it
    into :class:`~.delivery.Permanent`; it never reaches :func:`~.delivery.deliver`."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass
class _Delivery:
    """The state of one alert across attempts."""

    metrics: PerformanceMetrics
    report: Report
    pending_post_id: str | None = None
    file_id: str | None = None
    file_channel: str | None = None
    file_name: str | None = None
    #: Why the report is not attached (None: attached, or not decided yet).
    left_out: str | None = None
    shrink_note: str | None = None
    #: The report as last tried for upload (the full one, or re-rendered
    #: smaller), kept so a retry does not render it again.
    attachment: bytes | None = None


class MattermostNotifier(Notifier):
    """Posts each alert to a Mattermost channel with the HTML report attached.

    Configured by ``PERFWATCH_MATTERMOST_URL``, ``_TOKEN``, ``_CHANNEL_ID`` (or
    ``_TEAM`` + ``_CHANNEL``), ``_RETRIES``, ``_TIMEOUT`` and ``_VERIFY``.
    Nothing is sent at import or construction; :meth:`check` tests the
    settings against the server without posting.

    The class attributes below tune behaviour that is not a configuration key;
    change them on a subclass (and name it in ``PERFWATCH_NOTIFIERS`` as
    ``module:Class``) or on the instance.
    """

    name = "mattermost"

    #: A post's message is cut (cleanly, with a note) to this many characters.
    max_message_length: int = MAX_MESSAGE_LENGTH
    #: Reports larger than this are shrunk before upload; lowered for the
    #: process when the server answers 413 to a smaller one.
    max_file_size: int = DEFAULT_MAX_FILE_SIZE

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        _driver_module()
        sources = config.sources
        url = config.mattermost_url
        if url is None:
            raise ConfigError.invalid(key_name("mattermost_url"), url,
                                      sources.get("mattermost_url", "default"),
                                      "the Mattermost server's URL, e.g. "
                                      "'https://chat.example.com' (needed by the mattermost "
                                      "notifier)")
        self._options = _driver_options(url, sources.get("mattermost_url", "default"))
        self.url = url
        if not config.mattermost_token:
            raise ConfigError.invalid(key_name("mattermost_token"), None,
                                      sources.get("mattermost_token", "default"),
                                      "a personal access token or bot token (needed by the "
                                      "mattermost notifier)")
        self.channel_id, self.team, self.channel = _channel_settings(config)
        self.timeout = config.mattermost_timeout
        self.verify = config.mattermost_verify
        #: Retries, backoff and the waiting budget per alert: the shared policy.
        #: The budget stays under ``PERFWATCH_NOTIFIER_TIMEOUT``, which gives
        #: up on the whole send from outside.
        self.policy = RetryPolicy(retries=config.mattermost_retries,
                                  budget=min(60.0, config.notifier_timeout * 0.8))
        self._options.update(token=config.mattermost_token, verify=self.verify,
                             request_timeout=self.timeout, timeout=self.timeout)
        self._driver = _new_driver(self._options)  # no network: the driver is lazy
        self._user_id: str | None = None
        self._resolved_channel: str | None = self.channel_id
        _fork.register(self)

    def _after_fork_in_child(self) -> None:
        # the driver's HTTP session pools connections: never share them with the parent
        self._driver = _new_driver(self._options)

    # -- Notifier interface ----------------------------------------------------

    def send(self, metrics: PerformanceMetrics, report: Report) -> None:
        """Post the alert through the shared
        :func:`~flask_perfwatch.notifiers.delivery.deliver` with ``self.policy``
        (a :class:`~flask_perfwatch.notifiers.delivery.RetryPolicy`); the attempts
        share one alert's state, so each resumes where the last one stopped."""
        delivery = _Delivery(metrics, report)
        post = deliver("Mattermost", lambda _number: self._attempt(delivery), self.policy,
                       alert_id=metrics.id)
        self._after_post(delivery, post)

    def check(self) -> str:
        driver = _new_driver(self._options)
        try:
            me = self._call(_Step.TOKEN, driver.login)
            if self.channel_id is not None:
                channel = self._call(_Step.CHANNEL, driver.channels.get_channel,
                                     self.channel_id)
            else:
                channel = self._call(_Step.CHANNEL,
                                     driver.channels.get_channel_by_name_and_team_name,
                                     self.team, self.channel)
        except (Retryable, Permanent, _Refused) as failure:
            raise NotifierError(f"Mattermost: {failure.reason}",
                                retryable=isinstance(failure, Retryable)) from None
        me = me if isinstance(me, dict) else {}
        channel = channel if isinstance(channel, dict) else {}
        return (f"posts as @{me.get('username', '?')} to ~{channel.get('name', '?')} "
                f"({channel.get('id', '?')}) on {self.url}")

    def __repr__(self) -> str:
        where = self.channel_id or f"{self.team}/{self.channel}"
        return f"<{type(self).__name__} {self.url} {where}>"

    # -- one attempt -----------------------------------------------------------

    def _attempt(self, d: _Delivery) -> dict[str, Any]:
        """One attempt for :func:`~.delivery.deliver`: returns the post, or raises
        :class:`~.delivery.Retryable` / :class:`~.delivery.Permanent`."""
        try:
            if self._user_id is None:
                me = self._call(_Step.TOKEN, self._driver.login)
                user_id = me.get("id") if isinstance(me, dict) else None
                if not isinstance(user_id, str) or not user_id:
                    raise Retryable("GET /users/me answered without a user id")
                self._user_id = user_id
            if d.pending_post_id is None:
                d.pending_post_id = _pending_post_id(self._user_id, d.metrics.id)
            channel_id = self._channel()
            try:
                return self._upload_and_post(d, channel_id)
            except _Refused as refused:
                if refused.kind != "not_found" or self.channel_id is not None:
                    raise
                # the channel was deleted or re-created: look it up again, at once
                self._resolved_channel = None
                raise Retryable(f"{refused.reason}; looking the channel up again",
                                retry_after=0.0) from None
        except _Refused as refused:
            # a 404 on the token or a channel given by id, a 413 on the post, a
            # 501 outside the upload: no retry changes that
            raise Permanent(refused.reason) from None

    def _upload_and_post(self, d: _Delivery, channel_id: str) -> dict[str, Any]:
        if d.file_id is not None and d.file_channel != channel_id:
            d.file_id = None  # an upload belongs to its channel: upload again
        if d.file_id is None and d.left_out is None:
            self._upload(d, channel_id)
        message = build_message(d.metrics, attachment=self._attachment_line(d),
                                limit=self.max_message_length)
        options: dict[str, Any] = {
            "channel_id": channel_id,
            "message": message,
            "pending_post_id": d.pending_post_id,
            "props": {"perfwatch_alert_id": d.metrics.id},
        }
        if d.file_id is not None:
            options["file_ids"] = [d.file_id]
        post = self._call(_Step.POST, self._driver.posts.create_post, options)
        if not isinstance(post, dict) or not post.get("id"):
            raise Retryable("POST /posts answered without a post id")
        return post

    def _channel(self) -> str:
        if self._resolved_channel is not None:
            return self._resolved_channel
        channel = self._call(_Step.CHANNEL,
                             self._driver.channels.get_channel_by_name_and_team_name,
                             self.team, self.channel)
        channel_id = channel.get("id") if isinstance(channel, dict) else None
        if not isinstance(channel_id, str) or not channel_id:
            raise Retryable("the channel lookup answered without a channel id")
        logger.debug("Mattermost channel %s/%s is %s", self.team, self.channel, channel_id)
        self._resolved_channel = channel_id
        return channel_id

    def _upload(self, d: _Delivery, channel_id: str) -> None:
        while True:
            data = self._fitting_attachment(d)
            if data is None:
                self._leave_out(d, "it is larger than the server accepts "
                                   f"({format_size(self._upload_limit)}) even when shrunk")
                return
            name = d.report.filename
            try:
                answer = self._call(_Step.UPLOAD,
                                    self._driver.files.upload_file, channel_id,
                                    {"files": (name, data, "text/html")})
            except _Refused as refused:
                if refused.kind == "too_large":
                    logger.warning("Mattermost refused a %s report as too large (413); "
                                   "trying a smaller one", format_size(len(data)))
                    self.max_file_size = max(0, len(data) + _MULTIPART_MARGIN - 1)
                    continue
                if refused.kind == "disabled":
                    self._leave_out(d, "file uploads are disabled on the server")
                    return
                raise
            try:
                file_id = answer["file_infos"][0]["id"]
            except (KeyError, IndexError, TypeError):
                raise Retryable("POST /files answered without a file id") from None
            d.file_id, d.file_channel, d.file_name = str(file_id), channel_id, name
            return

    @property
    def _upload_limit(self) -> int:
        return max(0, self.max_file_size - _MULTIPART_MARGIN)

    def _fitting_attachment(self, d: _Delivery) -> bytes | None:
        """The report as it fits the upload limit: the one given, else rendered
        again by ``render_report(max_bytes=limit)``, which thins the profile
        step by step (``report.THINNING_STEPS``, as for
        ``PERFWATCH_REPORT_FILE_MAX_BYTES``). None when even the thinnest
        profile does not fit: a report without its profile tells the reader
        nothing the message does not, so then the post goes without one.

        After a 413 the limit is below the refused size, so the same report is
        never tried twice."""
        limit = self._upload_limit
        if d.attachment is not None and len(d.attachment) <= limit:
            return d.attachment
        full = d.report.html.encode()
        if len(full) <= limit:
            d.attachment, d.shrink_note = full, None
            return full
        if limit <= 0 or d.metrics.profile is None:
            return None
        smaller = render_report(d.metrics, max_bytes=limit)
        data = smaller.html.encode()
        if smaller.profile_state != "thinned" or len(data) > limit:
            return None  # render_report dropped the profile
        d.attachment = data
        d.shrink_note = (f"shrunk from {format_size(len(full))} to fit the upload limit: small "
                         "call-tree frames merged into their callers")
        return data

    def _leave_out(self, d: _Delivery, why: str) -> None:
        if d.report.url is not None:  # stored where the team can open it (PERFWATCH_REPORT_STORE)
            d.left_out = f"The report is not attached: {why}: [open it]({d.report.url})."
            logger.warning("Mattermost: posting %s without the report: %s (linked)",
                           d.metrics.id[:8], why)
            return
        try:
            path: Path | str = d.report.write(ReportFolder.from_config(self.config))
        except OSError as exc:
            logger.warning("Mattermost: keeping the report of %s failed", d.metrics.id[:8],
                           exc_info=True)
            path = (f"(not kept: writing to {self.config.resolved_report_dir} failed: "
                    f"{_short(exc)})")
        d.left_out = f"The report is not attached: {why}. It is kept on `{d.metrics.host}` " \
                     f"at `{path}`."
        logger.warning("Mattermost: posting %s without the report: %s; report kept at %s",
                       d.metrics.id[:8], why, path)

    def _attachment_line(self, d: _Delivery) -> str:
        if d.left_out is not None:
            return d.left_out
        line = (f"The pyinstrument report is attached: open `{d.file_name}` in a browser.")
        if d.shrink_note:
            line += f" ({d.shrink_note})"
        return line

    def _after_post(self, d: _Delivery, post: dict[str, Any]) -> None:
        if d.file_id is not None and d.file_id not in (post.get("file_ids") or []):
            try:
                path: Path | str = d.report.write(ReportFolder.from_config(self.config))
            except OSError as exc:
                logger.warning("Mattermost: keeping the report of %s failed", d.metrics.id[:8],
                               exc_info=True)
                path = f"(not kept: {_short(exc)})"
            logger.warning("Mattermost accepted post %s but dropped its attachment %s; "
                           "report kept at %s", post.get("id"), d.file_id, path)
        logger.debug("Mattermost post %s created for alert %s", post.get("id"),
                     d.metrics.id[:8])

    # -- calls and failures ------------------------------------------------------

    def _call(self, what: _Step, func: Callable[..., Any], *args: Any) -> Any:
        """Run one driver call; every exception becomes :class:`~.delivery.Retryable`,
        :class:`~.delivery.Permanent` or :class:`_Refused`."""
        try:
            return func(*args)
        except Exception as exc:
            failure = self._classify(what, exc)
            _close_responses(exc)
        # raised outside the handler: the failure keeps no reference to the
        # driver's exception, whose response would hold the connection open
        raise failure

    def _classify(self, what: _Step, exc: Exception) -> Retryable | Permanent | _Refused:
        import requests
        from mattermostdriver import exceptions as mm

        detail = _server_message(exc)
        if isinstance(exc, mm.NoAccessTokenProvided):
            self._user_id = None
            return Permanent(f"{what}: the token was rejected (401 {detail}); check "
                            f"{key_name('mattermost_token')}: a personal access token or bot token "
                            "that is not revoked, of an account that is not deactivated")
        if isinstance(exc, mm.NotEnoughPermissions):
            return Permanent(f"{what}: not allowed (403 {detail}); add the account "
                            "to the team and the channel, and allow it to post and upload "
                            "files")
        if isinstance(exc, mm.InvalidOrMissingParameters):
            return Permanent(f"{what}: rejected as invalid (400 {detail})")
        if isinstance(exc, mm.ContentTooLarge):
            return _Refused("too_large", f"{what}: too large for the server (413 {detail})")
        if isinstance(exc, mm.ResourceNotFound):
            return _Refused("not_found", self._not_found(what, detail))
        if isinstance(exc, mm.MethodNotAllowed):
            return Permanent(f"{what}: method not allowed (405 {detail}); is "
                            f"{key_name('mattermost_url')}={self.url!r} a Mattermost server?")
        if isinstance(exc, mm.FeatureDisabled):
            return _Refused("disabled", f"{what}: disabled on the server (501 {detail})")
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            status = exc.response.status_code
            detail = _response_detail(exc.response)
            if status == 429:
                wait = _retry_after(exc.response.headers)
                hint = f"; the server asks to wait {wait:.0f}s" if wait is not None else ""
                return Retryable(f"{what}: rate limited (429){hint}", retry_after=wait)
            if status >= 500 or status == 408:
                return Retryable(f"{what}: server error ({status} {detail})")
            return Permanent(f"{what}: unexpected answer ({status} {detail})")
        if isinstance(exc, requests.exceptions.SSLError):
            return Permanent(f"{what}: TLS failed ({_short(exc)}); fix the server's "
                            f"certificate (or {key_name('mattermost_verify')}=false for a test "
                            "server)")
        if isinstance(exc, requests.Timeout):
            return Retryable(f"{what}: no answer within {self.timeout:g}s "
                            f"({key_name('mattermost_timeout')})")
        if isinstance(exc, requests.ConnectionError):
            return Retryable(f"{what}: connection failed ({_short(exc)})")
        if isinstance(exc, requests.RequestException | ValueError):
            # broken or truncated answers (ChunkedEncodingError, invalid JSON)
            return Retryable(f"{what}: bad answer ({type(exc).__name__}: "
                            f"{_short(exc)})")
        return Permanent(f"{what}: {type(exc).__name__}: {_short(exc)}")

    def _not_found(self, what: _Step, detail: str) -> str:
        if what is _Step.TOKEN:
            return (f"{what}: not found (404 {detail}); "
                    f"{key_name('mattermost_url')}={self.url!r} "
                    "should be the server's base URL, as in the browser")
        if self.channel_id is not None:
            return (f"{what}: channel {self.channel_id} not found (404 {detail}); check "
                    f"{key_name('mattermost_channel_id')}")
        return (f"{what}: team {self.team!r} / channel {self.channel!r} not found "
                f"(404 {detail}); use the names in the channel's URL "
                "(https://<server>/<team>/channels/<channel>)")


# --- configuration --------------------------------------------------------------


def _driver_module() -> Any:
    return require_extra("mattermostdriver", extra="mattermost", notifier="mattermost")


def _new_driver(options: dict[str, Any]) -> Any:
    return _driver_module().Driver(dict(options))


def _driver_options(url: str, source: str) -> dict[str, Any]:
    """``scheme``/``url`` (host)/``port``/``basepath`` for :class:`mattermostdriver.Driver`."""
    parts = urlsplit(url)

    def bad(why: str) -> ConfigError:
        return ConfigError.invalid(key_name("mattermost_url"), url, source,
                                   f"the server's base URL such as 'https://chat.example.com' "
                                   f"or 'https://example.com/mattermost' ({why})")

    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad("http or https with a host name")
    try:
        port = parts.port
    except ValueError:
        raise bad("invalid port") from None
    if parts.username is not None or parts.password is not None:
        raise bad("no credentials in the URL; the token goes in "
                  f"{key_name('mattermost_token')}")
    if parts.query or parts.fragment:
        raise bad("no query string or fragment")
    path = parts.path.rstrip("/")
    if re.search(r"/api/v\d+$", path):
        raise bad("without the /api/v4 suffix")
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return {
        "scheme": parts.scheme,
        "url": host,
        "port": port or (443 if parts.scheme == "https" else 80),
        "basepath": f"{path}/api/v4",
    }


def _channel_settings(config: Config) -> tuple[str | None, str | None, str | None]:
    sources = config.sources
    channel_id, team, channel = (config.mattermost_channel_id, config.mattermost_team,
                                 config.mattermost_channel)
    if channel_id is not None:
        if team is not None or channel is not None:
            field_name = "mattermost_team" if team is not None else "mattermost_channel"
            raise ConfigError.invalid(key_name(field_name), team if team is not None else channel,
                                      sources.get(field_name, "default"),
                                      f"to be unset when {key_name('mattermost_channel_id')} "
                                      "is set (give the channel by id, or by team + channel "
                                      "name)")
        if not _ID_RE.match(channel_id):
            raise ConfigError.invalid(key_name("mattermost_channel_id"), channel_id,
                                      sources.get("mattermost_channel_id", "default"),
                                      "a channel id: 26 lower-case letters and digits (for a "
                                      f"name use {key_name('mattermost_team')} + _CHANNEL)")
        return channel_id, None, None
    if team is None and channel is None:
        raise ConfigError.invalid(key_name("mattermost_channel_id"), None,
                                  sources.get("mattermost_channel_id", "default"),
                                  f"a channel id, or {key_name('mattermost_team')} + "
                                  f"{key_name('mattermost_channel')} (needed by the mattermost "
                                  "notifier)")
    for field_name, value, what in (
        ("mattermost_team", team, "team"),
        ("mattermost_channel", channel, "channel"),
    ):
        key = key_name(field_name)
        if value is None:
            raise ConfigError.invalid(key, None, sources.get(field_name, "default"),
                                      f"the {what} name, together with the "
                                      f"{'channel' if what == 'team' else 'team'} name")
        if not _NAME_RE.match(value):
            raise ConfigError.invalid(key, value, sources.get(field_name, "default"),
                                      f"the {what}'s name as in its URL: lower-case letters, "
                                      "digits, '-' and '_' (not the display name)")
    return None, team, channel


# --- the message ----------------------------------------------------------------


def build_message(metrics: PerformanceMetrics, *, attachment: str = "",
                  limit: int = MAX_MESSAGE_LENGTH) -> str:
    """The Markdown text of an alert's post, at most ``limit`` characters: the
    headline and facts of :mod:`._message` as a heading and a bullet list.

    Values that come from the request (URL, endpoint, error) are shown as
    code, so they never render as Markdown or trigger ``@channel`` mentions;
    our own text is escaped all the same.
    """
    lines = text_lines(metrics, title="#### :{emoji}: {lead} {subject} {verb} {duration} "
                                      "({ratio})",
                       fact="- **{label}:** {value}", code=_code, plain=_plain)
    if attachment:
        lines.append("")
        lines.append(attachment)
    return _fit(lines, limit)


_TRUNCATED = "\n\n_(message shortened to fit the server's limit; the report has everything)_"


def _fit(lines: list[str], limit: int) -> str:
    text = "\n".join(lines)
    if len(text) <= limit:
        return text
    kept: list[str] = []
    budget = limit - len(_TRUNCATED)
    for line in lines:
        needed = len(line) + (1 if kept else 0)
        if needed > budget:
            break
        kept.append(line)
        budget -= needed
    if not kept:  # even the title is too long: cut it as plain text
        return (lines[0][:max(0, limit - 1)] + "…")[:limit]
    return "\n".join(kept) + _TRUNCATED


def _code(value: str, limit: int = MAX_VALUE_LENGTH) -> str:
    """``value`` as one Markdown code span, cut to ``limit`` and on one line."""
    text = " ".join(str(value).split())
    if len(text) > limit:
        text = text[:limit] + "…"
    if "`" not in text:
        return f"`{text}`"
    fence = "`" * (max(len(run) for run in re.findall(r"`+", text)) + 1)
    return f"{fence} {text} {fence}"


def _plain(value: str) -> str:
    """Text outside code: one line, no Markdown or mention characters."""
    text = " ".join(str(value).split())[:MAX_VALUE_LENGTH]
    return re.sub(r"([\\`*_{}\[\]()#+!|<>~@])", r"\\\1", text)


# --- helpers --------------------------------------------------------------------


def _pending_post_id(user_id: str, alert_id: str) -> str:
    """``<user id>:<13 digits>``, the shape Mattermost's own clients use, unique
    per alert: the server treats a repeat within ~30 s as the same post."""
    digest = int(hashlib.sha256(alert_id.encode()).hexdigest()[:10], 16)
    return f"{user_id}:{digest:013d}"


def _retry_after(headers: Any) -> float | None:
    """The wait a 429 asks for: ``Retry-After`` (seconds or an HTTP date, read by
    the shared :func:`~.delivery.parse_retry_after`), else Mattermost's own
    ``X-RateLimit-Reset`` (seconds until the limit resets, or a UNIX time); None
    if neither is usable."""
    wait = parse_retry_after(headers.get("Retry-After"))
    if wait is not None:
        return wait
    try:
        seconds = float(headers.get("X-RateLimit-Reset") or "")
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    if seconds > 1e9:  # an absolute UNIX time
        seconds -= time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _close_responses(exc: BaseException | None) -> None:
    """Close the HTTP responses an exception chain holds (their connections)."""
    seen = 0
    while exc is not None and seen < 10:
        response = getattr(exc, "response", None)
        if response is not None:
            response.close()
        exc, seen = exc.__cause__ or exc.__context__, seen + 1


def _response_detail(response: Any) -> str:
    """The server's message from an error answer: ``message`` of its JSON
    error body, or the start of a plain-text one (429s are plain text)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        return _short_text(" ".join(str(body["message"]).split()))
    text = " ".join(str(getattr(response, "text", "")).split())
    return _short_text(text, 200) or str(getattr(response, "reason", "") or "no details")


def _server_message(exc: Exception) -> str:
    """The server's own message (mattermostdriver puts it in the exception)."""
    text = " ".join(str(exc).split())
    return _short_text(text) if text else type(exc).__name__


def _short(exc: Exception) -> str:
    return _short_text(" ".join(str(exc).split()) or type(exc).__name__)


def _short_text(text: str, limit: int = 300) -> str:
    """A server's or driver's message as it may be logged: secrets masked (a
    driver error may quote the URL), control characters escaped, cut."""
    text = safe_text(mask_text(text))
    return text if len(text) <= limit else text[:limit] + "…"

