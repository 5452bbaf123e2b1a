"""Trace linking (issue 14): a slow request's, a hung request's and a watched
call's ``PerformanceMetrics`` carry the ids of the OpenTelemetry span that
recorded them, whichever way OpenTelemetry was set up around the app, and a
fast request never looks for a span.

Everything runs through the real OpenTelemetry SDK and instrumentation: the
expected ids are those of the span the SDK exported. Each test builds its own
``TracerProvider`` and passes it to the instrumentation (the global one can be
set only once per process), and undoes the instrumentation afterwards.
"""

from __future__ import annotations

import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import flask
import pytest
from conftest import SLOW, THRESHOLD, build_app, wait_until
from opentelemetry import trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from werkzeug.serving import make_server
from werkzeug.test import Client

from flask_perfwatch import PerfWatch, PerfWatchMiddleware
from flask_perfwatch import _trace as trace_module
from flask_perfwatch.metrics import PerformanceMetrics
from flask_perfwatch.testing import SignalRecorder

#: how OpenTelemetry is set up around the app: FlaskInstrumentor applied
#: before or after init_app; OpenTelemetry's WSGI middleware wrapping
#: app.wsgi_app after init_app (outside our wrapper) or before (inside it)
SETUPS = ["flask_before", "flask_after", "wsgi_outside", "wsgi_inside"]
#: the sampler takes the fast path (finish_registered); pyinstrument the
#: general one (RequestTimer.__call__ -> finish)
ENGINES = ["sampler", "pyinstrument"]
REMOTE_TRACE = "0af7651916cd43dd8448eb211c80319c"
REMOTE_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{REMOTE_TRACE}-{REMOTE_SPAN}-01"

Traced = Callable[..., tuple[flask.Flask, PerfWatch]]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracer_provider
    tracer_provider.shutdown()


@pytest.fixture
def traced(provider: TracerProvider, report_dir: Path) -> Iterator[Traced]:
    """``app, perfwatch = traced(setup, **overrides)``: the test app with
    PerfWatch and OpenTelemetry set up as ``setup`` says (one of SETUPS);
    afterwards both are undone in reverse order, the app's ``wsgi_app``
    restored to Flask's own."""
    with ExitStack() as undo:

        def factory(setup: str, *, app: flask.Flask | None = None,
                    tracer_provider: Any = provider, **overrides: Any
                    ) -> tuple[flask.Flask, PerfWatch]:
            assert setup in SETUPS
            app = app or build_app()
            original = app.wsgi_app
            undo.callback(_restored, app, original)

            def instrument(kind: str) -> None:
                """FlaskInstrumentor or OpenTelemetry's WSGI middleware, undone after."""
                if kind == "flask":
                    FlaskInstrumentor().instrument_app(app, tracer_provider=tracer_provider)
                    undo.callback(FlaskInstrumentor().uninstrument_app, app)
                else:
                    app.wsgi_app = OpenTelemetryMiddleware(  # type: ignore[method-assign]
                        app.wsgi_app, tracer_provider=tracer_provider)
                    undo.callback(_unwrap, app)

            if setup in ("flask_before", "wsgi_inside"):  # before init_app
                instrument(setup.partition("_")[0])
            overrides.setdefault("report_dir", str(report_dir))
            overrides.setdefault("threshold", THRESHOLD)
            perfwatch = PerfWatch()
            perfwatch.init_app(app, **overrides)
            undo.callback(perfwatch.close, app, 5)
            if setup in ("flask_after", "wsgi_outside"):  # after it
                instrument(setup.partition("_")[0])
            return app, perfwatch

        yield factory


def _unwrap(app: flask.Flask) -> None:
    assert isinstance(app.wsgi_app, OpenTelemetryMiddleware)
    app.wsgi_app = app.wsgi_app.wsgi  # type: ignore[method-assign]


def _restored(app: flask.Flask, original: Any) -> None:
    assert app.wsgi_app == original, "the instrumentation was not undone"


