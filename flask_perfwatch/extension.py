"""The Flask extension: :class:`PerfWatch` and :func:`quick_setup`."""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from flask import (
    Flask,
    current_app,
    got_request_exception,
    has_app_context,
    has_request_context,
    request,
)
from flask.globals import request_ctx
from werkzeug.exceptions import HTTPException

from . import _fork, _sql, _trace
from ._endpoints import BLOCK, NO_ENDPOINT, EndpointTracker
from ._guard import guarded, report_swallowed
from ._util import error_name, glob_matcher, parse_duration
from .config import Config
from .exceptions import ConfigError
from .metrics import PerformanceMetrics, request_details
from .middleware import REQUEST_KEY, RequestTimer, TimedRequest
from .monitor import FAST_SAMPLE, Monitor

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

logger = logging.getLogger(__name__)

_perf_counter = time.perf_counter
_getframe = sys._getframe
_FAST_SAMPLE_MASK = FAST_SAMPLE - 1
_LAST = BLOCK - 1
_dict_getitem = dict.__getitem__

EXTENSION_KEY = "perfwatch"
_THRESHOLD_ATTR = "__perfwatch_threshold__"
_IGNORE_ATTR = "__perfwatch_ignore__"


#: The environ key under which the view lookup notes a request's endpoint.
ENDPOINT_KEY = "flask_perfwatch.endpoint"

try:  # Flask 2.2-3.1: the ContextVar behind ``flask.request``, 30x cheaper than the proxy
    from flask.globals import _cv_request
except ImportError:  # pragma: no cover - a Flask without it: the public proxy
    _cv_request = None  # type: ignore[assignment]


class _ViewFunctions(dict[str, Callable[..., Any]]):
    """``app.view_functions``, noting which endpoint a request is dispatched
    to: Flask looks the view up here once per request
    (``self.view_functions[rule.endpoint]``), the one place the endpoint
    passes by as a plain argument. It goes into the request's environ,
    where the fast path reads it after the app returns (Flask's request
    object is gone by then). Cost: one Python call; reading ``request``
    through its proxy, or a ``before_request`` hook, costs several times
    more. Everything else is the dict it replaces."""

    __slots__ = ()

    def __getitem__(self, endpoint: str) -> Callable[..., Any]:
        ctx = _current_context(None)
        if ctx is not None:
            ctx.request.environ[ENDPOINT_KEY] = endpoint
        return _dict_getitem(self, endpoint)


def _request_context(default: None) -> Any:
    """The current request context, or ``default`` (a Flask without
    ``_cv_request``: through the public proxy, slower)."""
    if not has_request_context():
        return default
    return request_ctx._get_current_object()  # type: ignore[attr-defined]


_current_context = _cv_request.get if _cv_request is not None else _request_context


class _AppState:
    """What ``app.extensions["perfwatch"]`` holds: the instance that set the
    app up, the app's monitor and the timing wrapper installed as
    ``app.wsgi_app``."""

    __slots__ = ("app_name", "monitor", "owner", "timer")

    def __init__(self, owner: PerfWatch, app: Flask, monitor: Monitor) -> None:
        self.owner = owner
        self.app_name = app.name
        self.monitor = monitor
        self.timer = FlaskRequestTimer(app, monitor)

    @property
    def config(self) -> Config:
        return self.monitor.config


