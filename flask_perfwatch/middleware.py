"""``PerfWatchMiddleware``: the same monitoring for any WSGI app."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ._guard import guarded
from ._util import error_name, glob_matcher
from .config import Config
from .metrics import PerformanceMetrics, environ_headers, parse_query, request_details
from .monitor import Monitor
from .profiling.base import describe

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


class PerfWatchMiddleware:
    """Wrap any WSGI app::

        app.wsgi_app = PerfWatchMiddleware(app.wsgi_app, config=Config(threshold=0.5))

    Timing covers the whole response, until the server calls the response
    iterable's ``close()``. Without ``config`` the configuration comes from
    the environment and ``PERFWATCH_CONFIG_FILE``; keyword arguments override
    either. Signals are sent with this middleware as the sender. Only path
    globs of ``PERFWATCH_IGNORE`` apply (there are no endpoints at this level,
    except that a Flask app below is asked for its matched endpoint's name).
    """

    def __init__(self, wsgi_app: WSGIApplication, config: Config | None = None,
                 **overrides: Any) -> None:
        if config is None:
            config = Config.load(overrides=overrides)
        elif overrides:
            config = config.replace(**overrides)
        self.wsgi_app = wsgi_app
        self.config = config
        self.monitor = Monitor(config, sender=self, prefix=config.store_prefix or "wsgi")
        self._ignore_path = glob_matcher([p for p in config.ignore if p.startswith("/")])

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        timing = self._begin(environ) if self.config.enabled else None
        if timing is None:
            return self.wsgi_app(environ, start_response)

        def capture(status: str, headers: Any, exc_info: Any = None) -> Any:
            timing.status = status
            # a Flask app below is still inside its request here (it drops
            # environ["werkzeug.request"] when the request context ends)
            timing.endpoint = _endpoint(environ)
            return start_response(status, headers, exc_info)

        try:
            body = self.wsgi_app(environ, capture)
        except BaseException as exc:
            self._finish(timing, environ, exc)
            raise
        return _TimedBody(body, lambda exc: self._finish(timing, environ, exc))

    def stats(self) -> dict[str, Any]:
        """Same as :meth:`PerfWatch.stats <flask_perfwatch.PerfWatch.stats>`."""
        return self.monitor.snapshot()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued alert has been delivered; False on timeout."""
        return self.monitor.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued and release the monitor's resources."""
        self.monitor.close(timeout)

    @guarded("PerfWatchMiddleware (start)", None)
    def _begin(self, environ: WSGIEnvironment) -> _Timing | None:
        start = time.perf_counter()
        path = environ.get("PATH_INFO", "") or "/"
        if self._ignore_path(path):
            return None
        handle = self.monitor.engine.start(describe(environ.get("REQUEST_METHOD", ""), path))
        timing = _Timing(start, time.time(), handle)
        self.monitor.stats.add_overhead(time.perf_counter() - start)
        return timing

    @guarded("PerfWatchMiddleware (finish)", None)
    def _finish(self, timing: _Timing, environ: WSGIEnvironment,
                exc: BaseException | None) -> None:
        end = time.perf_counter()
        monitor = self.monitor
        duration = end - timing.start
        threshold = monitor.config.threshold
        slow = duration > threshold
        profile = monitor.engine.stop(timing.handle, keep=slow)
        if slow:
            status = 500 if exc is not None or timing.status is None \
                else int(timing.status.split(" ", 1)[0])
            monitor.report_slow(PerformanceMetrics(
                kind="request",
                name=timing.endpoint or environ.get("PATH_INFO", "") or "/",
                duration=duration,
                threshold=threshold,
                started_at=datetime.fromtimestamp(timing.wall_start, UTC),
                status_code=status,
                error=error_name(exc),
                profile=profile,
                **request_details(
                    monitor.redactor,
                    method=environ.get("REQUEST_METHOD", "GET"),
                    base_url=_base_url(environ),
                    path=environ.get("PATH_INFO", "") or "/",
                    query_pairs=parse_query(environ.get("QUERY_STRING", "")),
                    header_pairs=environ_headers(environ),
                ),
            ))
        now = time.perf_counter()
        monitor.stats.observed(now - end)
        monitor.maybe_log_stats(now)


class _Timing:
    __slots__ = ("endpoint", "handle", "start", "status", "wall_start")

    def __init__(self, start: float, wall_start: float, handle: Any) -> None:
        self.start = start
        self.wall_start = wall_start
        self.handle = handle
        self.status: str | None = None
        self.endpoint: str | None = None


class _TimedBody:
    """The app's response iterable, unchanged, calling ``on_close`` exactly
    once when the server closes it (or iteration fails)."""

    def __init__(self, body: Iterable[bytes],
                 on_close: Callable[[BaseException | None], None]) -> None:
        self._body = body
        self._on_close: Callable[[BaseException | None], None] | None = on_close
        self._error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._body
        except BaseException as exc:
            self._error = exc
            raise

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close(self._error)


def _endpoint(environ: WSGIEnvironment) -> str | None:
    req = environ.get("werkzeug.request")
    rule = getattr(req, "url_rule", None)
    return getattr(rule, "endpoint", None)


def _base_url(environ: WSGIEnvironment) -> str:
    from werkzeug.sansio.utils import get_current_url
    from werkzeug.wsgi import get_host

    return get_current_url(
        environ.get("wsgi.url_scheme", "http"), get_host(environ),
        environ.get("SCRIPT_NAME", ""), environ.get("PATH_INFO", ""),
    )
