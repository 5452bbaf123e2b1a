"""SQL capture: the statements SQLAlchemy ran during a request or a watched
call, for ``PerformanceMetrics.queries``.

Listeners on the :class:`sqlalchemy.engine.Engine` *class* cover every
engine, made before or after ``init_app`` (Flask-SQLAlchemy's too). They are
installed once per process, by the first monitor built with
``PERFWATCH_CAPTURE_SQL`` on, and only if SQLAlchemy can be imported; without
it nothing here runs and ``queries`` stays empty.

Where a statement goes (every place that applies, each once):

* a Flask request of an app with PerfWatch and capture on: a :class:`QueryLog`
  in the request's WSGI environ (:data:`ENVIRON_KEY`), created at its first
  statement, so a request that runs no SQL costs nothing;
* every active log of the :data:`_active` context variable: one per enclosing
  watched call (:func:`begin`/:func:`end` around the call), and the request's
  own for :class:`~flask_perfwatch.PerfWatchMiddleware`, which pushes it for
  the time the app runs (not while the response body is iterated).

A fast request's log is dropped with its environ; only slow (and hung)
requests read theirs (:func:`request_queries`). A log keeps one row per
normalised statement (:func:`normalise`: literals and placeholders become
``?``, ``IN`` lists and multi-row ``VALUES`` collapse, whitespace collapses,
cut at :data:`MAX_STATEMENT` characters): total duration and number of calls
(an ``executemany`` is one call). Parameter values are never looked at.
At most :data:`MAX_STATEMENTS` distinct statements are kept per log; the
calls and time of any further ones are summed into one last row,
:data:`OVERFLOW_STATEMENT`, so nothing is lost silently.

The listeners never raise into the app: anything unexpected goes through
:func:`~flask_perfwatch._guard.report_swallowed`. A ``handle_error`` listener
records a failed statement and drops its timing state, so that a statement
that raised leaves nothing behind for the next one on its thread or task.
"""

from __future__ import annotations

import re
import threading
import time
from contextvars import ContextVar, Token
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from flask import current_app, has_request_context, request

from . import _fork
from ._guard import report_swallowed
from ._util import safe_text
from .config import Config

if TYPE_CHECKING:
    from collections.abc import MutableMapping

#: The environ key of a request's :class:`QueryLog`.
ENVIRON_KEY = "flask_perfwatch.queries"
#: Distinct statements kept per request or call (see :data:`OVERFLOW_STATEMENT`).
MAX_STATEMENTS = 200
#: A normalised statement is cut to this many characters (then ``…``).
MAX_STATEMENT = 2000
#: Characters of a raw statement normalised at most: a statement with
#: megabytes of inline values costs no more than one of this length.
MAX_SCAN = 64 * 1024
#: The statement of the row that sums the calls and time of the statements
#: beyond the first :data:`MAX_STATEMENTS` distinct ones; always the last row.
OVERFLOW_STATEMENT = (f"(other statements, not kept: at most {MAX_STATEMENTS} distinct "
                      "statements are kept per request or call)")

_EXTENSION_KEY = "perfwatch"  # flask_perfwatch.extension.EXTENSION_KEY (it imports us)
_perf_counter = time.perf_counter


# -- normalisation ------------------------------------------------------------------

