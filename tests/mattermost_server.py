"""A wire-level stand-in for the parts of the Mattermost API v4 that
``mattermostdriver`` calls when flask_perfwatch posts an alert.

It speaks real HTTP on 127.0.0.1 (stdlib ``http.server``, one thread per
connection), answers with the JSON shapes of a real server and its error
bodies (``id``, ``message``, ``detailed_error``, ``request_id``,
``status_code``), and behaves like one where it matters to a client:

- ``Authorization: Bearer <token>`` is checked on every call (401 otherwise);
- ``GET /users/me``, ``GET /teams/name/{team}/channels/name/{channel}``,
  ``GET /channels/{id}``;
- ``POST /files`` takes ``multipart/form-data`` (``channel_id`` + ``files``)
  and answers ``413`` above :attr:`MattermostStandIn.max_file_size`, or
  ``501`` when uploads are disabled;
- ``POST /posts`` rejects messages over 16383 characters (400), silently
  drops ``file_ids`` it cannot attach (unknown, another user's or channel's,
  already attached) and treats a repeated ``pending_post_id`` within 30 s as
  the same post (answers with the post created the first time);
- a rate-limited answer is ``429`` with a *plain-text* body and the
  ``Retry-After`` / ``X-Ratelimit-*`` headers.

Faults are injected per route with :meth:`~MattermostStandIn.fail`,
:meth:`~MattermostStandIn.rate_limit`, :meth:`~MattermostStandIn.delay` and
:meth:`~MattermostStandIn.drop`; everything that arrived is recorded in
:attr:`~MattermostStandIn.requests`, :attr:`~MattermostStandIn.posts` and
:attr:`~MattermostStandIn.files` so tests can assert on the actual post and
the bytes of the attached file.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API = "/api/v4"
MAX_MESSAGE_RUNES = 16383
PENDING_POST_TTL = 30.0

ROUTES = {
    "me": ("GET", re.compile(r"^/api/v4/users/me$")),
    "channel_by_name": ("GET", re.compile(r"^/api/v4/teams/name/([^/]+)/channels/name/([^/]+)$")),
    "channel": ("GET", re.compile(r"^/api/v4/channels/([a-z0-9]+)$")),
    "upload": ("POST", re.compile(r"^/api/v4/files$")),
    "post": ("POST", re.compile(r"^/api/v4/posts$")),
}


def new_id() -> str:
    """A Mattermost id: 26 characters of lower-case base32."""
    alphabet = "ybndrfg8ejkmcpqxot1uwisza345h769"
    return "".join(secrets.choice(alphabet) for _ in range(26))


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Fault:
    route: str
    kind: str  # "status" | "delay" | "drop"
    times: int
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    seconds: float = 0.0
    when: str = "request"  # drop: "request" (before answering) | "after" (processed, no answer)


@dataclass
class Hit:
    """One request as it arrived, and how it was answered."""

    route: str
    method: str
    path: str
    status: int | None  # None: the connection was dropped
    fault: str | None
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


@dataclass
class StoredFile:
    id: str
    name: str
    data: bytes
    mime_type: str
    channel_id: str
    user_id: str
    post_id: str = ""


class _Server(ThreadingHTTPServer):
    # handler threads are joined by server_close(); delays wake up on close
    daemon_threads = False
    standin: MattermostStandIn

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that gave up (timeout) makes our late answer fail: expected
        import sys

        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            self.standin.errors.append(repr(exc))


class MattermostStandIn:
    """The stand-in server. Use as a context manager or call :meth:`start`
    and :meth:`close`; :attr:`url` is ``http://127.0.0.1:<port>``."""

    def __init__(self, *, token: str = "pw-test-token-0123456789",
                 team: str = "engineering", channel: str = "perf-alerts",
                 max_file_size: int = 100 * 1024 * 1024) -> None:
        self.token = token
        self.team_name = team
        self.team_id = new_id()
        self.user_id = new_id()
        self.channels: dict[str, dict[str, Any]] = {}
        self.channel_id = self._create_channel(channel)
        self.max_file_size = max_file_size
        self.uploads_enabled = True
        self.lock = threading.Lock()
        self.faults: list[Fault] = []
        self.requests: list[Hit] = []
        self.posts: list[dict[str, Any]] = []
        self.files: dict[str, StoredFile] = {}
        self.pending: dict[str, tuple[str, float]] = {}
        self.errors: list[str] = []
        self.hooks: list[tuple[str, Callable[[], None]]] = []
        #: Routes of requests as they arrive (before any delay or answer).
        self.arrivals: list[str] = []
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> MattermostStandIn:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.standin = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="mattermost-standin", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()  # joins the handler threads
            self._server = None
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> MattermostStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- state helpers -------------------------------------------------------

    def _create_channel(self, name: str) -> str:
        channel_id = new_id()
        self.channels[channel_id] = {
            "id": channel_id, "create_at": now_ms(), "update_at": now_ms(), "delete_at": 0,
            "team_id": self.team_id, "type": "O", "display_name": name.replace("-", " ").title(),
            "name": name, "header": "", "purpose": "", "last_post_at": 0,
            "total_msg_count": 0, "extra_update_at": 0, "creator_id": self.user_id,
            "scheme_id": None, "props": None, "group_constrained": None, "shared": None,
        }
        return channel_id

    def recreate_channel(self) -> str:
        """Delete the channel and create a new one with the same name (new id)."""
        with self.lock:
            name = self.channels.pop(self.channel_id)["name"]
            self.channel_id = self._create_channel(name)
            return self.channel_id

    def hits(self, route: str, *, status: int | str | None = "any") -> list[Hit]:
        with self.lock:
            return [h for h in self.requests
                    if h.route == route and (status == "any" or h.status == status)]

    def attached_files(self, post: dict[str, Any]) -> list[StoredFile]:
        with self.lock:
            return [self.files[fid] for fid in post["file_ids"]]

    # -- fault injection -----------------------------------------------------

    def fail(self, route: str, status: int = 500, *, times: int = 1,
             headers: dict[str, str] | None = None, body: bytes | None = None) -> None:
        """Answer the next ``times`` calls of ``route`` with ``status``."""
        with self.lock:
            self.faults.append(Fault(route, "status", times, status=status,
                                     headers=dict(headers or {}), body=body))

    def rate_limit(self, route: str, *, retry_after: int | None = 1, reset: int | None = None,
                   times: int = 1) -> None:
        """``429`` as the real server sends it: plain text, rate-limit headers."""
        headers = {"X-Ratelimit-Limit": "10", "X-Ratelimit-Remaining": "0"}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if reset is not None:
            headers["X-Ratelimit-Reset"] = str(reset)
        self.fail(route, 429, times=times, headers=headers, body=b"limit exceeded\n")

    def delay(self, route: str, seconds: float, *, times: int = 1) -> None:
        """Hold the next ``times`` calls for ``seconds`` before handling them
        (normally: the request still takes effect if the client waited)."""
        with self.lock:
            self.faults.append(Fault(route, "delay", times, seconds=seconds))

    def drop(self, route: str, *, when: str = "request", times: int = 1) -> None:
        """Close the connection: ``when="request"``: before reading the body,
        without an answer; ``"after"``: once the request took effect, without an
        answer; ``"response"``: once it took effect, half-way through the answer."""
        assert when in ("request", "after", "response")
        with self.lock:
            self.faults.append(Fault(route, "drop", times, when=when))

    def before(self, route: str, hook: Callable[[], None]) -> None:
        """Run ``hook`` once, when the next call of ``route`` arrives."""
        with self.lock:
            self.hooks.append((route, hook))

    def _run_hook(self, route: str) -> None:
        with self.lock:
            hooks = [h for h in self.hooks if h[0] == route]
            if not hooks:
                return
            self.hooks.remove(hooks[0])
        hooks[0][1]()

    def _take_fault(self, route: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.route in (route, "*") and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def wait(self, seconds: float) -> bool:
        """Interruptible sleep for handlers; True if the server is stopping."""
        return self._stopping.wait(seconds)


#: The error bodies a real server sends for each status (``id``, ``message``).
FAULT_BODIES = {
    400: ("api.context.invalid_body_param.app_error",
          "Invalid or missing post in request body."),
    401: ("api.context.session_expired.app_error",
          "Invalid or expired session, please login again."),
    403: ("api.context.permissions.app_error", "You do not have the appropriate permissions."),
    404: ("app.channel.get.existing.app_error", "Unable to find the existing channel."),
    413: ("api.context.request_body_too_large.app_error", "Request body is too large."),
    500: ("app.post.save.app_error", "Unable to save the post."),
    502: ("api.context.server_error.app_error", "An internal server error occurred."),
}


def app_error(status: int, error_id: str, message: str, detailed: str = "") -> dict[str, Any]:
    return {"id": error_id, "message": message, "detailed_error": detailed,
            "request_id": new_id(), "status_code": status, "is_oauth": False}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle keep-alive connection cannot hold close() forever
    server_version = "MattermostStandIn/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    # -- plumbing ------------------------------------------------------------

    def _record(self, route: str, status: int | None, fault: str | None) -> None:
        standin = self.server.standin
        with standin.lock:
            standin.requests.append(Hit(route, self.command, self.path, status, fault,
                                        dict(self.headers.items())))

    def _route(self) -> tuple[str, re.Match[str] | None]:
        path = self.path.split("?", 1)[0]
        for name, (method, pattern) in ROUTES.items():
            match = pattern.match(path)
            if match and method == self.command:
                return name, match
        return "unknown", None

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", new_id())
        self.send_header("X-Version-Id", "9.11.0.standin")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode())

    def _dispatch(self) -> None:
        standin = self.server.standin
        route, match = self._route()
        with standin.lock:
            standin.arrivals.append(route)
        standin._run_hook(route)
        fault = standin._take_fault(route)
        if fault is not None and fault.kind == "delay" and standin.wait(fault.seconds):
            self._record(route, None, "delay (server stopping)")
            self._drop()
            return
        if fault is not None and fault.kind == "drop" and fault.when == "request":
            self._record(route, None, "drop before answering")
            self._drop()
            return
        body = self._read_body()
        if fault is not None and fault.kind == "status":
            self._record(route, fault.status, f"status {fault.status}")
            if fault.body is not None:
                self._send(fault.status, fault.body, "text/plain; charset=utf-8", fault.headers)
            else:
                error_id, message = FAULT_BODIES.get(fault.status, FAULT_BODIES[500])
                self._json(fault.status, app_error(fault.status, error_id, message,
                                                   "injected by the stand-in"))
            return
        status, payload = self._handle(route, match, body)
        if fault is not None and fault.kind == "drop":  # it took effect
            self._record(route, None, f"drop {fault.when} {status}")
            if fault.when == "response":
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
            self._drop()
            return
        self._record(route, status, "delay" if fault is not None else None)
        self._json(status, payload)

    # -- the API -------------------------------------------------------------

    def _handle(self, route: str, match: re.Match[str] | None, body: bytes
                ) -> tuple[int, Any]:
        standin = self.server.standin
        if route == "unknown" or match is None:
            return 404, app_error(404, "api.context.404.app_error",
                                  "Sorry, we could not find the page.",
                                  "There doesn't appear to be an api call for the "
                                  f"url='{self.path}'.")
        if self.headers.get("Authorization") != f"Bearer {standin.token}":
            return 401, app_error(401, "api.context.session_expired.app_error",
                                  "Invalid or expired session, please login again.",
                                  "token=" + "ProvidedTokenIsInvalid")
        with standin.lock:
            if route == "me":
                return 200, self._user()
            if route == "channel_by_name":
                team, name = match.group(1), match.group(2)
                if team != standin.team_name:
                    return 404, app_error(404, "app.team.get_by_name.missing.app_error",
                                          "Unable to find the existing team.",
                                          f"name={team}")
                for channel in standin.channels.values():
                    if channel["name"] == name:
                        return 200, channel
                return 404, app_error(404, "app.channel.get_by_name.missing.app_error",
                                      "Channel does not exist.", f"name={name}")
            if route == "channel":
                channel = standin.channels.get(match.group(1))
                if channel is None:
                    return 404, self._no_channel(match.group(1))
                return 200, channel
            if route == "upload":
                return self._upload(body)
            return self._post(body)

    def _user(self) -> dict[str, Any]:
        standin = self.server.standin
        return {
            "id": standin.user_id, "create_at": 1700000000000, "update_at": 1700000000000,
            "delete_at": 0, "username": "perfwatch-bot", "auth_data": "", "auth_service": "",
            "email": "perfwatch-bot@localhost", "nickname": "", "first_name": "PerfWatch",
            "last_name": "", "position": "", "roles": "system_user", "locale": "en",
            "timezone": {"automaticTimezone": "", "manualTimezone": "",
                         "useAutomaticTimezone": "true"},
            "is_bot": True, "bot_description": "flask_perfwatch alerts",
            "disable_welcome_email": False,
        }

    @staticmethod
    def _no_channel(channel_id: str) -> dict[str, Any]:
        return app_error(404, "app.channel.get.existing.app_error",
                         "Unable to find the existing channel.", f"id={channel_id}")

    def _upload(self, body: bytes) -> tuple[int, Any]:
        standin = self.server.standin
        if not standin.uploads_enabled:
            return 501, app_error(501, "api.file.attachments.disabled.app_error",
                                  "File attachments have been disabled on this server.")
        if len(body) > standin.max_file_size:
            return 413, app_error(
                413, "api.file.upload_file.too_large_detailed.app_error",
                f"Unable to upload file. {len(body)} bytes exceeds the maximum allowed "
                f"{standin.max_file_size} bytes.")
        fields, files = parse_multipart(self.headers.get("Content-Type", ""), body)
        channel_id = fields.get("channel_id", "")
        if not channel_id or not files:
            return 400, app_error(400, "api.context.invalid_body_param.app_error",
                                  "Invalid or missing channel_id or files in request body.")
        if channel_id not in standin.channels:
            return 404, self._no_channel(channel_id)
        infos = []
        for name, data, mime in files:
            stored = StoredFile(new_id(), name, data, mime, channel_id, standin.user_id)
            standin.files[stored.id] = stored
            infos.append(self._file_info(stored))
        return 201, {"file_infos": infos, "client_ids": []}

    @staticmethod
    def _file_info(f: StoredFile) -> dict[str, Any]:
        return {
            "id": f.id, "user_id": f.user_id, "channel_id": f.channel_id, "post_id": f.post_id,
            "create_at": now_ms(), "update_at": now_ms(), "delete_at": 0, "name": f.name,
            "extension": f.name.rsplit(".", 1)[-1] if "." in f.name else "",
            "size": len(f.data), "mime_type": f.mime_type, "width": 0, "height": 0,
            "has_preview_image": False, "mini_preview": None, "remote_id": "",
            "archived": False,
        }

    def _post(self, body: bytes) -> tuple[int, Any]:
        standin = self.server.standin
        try:
            data = json.loads(body)
        except ValueError:
            return 400, app_error(400, "api.context.invalid_body_param.app_error",
                                  "Invalid or missing post in request body.")
        channel_id = data.get("channel_id", "")
        if channel_id not in standin.channels:
            return 404, self._no_channel(channel_id)
        message = data.get("message", "")
        if len(message) > MAX_MESSAGE_RUNES:
            return 400, app_error(400, "model.post.is_valid.message_length.app_error",
                                  "Post Message property is longer than the maximum "
                                  "permitted length.", f"id=, length={len(message)}")
        pending = data.get("pending_post_id") or ""
        now = time.monotonic()
        if pending:
            seen = standin.pending.get(pending)
            if seen is not None and now - seen[1] < PENDING_POST_TTL:
                return 201, next(p for p in standin.posts if p["id"] == seen[0])
        file_ids = []
        for fid in (data.get("file_ids") or [])[:10]:
            stored = standin.files.get(fid)
            # like the real server: what cannot be attached is silently dropped
            if stored is None or stored.user_id != standin.user_id \
                    or stored.channel_id != channel_id or stored.post_id:
                continue
            file_ids.append(fid)
        post_id = new_id()
        for fid in file_ids:
            standin.files[fid].post_id = post_id
        post = {
            "id": post_id, "create_at": now_ms(), "update_at": now_ms(), "edit_at": 0,
            "delete_at": 0, "is_pinned": False, "user_id": standin.user_id,
            "channel_id": channel_id, "root_id": data.get("root_id", ""), "original_id": "",
            "message": message, "type": "", "props": data.get("props") or {},
            "hashtags": "", "pending_post_id": pending, "reply_count": 0,
            "last_reply_at": 0, "participants": None, "file_ids": file_ids,
            "metadata": {"files": [self._file_info(standin.files[f]) for f in file_ids]}
            if file_ids else {},
        }
        standin.posts.append(post)
        if pending:
            standin.pending[pending] = (post_id, now)
        return 201, post


def parse_multipart(content_type: str, body: bytes
                    ) -> tuple[dict[str, str], list[tuple[str, bytes, str]]]:
    """``(fields, [(filename, data, mime)])`` of a multipart/form-data body, bytes exact."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/form-data") or match is None:
        return {}, []
    delimiter = b"--" + match.group(1).encode()
    fields: dict[str, str] = {}
    files: list[tuple[str, bytes, str]] = []
    for part in _parts(body, delimiter):
        head, _, data = part.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        name_m = re.search(r'\bname="([^"]*)"', disposition)
        file_m = re.search(r'\bfilename="([^"]*)"', disposition)
        if name_m is None:
            continue
        if file_m is not None:
            files.append((file_m.group(1), data,
                          headers.get("content-type", "application/octet-stream")))
        else:
            fields[name_m.group(1)] = data.decode("utf-8", "replace")
    return fields, files


def _parts(body: bytes, delimiter: bytes) -> Iterator[bytes]:
    chunks = body.split(delimiter)
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        # each part sits between "\r\n" after the delimiter and "\r\n" before the next
        yield chunk[2:-2] if chunk.startswith(b"\r\n") else chunk[:-2]
