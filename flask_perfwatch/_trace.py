"""The OpenTelemetry span of a slow request or call, for
``PerformanceMetrics.trace_id`` / ``span_id``: a report, every channel's message and
the webhook data then name its trace.

Read only when a request or call turned out slow (or hung), never on a fast
one. Nothing is imported here: a span can only exist if someone imported
``opentelemetry.trace`` (the API every tracer, SDK and instrumentation goes
through), so when ``sys.modules`` lacks it there is no span to find, whether
opentelemetry-api is installed or not; and importing it on a request thread,
under the import lock, for a slow request, would only make it slower. The
same holds for the instrumentation modules consulted below.

The request's span is hard to find by the time our wrapper finishes, because
instrumentation ends its span before that. Where it is, by setup:

1. ``FlaskInstrumentor`` (``instrument_app`` before or after ``init_app``, or
   the global ``instrument()``): its ``before_request`` keeps the span in the
   WSGI environ; it has ended by now, but its context is what we need.
2. ``OpenTelemetryMiddleware`` outside ours: its span is the current one.
3. ``OpenTelemetryMiddleware`` inside ours: it has returned, leaving as the
   current span the *remote parent* extracted from the request's headers (not
   the request's span), and its span in the frame of the generator it returned
   (``_end_span_after_iterating(iterable, span, token)``), not yet started.

For a watched call, the current span (a child span the view opened, say) comes
first, then the request's. A hung request is reported from the engine's
thread, where no span is current: (1) applies as it is; for (2) and (3) the
span is a local of ``OpenTelemetryMiddleware.__call__``'s frame, still on the
request thread's stack, and :func:`hung_request_trace` reads it there.

Only a valid span context counts, of a span that records (or did: an ended
span that was sampled); never a ``NonRecordingSpan``, which is a remote
parent's context or a request no tracer records. Anything unexpected (another
instrumentation version, a foreign object under the key) means no trace, never
an error.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._guard import report_swallowed
from .profiling._stacks import reading_stacks

_TRACE_API = "opentelemetry.trace"
_FLASK_INSTRUMENTATION = "opentelemetry.instrumentation.flask"
_WSGI_INSTRUMENTATION = "opentelemetry.instrumentation.wsgi"
#: ``_ENVIRON_SPAN_KEY`` of opentelemetry-instrumentation-flask (0.41b0 to
#: 0.66b1 at least), used when its module does not say
FLASK_SPAN_KEY = "opentelemetry-flask.span_key"
#: the generator function whose frame holds ``OpenTelemetryMiddleware``'s span
_WSGI_BODY_FUNCTION = "_end_span_after_iterating"

TraceIds = tuple[str, str] | tuple[None, None]
NO_TRACE: TraceIds = (None, None)


def request_trace(environ: Mapping[str, Any], body: object = None) -> TraceIds:
    """``(trace_id, span_id)`` of a request that is over (or hung), as
    lower-case hex, or ``(None, None)``: the span ``FlaskInstrumentor`` kept in
    ``environ``, else the one of ``OpenTelemetryMiddleware`` in ``body`` (what
    the app returned, if known), else the current span if it is recording."""
    return _first_span("a slow request", (
        (lambda api: _flask_span(environ), True),
        (lambda api: _wsgi_body_span(body) if body is not None else None, True),
        (lambda api: api.get_current_span(), False)))


#: how deep a thread's stack is searched for the WSGI middleware's frame
_MAX_DEPTH = 400


def hung_request_trace(environ: Mapping[str, Any]) -> TraceIds:
    """``(trace_id, span_id)`` of a request still in flight on another
    thread (a hung one, reported from the engine's thread): the span
    ``FlaskInstrumentor`` keeps in ``environ``, else that of the
    ``OpenTelemetryMiddleware.__call__`` frame serving this very ``environ``
    on some thread's stack, if it records.

    This reads the locals (``environ``, ``span``) of that library frame
    only, never of the user's frames, once per hung request: on Python 3.11
    and 3.12 that attaches a dict of them to the frame, which refers to
    nothing the frame does not (see :mod:`.profiling._asyncstack`)."""
    return _first_span("a hung request", (
        (lambda api: _flask_span(environ), True),
        (lambda api: _wsgi_call_span(environ), False)))


def _wsgi_call_span(environ: Mapping[str, Any]) -> object:
    """The ``span`` local of the ``OpenTelemetryMiddleware.__call__`` frame
    whose ``environ`` is this one, on any thread's stack (None if none)."""
    middleware = getattr(sys.modules.get(_WSGI_INSTRUMENTATION), "OpenTelemetryMiddleware", None)
    call = vars(middleware).get("__call__") if isinstance(middleware, type) else None
    code = getattr(call, "__code__", None)
    if code is None:
        return None
    with reading_stacks:
        for frame in sys._current_frames().values():
            f: types.FrameType | None = frame
            depth = _MAX_DEPTH
            while f is not None and depth:
                if f.f_code is code:
                    local = f.f_locals
                    if local.get("environ") is environ:
                        return local.get("span")
                f = f.f_back
                depth -= 1
    return None


def call_trace(environ: Mapping[str, Any] | None) -> TraceIds:
    """``(trace_id, span_id)`` of a watched call at its end: the current span
    if it is recording, else the span ``FlaskInstrumentor`` kept for the
    request the call ran in (``environ``, if any), else ``(None, None)``."""
    return _first_span("a slow call", (
        (lambda api: api.get_current_span(), False),
        (lambda api: _flask_span(environ) if environ is not None else None, True)))


def _first_span(what: str, lookups: Iterable[tuple[Callable[[types.ModuleType], object], bool]]
                ) -> TraceIds:
    """The ids of the first span ``lookups`` find (each ``(find(api),
    ended)``, tried in order, lazily), or ``(None, None)``; an error in any
    is logged and counted, and means no trace."""
    api = sys.modules.get(_TRACE_API)
    if api is None:
        return NO_TRACE
    try:
        for find, ended in lookups:
            found = _ids(api, find(api), ended=ended)
            if found[0] is not None:
                return found
        return NO_TRACE
    except Exception:
        report_swallowed(f"reading the OpenTelemetry span of {what}")
        return NO_TRACE


def _flask_span(environ: Mapping[str, Any]) -> object:
    """What ``FlaskInstrumentor`` stored in the environ, if anything."""
    key = getattr(sys.modules.get(_FLASK_INSTRUMENTATION), "_ENVIRON_SPAN_KEY", FLASK_SPAN_KEY)
    return environ.get(key if isinstance(key, str) else FLASK_SPAN_KEY)


def _wsgi_body_span(body: object) -> object:
    """The span in the frame of ``OpenTelemetryMiddleware``'s response
    generator, if ``body`` is one that has not finished."""
    if not isinstance(body, types.GeneratorType):
        return None
    module = sys.modules.get(_WSGI_INSTRUMENTATION)
    code = getattr(getattr(module, _WSGI_BODY_FUNCTION, None), "__code__", None)
    if code is None or body.gi_code is not code:
        return None
    frame = body.gi_frame
    return frame.f_locals.get("span") if frame is not None else None


def _ids(api: types.ModuleType, span: object, *, ended: bool) -> TraceIds:
    """The ids of ``span`` if it is a span of our request with a valid context
    that records (or, if ``ended``, did and was sampled: the instrumentation
    ended it before we finished). A ``NonRecordingSpan`` never counts: it is a
    remote parent's context, or that of a request no tracer records (no SDK,
    or the sampler dropped it)."""
    span_class = getattr(api, "Span", None)
    non_recording = getattr(api, "NonRecordingSpan", None)
    if span_class is None or non_recording is None:  # opentelemetry.trace being imported
        return NO_TRACE
    if not isinstance(span, span_class) or isinstance(span, non_recording):
        return NO_TRACE
    context: Any = span.get_span_context()
    if not context.is_valid:
        return NO_TRACE
    if not span.is_recording() and not (ended and context.trace_flags.sampled):
        return NO_TRACE
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
