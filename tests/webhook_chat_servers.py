"""Wire-level stand-ins for a Microsoft Teams *Workflows* webhook and the
Discord webhook API, on :class:`http_standin.StandIn` (real HTTP on
127.0.0.1, every request recorded to the byte, faults per route).

:class:`TeamsWorkflowStandIn` behaves like the trigger of the "Send webhook
alerts to a channel" workflow:

- ``POST /workflows/<id>/triggers/manual/paths/invoke?api-version=1&sp=...&sv=1.0&sig=<sig>``;
- a wrong or missing ``sig`` is ``401`` and an unknown workflow ``404``, with
  the Logic Apps error body ``{"error": {"code", "message"}}``;
- a body that is not the message envelope with Adaptive Card attachments is
  ``400`` (``TriggerInputSchemaMismatch``);
- otherwise ``202 Accepted`` with an empty body and ``x-ms-workflow-run-id``.
  The card is then "posted" (:attr:`cards`), unless the message is over
  Teams' ~28 KB limit: the real flow then fails *after* answering 202, so it
  lands in :attr:`lost` and nobody sees it;
- throttling is ``429`` with ``Retry-After`` (:meth:`throttle`).

:class:`DiscordWebhookStandIn` behaves like ``/api[/v<n>]/webhooks/<id>/<token>``:

- ``GET`` answers the webhook object (``id``, ``name``, ``channel_id``,
  ``guild_id``, ``token``...);
- ``POST`` takes JSON or ``multipart/form-data`` (``payload_json`` + ``files[n]``,
  checked against ``attachments``), rejects content over 2000 characters and
  empty messages (400, ``Invalid Form Body`` / code 50006), files over
  :attr:`~DiscordWebhookStandIn.max_file_size` (413, code 40005), a wrong
  token (401, 50027), a deleted webhook (404, ``Unknown Webhook`` 10015);
  answers the message object (200) with ``?wait=true``, else 204;
- a rate limit (:meth:`~DiscordWebhookStandIn.rate_limit`) is 429 with the
  JSON body ``{"message", "retry_after", "global"}`` (float seconds; integer
  *milliseconds* on the unversioned/v6 API, as the real one) and headers;
- which mentions *would have pinged* is worked out from ``allowed_mentions``
  (absent: everything in the content counts) into :attr:`pings`.
"""

from __future__ import annotations

import json
import math
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from http_standin import Answer, Hit, StandIn, json_answer

#: Teams' limit on a posted message (the card JSON), in bytes.
TEAMS_MESSAGE_LIMIT = 28 * 1024
CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"

#: Adaptive Card element and action types this stand-in knows Teams renders.
KNOWN_ELEMENTS = {"TextBlock", "RichTextBlock", "FactSet", "ColumnSet", "Column", "Container",
                  "Image", "ActionSet"}
KNOWN_INLINES = {"TextRun"}
KNOWN_ACTIONS = {"Action.OpenUrl", "Action.ShowCard", "Action.ToggleVisibility"}


def logic_apps_error(status: int, code: str, message: str,
                     headers: dict[str, str] | None = None) -> Answer:
    return json_answer(status, {"error": {"code": code, "message": message}}, headers)


