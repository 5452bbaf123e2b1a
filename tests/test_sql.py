"""SQL capture (issue 14): the statements SQLAlchemy ran during a slow request
or watched call land in ``metrics.queries``, normalised (no literal, no
parameter value), one row per statement, bounded; through real Flask apps,
real Flask-SQLAlchemy and plain SQLAlchemy engines on real SQLite files."""

from __future__ import annotations

import asyncio
import gc
import html
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import SLOW, THRESHOLD, SwallowCatcher, build_app, burn, reports_in, wait_until
from flask import Flask, Response, request
from flask_sqlalchemy import SQLAlchemy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
    text,
)
from sqlalchemy.exc import OperationalError
from werkzeug.test import EnvironBuilder

from flask_perfwatch import PerformanceMetrics, PerfWatch, PerfWatchMiddleware, _sql
from flask_perfwatch._guard import swallowed
from flask_perfwatch._sql import (
    ENVIRON_KEY,
    MAX_STATEMENT,
    MAX_STATEMENTS,
    OVERFLOW_STATEMENT,
    QueryLog,
    normalise,
)
from flask_perfwatch.testing import SignalRecorder

MakeApp = Callable[..., tuple[Flask, PerfWatch]]

#: What SQLAlchemy sends for the statements the views below run, normalised.
SELECT_NAME = "SELECT users.name FROM users WHERE users.id = ?"
SELECT_ALL = "SELECT users.id, users.name FROM users"
INSERT_USER = "INSERT INTO users (name) VALUES (?)"
#: a statement that takes tens of milliseconds on SQLite (the others: microseconds)
HEAVY = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) "
         "SELECT count(*) FROM c")
HEAVY_NORMALISED = ("WITH RECURSIVE c(x) AS (SELECT ? UNION ALL SELECT x + ? FROM c "
                    "WHERE x < ?) SELECT count(*) FROM c")
SECRET_PARAM = "hunter2-param-8c1f"
SECRET_LITERAL = "hunter2-literal-77ab"
SECRET_NUMBER = "918273645"


def by_statement(metrics: PerformanceMetrics) -> dict[str, int]:
    """``{statement: calls}`` of the metrics' queries."""
    found = {q["statement"]: q["calls"] for q in metrics.queries}
    assert len(found) == len(metrics.queries)  # one row per statement
    return found


def new_table(metadata: MetaData) -> Table:
    return Table("users", metadata, Column("id", Integer, primary_key=True),
                 Column("name", String(50)))


def nothing_pending() -> bool:
    return _sql._pending.get() is None and _sql._active.get() == ()


def live_logs() -> int:
    return sum(isinstance(obj, QueryLog) for obj in gc.get_objects())


@dataclass
class SqlApp:
    app: Flask
    perfwatch: PerfWatch
    db: SQLAlchemy
    users: Table
    #: what the views saw, by view
    seen: dict[str, Any]