class FlaskRequestTimer(RequestTimer):
    """The :class:`~flask_perfwatch.middleware.RequestTimer` that becomes
    ``app.wsgi_app``: it resolves endpoints, per-view thresholds and ignore
    lists through Flask's view functions, and provides the two Flask hooks
    the extension installs where needed."""

    time_body = False  # the view has run when Flask's wsgi_app returns

    def __init__(self, app: Flask, monitor: Monitor) -> None:
        super().__init__(app.wsgi_app, monitor)
        self.view_functions = app.view_functions
        self._endpoints: EndpointTracker = monitor.endpoints
        self._by_name = monitor.endpoints.by_name
        self._app = weakref.ref(app)  # the app holds this timer (its wsgi_app)
        self._views: dict[str | None, tuple[Callable[..., Any] | None, bool, float]] = {}
        self._ignore_endpoint = glob_matcher(
            [p for p in self.config.ignore if not p.startswith("/")])
        self._floor = self.config.threshold
        self._floor_views = -1
        engine = self._engine
        # The fast path (__call__) serves the sampler through a Registry and
        # "off" with nothing; an engine that starts in the view (pyinstrument)
        # goes through RequestTimer.__call__.
        self._general = engine.start_in_view
        if engine.profiles and not engine.start_in_view:
            self._registry = engine.registry(self, FlaskRequestTimer.__call__.__code__)
            self._general = self._registry is None
        stats = monitor.stats
        self._counted = stats.fast_requests
        self._stats_sample = stats.fast_sample

    def floor(self) -> float:
        # per-view thresholds may be lower than the global one; recomputed
        # only when views are added
        if len(self.view_functions) != self._floor_views:
            self._floor_views = len(self.view_functions)
            self._floor = min([self.config.threshold, *(
                getattr(view, _THRESHOLD_ATTR) for view in self.view_functions.values()
                if getattr(view, _THRESHOLD_ATTR, None))])
        return self._floor

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        """The fast path. A request that turns out fast costs two clock reads
        and a count: no engine call, no registration, no object, no
        ``start_response`` wrapper (the status of a slow one is read
        afterwards: :func:`~.middleware.response_status`). The sampler finds
        a request in flight by this frame on its thread's stack, and reads
        its ``self``, ``start`` and ``environ`` (see
        :class:`~.profiling.base.Registry`): ``start`` is assigned only on
        the path where the request is the sampler's to find. One request in
        FAST_SAMPLE also times this method's own cost for ``stats()`` and
        checks the floor, the fork and the stats log."""
        if self._ignore_path is not None and self._ignore_path(environ.get("PATH_INFO", "")):
            return self.wsgi_app(environ, start_response)
        registry = self._registry
        if registry is None:
            if self._general:
                return RequestTimer.__call__(self, environ, start_response)
        elif registry.idle:  # the engine's thread sleeps, or cannot find requests
            if registry.open:  # wake it (rare, so not sampled)
                waking = _perf_counter()
                registry.wake()
                self._stats.extra(_perf_counter() - waking)
            if not registry.open:  # gevent, stacks unreadable, or closed
                return RequestTimer.__call__(self, environ, start_response)
        start = _perf_counter()  # from here on the sampler may find this request
        sampled = not next(self._counted) & _FAST_SAMPLE_MASK
        entered = _perf_counter() if sampled else 0.0
        try:
            body = self.wsgi_app(environ, start_response)
        except BaseException as exc:
            end = _perf_counter()
            self.observe(environ, end - start, end)
            self.finish_registered(environ, start_response, None, start, end, exc,
                                   _getframe() if registry is not None else None)
            raise
        end = checked = _perf_counter()
        duration = end - start
        # the endpoint's statistics (see _endpoints): its open block's next slot
        record = self._by_name.get(environ.get(ENDPOINT_KEY))
        if record is None:
            self.first_of(environ.get(ENDPOINT_KEY), duration, end)
        else:
            n = next(record.counter)
            if n < _LAST:
                record.ring[n] = duration
            elif n == _LAST:
                record.ring[n] = duration
                self._endpoints.close(record, end)
        if sampled:  # its own cost is counted apart: only these requests pay it
            self._sampled_round(record, end)
            checked = _perf_counter()
            self._stats.extra(checked - end)
        if duration > self._floor:
            self.finish_registered(environ, start_response, body, start, end, None,
                                   _getframe() if registry is not None else None)
        elif sampled:  # the fast path's cost is sampled on fast requests only
            done = _perf_counter()
            self._stats_sample(entered - start + done - checked)
            if done >= self.monitor.next_stats_log:
                try:
                    self.monitor.log_stats(done)
                except Exception:
                    report_swallowed("logging the monitor's stats")
        return body

    def _sampled_round(self, record: Any, now: float) -> None:
        """What the fast path checks on one request in FAST_SAMPLE: views
        added (their thresholds lower the floor), a fork without Python's
        fork hooks (uWSGI; one ``os.getpid()``), and whether the endpoint's
        open block has been open too long."""
        try:
            self.floor()
            _fork.ensure_current()
            if record is not None:
                self._endpoints.tick(record, now)
        except Exception:
            report_swallowed("the fast path's periodic checks (views' thresholds, fork, "
                             "endpoint statistics)")

    def observe(self, environ: WSGIEnvironment, duration: float, now: float) -> None:
        """Record a request in its endpoint's statistics (every path but the
        fast one, which inlines this)."""
        name = environ.get(ENDPOINT_KEY)
        record = self._by_name.get(name)
        if record is None:
            self.first_of(name, duration, now)
        else:
            self._endpoints.record(record, duration, now)

    def first_of(self, name: str | None, duration: float, now: float) -> None:
        """The first request of an endpoint: its record is created (ignored
        endpoints get one that keeps nothing)."""
        try:
            ignored, threshold = self.view_settings(name)
            self._endpoints.add(name, name or NO_ENDPOINT, threshold, ignored, duration, now)
        except Exception:
            report_swallowed("recording a request in its endpoint's statistics")

    def view_settings(self, endpoint: str | None) -> tuple[bool, float]:
        """(ignored, threshold) of an endpoint, cached per view function."""
        view = self.view_functions.get(endpoint) if endpoint else None
        cached = self._views.get(endpoint)
        if cached is not None and cached[0] is view:
            return cached[1], cached[2]
        ignored = bool(getattr(view, _IGNORE_ATTR, False)) or (
            endpoint is not None and self._ignore_endpoint(endpoint)
        )
        threshold = getattr(view, _THRESHOLD_ATTR, None) or self.config.threshold
        self._views[endpoint] = (view, ignored, threshold)
        return ignored, threshold

    def resolve(self, timed: TimedRequest) -> tuple[str, float] | None:
        # the endpoint Flask dispatched to, as the view lookup noted it
        # (_ViewFunctions); for a request that reached no view (a 404, a
        # before_request that answered), the rule its URL matched
        endpoint = timed.environ.get(ENDPOINT_KEY)
        if endpoint is None:
            req = timed.request or timed.environ.get("werkzeug.request")
            # Flask drops the request from the environ when its context ends:
            # the fast path keeps no reference to it, so its URL is matched again
            rule = getattr(req, "url_rule", None) if req is not None \
                else self._match(timed.environ)
            endpoint = rule.endpoint if rule is not None else None
        ignored, threshold = self.view_settings(endpoint)
        if ignored:
            return None
        return endpoint or NO_ENDPOINT, threshold

    def _match(self, environ: WSGIEnvironment) -> Any:
        """The URL rule Flask matched for a request that is over (None if
        none did), matched again the way Flask does (slow requests only)."""
        app = self._app()
        if app is None:
            return None
        saved = environ.get("werkzeug.request")
        try:
            adapter = app.create_url_adapter(app.request_class(environ))
            if adapter is None:
                return None
            rule, _ = adapter.match(return_rule=True)
        except HTTPException:  # 404, 405 and redirects: Flask found no rule either
            return None
        except Exception:  # the app's request class, say: reported as no endpoint
            report_swallowed("matching a slow request's URL again")
            return None
        finally:
            environ["werkzeug.request"] = saved  # no cycle left behind
        return rule

    # -- Flask hooks, installed only where needed ---------------------------

    @guarded("starting the profiler in before_request", None)
    def start_profiler(self) -> None:
        """before_request, for engines that start inside the view (pyinstrument):
        by then the endpoint is known, so ignored views are never profiled."""
        timed = request.environ.get(REQUEST_KEY)
        if timed is None or timed.timer is not self:
            return
        if self.view_settings(request.endpoint)[0]:
            return
        timed.handle = self._engine.start(f"{request.method} {request.path}")

    @guarded("noting the request of an unhandled exception", None)
    def on_exception(self, sender: Flask, **_: Any) -> None:
        """got_request_exception: keep the request object, which Flask drops
        before the exception reaches our WSGI wrapper."""
        timed = request.environ.get(REQUEST_KEY)
        if timed is not None:
            timed.request = request._get_current_object()  # type: ignore[attr-defined]