class TeamsWorkflowStandIn(StandIn):
    """A Teams Workflows webhook on 127.0.0.1."""

    def __init__(self, *, workflow_id: str = "abc", sig: str = "SECRETSIG") -> None:
        super().__init__()
        self.workflow_id = workflow_id
        self.sig = sig
        #: Cards Teams showed in the channel, in order.
        self.cards: list[dict[str, Any]] = []
        #: Messages the workflow accepted (202) but Teams then dropped (too large).
        self.lost: list[bytes] = []
        #: Deviations a real Teams would show as "card could not be rendered".
        self.errors: list[str] = []
        self.routes["invoke"] = ("POST", re.compile(
            r"^/workflows/(?P<workflow>[^/]+)/triggers/manual/paths/invoke$"), self._invoke)

    @property
    def url(self) -> str:
        return (f"{self.base_url}/workflows/{self.workflow_id}/triggers/manual/paths/invoke"
                f"?api-version=1&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={self.sig}")

    def throttle(self, *, retry_after: int | None = 7, times: int = 1) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        self.fail("invoke", 429, times=times, headers=headers, body={"error": {
            "code": "WorkflowRequestsThrottled",
            "message": "Number of requests for this workflow exceeded the limit. "
                       "Retry after the time in the Retry-After header."}})

    def _invoke(self, hit: Hit, match: re.Match[str]) -> Answer:
        if hit.query.get("sig") != [self.sig]:
            return logic_apps_error(401, "DirectApiAuthorizationRequired",
                                    "The request must be authenticated only by Shared Access "
                                    "scheme.")
        if match.group("workflow") != self.workflow_id:
            return logic_apps_error(404, "WorkflowNotFound",
                                    f"The workflow '{match.group('workflow')}' could not be "
                                    "found.")
        problem = self._schema_problem(hit)
        if problem:
            return logic_apps_error(400, "TriggerInputSchemaMismatch",
                                    f"The input body for trigger 'manual' of type 'Request' did "
                                    f"not match its schema definition. {problem}")
        run_id = uuid.uuid4().hex.upper()[:26]
        envelope = hit.json()
        with self._lock:
            if len(hit.body) > TEAMS_MESSAGE_LIMIT:
                self.lost.append(hit.body)
            else:
                for attachment in envelope["attachments"]:
                    card = attachment["content"]
                    self.errors.extend(card_problems(card))
                    self.cards.append(card)
        return 202, {"x-ms-workflow-run-id": run_id}, b""

    @staticmethod
    def _schema_problem(hit: Hit) -> str:
        if not hit.headers.get("Content-Type", "").startswith("application/json"):
            return "Error details: 'The content type is not application/json.'"
        try:
            envelope = hit.json()
        except ValueError:
            return "Error details: 'The body is not valid JSON.'"
        if not isinstance(envelope, dict) or envelope.get("type") != "message":
            return "Error details: 'Required property type is missing or not message.'"
        attachments = envelope.get("attachments")
        if not isinstance(attachments, list) or not attachments:
            return "Error details: 'Required property attachments is missing.'"
        for attachment in attachments:
            if not isinstance(attachment, dict) \
                    or attachment.get("contentType") != CARD_CONTENT_TYPE \
                    or not isinstance(attachment.get("content"), dict):
                return "Error details: 'attachments[].contentType/content is invalid.'"
            content = attachment["content"]
            if content.get("type") != "AdaptiveCard" or not isinstance(content.get("body"), list):
                return "Error details: 'content is not an AdaptiveCard with a body.'"
        return ""


def card_problems(card: dict[str, Any]) -> list[str]:
    """What would keep Teams from rendering ``card`` as sent."""
    problems: list[str] = []
    if not isinstance(card.get("version"), str):
        problems.append("card version missing")

    def walk(element: Any, where: str) -> None:
        if not isinstance(element, dict):
            problems.append(f"{where}: not an object")
            return
        kind = element.get("type")
        if kind not in KNOWN_ELEMENTS:
            problems.append(f"{where}: unknown element {kind!r}")
        if kind == "TextBlock" and not isinstance(element.get("text"), str):
            problems.append(f"{where}: TextBlock without text")
        if kind == "RichTextBlock":
            for i, inline in enumerate(element.get("inlines") or []):
                if not isinstance(inline, dict) or inline.get("type") not in KNOWN_INLINES \
                        or not isinstance(inline.get("text"), str):
                    problems.append(f"{where}.inlines[{i}]: bad inline")
        for key in ("items", "columns"):
            for i, child in enumerate(element.get(key) or []):
                walk(child, f"{where}.{key}[{i}]")

    for i, element in enumerate(card.get("body") or []):
        walk(element, f"body[{i}]")
    for i, action in enumerate(card.get("actions") or []):
        if not isinstance(action, dict) or action.get("type") not in KNOWN_ACTIONS:
            problems.append(f"actions[{i}]: unknown action")
        elif action["type"] == "Action.OpenUrl" and not re.match(
                r"^https?://", str(action.get("url", ""))):
            problems.append(f"actions[{i}]: Action.OpenUrl without an http(s) url")
    return problems


