"""A base for wire-level stand-ins of HTTP APIs (Slack, Teams, Discord,
webhooks, PagerDuty): a real HTTP/1.1 server on 127.0.0.1 (stdlib
``http.server``, a thread per connection) that records every request to the
byte and answers through routes a subclass declares, with faults injected
per route:

- :meth:`StandIn.fail` answers a status (with headers and body) instead;
- :meth:`StandIn.delay` holds the answer for some seconds (a slow server;
  released at once by :meth:`StandIn.close`);
- :meth:`StandIn.drop` closes the connection without an answer, before
  handling the request (``when="request"``) or after handling it
  (``when="after"``: the request took effect, the client never heard).

A route is ``(method, regex) -> handler(request, match) -> (status, headers,
body)``. Tests assert on :attr:`StandIn.requests` (every :class:`Hit`, faults
included) and on what the subclass stored (posts, files, messages).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Answer = tuple[int, dict[str, str], bytes]
Handler = Callable[["Hit", "re.Match[str]"], Answer]


@dataclass
class Hit:
    """One request as it arrived."""

    route: str
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int | None = None  # None: no answer (dropped)
    fault: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)

    def raw(self) -> bytes:
        """Every byte that arrived for this request (request line aside)."""
        head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items()).encode()
        return self.path.encode() + b"\r\n" + head + b"\r\n" + self.body


@dataclass
class Fault:
    kind: str  # "status" | "delay" | "drop"
    times: int
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0
    when: str = "request"


def json_answer(status: int, payload: Any, headers: dict[str, str] | None = None) -> Answer:
    return status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, \
        json.dumps(payload).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that hung up mid-answer (a timeout test) is not an error here
        pass


class StandIn:
    """Subclass it and fill :attr:`routes` in ``__init__`` (route name ->
    ``(method, regex, handler)``)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, re.Pattern[str], Handler]] = {}
        self.requests: list[Hit] = []
        self._faults: dict[str, list[Fault]] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> StandIn:
        standin = self

        class Handler(_RequestHandler):
            owner = standin

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the stand-in first"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- faults -----------------------------------------------------------------

    def fail(self, route: str, status: int = 500, *, times: int = 1, body: bytes | Any = b"",
             headers: dict[str, str] | None = None) -> None:
        """Answer ``status`` instead, ``times`` times (a non-bytes body is JSON)."""
        headers = dict(headers or {})
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        self._add(route, Fault("status", times, status=status, headers=headers, body=body))

    def delay(self, route: str, seconds: float, *, times: int = 1) -> None:
        """Hold the answer ``seconds`` (then answer normally)."""
        self._add(route, Fault("delay", times, seconds=seconds))

    def drop(self, route: str, *, when: str = "request", times: int = 1) -> None:
        """Close the connection without answering."""
        assert when in ("request", "after")
        self._add(route, Fault("drop", times, when=when))

    def _add(self, route: str, fault: Fault) -> None:
        assert route in self.routes, f"unknown route {route!r}"
        with self._lock:
            self._faults.setdefault(route, []).append(fault)

    def _take_fault(self, route: str) -> Fault | None:
        with self._lock:
            faults = self._faults.get(route) or []
            if not faults:
                return None
            fault = faults[0]
            fault.times -= 1
            if fault.times <= 0:
                faults.pop(0)
            return fault

    def hits(self, route: str, *, answered: int | None = None) -> list[Hit]:
        with self._lock:
            return [h for h in self.requests if h.route == route
                    and (answered is None or h.status == answered)]

    def received_bytes(self) -> bytes:
        """Everything every request carried: for "no secret in any byte" checks."""
        with self._lock:
            return b"\n".join(h.raw() for h in self.requests)


class _RequestHandler(BaseHTTPRequestHandler):
    owner: StandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        route, match, handler = "unknown", None, None
        for name, (method, pattern, func) in self.owner.routes.items():
            found = pattern.match(parts.path)
            if found and method == self.command:
                route, match, handler = name, found, func
                break
        hit = Hit(route, self.command, self.path, parse_qs(parts.query),
                  dict(self.headers.items()), body)
        with self.owner._lock:
            self.owner.requests.append(hit)
        if handler is None or match is None:
            self._answer(hit, *json_answer(404, {"error": "no such route"}))
            return
        fault = self.owner._take_fault(route)
        if fault is not None and fault.kind == "drop" and fault.when == "request":
            hit.fault = "drop"
            self._drop()
            return
        if fault is not None and fault.kind == "delay":
            hit.fault = "delay"
            self.owner._closing.wait(fault.seconds)
        if fault is not None and fault.kind == "status":
            hit.fault = "status"
            self._answer(hit, fault.status, fault.headers, fault.body)
            return
        status, headers, answer = handler(hit, match)
        if fault is not None and fault.kind == "drop":  # after: it took effect
            hit.fault = "drop-after"
            self._drop()
            return
        self._answer(hit, status, headers, answer)

    def _answer(self, hit: Hit, status: int, headers: dict[str, str], body: bytes) -> None:
        hit.status = status
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (timed out) first

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
