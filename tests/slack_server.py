"""A wire-level stand-in for the Slack Web API, on :class:`http_standin.StandIn`.

It answers what the ``slack`` notifier (through ``slack_sdk``'s ``WebClient``)
calls, with the JSON shapes and error codes of the real API:

- every method wants ``Authorization: Bearer <token>``: no header is
  ``not_authed``, another token ``invalid_auth``, a revoked one
  ``token_revoked``; a token sent anywhere else (form field, JSON body, the
  upload URL) is recorded in :attr:`SlackStandIn.errors`;
- scopes are checked per method (``missing_scope`` with ``needed`` and
  ``provided``), and every answer carries ``X-OAuth-Scopes`` as Slack's does;
- channels are known by ID, with the bot's membership: ``channel_not_found``
  (also for a private channel the bot is not in, as Slack answers),
  ``not_in_channel``, ``is_archived``;
- errors are HTTP 200 with ``{"ok": false, "error": ...}``; rate limits are
  HTTP 429 ``ratelimited`` with ``Retry-After`` (:meth:`SlackStandIn.rate_limit`);
- the external-upload flow: ``files.getUploadURLExternal`` (``filename``,
  ``length``) hands out an upload URL on this server, which takes the bytes
  raw or as multipart and answers ``OK - <length>``;
  ``files.completeUploadExternal`` shares the file in the channel with the
  ``initial_comment`` as the message, once only (a second completion of the
  same file is refused, as Slack documents "This method can only be called
  once"); a file is visible to ``files.info`` once completed;
- ``chat.postMessage`` (with ``metadata``), ``conversations.history``
  (``include_all_metadata``), ``conversations.info``, ``auth.test``.

Faults come from the base class per route (a route is named after the API
method, the upload URL is ``upload``): :meth:`~StandIn.fail`,
:meth:`~StandIn.delay`, :meth:`~StandIn.drop`, plus :meth:`SlackStandIn.error`
(an ``ok: false`` answer) and :meth:`SlackStandIn.rate_limit`. Tests assert on
:attr:`SlackStandIn.messages` (what landed in a channel) and
:attr:`SlackStandIn.files`.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from http_standin import Answer, Hit, StandIn, json_answer

#: Slack's limit on a message's text (``msg_too_long`` above it).
MAX_TEXT = 40_000

ApiHandler = Callable[[Hit, dict[str, Any]], dict[str, Any]]


class SlackError(Exception):
    """An ``{"ok": false, "error": code, ...extra}`` answer."""

    def __init__(self, code: str, **extra: Any) -> None:
        super().__init__(code)
        self.code = code
        self.extra = extra


@dataclass
class Channel:
    id: str
    name: str
    is_private: bool = False
    is_archived: bool = False
    bot_is_member: bool = True


@dataclass
class StoredFile:
    id: str
    key: str  # the opaque part of its upload URL
    filename: str
    length: int
    data: bytes | None = None
    uploads: int = 0
    title: str | None = None
    completed: bool = False
    shares: dict[str, str] = field(default_factory=dict)  # channel id -> message ts


@dataclass
class Message:
    """One message that landed in a channel."""

    channel: str
    ts: str
    text: str
    via: str  # the API method that created it
    files: list[str] = field(default_factory=list)
    metadata: dict[str, Any] | None = None


def header(hit: Hit, name: str) -> str | None:
    """A request header, whatever case the client sent it in."""
    for key, value in hit.headers.items():
        if key.lower() == name.lower():
            return value
    return None


class SlackStandIn(StandIn):
    """The Slack Web API at :attr:`api_url` (``http://127.0.0.1:<port>/api/``)."""

    team = "Acme Perf"
    team_id = "T0ACMEPERF"
    team_url = "https://acme-perf.slack.com/"
    bot_name = "perfwatch"
    bot_user_id = "U0PERFBOT1"
    bot_id = "B0PERFBOT1"

    def __init__(self) -> None:
        super().__init__()
        self.token = f"xoxb-1234567890-{secrets.token_hex(12)}"
        self.revoked = False
        self.scopes = {"chat:write", "files:write", "files:read", "channels:read",
                       "groups:read", "channels:history", "groups:history"}
        self.channel_id = "C0PERFALRT"
        self.channels = {c.id: c for c in (
            Channel(self.channel_id, "perf-alerts"),
            Channel("C0RANDOM01", "random", bot_is_member=False),
            Channel("C0OLDSTUFF", "old-stuff", is_archived=True),
            Channel("C0SECRET01", "secret-plans", is_private=True, bot_is_member=False),
        )}
        self.messages: list[Message] = []
        self.files: dict[str, StoredFile] = {}
        #: protocol mistakes the client made (a token where it does not belong,
        #: a length that does not match); the fixture fails the test on any
        self.errors: list[str] = []
        self._state = threading.Lock()
        self._ids = itertools.count(1)
        self._epoch = int(time.time())
        api: dict[str, tuple[str | None, ApiHandler]] = {
            "auth.test": (None, self._auth_test),
            "conversations.info": ("read", self._conversations_info),
            "conversations.history": ("history", self._conversations_history),
            "chat.postMessage": ("chat:write", self._post_message),
            "files.getUploadURLExternal": ("files:write", self._get_upload_url),
            "files.completeUploadExternal": ("files:write", self._complete_upload),
            "files.info": ("files:read", self._files_info),
        }
        for method, (scope, handler) in api.items():
            self.routes[method] = ("POST", re.compile(rf"^/api/{re.escape(method)}$"),
                                   self._api(scope, handler))
        self.routes["upload"] = ("POST", re.compile(r"^/upload/v1/(?P<key>[A-Za-z0-9_-]+)$"),
                                 self._upload)

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    # -- faults in Slack's own shapes ------------------------------------------

    def error(self, route: str, code: str, *, times: int = 1, **extra: Any) -> None:
        """Answer HTTP 200 ``{"ok": false, "error": code}`` instead, ``times`` times."""
        self.fail(route, 200, times=times, body={"ok": False, "error": code, **extra})

    def rate_limit(self, route: str, retry_after: int | None, *, times: int = 1) -> None:
        """Answer 429 ``ratelimited`` (with ``Retry-After`` unless None)."""
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        self.fail(route, 429, times=times, headers=headers,
                  body={"ok": False, "error": "ratelimited"})

    # -- what tests look at ------------------------------------------------------

    def messages_in(self, channel: str | None = None) -> list[Message]:
        with self._state:
            return [m for m in self.messages if m.channel == (channel or self.channel_id)]

    def file_of(self, message: Message) -> StoredFile:
        [file_id] = message.files
        return self.files[file_id]

    def sent_bytes_except_auth(self) -> bytes:
        """Every byte every request carried, minus the Authorization header
        (the one place the token belongs): for "no secret anywhere else"."""
        with self._lock:
            hits = list(self.requests)
        out = []
        for hit in hits:
            head = "".join(f"{k}: {v}\r\n" for k, v in hit.headers.items()
                           if k.lower() != "authorization")
            out.append(hit.path.encode() + b"\r\n" + head.encode() + b"\r\n" + hit.body)
        return b"\n".join(out)

    # -- plumbing ----------------------------------------------------------------

    def _ts(self) -> str:
        return f"{self._epoch}.{next(self._ids):06d}"

    def _args(self, hit: Hit) -> dict[str, Any]:
        content_type = (header(hit, "Content-Type") or "").lower()
        args: dict[str, Any] = {k: v[-1] for k, v in hit.query.items()}
        if hit.body and content_type.startswith("application/json"):
            body = json.loads(hit.body)
            if not isinstance(body, dict):
                raise SlackError("invalid_json")
            args.update(body)
        elif hit.body:
            args.update({k: v[-1] for k, v in
                         parse_qs(hit.body.decode("utf-8"), keep_blank_values=True).items()})
        return args

    def _api(self, scope: str | None, handler: ApiHandler) -> Callable[[Hit, Any], Answer]:
        def handle(hit: Hit, match: re.Match[str]) -> Answer:
            scopes = ",".join(sorted(self.scopes))
            try:
                args = self._args(hit)
                self._authenticate(hit, args)
                if scope not in (None, "read", "history") and scope not in self.scopes:
                    raise SlackError("missing_scope", needed=scope, provided=scopes)
                with self._state:
                    payload = handler(hit, args)
            except SlackError as exc:
                payload = {"ok": False, "error": exc.code, **exc.extra}
            return json_answer(200, payload, {"X-OAuth-Scopes": scopes})

        return handle

    def _authenticate(self, hit: Hit, args: dict[str, Any]) -> None:
        if "token" in args:
            self.errors.append(f"{hit.route}: the token was sent in the request body")
        value = header(hit, "Authorization")
        if value is None:
            raise SlackError("not_authed")
        if value != f"Bearer {self.token}":
            raise SlackError("invalid_auth")
        if self.revoked:
            raise SlackError("token_revoked")

    def _channel(self, args: dict[str, Any], key: str = "channel", *,
                 post: bool = False) -> Channel:
        channel = self.channels.get(str(args.get(key) or ""))
        if channel is None or (channel.is_private and not channel.bot_is_member):
            raise SlackError("channel_not_found")
        if post and channel.is_archived:
            raise SlackError("is_archived")
        if post and not channel.bot_is_member:
            raise SlackError("not_in_channel")
        return channel

    def _read_scope(self, channel: Channel, public: str, private: str) -> None:
        needed = private if channel.is_private else public
        if needed not in self.scopes:
            raise SlackError("missing_scope", needed=needed,
                             provided=",".join(sorted(self.scopes)))

    def _message_json(self, message: Message, *, metadata: bool) -> dict[str, Any]:
        shown: dict[str, Any] = {"type": "message", "ts": message.ts, "text": message.text,
                                 "user": self.bot_user_id, "bot_id": self.bot_id}
        if message.files:
            shown["files"] = [{"id": f} for f in message.files]
        if metadata and message.metadata is not None:
            shown["metadata"] = message.metadata
        return shown

    # -- the methods ---------------------------------------------------------------

    def _auth_test(self, hit: Hit, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": self.team_url, "team": self.team, "user": self.bot_name,
                "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": self.bot_id,
                "is_enterprise_install": False}

    def _conversations_info(self, hit: Hit, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        self._read_scope(channel, "channels:read", "groups:read")
        return {"ok": True, "channel": {
            "id": channel.id, "name": channel.name, "is_channel": True,
            "is_private": channel.is_private, "is_archived": channel.is_archived,
            "is_member": channel.bot_is_member}}

    def _conversations_history(self, hit: Hit, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        self._read_scope(channel, "channels:history", "groups:history")
        if not channel.bot_is_member:
            raise SlackError("not_in_channel")
        oldest = float(args.get("oldest") or 0)
        limit = int(args.get("limit") or 100)
        metadata = str(args.get("include_all_metadata")).lower() in ("1", "true")
        found = [m for m in self.messages if m.channel == channel.id and float(m.ts) > oldest]
        found.reverse()  # newest first
        return {"ok": True, "messages": [self._message_json(m, metadata=metadata)
                                         for m in found[:limit]],
                "has_more": len(found) > limit}

    def _post_message(self, hit: Hit, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args, post=True)
        text = args.get("text")
        if not isinstance(text, str) or not text:
            raise SlackError("no_text")
        if len(text) > MAX_TEXT:
            raise SlackError("msg_too_long")
        metadata = args.get("metadata")
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        message = Message(channel.id, self._ts(), text, "chat.postMessage", metadata=metadata)
        self.messages.append(message)
        return {"ok": True, "channel": channel.id, "ts": message.ts,
                "message": self._message_json(message, metadata=False)}

    def _get_upload_url(self, hit: Hit, args: dict[str, Any]) -> dict[str, Any]:
        filename = args.get("filename")
        try:
            length = int(args.get("length", ""))
        except ValueError:
            raise SlackError("invalid_arguments") from None
        if not filename or length <= 0:
            raise SlackError("invalid_arguments")
        stored = StoredFile(f"F0{secrets.token_hex(5).upper()}", secrets.token_urlsafe(24),
                            str(filename), length)
        self.files[stored.id] = stored
        return {"ok": True, "upload_url": f"{self.base_url}/upload/v1/{stored.key}",
                "file_id": stored.id}

    def _complete_upload(self, hit: Hit, args: dict[str, Any]) -> dict[str, Any]:
        files = args.get("files")
        if isinstance(files, str):
            files = json.loads(files)
        if not isinstance(files, list) or not files:
            raise SlackError("invalid_arguments")
        stored = []
        for item in files:
            found = self.files.get(str(item.get("id")))
            # never uploaded, or completed already: the pending upload is gone
            if found is None or found.data is None or found.completed:
                raise SlackError("file_not_found")
            stored.append((found, item.get("title")))
        channel = self._channel(args, "channel_id", post=True) if args.get("channel_id") \
            else None
        ts = self._ts()
        for found, title in stored:
            found.completed = True
            found.title = title or found.filename
            if channel is not None:
                found.shares[channel.id] = ts
        if channel is not None:
            self.messages.append(Message(channel.id, ts, str(args.get("initial_comment") or ""),
                                         "files.completeUploadExternal",
                                         files=[f.id for f, _ in stored]))
        return {"ok": True, "files": [{"id": f.id, "title": f.title} for f, _ in stored]}

    def _files_info(self, hit: Hit, args: dict[str, Any]) -> dict[str, Any]:
        found = self.files.get(str(args.get("file") or ""))
        if found is None or not found.completed:
            raise SlackError("file_not_found")
        public: dict[str, list[dict[str, Any]]] = {}
        private: dict[str, list[dict[str, Any]]] = {}
        for channel_id, ts in found.shares.items():
            channel = self.channels[channel_id]
            (private if channel.is_private else public)[channel_id] = [
                {"ts": ts, "channel_name": channel.name, "reply_count": 0}]
        shares = {k: v for k, v in (("public", public), ("private", private)) if v}
        return {"ok": True, "file": {
            "id": found.id, "name": found.filename, "title": found.title,
            "mimetype": "text/html", "filetype": "html", "size": found.length,
            "user": self.bot_user_id, "shares": shares, "channels": sorted(public),
            "groups": sorted(private), "ims": []}}

    def _upload(self, hit: Hit, match: re.Match[str]) -> Answer:
        if header(hit, "Authorization") is not None:
            self.errors.append("the token was sent to the upload URL")
        with self._state:
            found = next((f for f in self.files.values() if f.key == match["key"]), None)
        if found is None:
            return 404, {"Content-Type": "text/plain"}, b"Not Found"
        data = _uploaded_bytes(hit)
        if len(data) != found.length:
            self.errors.append(f"upload of {found.id}: {len(data)} bytes, "
                               f"{found.length} announced")
            return 400, {"Content-Type": "text/plain"}, b"length mismatch"
        with self._state:
            found.data = data
            found.uploads += 1
        return 200, {"Content-Type": "text/plain; charset=utf-8"}, \
            f"OK - {len(data)}".encode()


def _uploaded_bytes(hit: Hit) -> bytes:
    """The file's bytes: the raw body, or the file part of a multipart body."""
    content_type = header(hit, "Content-Type") or ""
    if not content_type.lower().startswith("multipart/form-data"):
        return hit.body
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + hit.body)
    for part in message.iter_parts():
        if part.get_filename() is not None:
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else b""
    return b""