_COMMENT = r"(?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))"
# PostgreSQL's $tag$...$tag$ (the tag may be empty; never a digit first: $1 is a placeholder)
_DOLLAR = r"(?P<dollar>\$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?(?:\$(?P=tag)\$|\Z))"
# 'it''s', with an optional prefix (X'0f', B'01', N'...', U&'...'), unterminated to the
# end; a quote is always the start of a string, whatever precedes it
_STRING = r"(?P<string>(?:(?<![\w$])(?:[xXbBnN]|[uU]&))?'[^']*(?:''[^']*)*(?:'|\Z))"
# PostgreSQL's E'it\'s' (backslash escapes)
_E_STRING = r"(?P<estring>(?<![\w$])[eE]'(?:[^'\\]|\\.|'')*(?:'|\Z))"
# MySQL: backslash escapes in every string, and "double quotes" are strings too
_MY_STRING = r"(?P<string>(?:(?<![\w$])(?:[xXbBnN]|_\w+))?'(?:[^'\\]|\\.|'')*(?:'|\Z))"
_MY_DQ_STRING = r'(?P<dqstring>"(?:[^"\\]|\\.|"")*(?:"|\Z))'
_MY_COMMENT = r"(?P<hashcomment>#[^\n]*)"
# identifiers, kept as they are
_IDENTIFIER = r'(?P<ident>"[^"]*(?:""[^"]*)*(?:"|\Z)|`[^`]*(?:``[^`]*)*(?:`|\Z))'
_MY_IDENTIFIER = r"(?P<ident>`[^`]*(?:``[^`]*)*(?:`|\Z))"
# DBAPI placeholders: %(name)s, %s (and psycopg's %b/%t), :name, :1, $1, ?; %% kept
_PLACEHOLDER = (r"(?P<percent>%%)"
                r"|(?P<param>%\([^)]*\)[sbt]|%[sbt]|(?<![:\w]):(?:[A-Za-z_]\w*|\d+)"
                r"|\$\d+|\?)")
_NUMBER = (r"(?P<number>(?<![\w$.])(?:0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)"
           r"(?:[eE][+-]?\d+)?)(?![\w$]))")

_TOKENS = re.compile("|".join((_COMMENT, _DOLLAR, _E_STRING, _STRING, _IDENTIFIER,
                               _PLACEHOLDER, _NUMBER)), re.S)
_MY_TOKENS = re.compile("|".join((_COMMENT, _MY_COMMENT, _MY_STRING, _MY_DQ_STRING,
                                  _MY_IDENTIFIER, _PLACEHOLDER, _NUMBER)), re.S)

_SPACE = re.compile(r"\s+")
_ITEM = r"(?:-\s*)?\?"
_TUPLE = rf"\(\s*{_ITEM}(?:\s*,\s*{_ITEM})*\s*\)"
# IN (?, ?, ?) and IN ((?, ?), (?, ?)), any length
_IN_LIST = re.compile(rf"\bIN\s*\(\s*(?:{_ITEM}|{_TUPLE})(?:\s*,\s*(?:{_ITEM}|{_TUPLE}))*\s*\)",
                      re.I)
# ARRAY[?, ?, ?]
_ARRAY = re.compile(rf"\bARRAY\s*\[\s*{_ITEM}(?:\s*,\s*{_ITEM})*\s*\]", re.I)
# VALUES (?, ?), (?, ?), ... with rows alike (one level of parentheses inside a row)
_VALUES = re.compile(r"\bVALUES\s*(\((?:[^()]|\([^()]*\))*\))(?:\s*,\s*\1)+", re.I)


def _token(match: re.Match[str]) -> str:
    kind = match.lastgroup
    if kind in ("ident", "percent"):
        return match.group()
    if kind in ("comment", "hashcomment"):
        return " "
    return "?"


def normalise(statement: str, dialect: str | None = None) -> str:
    """``statement`` with every literal value and placeholder replaced by
    ``?``, comments dropped, ``IN (?, ?, ...)`` of any length as
    ``IN (?, ...)``, multi-row ``VALUES (?, ?), (?, ?)`` as one row,
    whitespace collapsed and control characters escaped; cut at
    :data:`MAX_STATEMENT` characters. Quoted identifiers are kept, except
    for MySQL and MariaDB (``dialect``, a SQLAlchemy dialect name), where
    ``"..."`` is a string and backslashes escape in strings. An unterminated
    string or comment is replaced to the end, never kept. (SQLite also takes
    a ``"..."`` that names no column as a string; it is kept, as an
    identifier.)"""
    mysql = dialect in ("mysql", "mariadb")
    if len(statement) <= _CACHED_LENGTH:
        return _normalise_cached(statement, mysql)
    return _normalise(statement, mysql)


#: Statements up to this long are cached (raw -> normalised); an app's
#: statements are mostly the same few strings (SQLAlchemy caches them).
_CACHED_LENGTH = 8192


@lru_cache(maxsize=512)
def _normalise_cached(statement: str, mysql: bool) -> str:
    return _normalise(statement, mysql)