def card_texts(card: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(markdown, plain)``: the strings Teams reads as Markdown (TextBlock
    text, FactSet titles and values) and those it shows as typed (TextRun)."""
    markdown: list[str] = []
    plain: list[str] = []

    def walk(element: Any) -> None:
        if isinstance(element, dict):
            kind = element.get("type")
            if kind == "TextBlock":
                markdown.append(element.get("text", ""))
            elif kind == "FactSet":
                for fact in element.get("facts") or []:
                    markdown.extend([fact.get("title", ""), fact.get("value", "")])
            elif kind == "TextRun":
                plain.append(element.get("text", ""))
            for value in element.values():
                if isinstance(value, list | dict):
                    walk(value)
        elif isinstance(element, list):
            for item in element:
                walk(item)

    walk(card.get("body"))
    return markdown, plain


def card_text(card: dict[str, Any]) -> str:
    """Everything a reader sees in the card's body, joined (runs of one
    block without separator, blocks by new lines)."""
    lines: list[str] = []
    for element in card.get("body") or []:
        if element.get("type") == "RichTextBlock":
            lines.append("".join(i.get("text", "") for i in element.get("inlines") or []))
        elif element.get("type") == "TextBlock":
            lines.append(element.get("text", ""))
    return "\n".join(lines)


# --- Discord ---------------------------------------------------------------------------

MAX_CONTENT = 2000
MENTION = re.compile(r"@everyone|@here|<@[!&]?\d+>")


@dataclass
class DiscordFile:
    field: str
    filename: str
    data: bytes
    content_type: str


@dataclass
class DiscordMessage:
    id: str
    content: str
    payload: dict[str, Any]
    files: list[DiscordFile] = field(default_factory=list)
    #: Mentions that would have notified someone.
    pinged: list[str] = field(default_factory=list)


class DiscordWebhookStandIn(StandIn):
    """The Discord webhook API on 127.0.0.1."""

    def __init__(self, *, webhook_id: str = "123", token: str = "SECRETTOKEN") -> None:
        super().__init__()
        self.webhook_id = webhook_id
        self.token = token
        self.name = "perfwatch alerts"
        self.channel_id = "1100000000000000042"
        self.guild_id = "1000000000000000007"
        self.deleted = False
        #: The server's upload limit (10 MiB without boosts).
        self.max_file_size = 10 * 1024 * 1024
        self.messages: list[DiscordMessage] = []
        #: Mentions that would have pinged, over all messages.
        self.pings: list[str] = []
        #: Set to ``seconds``: each successful post says the bucket is now empty.
        self.bucket_reset_after: float | None = None
        self._rate_limits: list[tuple[float, bool]] = []
        self._ids = iter(range(1200000000000000000, 1300000000000000000))
        self._id_lock = threading.Lock()
        path = r"^/api(?:/v(?P<version>\d+))?/webhooks/(?P<id>\d+)/(?P<token>[^/]+)$"
        self.routes["execute"] = ("POST", re.compile(path), self._execute)
        self.routes["get"] = ("GET", re.compile(path), self._get)

    @property
    def url(self) -> str:
        return f"{self.base_url}/api/webhooks/{self.webhook_id}/{self.token}"

    def rate_limit(self, retry_after: float = 2.5, *, is_global: bool = False,
                   times: int = 1) -> None:
        """The next ``times`` posts get a 429 asking for ``retry_after`` seconds."""
        with self._lock:
            self._rate_limits.extend([(retry_after, is_global)] * times)

    def _new_id(self) -> str:
        with self._id_lock:
            return str(next(self._ids))

    # -- routes ----------------------------------------------------------------------

    def _known(self, match: re.Match[str]) -> Answer | None:
        if match.group("version") in ("3", "4", "5"):
            return json_answer(400, {"message": "This API version is discontinued", "code": 0})
        if self.deleted or match.group("id") != self.webhook_id:
            return json_answer(404, {"message": "Unknown Webhook", "code": 10015})
        if match.group("token") != self.token:
            return json_answer(401, {"message": "Invalid Webhook Token", "code": 50027})
        return None

    def _get(self, hit: Hit, match: re.Match[str]) -> Answer:
        refused = self._known(match)
        if refused is not None:
            return refused
        return json_answer(200, {
            "application_id": None, "avatar": None, "channel_id": self.channel_id,
            "guild_id": self.guild_id, "id": self.webhook_id, "name": self.name, "type": 1,
            "token": self.token})

    def _execute(self, hit: Hit, match: re.Match[str]) -> Answer:
        refused = self._known(match)
        if refused is not None:
            return refused
        with self._lock:
            limited = self._rate_limits.pop(0) if self._rate_limits else None
        if limited is not None:
            return self._too_many(limited, match.group("version"))
        try:
            payload, files = parse_execute_body(hit)
        except ValueError as exc:
            return json_answer(400, {"message": "Invalid Form Body", "code": 50035,
                                     "errors": {"_errors": [{"code": "PARSE",
                                                             "message": str(exc)}]}})
        if any(len(f.data) > self.max_file_size for f in files):
            return json_answer(413, {"message": "Request entity too large", "code": 40005})
        content = payload.get("content") or ""
        if len(content) > MAX_CONTENT:
            return json_answer(400, {"message": "Invalid Form Body", "code": 50035, "errors": {
                "content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH",
                                         "message": "Must be 2000 or fewer in length."}]}}})
        if not content and not files and not payload.get("embeds"):
            return json_answer(400, {"message": "Cannot send an empty message", "code": 50006})
        message = DiscordMessage(self._new_id(), content, payload, files,
                                 would_ping(content, payload.get("allowed_mentions")))
        with self._lock:
            self.messages.append(message)
            self.pings.extend(message.pinged)
        headers = {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "4",
                   "X-RateLimit-Reset-After": "2.000", "X-RateLimit-Bucket": "b0cc1e"}
        if self.bucket_reset_after is not None:
            headers["X-RateLimit-Remaining"] = "0"
            headers["X-RateLimit-Reset-After"] = f"{self.bucket_reset_after:.3f}"
        if hit.query.get("wait") != ["true"]:
            return 204, headers, b""
        return json_answer(200, self._message_object(message), headers)

    def _too_many(self, limited: tuple[float, bool], version: str | None) -> Answer:
        seconds, is_global = limited
        # API v6 (the default without a version in the path) counted milliseconds
        legacy = version is None or int(version) < 8
        retry_after: float | int = int(seconds * 1000) if legacy else seconds
        headers = {"Retry-After": str(math.ceil(seconds)), "X-RateLimit-Limit": "5",
                   "X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": f"{seconds:.3f}",
                   "X-RateLimit-Scope": "global" if is_global else "user"}
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        return json_answer(429, {"message": "You are being rate limited.",
                                 "retry_after": retry_after, "global": is_global}, headers)

    def _message_object(self, message: DiscordMessage) -> dict[str, Any]:
        return {
            "id": message.id, "type": 0, "channel_id": self.channel_id,
            "content": message.content, "webhook_id": self.webhook_id,
            "author": {"id": self.webhook_id, "username": self.name, "bot": True,
                       "discriminator": "0000", "avatar": None},
            "attachments": [{"id": self._new_id(), "filename": f.filename, "size": len(f.data),
                             "url": f"https://cdn.discordapp.com/attachments/{self.channel_id}/"
                                    f"{message.id}/{f.filename}",
                             "proxy_url": "https://media.discordapp.net/...",
                             "content_type": f.content_type}
                            for f in message.files],
            "embeds": [], "mentions": [], "mention_roles": [],
            "mention_everyone": "@everyone" in message.pinged,
            "pinned": False, "tts": False, "timestamp": "2026-12-01T10:00:00.000000+00:00",
            "edited_timestamp": None, "flags": message.payload.get("flags", 0),
            "components": [],
        }


def would_ping(content: str, allowed: Any) -> list[str]:
    """The mentions in ``content`` that notify someone, per ``allowed_mentions``
    (absent: all of them; the stand-in ignores Markdown, so it is stricter
    than Discord for a mention inside code)."""
    found = MENTION.findall(content)
    if allowed is None:
        return found
    if not isinstance(allowed, dict):
        return found
    parse = allowed.get("parse") or []
    pinged = []
    for mention in found:
        if mention in ("@everyone", "@here"):
            if "everyone" in parse:
                pinged.append(mention)
        elif mention.startswith("<@&"):
            if "roles" in parse or mention[3:-1] in (allowed.get("roles") or []):
                pinged.append(mention)
        elif "users" in parse or mention.strip("<@!>") in (allowed.get("users") or []):
            pinged.append(mention)
    return pinged


def parse_execute_body(hit: Hit) -> tuple[dict[str, Any], list[DiscordFile]]:
    """``(payload, files)`` of an execute-webhook body (JSON or multipart)."""
    content_type = hit.headers.get("Content-Type", "")
    if content_type.startswith("application/json"):
        payload = json.loads(hit.body)
        if not isinstance(payload, dict):
            raise ValueError("the body is not a JSON object")
        return payload, []
    if not content_type.startswith("multipart/form-data"):
        raise ValueError(f"unsupported content type {content_type!r}")
    parts = parse_multipart(content_type, hit.body)
    payload = {}
    files: list[DiscordFile] = []
    for name, filename, data, part_type in parts:
        if name == "payload_json":
            payload = json.loads(data)
        elif re.fullmatch(r"files\[\d+\]", name) and filename is not None:
            files.append(DiscordFile(name, filename, data, part_type))
        else:
            raise ValueError(f"unexpected form field {name!r}")
    described = {str(a.get("id")): a for a in payload.get("attachments") or []}
    for f in files:
        index = f.field[len("files["):-1]
        if index not in described:
            raise ValueError(f"{f.field} has no entry in attachments")
        if described[index].get("filename", f.filename) != f.filename:
            raise ValueError(f"{f.field}: filename differs from attachments")
    if len(described) > len(files):
        raise ValueError("attachments describe a file that was not sent")
    return payload, files


def parse_multipart(content_type: str, body: bytes
                    ) -> list[tuple[str, str | None, bytes, str]]:
    """``[(field name, filename or None, data, content type)]``, bytes exact."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise ValueError("multipart without a boundary")
    delimiter = b"--" + match.group(1).encode()
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise ValueError("multipart body is not terminated")
    parts = []
    for chunk in chunks[1:-1]:
        if not chunk.startswith(b"\r\n") or not chunk.endswith(b"\r\n"):
            raise ValueError("malformed multipart part")
        head, sep, data = chunk[2:-2].partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("multipart part without headers")
        headers = {}
        for line in head.decode("utf-8").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        name_m = re.search(r'\bname="([^"]*)"', disposition)
        file_m = re.search(r'\bfilename="([^"]*)"', disposition)
        if name_m is None:
            raise ValueError("multipart part without a name")
        parts.append((name_m.group(1), file_m.group(1) if file_m else None, data,
                      headers.get("content-type", "text/plain")))
    return parts
