"""The per-request path, and ``PerfWatchMiddleware`` for any WSGI app.

:class:`RequestTimer` wraps a WSGI callable. It is the one place where a
request is timed: the Flask extension installs a Flask-aware subclass as
``app.wsgi_app`` (wrapping measured cheaper than request hooks: one clock read
on the way in, one on the way out), and :class:`PerfWatchMiddleware` is the
public form for any WSGI app. Here a request costs two clock reads, the
engine's start and stop, a ``start_response`` wrapper and a little
bookkeeping; the Flask subclass has a faster path still (its ``__call__``:
no engine call, no wrapper). Everything else happens only for slow requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import _sql, _trace
from ._guard import report_swallowed
from ._util import error_name, glob_matcher
from .config import Config
from .metrics import PerformanceMetrics, request_details, request_path
from .monitor import Monitor

if TYPE_CHECKING:
    from types import FrameType

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .profiling import Profile
    from .profiling.base import Record, Registry

#: The environ key under which the request's :class:`TimedRequest` is kept.
REQUEST_KEY = "flask_perfwatch.request"

_perf_counter = time.perf_counter


class TimedRequest:
    """One request in flight: its environ, start time, status and profiler
    handle. ``str()`` of it is the profile's description (``"GET /path"``),
    taken only for kept profiles."""

    __slots__ = ("anchor", "environ", "handle", "request", "start", "start_response", "status",
                 "timer")

    def __init__(self, timer: RequestTimer, environ: WSGIEnvironment,
                 start_response: StartResponse | None, start: float) -> None:
        self.timer = timer
        self.environ = environ
        self.start_response = start_response
        self.start = start
        self.handle: Any = None
        self.status: str | None = None
        #: the framework's request object, when one is known (Flask's)
        self.request: Any = None
        #: the wrapper's frame that ran a request of the fast path, by which
        #: the engine found it (:class:`~.profiling.base.Registry`), if any
        self.anchor: FrameType | None = None

    def capture(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        """The ``start_response`` the app sees: notes the status (and, below
        Flask, the request object, still alive at this point)."""
        self.status = status
        self.request = self.environ.get("werkzeug.request")
        return self.start_response(status, headers, exc_info)  # type: ignore[misc]

    def on_hang(self, profile: Profile | None, elapsed: float) -> None:
        """The engine's hang callback: runs on the engine's thread, with no
        request context."""
        self.timer.hung(self, profile, elapsed)

    def __str__(self) -> str:
        details = request_details(self.timer.monitor.redactor, self.environ, headers=False)
        return f"{details['method']} {details['path']}"


class RequestTimer:
    """Times requests through a WSGI callable; see the module docs.

    Subclasses override :meth:`resolve` (what the request is called, its
    threshold, whether it is ignored) and may set :attr:`time_body`.
    """

    #: Keep timing until the response iterable is closed (True), or stop when
    #: the app returns it (False: the Flask extension, whose views have run by then).
    time_body = True

    def __init__(self, wsgi_app: WSGIApplication, monitor: Monitor) -> None:
        self.wsgi_app = wsgi_app
        self.monitor = monitor
        self.config = config = monitor.config
        self._stats = monitor.stats
        self._engine = monitor.engine
        path_globs = [p for p in config.ignore if p.startswith("/")]
        self._ignore_path = glob_matcher(path_globs) if path_globs else None
        # the engine is asked to start here unless it starts in the view, or
        # does not profile at all
        self._start_here = self._engine.profiles and not self._engine.start_in_view
        self._on_hang = config.hang_after > 0
        #: push a log for the SQL the app runs (PerfWatchMiddleware; a Flask
        #: app's statements find their request through Flask's context: _sql)
        self._capture_sql = False
        #: where the fast path registers its requests (FlaskRequestTimer), if
        #: the engine takes registrations
        self._registry: Registry | None = None

    def ignores_path(self, path: str) -> bool:
        """Whether ``PERFWATCH_IGNORE`` path globs exclude this ``PATH_INFO``."""
        return self._ignore_path is not None and self._ignore_path(path)

    # -- the hot path ----------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        start = _perf_counter()
        if self._ignore_path is not None and self._ignore_path(environ.get("PATH_INFO", "")):
            return self.wsgi_app(environ, start_response)
        timed = TimedRequest(self, environ, start_response, start)
        environ[REQUEST_KEY] = timed
        if self._start_here:
            try:
                timed.handle = self._engine.start(
                    timed, on_hang=timed.on_hang if self._on_hang else None)
            except Exception:
                report_swallowed("starting the profiler")
        sql = _sql.begin(environ) if self._capture_sql else None
        entered = _perf_counter()
        try:
            body = self.wsgi_app(environ, timed.capture)
        except BaseException as exc:
            self.finish(timed, _perf_counter(), entered, exc)
            raise
        finally:
            if sql is not None:
                _sql.end(sql)
        if self.time_body:
            return _TimedBody(body, timed, entered)
        self.finish(timed, _perf_counter(), entered, None, body)
        return body

    def finish(self, timed: TimedRequest, end: float, entered: float,
               exc: BaseException | None, body: Iterable[bytes] | None = None) -> None:
        """The request is over: drop fast ones cheaply, report slow ones
        (``body``: what the app returned, if it did and is not iterated yet)."""
        start = timed.start
        try:
            # environ <-> timed is a reference cycle; break it so that both are
            # freed now, not by the garbage collector
            timed.environ.pop(REQUEST_KEY, None)
            self.observe(timed.environ, end - start, end)
            if exc is None and end - start <= self.floor():
                if timed.handle is not None:
                    self._engine.stop(timed.handle, keep=False)
            else:
                self._slow(timed, end - start, exc,
                           500 if exc is not None else _status_code(timed.status), body=body)
        except Exception:
            report_swallowed("finishing a request")
        # counted whatever happened above: an operator must see every request
        done = _perf_counter()
        self._stats.observed(entered - start + done - end)
        if done >= self.monitor.next_stats_log:
            try:
                self.monitor.log_stats(done)
            except Exception:
                report_swallowed("logging the monitor's stats")

    def observe(self, environ: WSGIEnvironment, duration: float, now: float) -> None:
        """Record a finished request in per-endpoint statistics (the Flask
        extension's; a plain WSGI app has no endpoints)."""

    def floor(self) -> float:
        """No request at or under this many seconds can be slow."""
        return self.config.threshold

    def resolve(self, timed: TimedRequest) -> tuple[str, float] | None:
        """``(name, threshold)`` of the request, or None if it is ignored."""
        return request_path(self.monitor.redactor, timed.environ), self.config.threshold

    # -- slow and hung requests ---------------------------------------------------

    def _slow(self, timed: TimedRequest, duration: float, exc: BaseException | None,
              status: int | None, *, body: Iterable[bytes] | None = None) -> None:
        resolved = self.resolve(timed)
        if resolved is None:
            self._stop(timed, keep=False)
            return
        name, threshold = resolved
        slow = duration > threshold
        profile = self._stop(timed, keep=slow)
        if not slow:
            return
        self.monitor.endpoints.note_slow(name, duration, profile)
        self.monitor.report_slow(self.metrics(timed, name, duration, threshold, profile,
                                              status=status, exc=exc, body=body))

    def _stop(self, timed: TimedRequest, *, keep: bool) -> Profile | None:
        """End the engine's part of a request that may be slow."""
        if timed.anchor is not None and self._registry is not None:
            profile = self._engine.collect(self._registry, timed.anchor)
            return profile if keep else None
        return self._engine.stop(timed.handle, keep=keep)

    # -- the fast path's registered requests (see FlaskRequestTimer) -------------

    def finish_registered(self, environ: WSGIEnvironment, start_response: StartResponse,
                          body: Iterable[bytes] | None, start: float, end: float,
                          exc: BaseException | None, anchor: FrameType | None) -> None:
        """A request of the fast path that may be slow (or raised) is over:
        report it, with the profile the engine took of the frame ``anchor``
        (the wrapper's, which ran it), if any."""
        try:
            timed = TimedRequest(self, environ, start_response, start)
            timed.anchor = anchor
            status = 500 if exc is not None else response_status(body, start_response)
            self._slow(timed, end - start, exc, status, body=body)
        except Exception:
            report_swallowed("finishing a request")
        self._stats.extra(_perf_counter() - end)

    def describe(self, record: Record) -> str:
        """A registered request's description (the sampler's profile)."""
        return str(TimedRequest(self, record[1], None, record[0]))

    def hung_record(self, record: Record, profile: Profile | None, elapsed: float) -> None:
        """A registered request is still running after ``hang_after`` (engine thread)."""
        self.hung(TimedRequest(self, record[1], None, record[0]), profile, elapsed)

    def hung(self, timed: TimedRequest, profile: Profile | None, elapsed: float) -> None:
        """A request is still running after ``hang_after`` (engine thread)."""
        resolved = self.resolve(timed)
        if resolved is None:
            return
        name, threshold = resolved
        if elapsed <= threshold:  # not even slow by its own view's standard
            return
        self.monitor.report_hung(self.metrics(timed, name, elapsed, threshold, profile,
                                              status=None, exc=None, hung=True))

    def metrics(self, timed: TimedRequest, name: str, duration: float, threshold: float,
                profile: Profile | None, *, status: int | None,
                exc: BaseException | None, body: Iterable[bytes] | None = None,
                hung: bool = False) -> PerformanceMetrics:
        """Describe the request (redacted) from its environ (and its
        OpenTelemetry span from the environ or ``body``, or for a ``hung``
        one still in flight on another thread from its stack:
        :mod:`._trace`)."""
        details = request_details(self.monitor.redactor, timed.environ)
        started = time.time() - (_perf_counter() - timed.start)
        trace_id, span_id = (_trace.hung_request_trace(timed.environ) if hung
                             else _trace.request_trace(timed.environ, body))
        return PerformanceMetrics(
            kind="request", name=name, duration=duration, threshold=threshold,
            started_at=datetime.fromtimestamp(started, UTC), status_code=status, hung=hung,
            error=error_name(exc), profile=profile, trace_id=trace_id, span_id=span_id,
            queries=_sql.request_queries(timed.environ) if self.config.capture_sql else [],
            **details)


class PerfWatchMiddleware(RequestTimer):
    """Wrap any WSGI app::

        app.wsgi_app = PerfWatchMiddleware(app.wsgi_app, config=Config(threshold=0.5))

    Timing covers the whole response, until the server calls the response
    iterable's ``close()``. Without ``config`` the configuration comes from
    the environment and ``PERFWATCH_CONFIG_FILE``; keyword arguments override
    either. Signals are sent with this middleware as the sender. Only path
    globs of ``PERFWATCH_IGNORE`` apply (there are no endpoints at this level;
    a Flask app below still gives its endpoint's name to the report).
    """

    def __init__(self, wsgi_app: WSGIApplication, config: Config | None = None,
                 **overrides: Any) -> None:
        if config is None:
            config = Config.load(overrides=overrides)
        elif overrides:
            config = config.replace(**overrides)
        super().__init__(wsgi_app, Monitor(config, sender=self,
                                           prefix=config.store_prefix or "wsgi"))
        self._capture_sql = config.enabled and config.capture_sql and _sql.installed()
        self._enabled = config.enabled

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        if not self._enabled:
            return self.wsgi_app(environ, start_response)
        return super().__call__(environ, start_response)

    def resolve(self, timed: TimedRequest) -> tuple[str, float] | None:
        endpoint = getattr(getattr(timed.request, "url_rule", None), "endpoint", None)
        if isinstance(endpoint, str):
            return endpoint, self.config.threshold
        return request_path(self.monitor.redactor, timed.environ), self.config.threshold

    def stats(self) -> dict[str, Any]:
        """Same as :meth:`PerfWatch.stats <flask_perfwatch.PerfWatch.stats>`."""
        return self.monitor.snapshot()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued alert has been delivered; False on timeout."""
        return self.monitor.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued and release the monitor's resources."""
        self.monitor.close(timeout)


class _TimedBody:
    """The app's response iterable, unchanged, finishing the timed request exactly
    once: when the body is exhausted, when the server closes it, or when it is
    dropped unclosed, whichever comes first. (A server must call ``close()``,
    but werkzeug's test ``Client`` does not unless the caller closes the
    response; a request whose body was read to the end is over, never "hung".)"""

    __slots__ = ("_body", "_entered", "_error", "_timed")

    def __init__(self, body: Iterable[bytes], timed: TimedRequest, entered: float) -> None:
        self._body = body
        self._timed: TimedRequest | None = timed
        self._entered = entered
        self._error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        timed = self._timed
        try:
            if timed is not None and timed.timer._capture_sql \
                    and not isinstance(self._body, list | tuple):
                yield from _with_sql(self._body, timed.environ)
            else:
                yield from self._body
        except BaseException as exc:
            self._error = exc
            self._finish()
            raise
        self._finish()

    def close(self) -> None:
        try:
            close: Callable[[], None] | None = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._finish()

    def __del__(self) -> None:
        self._finish()

    def _finish(self) -> None:
        timed, self._timed = self._timed, None
        if timed is not None:
            timed.timer.finish(timed, _perf_counter(), self._entered, self._error)


def _with_sql(body: Iterable[bytes], environ: WSGIEnvironment) -> Iterator[bytes]:
    """A streamed body's chunks, the SQL each one runs recorded into its
    request's log (a generator that queries as it streams): the capture is
    resumed around every step of the app's iterator, never across a yield
    to the server."""
    iterator = iter(body)
    while True:
        sql = _sql.begin(environ)
        try:
            chunk = next(iterator)
        except StopIteration:
            return
        finally:
            _sql.end(sql)
        yield chunk


def response_status(body: Iterable[bytes] | None, start_response: StartResponse) -> int | None:
    """The status code of a response, read after the app returned it (the
    fast path does not wrap ``start_response``): from werkzeug's (Flask's)
    response, which the ``ClosingIterator`` it returns keeps for its
    ``close()``; else from the server's own record of it (gunicorn's
    ``start_response`` is a method of an object that keeps the ``status``);
    else None: unknown (a ``send_file`` response on a server that keeps its
    record in a closure: waitress, werkzeug's development server)."""
    try:
        for callback in getattr(body, "_callbacks", None) or ():
            code = getattr(getattr(callback, "__self__", None), "status_code", None)
            if isinstance(code, int):
                return code
        status = getattr(getattr(start_response, "__self__", None), "status", None)
    except Exception:  # an odd body or server object: the status stays unknown
        report_swallowed("reading the status of a slow response")
        return None
    if isinstance(status, int):
        return status
    return _status_code(status) if isinstance(status, str) else None


def _status_code(status: str | None) -> int | None:
    """The code of a WSGI status line (``"404 NOT FOUND"``): 500 if the app
    never started a response, None if it started one with a malformed status."""
    if status is None:
        return 500
    code = status.split(" ", 1)[0]
    return int(code) if code.isascii() and code.isdigit() and len(code) == 3 else None