def _in_ignored_request() -> bool:
    """Whether the current request is one the app ignores (``@perfwatch.ignore``,
    an ignored endpoint, an ignored path glob): then nothing inside it is
    watched either, so an ignored view's path (``/reset/<token>``) cannot leak
    through a watched function it calls."""
    state = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(state, _AppState):
        return False
    environ = request.environ
    timer = state.timer
    if timer.ignores_path(environ.get("PATH_INFO", "")):
        return True
    return timer.view_settings(request.endpoint)[0]


def _threshold_value(seconds: float | str, where: str) -> float:
    try:
        value = parse_duration(seconds)
        if value <= 0:
            raise ValueError(seconds)
    except ValueError:
        raise ConfigError(f"{where}(threshold={seconds!r}): expected a positive duration "
                          "such as 2.5 or '500ms'", value=seconds) from None
    return value


class PerfWatch:
    """Times every request of a Flask app and alerts on slow ones.

    ::

        perfwatch = PerfWatch()          # or PerfWatch(app)
        perfwatch.init_app(app)

    Keyword arguments override any other configuration source; they use the
    short names of :class:`~flask_perfwatch.Config` (``threshold=0.5``,
    ``notifiers=["local"]``). One instance can serve several apps; each app's
    state lives in ``app.extensions["perfwatch"]``.
    """

    def __init__(self, app: Flask | None = None, **overrides: Any) -> None:
        self._overrides = overrides
        self._standalone: Monitor | None = None
        self._standalone_failed = False
        self._lock = threading.Lock()
        self._apps: list[weakref.ref[Flask]] = []
        self._warned_several = False
        _fork.register(self)
        if app is not None:
            self.init_app(app)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def init_app(self, app: Flask, **overrides: Any) -> None:
        """Read and validate the configuration, build the parts and install
        the request hooks. Raises :class:`~flask_perfwatch.exceptions.ConfigError`
        for any invalid setting. Endpoints added later are covered too."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("PerfWatch is already set up on this app "
                               f"({app.name!r}); call init_app once per app.")
        config = Config.load(overrides={**self._overrides, **overrides},
                             app_config=app.config)
        monitor = Monitor(config, sender=app, prefix=config.store_prefix or app.name)
        state = _AppState(self, app, monitor)
        app.extensions[EXTENSION_KEY] = state
        self._apps = [ref for ref in self._apps if ref() is not None]
        self._apps.append(weakref.ref(app))
        if not config.enabled:
            return
        # Flask's documented way to add WSGI middleware: cheaper per request
        # than hooks, and the timing covers every hook and handler
        app.wsgi_app = state.timer  # type: ignore[method-assign]
        # the endpoint statistics learn each request's endpoint from here
        views = _ViewFunctions(app.view_functions)
        app.view_functions = state.timer.view_functions = views
        # weak: the signal must not keep the app (and its monitor) alive
        got_request_exception.connect(state.timer.on_exception, sender=app)
        if monitor.engine.start_in_view:
            app.before_request_funcs.setdefault(None, []).insert(0, state.timer.start_profiler)

    def close(self, app: Flask | None = None, timeout: float | None = None) -> None:
        """Stop monitoring: deliver what is queued (within ``timeout``, default
        ``PERFWATCH_SHUTDOWN_TIMEOUT``), stop the threads, release connections,
        and undo :meth:`init_app` (``app.wsgi_app``, hooks, signals,
        ``app.extensions["perfwatch"]``), so ``init_app`` may run again, in a
        test for instance. Without ``app``: every app this instance serves,
        and the standalone monitor of watched functions."""
        if app is not None:
            state = app.extensions.get(EXTENSION_KEY)
            if not isinstance(state, _AppState) or state.owner is not self:
                raise RuntimeError(f"PerfWatch is not set up on app {app.name!r}")
            self._close_app(app, state, timeout)
            return
        for ref in list(self._apps):
            bound = ref()
            state = bound.extensions.get(EXTENSION_KEY) if bound is not None else None
            if bound is not None and isinstance(state, _AppState) and state.owner is self:
                self._close_app(bound, state, timeout)
        with self._lock:
            standalone, self._standalone = self._standalone, None
            self._standalone_failed = False
        if standalone is not None:
            standalone.close(timeout)

    def _close_app(self, app: Flask, state: _AppState, timeout: float | None) -> None:
        state.monitor.close(timeout)
        timer = state.timer
        got_request_exception.disconnect(timer.on_exception, sender=app)
        if app.wsgi_app is timer:
            app.wsgi_app = timer.wsgi_app  # type: ignore[method-assign,assignment]
        else:  # something wrapped it after us: it stays in the chain, idle
            logger.warning("PerfWatch closed on app %r, but app.wsgi_app was wrapped again "
                           "after init_app, so its timing wrapper stays in the chain "
                           "(with its threads stopped)", app.name)
        if isinstance(app.view_functions, _ViewFunctions):
            app.view_functions = dict(app.view_functions)
        funcs = app.before_request_funcs.get(None, [])
        if timer.start_profiler in funcs:
            funcs.remove(timer.start_profiler)
        del app.extensions[EXTENSION_KEY]
        self._apps = [ref for ref in self._apps if ref() not in (None, app)]

    # -- per-view settings ----------------------------------------------------

    def threshold(self, seconds: float | str) -> Callable[[F], F]:
        """Give one view its own threshold; put it *below* the route decorator:

        .. code-block:: python

            @app.get("/export")
            @perfwatch.threshold("10s")
            def export(): ...
        """
        value = _threshold_value(seconds, "perfwatch.threshold")

        def decorate(view: F) -> F:
            setattr(view, _THRESHOLD_ATTR, value)
            return view

        return decorate

    @staticmethod
    def ignore(view: F) -> F:
        """Never time or profile this view; put it *below* the route decorator."""
        setattr(view, _IGNORE_ATTR, True)
        return view

    # -- watched functions -----------------------------------------------------

    @overload
    def watch(self, func: Callable[P, R], /) -> Callable[P, R]: ...

    @overload
    def watch(
        self, func: None = None, /, *, threshold: float | str | None = None,
        name: str | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]: ...

    def watch(
        self,
        func: Callable[P, R] | None = None,
        /,
        *,
        threshold: float | str | None = None,
        name: str | None = None,
    ) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
        """Time (and profile) every call of a function, sync or async.

        ``@perfwatch.watch`` or ``@perfwatch.watch(threshold=0.2, name="...")``.
        Return values and exceptions pass through unchanged. Inside a request
        or app context the app's configuration and signals apply; elsewhere
        those of this instance's keyword arguments, the environment and the
        config file, with this ``PerfWatch`` as the signals' sender.
        """
        limit = None if threshold is None else _threshold_value(threshold, "perfwatch.watch")

        def decorate(f: Callable[P, R]) -> Callable[P, R]:
            label = name or f"{f.__module__}.{f.__qualname__}"
            if inspect.iscoroutinefunction(f):
                return self._wrap_async(f, label, limit)  # type: ignore[return-value]
            return self._wrap_sync(f, label, limit)

        return decorate(func) if func is not None else decorate

    def _wrap_sync(self, f: Callable[P, R], label: str, limit: float | None) -> Callable[P, R]:
        @functools.wraps(f)
        def watched(*args: P.args, **kwargs: P.kwargs) -> R:
            call = self._begin_call(label, is_async=False)
            if call is None:
                return f(*args, **kwargs)
            error: BaseException | None = None
            try:
                return f(*args, **kwargs)
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._end_call(call, label, limit, error)

        return watched

    def _wrap_async(self, f: Callable[P, Awaitable[R]], label: str, limit: float | None
                    ) -> Callable[P, Awaitable[R]]:
        @functools.wraps(f)
        async def watched(*args: P.args, **kwargs: P.kwargs) -> R:
            call = self._begin_call(label, is_async=True)
            if call is None:
                return await f(*args, **kwargs)
            error: BaseException | None = None
            try:
                return await f(*args, **kwargs)
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._end_call(call, label, limit, error)

        return watched

    @guarded("a watched function (start)", None)
    def _begin_call(self, label: str, *, is_async: bool
                    ) -> tuple[Monitor, float, Any, _sql.Capture | None] | None:
        monitor = self._monitor_for_call()
        if monitor is None or (has_request_context() and _in_ignored_request()):
            return None
        start = time.perf_counter()
        handle = monitor.engine.start(label, is_async=is_async)
        # the call's own SQL log, pushed last: nothing is left pushed if the above raised
        return monitor, start, handle, _sql.begin() if monitor.config.capture_sql else None

    @guarded("a watched function (end)", None)
    def _end_call(self, call: tuple[Monitor, float, Any, _sql.Capture | None], label: str,
                  limit: float | None, exc: BaseException | None) -> None:
        end = time.perf_counter()
        monitor, start, handle, sql = call
        sql_log = _sql.end(sql)  # first: whatever fails below, the log is popped
        duration = end - start
        threshold = limit or monitor.config.threshold
        slow = duration > threshold
        profile = monitor.engine.stop(handle, keep=slow)
        if slow:
            details = request_details(monitor.redactor, request.environ, headers=False) \
                if has_request_context() else {}
            trace_id, span_id = _trace.call_trace(
                request.environ if has_request_context() else None)
            metrics = PerformanceMetrics(
                kind="function", name=label, duration=duration, threshold=threshold,
                started_at=datetime.fromtimestamp(time.time() - duration, UTC),
                trace_id=trace_id, span_id=span_id,
                error=error_name(exc), profile=profile, **details,
                queries=sql_log.queries() if sql_log is not None else [],
            )
            monitor.report_slow(metrics)
        monitor.stats.observed(time.perf_counter() - end)

    def _bound_states(self) -> list[_AppState]:
        """The state of every live app this instance was set up on."""
        states = []
        for ref in self._apps:
            app = ref()
            state = app.extensions.get(EXTENSION_KEY) if app is not None else None
            if isinstance(state, _AppState) and state.owner is self:
                states.append(state)
        return states

    def _monitor_for_call(self) -> Monitor | None:
        """The monitor of a watched call: the current app's (if this instance
        serves it), else that of the one app this instance is bound to, else
        the standalone one (no app, or several and no context to choose by).
        Its ``sender`` is the app, or this instance."""
        if has_app_context():
            state = current_app.extensions.get(EXTENSION_KEY)
            if isinstance(state, _AppState) and state.owner is self:
                return state.monitor if state.config.enabled else None
        states = self._bound_states()
        if len(states) == 1:
            return states[0].monitor if states[0].config.enabled else None
        if states and not self._warned_several:
            self._warned_several = True
            logger.warning("a function watched by a PerfWatch that serves %d apps (%s) ran "
                           "outside an app context: it uses the standalone configuration "
                           "(keyword arguments, environment, config file); push an app "
                           "context to use an app's", len(states),
                           ", ".join(repr(st.app_name) for st in states))
        monitor = self._standalone_monitor()
        if monitor is None or not monitor.config.enabled:
            return None
        return monitor

    def _standalone_monitor(self) -> Monitor | None:
        if self._standalone is not None or self._standalone_failed:
            return self._standalone
        with self._lock:
            if self._standalone is None and not self._standalone_failed:
                try:
                    config = Config.load(overrides=self._overrides)
                    self._standalone = Monitor(config, sender=self, prefix="perfwatch")
                except Exception:
                    self._standalone_failed = True
                    report_swallowed("configuring PerfWatch for watched functions outside "
                                     "an app (they run unmonitored)")
        return self._standalone

    # -- introspection -----------------------------------------------------------

    def _monitor(self, app: Flask | None) -> Monitor:
        if app is None and has_app_context():
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        if app is None:
            states = self._bound_states()
            if len(states) == 1:
                return states[0].monitor
            if states:
                names = ", ".join(repr(st.app_name) for st in states)
                raise RuntimeError(f"this PerfWatch serves {len(states)} apps ({names}): "
                                   "pass app=..., or call it inside an app context")
        if app is not None:
            state = app.extensions.get(EXTENSION_KEY)
            if not isinstance(state, _AppState) or state.owner is not self:
                raise RuntimeError(f"PerfWatch is not set up on app {app.name!r}; "
                                   "call init_app(app) first.")
            return state.monitor
        monitor = self._standalone_monitor()
        if monitor is None:
            raise RuntimeError("no app given, none active, and the standalone "
                               "configuration failed (see the log)")
        return monitor

    def config(self, app: Flask | None = None) -> Config:
        """The effective :class:`~flask_perfwatch.Config` of ``app``. Without
        ``app``: the current app's; outside an app context, that of the one app
        this instance is set up on (:class:`RuntimeError` if several), or the
        standalone one of watched functions if it serves none."""
        return self._monitor(app).config

    def stats(self, app: Flask | None = None) -> dict[str, Any]:
        """The monitor's own accounting: ``requests``, ``slow``, ``hung``,
        ``regressions`` (``endpoint_regressed`` sent); ``alerts`` (passed
        dedupe and went to the notifiers), ``alerts_suppressed`` and
        ``alerts_dropped`` (so that, once the queue is empty, ``slow + hung +
        regressions == alerts + alerts_suppressed + alerts_dropped``);
        ``alerts_sent`` and ``alerts_failed`` (one per notifier per alert)
        and ``notifiers`` (the same per notifier name); ``receiver_errors``
        (signal receivers that raised), ``errors`` (errors flask_perfwatch
        swallowed in this process, each logged with its traceback);
        ``queue_depth``, ``overhead_seconds`` and ``overhead_per_request_us``
        (time spent on request threads). Without ``app``, the app is chosen
        as for :meth:`config`."""
        return self._monitor(app).snapshot()

    def endpoint_stats(self, app: Flask | None = None) -> dict[str, dict[str, Any]]:
        """Latency of every endpoint this process served:
        ``{endpoint: {"count", "p50", "p95", "p99", "max", "slow"}}``, times
        in seconds. ``count``, ``max`` and ``slow`` cover every request
        since the process started; the percentiles (exact) its last 2,400
        or so requests, the ones it keeps for regression detection (see
        :ref:`regressions`). Requests no endpoint matched are under
        ``"<no endpoint>"``; ignored endpoints are left out. Without
        ``app``, the app is chosen as for :meth:`config`."""
        return self._monitor(app).endpoints.stats()

    def flush(self, timeout: float | None = None, app: Flask | None = None) -> bool:
        """Wait until every queued alert has been delivered; False on timeout.
        Without ``app``, the app is chosen as for :meth:`config`."""
        return self._monitor(app).flush(timeout)


def quick_setup(app: Flask, **options: Any) -> PerfWatch:
    """One line: ``perfwatch = quick_setup(app, threshold=0.5, notifiers=["local"])``.

    The same as ``PerfWatch(app, **options)``.
    """
    return PerfWatch(app, **options)