@pytest.fixture
def sql_app(make_app: MakeApp, tmp_path: Path) -> Iterator[Callable[..., SqlApp]]:
    """``sql_app(**overrides)``: the test app with Flask-SQLAlchemy on a SQLite
    file (two users) and views that run SQL; ``db_first=False`` sets
    Flask-SQLAlchemy up (and so creates its engine) after PerfWatch."""
    built: list[SqlApp] = []

    def factory(*, db_first: bool = True, **overrides: Any) -> SqlApp:
        app = build_app()
        app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path}/app-{len(built)}.db"
        db = SQLAlchemy()
        users = new_table(db.metadata)
        seen: dict[str, Any] = {}
        if db_first:
            db.init_app(app)
            app, perfwatch = make_app(app=app, **overrides)
        else:
            app, perfwatch = make_app(app=app, **overrides)
            db.init_app(app)
        with app.app_context():
            db.create_all()
            db.session.execute(insert(users), [{"name": "ada"}, {"name": "bob"}])
            db.session.commit()

        @app.get("/sql/slow")
        def sql_slow() -> str:
            db.session.execute(insert(users), [{"name": "cy"}, {"name": "dee"}, {"name": "eve"}])
            names = db.session.execute(select(users)).all()
            db.session.execute(text(HEAVY)).scalar()
            db.session.rollback()
            seen["environ_log"] = request.environ.get(ENVIRON_KEY)
            burn(SLOW)
            return str(len(names))

        @app.get("/sql/n-plus-one")
        def sql_n_plus_one() -> str:
            for i in range(12):
                db.session.execute(select(users.c.name).where(users.c.id == i)).first()
            time.sleep(SLOW)
            return "done"

        @app.get("/sql/literals")
        def sql_literals() -> str:
            for i in range(12):
                db.session.execute(text(f"SELECT name FROM users WHERE id = {i} AND name = "
                                        f"'x{i}' AND id IN ({'7, ' * i}0)"))
            time.sleep(SLOW)
            return "done"

        @app.get("/sql/secrets")
        def sql_secrets() -> str:
            db.session.execute(insert(users), [{"name": SECRET_PARAM}])
            db.session.execute(text("SELECT id FROM users WHERE name = :n"), {"n": SECRET_PARAM})
            db.session.execute(text(f"SELECT id FROM users WHERE name = '{SECRET_LITERAL}' "
                                    f"OR id = {SECRET_NUMBER}"))
            db.session.rollback()
            burn(SLOW)
            return "done"

        @app.get("/sql/fast")
        def sql_fast() -> str:
            db.session.execute(select(users)).all()
            seen["environ_log"] = request.environ.get(ENVIRON_KEY)
            return "fast"

        @app.get("/sql/failed")
        def sql_failed() -> str:
            try:
                db.session.execute(text("SELECT nope FROM missing_table WHERE id = 5"))
            except OperationalError as exc:
                seen["pending_after_error"] = _sql._pending.get()
                seen["error"] = exc
                db.session.rollback()
            db.session.execute(select(users.c.name).where(users.c.id == 1)).first()
            time.sleep(SLOW)
            return "recovered"

        @app.get("/sql/broken")
        def sql_broken() -> str:
            time.sleep(SLOW)
            db.session.execute(text("SELECT nope FROM missing_table"))
            return "unreachable"

        @app.get("/sql/many")
        def sql_many() -> str:
            for i in range(MAX_STATEMENTS + 50):
                db.session.execute(text(f"SELECT {i} AS c{i}"))
            time.sleep(SLOW)
            return "done"

        harness = SqlApp(app, perfwatch, db, users, seen)
        built.append(harness)
        return harness

    yield factory
    for harness in built:
        with harness.app.app_context():
            for engine in harness.db.engines.values():
                engine.dispose()


@pytest.fixture
def plain_engine(tmp_path: Path) -> Iterator[tuple[Engine, Table]]:
    """A plain SQLAlchemy engine on its own SQLite file, with the users table."""
    engine = create_engine(f"sqlite:///{tmp_path}/plain.db")
    users = new_table(MetaData())
    users.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(users), [{"name": "ada"}, {"name": "bob"}])
    yield engine, users
    engine.dispose()


# --- slow requests -------------------------------------------------------------------


def test_a_slow_requests_queries_are_in_its_metrics_and_report(
        sql_app: Callable[..., SqlApp], signals_recorder: SignalRecorder,
        report_dir: Path) -> None:
    harness = sql_app()
    response = harness.app.test_client().get("/sql/slow")
    assert response.data == b"5"
    [event] = signals_recorder.wait_for("slow_request")
    metrics = event.kwargs["metrics"]
    assert by_statement(metrics) == {HEAVY_NORMALISED: 1, INSERT_USER: 1, SELECT_ALL: 1}
    # slowest first: the recursive count takes far longer than the other two
    assert metrics.queries[0]["statement"] == HEAVY_NORMALISED
    durations = [q["duration"] for q in metrics.queries]
    assert durations == sorted(durations, reverse=True)
    # seconds, not milliseconds (the recursive count takes about 0.15 s alone,
    # and several times that on a loaded machine: no timing bar here)
    assert all(0 < d < 30 for d in durations)
    assert set(metrics.to_dict()["queries"][0]) == {"statement", "duration", "calls"}
    assert json.loads(metrics.to_json())["queries"] == metrics.queries

    [sent] = signals_recorder.wait_for("alert_sent")
    assert sent.kwargs["metrics"] is metrics
    [report] = wait_until(lambda: reports_in(report_dir), message="the report")
    page = report.read_text()
    for statement in (HEAVY_NORMALISED, INSERT_USER, SELECT_ALL):
        assert html.escape(statement) in page


def test_an_n_plus_one_loop_is_one_row_with_its_calls(
        sql_app: Callable[..., SqlApp], signals_recorder: SignalRecorder) -> None:
    harness = sql_app()
    assert harness.app.test_client().get("/sql/n-plus-one").data == b"done"
    [event] = signals_recorder.wait_for("slow_request")
    assert by_statement(event.kwargs["metrics"]) == {SELECT_NAME: 12}