def _normalise(statement: str, mysql: bool) -> str:
    text = statement[:MAX_SCAN]
    text = (_MY_TOKENS if mysql else _TOKENS).sub(_token, text)
    text = _SPACE.sub(" ", text).strip()
    text = _IN_LIST.sub("IN (?, ...)", text)
    text = _ARRAY.sub("ARRAY[?, ...]", text)
    text = _VALUES.sub(r"VALUES \1", text)
    text = safe_text(text)  # an identifier may hold control characters: never raw in a log
    if len(text) > MAX_STATEMENT:
        text = text[:MAX_STATEMENT] + "…"
    elif len(statement) > MAX_SCAN:
        text += " …"
    return text


# -- logs ---------------------------------------------------------------------------

class _Row:
    __slots__ = ("calls", "duration")

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.calls = 1


class QueryLog:
    """The statements of one request or call: a row per normalised statement.

    Appended to by the threads that run the request's statements (usually
    one), read by the request's thread at its end or by the engine's thread
    for a hung request: :meth:`queries` copies before reading."""

    __slots__ = ("_rows", "more_calls", "more_duration")

    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}
        #: calls and seconds of statements beyond the first MAX_STATEMENTS distinct ones
        self.more_calls = 0
        self.more_duration = 0.0

    def add(self, statement: str, duration: float) -> None:
        row = self._rows.get(statement)
        if row is not None:
            row.duration += duration
            row.calls += 1
        elif len(self._rows) < MAX_STATEMENTS:
            self._rows[statement] = _Row(duration)
        else:
            self.more_calls += 1
            self.more_duration += duration

    def queries(self) -> list[dict[str, Any]]:
        """The rows, slowest (total duration) first, then the overflow row if any."""
        rows = self._rows.copy()  # one C call under the GIL: safe beside appends
        found = sorted(((row.duration, row.calls, statement) for statement, row in rows.items()),
                       key=lambda r: (-r[0], -r[1], r[2]))
        result: list[dict[str, Any]] = [
            {"statement": statement, "duration": duration, "calls": calls}
            for duration, calls, statement in found]
        if self.more_calls:
            result.append({"statement": OVERFLOW_STATEMENT, "duration": self.more_duration,
                           "calls": self.more_calls})
        return result


#: The logs a statement run here goes to, besides a Flask request's own.
_active: ContextVar[tuple[QueryLog, ...]] = ContextVar("flask_perfwatch.sql.active",
                                                       default=())
#: The statement in flight: ``(logs, start)``, from before_cursor_execute to
#: after_cursor_execute or handle_error (one at a time per thread or task).
_pending: ContextVar[tuple[tuple[QueryLog, ...], float] | None] = ContextVar(
    "flask_perfwatch.sql.pending", default=None)


class Capture:
    """A log pushed on :data:`_active` by :func:`begin`, for :func:`end`."""

    __slots__ = ("log", "token")

    def __init__(self, log: QueryLog, token: Token[tuple[QueryLog, ...]] | None) -> None:
        self.log = log
        self.token = token


def begin(environ: MutableMapping[str, Any] | None = None) -> Capture | None:
    """Start collecting the statements run in this context (thread or task)
    until :func:`end`: a watched call's own log, or (``environ``) a request's,
    kept in its environ. None when the listeners are not installed."""
    if not _listeners.installed:
        return None
    try:
        log = QueryLog()
        if environ is not None:
            log = environ.setdefault(ENVIRON_KEY, log)
        active = _active.get()
        token = None if log in active else _active.set((*active, log))
        return Capture(log, token)
    except Exception:
        report_swallowed("starting to record SQL statements")
        return None


def end(capture: Capture | None) -> QueryLog | None:
    """Stop collecting into ``capture``'s log (call it in the same context as
    :func:`begin`); returns the log."""
    if capture is None:
        return None
    if capture.token is not None:
        try:
            _active.reset(capture.token)
        except Exception:
            report_swallowed("stopping to record SQL statements")
    return capture.log