def ids_of(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def server_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    """The one SERVER span exported, once it has ended."""
    spans = wait_until(lambda: [s for s in exporter.get_finished_spans()
                                if s.kind is trace.SpanKind.SERVER],
                       message="the request's server span")
    assert len(spans) == 1, spans
    span: ReadableSpan = spans[0]
    return span


def get(app: flask.Flask, path: str, **kwargs: Any) -> None:
    """One request through the test client, its body read and closed (which
    ends the WSGI middleware's span)."""
    with app.test_client().get(path, **kwargs) as response:
        assert response.status_code < 500


def slow_metrics(recorder: SignalRecorder, kind: str = "request") -> list[PerformanceMetrics]:
    return [e.kwargs["metrics"] for e in recorder.of("slow_request")
            if e.kwargs["metrics"].kind == kind]


# -- slow requests ---------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("setup", SETUPS)
def test_a_slow_request_carries_its_server_span(
        setup: str, engine: str, traced: Traced, exporter: InMemorySpanExporter,
        signals_recorder: SignalRecorder) -> None:
    app, _ = traced(setup, profiler=engine)
    get(app, "/slow")
    (metrics,) = slow_metrics(signals_recorder)
    assert (metrics.trace_id, metrics.span_id) == ids_of(server_span(exporter))
    assert len(metrics.trace_id or "") == 32
    assert len(metrics.span_id or "") == 16
    data = metrics.to_dict()
    assert (data["trace_id"], data["span_id"]) == (metrics.trace_id, metrics.span_id)


@pytest.mark.parametrize("setup", ["flask_after", "wsgi_inside", "wsgi_outside"])
def test_a_remote_parent_from_the_headers_is_not_taken_for_the_request_s_span(
        setup: str, traced: Traced, exporter: InMemorySpanExporter,
        signals_recorder: SignalRecorder) -> None:
    """With a ``traceparent`` header the server span is a child of the remote
    span; inside our wrapper, the WSGI middleware leaves that remote parent as
    the current span when it returns. The request's own span is reported."""
    app, _ = traced(setup, profiler="sampler")
    get(app, "/slow", headers={"traceparent": TRACEPARENT})
    (metrics,) = slow_metrics(signals_recorder)
    span = server_span(exporter)
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == REMOTE_SPAN
    assert (metrics.trace_id, metrics.span_id) == (REMOTE_TRACE, ids_of(span)[1])


@pytest.mark.parametrize("setup", ["flask_after", "wsgi_inside"])
def test_a_span_no_tracer_records_is_not_linked(
        setup: str, traced: Traced, signals_recorder: SignalRecorder) -> None:
    """Without an SDK the instrumentation's span is a NonRecordingSpan that
    carries the remote parent's context: there is no trace of the request to
    link to, and the parent's ids must not pass for the request's."""
    app, _ = traced(setup, tracer_provider=trace.NoOpTracerProvider())
    get(app, "/slow", headers={"traceparent": TRACEPARENT})
    (metrics,) = slow_metrics(signals_recorder)
    assert (metrics.trace_id, metrics.span_id) == (None, None)


def test_a_request_the_sampler_dropped_is_not_linked(
        traced: Traced, signals_recorder: SignalRecorder) -> None:
    dropping = TracerProvider(sampler=ALWAYS_OFF)
    try:
        app, _ = traced("flask_after", tracer_provider=dropping)
        get(app, "/slow")
    finally:
        dropping.shutdown()
    (metrics,) = slow_metrics(signals_recorder)
    assert (metrics.trace_id, metrics.span_id) == (None, None)


def test_without_an_opentelemetry_span_the_fields_stay_none(
        make_app: Callable[..., tuple[flask.Flask, PerfWatch]],
        signals_recorder: SignalRecorder) -> None:
    app, _ = make_app()
    get(app, "/slow")
    (metrics,) = slow_metrics(signals_recorder)
    assert (metrics.trace_id, metrics.span_id) == (None, None)
    assert metrics.to_dict()["trace_id"] is None


def test_the_global_flask_instrumentor_before_the_app_is_created(
        provider: TracerProvider, exporter: InMemorySpanExporter, report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    instrumentor = FlaskInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        app = flask.Flask("globally_instrumented")  # the instrumented class, now
        assert getattr(app, "_is_instrumented_by_opentelemetry", False)

        @app.get("/slow")
        def slow() -> str:
            time.sleep(SLOW)
            return "slow"

        perfwatch = PerfWatch(app, threshold=THRESHOLD, report_dir=str(report_dir))
        try:
            get(app, "/slow")
        finally:
            perfwatch.close(app, timeout=5)
    finally:
        instrumentor.uninstrument()
    assert flask.Flask.__name__ == "Flask"
    (metrics,) = slow_metrics(signals_recorder)
    assert (metrics.trace_id, metrics.span_id) == ids_of(server_span(exporter))


def test_perfwatch_middleware_inside_opentelemetry_s(
        provider: TracerProvider, exporter: InMemorySpanExporter, report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    """``PerfWatchMiddleware`` times the whole body: it finishes while the
    OpenTelemetry middleware around it iterates the body, its span current."""
    app = build_app()
    middleware = PerfWatchMiddleware(app.wsgi_app, threshold=THRESHOLD,
                                     report_dir=str(report_dir))
    try:
        client = Client(OpenTelemetryMiddleware(middleware, tracer_provider=provider))
        with client.get("/slow", headers={"traceparent": TRACEPARENT}) as response:
            assert response.get_data() == b"slow"
    finally:
        middleware.close(timeout=5)
    (metrics,) = slow_metrics(signals_recorder)
    assert (metrics.trace_id, metrics.span_id) == ids_of(server_span(exporter))


def test_a_slow_request_over_a_real_socket(
        traced: Traced, exporter: InMemorySpanExporter,
        signals_recorder: SignalRecorder) -> None:
    """werkzeug's threaded server: the fast-path wrapper hands the slow request
    to finish_registered on the server's request thread."""
    app, _ = traced("flask_after", profiler="sampler")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test server")
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/slow"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.read() == b"slow"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    (metrics,) = slow_metrics(signals_recorder)
    assert (metrics.trace_id, metrics.span_id) == ids_of(server_span(exporter))


# -- fast requests ---------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("setup", ["flask_after", "wsgi_inside"])
def test_a_fast_request_never_looks_for_a_span(
        setup: str, engine: str, traced: Traced, exporter: InMemorySpanExporter,
        signals_recorder: SignalRecorder, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[object] = []
    original = trace_module.request_trace

    def counting(environ: Any, body: object = None) -> Any:
        reads.append(body)
        return original(environ, body)

    monkeypatch.setattr(trace_module, "request_trace", counting)
    app, _ = traced(setup, profiler=engine)
    for _ in range(20):
        get(app, "/fast")
    assert len(exporter.get_finished_spans()) == 20  # traced, and yet not read
    assert reads == []
    get(app, "/slow")  # the spy is where a slow request reads its span
    assert len(reads) == 1
    assert slow_metrics(signals_recorder)[0].trace_id is not None


# -- watched functions -------------------------------------------------------------


def test_a_watched_call_gets_the_request_s_span_or_the_current_child(
        traced: Traced, provider: TracerProvider, exporter: InMemorySpanExporter,
        signals_recorder: SignalRecorder) -> None:
    app = build_app()
    perfwatch_box: list[PerfWatch] = []
    tracer = provider.get_tracer(__name__)

    def work() -> None:
        time.sleep(SLOW)

    @app.get("/watched")
    def watched() -> str:
        perfwatch_box[0].watch(name="work")(work)()
        return "ok"

    @app.get("/watched-in-child")
    def watched_in_child() -> str:
        with tracer.start_as_current_span("child"):
            perfwatch_box[0].watch(name="work")(work)()
        return "ok"

    _, perfwatch = traced("flask_after", app=app, profiler="sampler")
    perfwatch_box.append(perfwatch)

    get(app, "/watched")
    (call,) = slow_metrics(signals_recorder, "function")
    assert (call.trace_id, call.span_id) == ids_of(server_span(exporter))

    exporter.clear()
    get(app, "/watched-in-child")
    (_, call) = slow_metrics(signals_recorder, "function")
    request_span = server_span(exporter)
    (child,) = [s for s in exporter.get_finished_spans() if s.name == "child"]
    assert (call.trace_id, call.span_id) == ids_of(child)
    assert call.trace_id == ids_of(request_span)[0]
    assert call.span_id != ids_of(request_span)[1]


def test_a_watched_call_outside_a_request(
        provider: TracerProvider, report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    """A background job: the span current at the end of the call, if any."""
    perfwatch = PerfWatch(threshold=THRESHOLD, report_dir=str(report_dir))
    try:
        @perfwatch.watch(name="job")
        def job() -> None:
            time.sleep(SLOW)

        with provider.get_tracer(__name__).start_as_current_span("job") as span:
            job()
        job()
    finally:
        perfwatch.close(timeout=5)
    traced_call, untraced_call = slow_metrics(signals_recorder, "function")
    context = span.get_span_context()
    assert (traced_call.trace_id, traced_call.span_id) == (
        format(context.trace_id, "032x"), format(context.span_id, "016x"))
    assert (untraced_call.trace_id, untraced_call.span_id) == (None, None)


# -- hung requests --------------------------------------------------------------


@pytest.mark.parametrize("setup", SETUPS)
def test_a_hung_request_carries_its_server_span(
        traced: Traced, exporter: InMemorySpanExporter,
        signals_recorder: SignalRecorder, setup: str) -> None:
    """Reported from the sampler's thread, where no span is current: the
    span comes from the request's environ (FlaskInstrumentor), or from the
    frame of OpenTelemetry's WSGI middleware serving that environ on the
    request thread, still recording."""
    release = threading.Event()
    app = build_app()

    @app.get("/hang")
    def hang() -> str:
        while not release.wait(0.01):
            pass
        return "released"

    traced(setup, app=app, profiler="sampler", hang_after=0.5)
    done = threading.Thread(target=get, args=(app, "/hang"), name="hung request")
    done.start()
    try:
        (event,) = signals_recorder.wait_for("request_hung")
    finally:
        release.set()
        done.join(30)
    assert not done.is_alive()
    metrics = event.kwargs["metrics"]
    assert metrics.hung
    assert (metrics.trace_id, metrics.span_id) == ids_of(server_span(exporter))


# -- what the reader makes of odd input ------------------------------------------------


def test_odd_objects_where_a_span_is_expected_mean_no_trace(
        provider: TracerProvider) -> None:
    assert trace_module.request_trace({trace_module.FLASK_SPAN_KEY: "not a span"},
                                      body=iter([b"x"])) == (None, None)

    def other_generator() -> Iterator[bytes]:
        span = object()  # a local of that name, in a generator that is not the middleware's
        yield repr(span).encode()

    assert trace_module.request_trace({}, body=other_generator()) == (None, None)

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    body = OpenTelemetryMiddleware(app, tracer_provider=provider)(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http",
         "SERVER_NAME": "localhost", "SERVER_PORT": "80"}, lambda *args: None)
    found = trace_module.request_trace({}, body=body)
    assert found[0] is not None  # the middleware's span, before the body is read
    assert list(body) == [b"ok"]  # read to the end: the span ended, the frame is gone
    assert trace_module.request_trace({}, body=body) == (None, None)


def test_a_hung_request_s_span_is_read_from_its_own_middleware_frame_only(
        provider: TracerProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    """The frame search of a hung request: the span of the middleware call
    serving this environ, not another request's, and nothing for an environ
    no middleware serves or a frame whose ``span`` is not a span."""
    inside = threading.Event()
    release = threading.Event()
    seen: dict[str, Any] = {}

    def app(environ: Any, start_response: Any) -> list[bytes]:
        inside.set()
        release.wait(30)
        start_response("200 OK", [])
        return [b"ok"]

    def serve(environ: dict[str, Any]) -> None:
        body = OpenTelemetryMiddleware(app, tracer_provider=provider)(
            environ, lambda *args: None)
        seen[environ["PATH_INFO"]] = trace_module.request_trace({}, body=body)
        list(body)

    def environ(path: str) -> dict[str, Any]:
        return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.url_scheme": "http",
                "SERVER_NAME": "localhost", "SERVER_PORT": "80"}

    first, second = environ("/first"), environ("/second")
    threads = [threading.Thread(target=serve, args=(e,)) for e in (first, second)]
    try:
        for thread in threads:
            inside.clear()
            thread.start()
            assert inside.wait(10)
        hung = {path: trace_module.hung_request_trace(e)
                for path, e in (("/first", first), ("/second", second))}
        assert trace_module.hung_request_trace(environ("/nobody")) == (None, None)
    finally:
        release.set()
        for thread in threads:
            thread.join(30)
    assert hung["/first"][0] is not None
    assert hung["/first"] != hung["/second"]
    assert hung == {"/first": seen["/first"], "/second": seen["/second"]}

    def fake_call(environ: Any) -> tuple[str, str] | tuple[None, None]:
        span = "not a span"  # noqa: F841 (the local the search reads)
        return trace_module.hung_request_trace(environ)

    # the search knows the middleware by its __call__'s code: this one's
    # frame serves ``first``, with a ``span`` that is no span
    monkeypatch.setattr(OpenTelemetryMiddleware, "__call__", fake_call)
    assert fake_call(first) == (None, None)


def test_nothing_is_read_when_opentelemetry_was_never_imported(
        provider: TracerProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    with provider.get_tracer(__name__).start_as_current_span("current") as span:
        environ = {trace_module.FLASK_SPAN_KEY: span}
        assert trace_module.request_trace(environ) != (None, None)
        assert trace_module.call_trace(environ) != (None, None)
        with monkeypatch.context() as patch:  # restored before the span ends
            patch.delitem(sys.modules, "opentelemetry.trace")
            assert trace_module.request_trace(environ) == (None, None)
            assert trace_module.call_trace(environ) == (None, None)