def test_statements_differing_only_in_literals_and_list_lengths_are_one_row(
        sql_app: Callable[..., SqlApp], signals_recorder: SignalRecorder) -> None:
    harness = sql_app()
    assert harness.app.test_client().get("/sql/literals").data == b"done"
    [event] = signals_recorder.wait_for("slow_request")
    assert by_statement(event.kwargs["metrics"]) == {
        "SELECT name FROM users WHERE id = ? AND name = ? AND id IN (?, ...)": 12}


def test_parameter_values_and_literals_are_never_recorded(
        sql_app: Callable[..., SqlApp], signals_recorder: SignalRecorder,
        report_dir: Path) -> None:
    harness = sql_app()
    assert harness.app.test_client().get("/sql/secrets").data == b"done"
    [event] = signals_recorder.wait_for("slow_request")
    metrics = event.kwargs["metrics"]
    assert by_statement(metrics) == {
        INSERT_USER: 1,
        "SELECT id FROM users WHERE name = ?": 1,  # bound
        "SELECT id FROM users WHERE name = ? OR id = ?": 1,  # literals
    }
    signals_recorder.wait_for("alert_sent")
    [report] = wait_until(lambda: reports_in(report_dir), message="the report")
    for where in (metrics.to_json(), report.read_text(), repr(metrics.queries)):
        for secret in (SECRET_PARAM, SECRET_LITERAL, SECRET_NUMBER):
            assert secret not in where


def test_a_fast_request_leaves_nothing_behind(sql_app: Callable[..., SqlApp],
                                              signals_recorder: SignalRecorder) -> None:
    harness = sql_app()
    client = harness.app.test_client()
    assert client.get("/sql/fast").data == b"fast"  # the first may set up the pool
    harness.seen.clear()
    gc.collect()
    before = live_logs()
    for _ in range(5):
        assert client.get("/sql/fast").data == b"fast"
        # the log lived in the request's environ while it ran
        assert isinstance(harness.seen.pop("environ_log"), QueryLog)
    # the sampler may still hold the last request's frames (and so its
    # environ) from its last look at the stacks, for up to its idle_after;
    # it drops them before it sleeps: polled, a leak would still fail
    wait_until(lambda: gc.collect() is not None and live_logs() == before,
               message="the fast requests' query logs to be freed")
    assert nothing_pending()
    assert harness.perfwatch.flush(5, harness.app)
    assert signals_recorder.events == []


def test_requests_without_sql_get_no_log(sql_app: Callable[..., SqlApp]) -> None:
    harness = sql_app()

    @harness.app.get("/sql/none")
    def none() -> str:
        return str(ENVIRON_KEY in request.environ)

    assert harness.app.test_client().get("/sql/none").data == b"False"


# --- engines made before and after init_app ----------------------------------------------


@pytest.mark.parametrize("db_first", [True, False], ids=["engine-before", "engine-after"])
def test_flask_sqlalchemy_engines_made_before_or_after_init_app(
        sql_app: Callable[..., SqlApp], signals_recorder: SignalRecorder,
        db_first: bool) -> None:
    harness = sql_app(db_first=db_first)
    assert harness.app.test_client().get("/sql/n-plus-one").data == b"done"
    [event] = signals_recorder.wait_for("slow_request")
    assert by_statement(event.kwargs["metrics"]) == {SELECT_NAME: 12}


def test_a_plain_engine_made_before_init_app(make_app: MakeApp,
                                             plain_engine: tuple[Engine, Table],
                                             signals_recorder: SignalRecorder) -> None:
    engine, users = plain_engine
    app, _ = make_app()

    @app.get("/plain")
    def plain() -> str:
        with engine.connect() as conn:
            names = conn.execute(select(users.c.name).where(users.c.id == 2)).scalar()
        time.sleep(SLOW)
        return str(names)

    assert app.test_client().get("/plain").data == b"bob"
    [event] = signals_recorder.wait_for("slow_request")
    assert by_statement(event.kwargs["metrics"]) == {SELECT_NAME: 1}


def test_a_plain_engine_made_after_init_app(make_app: MakeApp, tmp_path: Path,
                                            signals_recorder: SignalRecorder) -> None:
    app, _ = make_app()
    engine = create_engine(f"sqlite:///{tmp_path}/late.db")
    users = new_table(MetaData())
    users.metadata.create_all(engine)

    @app.get("/late")
    def late() -> str:
        with engine.begin() as conn:
            conn.execute(insert(users), [{"name": "a"}, {"name": "b"}, {"name": "c"}])
            count = len(conn.execute(select(users)).all())
        time.sleep(SLOW)
        return str(count)

    try:
        assert app.test_client().get("/late").data == b"3"
    finally:
        engine.dispose()
    [event] = signals_recorder.wait_for("slow_request")
    # executemany of three rows: one call
    assert by_statement(event.kwargs["metrics"]) == {INSERT_USER: 1, SELECT_ALL: 1}