def request_queries(environ: MutableMapping[str, Any]) -> list[dict[str, Any]]:
    """The queries of a request that is over or hung (empty if it ran none)."""
    log = environ.get(ENVIRON_KEY)
    return log.queries() if isinstance(log, QueryLog) else []


# -- the listeners -------------------------------------------------------------------

def _targets() -> tuple[QueryLog, ...]:
    """The logs a statement run now goes to."""
    logs = _active.get()
    if not has_request_context():
        return logs
    config = getattr(current_app.extensions.get(_EXTENSION_KEY), "config", None)
    if not isinstance(config, Config) or not (config.capture_sql and config.enabled):
        return logs
    environ = request.environ
    log = environ.get(ENVIRON_KEY)
    if log is None:
        log = environ[ENVIRON_KEY] = QueryLog()
    return logs if log in logs else (*logs, log)


def _before_cursor_execute(conn: Any, cursor: Any, statement: str, parameters: Any,
                           context: Any, executemany: bool) -> None:
    try:
        logs = _targets()
        if logs:
            _pending.set((logs, _perf_counter()))
        elif _pending.get() is not None:  # left by a statement that failed unseen
            _pending.set(None)
    except Exception:
        report_swallowed("recording an SQL statement (before it ran)")


def _after_cursor_execute(conn: Any, cursor: Any, statement: str, parameters: Any,
                          context: Any, executemany: bool) -> None:
    end_time = _perf_counter()
    try:
        pending = _pending.get()
        if pending is not None:
            _pending.set(None)
            _record(pending, statement, end_time, conn.dialect.name)
    except Exception:
        report_swallowed("recording an SQL statement")


def _handle_error(context: Any) -> None:
    """A statement (or anything else SQLAlchemy reports here) failed: a
    statement in flight is recorded as run, and its state dropped. Returns
    None: the app's exception is left as it is."""
    end_time = _perf_counter()
    try:
        pending = _pending.get()
        if pending is not None:
            _pending.set(None)
            statement = context.statement
            if isinstance(statement, str):
                _record(pending, statement, end_time, context.dialect.name)
    except Exception:
        report_swallowed("recording an SQL statement that failed")


def _record(pending: tuple[tuple[QueryLog, ...], float], statement: str, end_time: float,
            dialect: str) -> None:
    logs, start = pending
    if not isinstance(statement, str):  # a driver's bytes
        statement = bytes(statement).decode("utf-8", "replace")
    text = normalise(statement, dialect)
    for log in logs:
        log.add(text, end_time - start)


class _Listeners:
    """The process's one set of listeners, installed by :func:`install`."""

    def __init__(self) -> None:
        self.installed = False
        self.unavailable = False
        self.lock = threading.Lock()

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()


_listeners = _Listeners()


def install() -> bool:
    """Install the listeners on SQLAlchemy's ``Engine`` class, once per
    process; False (and nothing installed) if SQLAlchemy cannot be imported.
    Called when a monitor with capture on is built, never at import."""
    if _listeners.installed or _listeners.unavailable:
        return _listeners.installed
    _fork.register_function(_listeners.after_fork_in_child)
    with _listeners.lock:
        if _listeners.installed or _listeners.unavailable:
            return _listeners.installed
        try:
            from sqlalchemy import event
            from sqlalchemy.engine import Engine
        except ImportError:
            _listeners.unavailable = True
            return False
        try:
            event.listen(Engine, "before_cursor_execute", _before_cursor_execute)
            event.listen(Engine, "after_cursor_execute", _after_cursor_execute)
            event.listen(Engine, "handle_error", _handle_error)
        except Exception:  # an SQLAlchemy without these events: no capture
            _listeners.unavailable = True
            report_swallowed("installing the SQL capture listeners on SQLAlchemy's Engine")
            for name, fn in (("before_cursor_execute", _before_cursor_execute),
                             ("after_cursor_execute", _after_cursor_execute)):
                try:
                    if event.contains(Engine, name, fn):
                        event.remove(Engine, name, fn)
                except Exception:
                    report_swallowed("removing the SQL capture listeners")
            return False
        _listeners.installed = True
        return True


def installed() -> bool:
    """Whether the listeners are installed in this process."""
    return _listeners.installed