FRESH_PROCESS = """
import json, sys, tempfile, time
{prelude}
from flask import Flask
from flask_perfwatch import PerfWatch, _sql, signals
from flask_perfwatch._guard import swallowed

result = {{"installed_before": _sql.installed()}}
{engine_setup}
app = Flask("fresh")
PerfWatch(app, threshold=0.3, notifiers=[], report_dir=tempfile.mkdtemp())
seen = []
def on_slow(sender, metrics, **kwargs):
    seen.append(metrics)
signals.slow_request.connect(on_slow, sender=app)

@app.get("/")
def view():
    {view_sql}
    time.sleep(1.0)
    return "ok"

result["status"] = app.test_client().get("/").status_code
result["queries"] = [m.queries for m in seen]
result["installed_after"] = _sql.installed()
result["swallowed"] = swallowed.total()
print(json.dumps(result))
"""


def run_fresh(prelude: str, engine_setup: str, view_sql: str) -> dict[str, Any]:
    """Run the script above in a new interpreter: what it printed."""
    script = FRESH_PROCESS.format(prelude=prelude, engine_setup=textwrap.dedent(engine_setup),
                                  view_sql=view_sql)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERFWATCH_")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_an_engine_connected_before_the_listeners_exist(tmp_path: Path) -> None:
    """In a new process: the engine is made, and its pooled connection used,
    before the first monitor installs the listeners; its statements are
    captured all the same."""
    result = run_fresh("", f"""
        from sqlalchemy import create_engine, text
        engine = create_engine("sqlite:///{tmp_path}/fresh.db")
        with engine.connect() as conn:
            conn.execute(text("SELECT 1")).scalar()
        """, 'with engine.connect() as conn: conn.execute(text("SELECT 42")).scalar()')
    assert result == {"installed_before": False, "status": 200, "installed_after": True,
                      "swallowed": 0, "queries": [[{"statement": "SELECT ?", "calls": 1,
                                                    "duration": pytest.approx(0, abs=0.5)}]]}


@pytest.mark.slow
def test_without_sqlalchemy_queries_stay_empty() -> None:
    result = run_fresh('sys.modules["sqlalchemy"] = None  # as if not installed', "",
                       "pass")
    assert result == {"installed_before": False, "status": 200, "installed_after": False,
                      "swallowed": 0, "queries": [[]]}


# --- watched functions -------------------------------------------------------------------


def test_a_watched_function_gets_its_own_queries(
        sql_app: Callable[..., SqlApp], signals_recorder: SignalRecorder) -> None:
    harness = sql_app()
    db, users, perfwatch = harness.db, harness.users, harness.perfwatch

    @perfwatch.watch(threshold=0.2, name="load_name")
    def load_name(user_id: int) -> str | None:
        name = db.session.execute(select(users.c.name).where(users.c.id == user_id)).scalar()
        time.sleep(0.5)
        return name

    @harness.app.get("/sql/watched")
    @perfwatch.threshold(30)  # only the function is slow
    def watched() -> str:
        db.session.execute(select(users)).all()
        return str(load_name(1))

    assert harness.app.test_client().get("/sql/watched").data == b"ada"
    [event] = signals_recorder.wait_for("slow_request")
    metrics = event.kwargs["metrics"]
    assert (metrics.kind, metrics.name) == ("function", "load_name")
    assert by_statement(metrics) == {SELECT_NAME: 1}  # not the view's own SELECT
    assert nothing_pending()


def test_nested_watched_calls_and_their_request_each_get_every_statement_inside(
        sql_app: Callable[..., SqlApp], signals_recorder: SignalRecorder) -> None:
    harness = sql_app()
    db, users, perfwatch = harness.db, harness.users, harness.perfwatch

    @perfwatch.watch(threshold=0.2, name="inner")
    def inner() -> None:
        db.session.execute(select(users.c.name).where(users.c.id == 1)).scalar()
        time.sleep(0.4)

    @perfwatch.watch(threshold=0.2, name="outer")
    def outer() -> None:
        db.session.execute(select(users)).all()
        inner()

    @harness.app.get("/sql/nested")
    def sql_nested() -> str:
        db.session.execute(text(HEAVY)).scalar()
        outer()
        return "done"

    assert harness.app.test_client().get("/sql/nested").data == b"done"
    events = signals_recorder.wait_for("slow_request", 3)
    found = {e.kwargs["metrics"].name: by_statement(e.kwargs["metrics"]) for e in events}
    assert found == {
        "inner": {SELECT_NAME: 1},
        "outer": {SELECT_ALL: 1, SELECT_NAME: 1},
        "sql_nested": {HEAVY_NORMALISED: 1, SELECT_ALL: 1, SELECT_NAME: 1},
    }


def test_a_watched_function_outside_any_app(plain_engine: tuple[Engine, Table],
                                            report_dir: Path,
                                            signals_recorder: SignalRecorder) -> None:
    engine, users = plain_engine
    perfwatch = PerfWatch(threshold=0.2, report_dir=str(report_dir))

    @perfwatch.watch
    def job() -> None:
        with engine.connect() as conn:
            for i in range(3):
                conn.execute(select(users.c.name).where(users.c.id == i)).all()
        time.sleep(0.4)

    @perfwatch.watch
    async def async_job() -> None:
        with engine.connect() as conn:
            conn.execute(select(users)).all()
        await asyncio.sleep(0.4)

    try:
        job()
        asyncio.run(async_job())
        events = signals_recorder.wait_for("slow_request", 2)
        found = {e.kwargs["metrics"].name.rpartition(".")[2]: by_statement(e.kwargs["metrics"])
                 for e in events}
        assert found == {"job": {SELECT_NAME: 3}, "async_job": {SELECT_ALL: 1}}
        assert nothing_pending()
    finally:
        perfwatch.close(timeout=5)


# --- switched off ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["env", "keyword"])
def test_capture_off_records_nothing(sql_app: Callable[..., SqlApp],
                                     signals_recorder: SignalRecorder,
                                     monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "env":
        monkeypatch.setenv("PERFWATCH_CAPTURE_SQL", "false")
        harness = sql_app()
    else:
        harness = sql_app(capture_sql=False)
    assert harness.perfwatch.config(harness.app).capture_sql is False
    perfwatch, db, users = harness.perfwatch, harness.db, harness.users

    @perfwatch.watch(threshold=0.2, name="load")
    def load() -> None:
        db.session.execute(select(users)).all()
        time.sleep(0.4)

    @harness.app.get("/sql/watched-off")
    def watched_off() -> str:
        load()
        return "done"

    client = harness.app.test_client()
    assert client.get("/sql/slow").data == b"5"
    assert harness.seen["environ_log"] is None
    assert client.get("/sql/watched-off").data == b"done"
    events = signals_recorder.wait_for("slow_request", 3)
    assert [e.kwargs["metrics"].queries for e in events] == [[], [], []]
    assert nothing_pending()


# --- failures --------------------------------------------------------------------------------


def test_a_failed_statement_is_recorded_and_leaves_no_state(
        sql_app: Callable[..., SqlApp], signals_recorder: SignalRecorder) -> None:
    harness = sql_app()
    assert harness.app.test_client().get("/sql/failed").data == b"recovered"
    assert harness.seen["pending_after_error"] is None
    error = harness.seen["error"]
    assert "no such table: missing_table" in str(error.orig)
    [event] = signals_recorder.wait_for("slow_request")
    assert by_statement(event.kwargs["metrics"]) == {
        "SELECT nope FROM missing_table WHERE id = ?": 1, SELECT_NAME: 1}
    assert nothing_pending()


def test_the_apps_own_exception_passes_through(
        sql_app: Callable[..., SqlApp], signals_recorder: SignalRecorder) -> None:
    harness = sql_app()
    with pytest.raises(OperationalError) as info:  # TESTING: the client re-raises it
        harness.app.test_client().get("/sql/broken")
    assert "no such table: missing_table" in str(info.value.orig)
    [event] = signals_recorder.wait_for("slow_request")
    metrics = event.kwargs["metrics"]
    assert metrics.error == "sqlalchemy.exc.OperationalError"
    assert by_statement(metrics) == {"SELECT nope FROM missing_table": 1}
    assert nothing_pending()


@pytest.mark.allow_swallowed
def test_a_listener_that_fails_is_swallowed(sql_app: Callable[..., SqlApp],
                                            no_swallowed_errors: SwallowCatcher) -> None:
    swallowed.reset()  # the guard logs a site once a minute: this test's must be logged
    harness = sql_app()

    @harness.app.before_request
    def spoil() -> None:
        request.environ[ENVIRON_KEY] = "not a log"

    assert harness.app.test_client().get("/sql/fast").data == b"fast"
    messages = [r.getMessage() for r in no_swallowed_errors.records]
    assert messages
    assert all("recording an SQL statement" in m for m in messages)
    assert nothing_pending()


# --- bounds -----------------------------------------------------------------------------------


def test_at_most_200_distinct_statements_then_one_row_counts_the_rest(
        sql_app: Callable[..., SqlApp], signals_recorder: SignalRecorder) -> None:
    harness = sql_app()
    assert harness.app.test_client().get("/sql/many").data == b"done"
    [event] = signals_recorder.wait_for("slow_request")
    queries = event.kwargs["metrics"].queries
    assert len(queries) == MAX_STATEMENTS + 1
    kept, overflow = queries[:-1], queries[-1]
    assert {q["statement"] for q in kept} == {f"SELECT ? AS c{i}" for i in range(MAX_STATEMENTS)}
    assert all(q["calls"] == 1 for q in kept)
    assert overflow["statement"] == OVERFLOW_STATEMENT
    assert overflow["calls"] == 50
    assert overflow["duration"] > 0


def test_the_log_keeps_counting_known_statements_past_the_bound() -> None:
    log = QueryLog()
    for i in range(MAX_STATEMENTS + 3):
        log.add(f"S{i}", 0.001)
    log.add("S0", 0.5)
    log.add("S0", 0.5)
    queries = log.queries()
    assert queries[0] == {"statement": "S0", "duration": pytest.approx(1.001), "calls": 3}
    assert queries[-1] == {"statement": OVERFLOW_STATEMENT,
                           "duration": pytest.approx(0.003), "calls": 3}


# --- the WSGI middleware and hung requests ----------------------------------------------------


@pytest.mark.parametrize("capture", [True, False])
def test_the_middleware_records_a_plain_apps_sql(plain_engine: tuple[Engine, Table],
                                                 report_dir: Path,
                                                 signals_recorder: SignalRecorder,
                                                 capture: bool) -> None:
    engine, users = plain_engine
    app = Flask("plain")  # no PerfWatch on the app itself

    @app.get("/")
    def view() -> str:
        with engine.connect() as conn:
            for i in range(4):
                conn.execute(select(users.c.name).where(users.c.id == i)).all()
        time.sleep(SLOW)
        return "ok"

    middleware = PerfWatchMiddleware(app.wsgi_app, threshold=THRESHOLD,
                                     report_dir=str(report_dir), capture_sql=capture)
    app.wsgi_app = middleware  # type: ignore[method-assign]
    try:
        response = app.test_client().get("/")
        assert response.data == b"ok"
        response.close()
        [event] = signals_recorder.wait_for("slow_request")
        assert by_statement(event.kwargs["metrics"]) == ({SELECT_NAME: 4} if capture else {})
        assert nothing_pending()
    finally:
        middleware.close(5)


def test_the_middleware_records_the_sql_a_streamed_body_runs(
        plain_engine: tuple[Engine, Table], report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    """The middleware times a response until its body is consumed, so the
    statements a streaming generator runs count too, each once, and nothing
    is left recording between chunks (the server's own work)."""
    engine, users = plain_engine
    app = Flask("streaming")
    between: list[bool] = []

    @app.get("/export")
    def export() -> Response:
        def rows() -> Iterator[str]:
            with engine.connect() as conn:
                for i in range(3):
                    name = conn.execute(select(users.c.name).where(users.c.id == i)).all()
                    yield f"{i}:{name}\n"
            time.sleep(SLOW)
            yield "end\n"
        return Response(rows(), mimetype="text/plain")

    middleware = PerfWatchMiddleware(app.wsgi_app, threshold=THRESHOLD,
                                     report_dir=str(report_dir))
    try:
        body = middleware(EnvironBuilder(path="/export").get_environ(),
                          lambda status, headers, exc_info=None: None)
        chunks = []
        for chunk in body:
            chunks.append(chunk)
            between.append(nothing_pending())
        body.close()  # type: ignore[attr-defined]
        assert b"".join(chunks).endswith(b"end\n")
        assert len(between) == 4
        assert all(between)
        [event] = signals_recorder.wait_for("slow_request")
        assert by_statement(event.kwargs["metrics"]) == {SELECT_NAME: 3}
    finally:
        middleware.close(5)


def test_the_middleware_around_an_app_with_perfwatch_shares_its_log(
        sql_app: Callable[..., SqlApp], report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    harness = sql_app(profiler="pyinstrument")  # the app's own general path, too
    middleware = PerfWatchMiddleware(harness.app.wsgi_app, threshold=THRESHOLD,
                                     report_dir=str(report_dir))
    harness.app.wsgi_app = middleware  # type: ignore[method-assign]
    try:
        response = harness.app.test_client().get("/sql/n-plus-one")
        assert response.data == b"done"
        response.close()
        events = signals_recorder.wait_for("slow_request", 2)
        assert {e.sender for e in events} == {harness.app, middleware}
        for event in events:  # each statement recorded once, though both watch it
            assert by_statement(event.kwargs["metrics"]) == {SELECT_NAME: 12}
    finally:
        middleware.close(5)


def test_a_hung_request_reports_its_sql_so_far(sql_app: Callable[..., SqlApp],
                                               signals_recorder: SignalRecorder) -> None:
    harness = sql_app(profiler="sampler", hang_after=0.5)
    db, users = harness.db, harness.users
    release = threading.Event()

    @harness.app.get("/sql/hang")
    def hang() -> str:
        for i in range(3):
            db.session.execute(select(users.c.name).where(users.c.id == i)).first()
        while not release.wait(0.01):
            pass
        db.session.execute(select(users)).all()
        return "released"

    responses: list[Any] = []
    thread = threading.Thread(
        target=lambda: responses.append(harness.app.test_client().get("/sql/hang")))
    thread.start()
    try:
        [hung] = signals_recorder.wait_for("request_hung", timeout=30)
        assert by_statement(hung.kwargs["metrics"]) == {SELECT_NAME: 3}
    finally:
        release.set()
        thread.join(30)
    assert responses[0].data == b"released"
    [slow] = signals_recorder.wait_for("slow_request", timeout=30)
    assert by_statement(slow.kwargs["metrics"]) == {SELECT_NAME: 3, SELECT_ALL: 1}


# --- normalisation --------------------------------------------------------------------------


@pytest.mark.parametrize(("statement", "dialect", "expected"), [
    ("SELECT * FROM t WHERE a = 'it''s' AND b = 12.5e3 AND c = -4",
     None, "SELECT * FROM t WHERE a = ? AND b = ? AND c = -?"),
    # DBAPI placeholders of every paramstyle
    ("UPDATE t SET a = %s, b = %(b)s, c = :c, d = :1, e = $1, f = ?, g = %b WHERE h = %t",
     None, "UPDATE t SET a = ?, b = ?, c = ?, d = ?, e = ?, f = ?, g = ? WHERE h = ?"),
    ("SELECT x::int, a % 2, b %% 3 FROM t", None, "SELECT x::int, a % ?, b %% ? FROM t"),
    # hex, bit, national and unicode strings, hex numbers, E-strings, dollar quoting
    ("SELECT X'0fAB', B'0101', N'naïve', U&'d\\0061t', 0xFF, E'it\\'s', $$a 'b'$$, "
     "$fn$ body $fn$", None, "SELECT ?, ?, ?, ?, ?, ?, ?, ?"),
    # lists of any length, rows of VALUES, arrays
    ("SELECT * FROM t WHERE id IN (1, 2, 3) AND x NOT IN ('a') AND y IN (?, ?)",
     None, "SELECT * FROM t WHERE id IN (?, ...) AND x NOT IN (?, ...) AND y IN (?, ...)"),
    ("SELECT * FROM t WHERE (a, b) IN ((1, 2), (3, -4))", None,
     "SELECT * FROM t WHERE (a, b) IN (?, ...)"),
    ("SELECT * FROM t WHERE id = ANY(ARRAY[1, 2, 3])", None,
     "SELECT * FROM t WHERE id = ANY(ARRAY[?, ...])"),
    ("INSERT INTO t (a, b) VALUES (?, ?), (?, ?),\n (?, ?)", None,
     "INSERT INTO t (a, b) VALUES (?, ?)"),
    ("INSERT INTO t (a, b) VALUES (%(a__0)s, 0), (%(a__1)s, 1) RETURNING id", None,
     "INSERT INTO t (a, b) VALUES (?, ?) RETURNING id"),
    ("INSERT INTO t (a) VALUES (lower(?)), (lower(?))", None,
     "INSERT INTO t (a) VALUES (lower(?))"),
    # identifiers are kept: quoted ones, and names with digits
    ('SELECT "user".id, t1.col2, "Mixed Case" FROM "user" JOIN t1 ON t1.id = 7',
     None, 'SELECT "user".id, t1.col2, "Mixed Case" FROM "user" JOIN t1 ON t1.id = ?'),
    # comments are dropped, whitespace collapsed
    ("SELECT a -- a 'note' 42\n FROM t /* id=99 */  WHERE\tb = 1", None,
     "SELECT a FROM t WHERE b = ?"),
    # unterminated: replaced to the end, never kept
    ("SELECT 'never ends", None, "SELECT ?"),
    ("SELECT a /* never ends 42", None, "SELECT a"),
    # a quote is a string whatever precedes it
    ("SELECT max'secret'", None, "SELECT max?"),
    # MySQL: double quotes are strings, backslashes escape, backticks are identifiers
    ("SELECT `user`.id FROM `user` WHERE a = \"x\" AND b = 'it\\'s' AND c = _utf8mb4'z' # c",
     "mysql", "SELECT `user`.id FROM `user` WHERE a = ? AND b = ? AND c = ?"),
    ('SELECT "a\\"b" FROM t', "mariadb", "SELECT ? FROM t"),
])
def test_normalise(statement: str, dialect: str | None, expected: str) -> None:
    assert normalise(statement, dialect) == expected


def test_normalise_cuts_long_statements() -> None:
    statement = "SELECT " + ", ".join(f"column_{i}" for i in range(1000)) + " FROM t"
    normalised = normalise(statement)
    assert len(normalised) == MAX_STATEMENT + 1
    assert normalised == statement[:MAX_STATEMENT] + "…"
    huge = "SELECT a FROM t WHERE b IN (" + "'xyzzy', " * 100_000 + "'xyzzy')"
    cut = normalise(huge)
    assert "xyzzy" not in cut
    assert cut.endswith("…")


SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PLANTED = "Zq7xK2mW9pL4vN8r"  # no SQL keyword or template contains it
RAW_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
#: text a value may hold around the planted secret: anything, quotes and backslashes too
around = st.text(max_size=20)


def quoted(value: str, style: str) -> str:
    if style == "standard":
        return "'" + value.replace("'", "''") + "'"
    if style == "e-string":
        return "E'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if style == "dollar":
        while "$q$" in value:
            value = value.replace("$q$", "")
        return "$q$" + value + "$q$"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'  # mysql


@SETTINGS
@given(before=around, after=around, style=st.sampled_from(["standard", "e-string", "dollar"]),
       template=st.sampled_from([
           "SELECT * FROM t WHERE a = {v}",
           "INSERT INTO t (a, b) VALUES ({v}, 1), ({v}, 2)",
           "SELECT * FROM t WHERE a IN ({v}, {v}) -- trailing",
           "UPDATE t SET a = {v} /* c */ WHERE b = {v}",
           "SELECT {v}::text, \"ident\" FROM t WHERE x = ?",
       ]))
def test_no_literal_survives_normalisation(before: str, after: str, style: str,
                                           template: str) -> None:
    value = before + PLANTED + after
    statement = template.format(v=quoted(value, style))
    assert PLANTED not in normalise(statement)


@SETTINGS
@given(before=around, after=around)
def test_no_mysql_literal_survives_normalisation(before: str, after: str) -> None:
    value = before + PLANTED + after
    for style in ("mysql", "standard"):
        literal = quoted(value, style) if style == "mysql" else \
            "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        assert PLANTED not in normalise(f"SELECT * FROM t WHERE a = {literal}", "mysql")


@SETTINGS
@given(number=st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)))
def test_no_number_survives_normalisation(number: float) -> None:
    assert normalise(f"SELECT * FROM t WHERE a = {number!r} AND b=1") == \
        f"SELECT * FROM t WHERE a = {'-' if str(number).startswith('-') else ''}? AND b=?"


@SETTINGS
@given(count=st.integers(min_value=1, max_value=60))
def test_lists_of_any_length_collapse_alike(count: int) -> None:
    ids = ", ".join(str(i) for i in range(count))
    rows = ", ".join("(?, ?)" for _ in range(count))
    assert normalise(f"SELECT * FROM t WHERE id IN ({ids})") == normalise(
        "SELECT * FROM t WHERE id IN (1)")
    assert normalise(f"INSERT INTO t (a, b) VALUES {rows}") == normalise(
        "INSERT INTO t (a, b) VALUES (?, ?)")


@SETTINGS
@given(statement=st.text(max_size=300))
def test_normalise_takes_anything(statement: str) -> None:
    normalised = normalise(statement)
    assert len(normalised) <= MAX_STATEMENT + 1
    assert normalised == normalised.strip()
    assert RAW_CONTROL.search(normalised) is None
