"""``flask perfwatch``: check the setup, send a test alert, list reports.

Registered under Flask's own ``flask`` command through the ``flask.commands``
entry point, so every app that uses the extension has it::

    flask --app myapp perfwatch check
    flask --app myapp perfwatch test-alert
    flask --app myapp perfwatch reports --limit 5 [--json]

Each command loads the app the way ``flask`` does (``--app`` or
``FLASK_APP``). A configuration error raised by ``init_app`` is reported as
such (exit status 1) rather than as a traceback.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from flask import Flask, current_app
from flask.cli import ScriptInfo

from . import __version__, signals
from .exceptions import ConfigError
from .extension import EXTENSION_KEY
from .monitor import STATS_LOG_INTERVAL

if TYPE_CHECKING:
    from .config import Config
    from .metrics import PerformanceMetrics
    from .monitor import Monitor
    from .notifiers import Notifier
    from .report import Report
    from .stores import Store

#: The id of the header block the report carries (see report.py).
HEADER_ID = "perfwatch-request"
#: The id of the machine-readable metadata block, when a report carries one.
METADATA_ID = "perfwatch-metadata"



def _status(ok: bool, width: int = 0) -> str:
    word = ("OK" if ok else "FAILED").ljust(width)
    return click.style(word, fg="green" if ok else "red", bold=True)


@click.group("perfwatch")
def perfwatch() -> None:
    """flask_perfwatch: check the setup, send a test alert, list reports."""


# --- loading the app ----------------------------------------------------------


def _fail(message: str) -> NoReturn:
    click.secho(f"Error: {message}", err=True, fg="red")
    raise click.exceptions.Exit(1)


def _load_app(ctx: click.Context) -> Flask:
    """The app of ``--app``/``FLASK_APP`` with an app context pushed for the
    rest of the command; a ConfigError from ``init_app`` ends it with status 1."""
    if current_app:
        return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]
    info = ctx.ensure_object(ScriptInfo)
    try:
        app = info.load_app()
    except ConfigError as exc:
        _fail(f"PerfWatch could not be set up, so the app did not load:\n  {exc}\n"
              "Fix that setting (PERFWATCH_* in app.config, the environment or the "
              "config file) and run this again.")
    ctx.with_resource(app.app_context())
    return app


def _monitor(app: Flask) -> Monitor:
    state = app.extensions.get(EXTENSION_KEY)
    monitor = getattr(state, "monitor", None)
    if monitor is None:
        _fail(f"PerfWatch is not set up on app {app.name!r}. Add `PerfWatch(app)` (or "
              "`perfwatch.init_app(app)` in your app factory) so that the app this "
              "command loads is monitored.")
    return monitor  # type: ignore[no-any-return]


# --- check ---------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A config value as ``check`` shows it."""
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return ", ".join(str(v) for v in value) or "(empty)"
    return str(value)


def describe_error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_store(store: Store, config: Config) -> str:
    """Reach the dedupe store without claiming anything; a one-line description,
    or an exception saying why it cannot be used."""
    ping = getattr(store, "ping", None)
    if callable(ping):  # a store that knows how to check itself
        return str(ping())
    from .stores.memory import MemoryStore
    from .stores.redis import RedisStore
    from .stores.sqlite import SQLiteStore

    if isinstance(store, MemoryStore):
        return "memory:// (per process: each worker process dedupes on its own)"
    if isinstance(store, SQLiteStore):
        store.check(source=config.sources.get("store", "default"))
        return f"sqlite:///{store.path} ({len(store)} entries for prefix {store.prefix!r})"
    if isinstance(store, RedisStore):
        store.client.ping()
        return f"{store.url} answers PING (prefix {store.prefix!r})"
    return f"{store!r} (no check available for this store)"


def _warnings(config: Config) -> Iterator[str]:
    if not config.enabled:
        yield "PERFWATCH_ENABLED is false: nothing is timed, profiled or alerted."
    if not config.notifiers:
        yield "PERFWATCH_NOTIFIERS is empty: slow requests are only logged."
    if "mattermost" not in config.notifiers:
        for key, _value, source in config.describe():
            if key.startswith("PERFWATCH_MATTERMOST_") and source != "default":
                yield (f"{key} is set (from {source}) but 'mattermost' is not in "
                       "PERFWATCH_NOTIFIERS, so nothing is posted to Mattermost.")
                break


def _row(label: str, ok: bool, detail: str, width: int) -> None:
    click.echo(f"  {label:<{width}}  {_status(ok, 6)}  {detail}")


@perfwatch.command("check")
@click.pass_context
def check_command(ctx: click.Context) -> None:
    """Show the effective configuration and reach every notifier and the store.

    Exit status 0 when everything works, 1 otherwise.
    """
    app = _load_app(ctx)
    monitor = _monitor(app)
    config = monitor.config
    click.echo(f"flask_perfwatch {__version__} on app {app.name!r}")
    click.echo("\nConfiguration (key, where the value came from, value):")
    rows = [(key, format_value(value), source) for key, value, source in config.describe()]
    key_width = max(len(key) for key, _, _ in rows)
    source_width = max(len(source) for _, _, source in rows)
    for key, value, source in rows:
        click.echo(f"  {key:<{key_width}}  {source:<{source_width}}  {value}")
    click.echo(f"\nValidation: {_status(True)} (every value is valid; the notifiers and the store "
               "were built)")
    for warning in _warnings(config):
        click.echo(f"  {click.style('warning:', fg='yellow')} {warning}")

    failures = 0
    click.echo("\nNotifiers:")
    if not monitor.notifiers:
        click.echo("  (none)")
    scheme = config.store.partition(":")[0]
    width = max([len(n.name or type(n).__name__) for n in monitor.notifiers] + [len(scheme)])
    for notifier in monitor.notifiers:
        try:
            detail, ok = notifier.check(), True
        except Exception as exc:
            detail, ok = describe_error(exc), False
            failures += 1
        _row(notifier.name or type(notifier).__name__, ok, detail, width)

    click.echo("\nDedupe store:")
    try:
        detail, ok = check_store(monitor.store, config), True
    except Exception as exc:
        detail, ok = describe_error(exc), False
        failures += 1
    _row(scheme, ok, detail, width)

    click.echo("\nMonitor stats of this process (a server logs its own at DEBUG every "
               f"{STATS_LOG_INTERVAL:.0f} s, and returns them from perfwatch.stats()):")
    stats = monitor.snapshot()
    click.echo("  " + ", ".join(
        f"{key} {value:.1f}" if isinstance(value, float) else f"{key} {value}"
        for key, value in stats.items()))

    if failures:
        click.echo(f"\n{_status(False)}: {failures} check(s) failed.")
        ctx.exit(1)
    click.echo(f"\n{_status(True)}: flask_perfwatch is ready.")


# --- test-alert ------------------------------------------------------------------


def simulated_database_query(seconds: float) -> None:
    """The I/O half of the test alert's work (shows as time waiting)."""
    time.sleep(seconds)


def simulated_template_rendering(seconds: float) -> int:
    """The CPU half of the test alert's work."""
    deadline = time.perf_counter() + seconds
    total = 0
    while time.perf_counter() < deadline:
        total += sum(i * i for i in range(300))
    return total


def perfwatch_test_alert_view(seconds: float) -> None:
    """What the synthetic slow request "runs": half waiting, half computing."""
    simulated_database_query(seconds / 2)
    simulated_template_rendering(seconds / 2)


#: Path of the synthetic request (and the endpoint name its report carries).
TEST_PATH = "/perfwatch/test-alert"
TEST_ENDPOINT = "perfwatch.test_alert"


def synthetic_metrics(config: Config, seconds: float | None = None) -> PerformanceMetrics:
    """A slow-request alert for a request that did not happen, with a real
    pyinstrument profile of real (synthetic) work just over the threshold
    (capped at 3 s)."""
    from pyinstrument import Profiler

    from .metrics import PerformanceMetrics
    from .profiling.base import Profile

    if seconds is None:
        seconds = min(max(config.threshold * 1.2, 0.2), 3.0)
    started = datetime.now(UTC)
    profiler = Profiler(interval=min(config.profile_interval, 0.001), async_mode="disabled")
    begin = time.perf_counter()
    profiler.start(target_description=f"GET {TEST_PATH}")
    try:
        perfwatch_test_alert_view(seconds)
    finally:
        session = profiler.stop()
    duration = time.perf_counter() - begin
    note = ("This is a test alert sent by `flask perfwatch test-alert`: the request did "
            "not happen, the profile is of synthetic work.")
    return PerformanceMetrics(
        kind="request", name=TEST_ENDPOINT, duration=duration, threshold=config.threshold,
        started_at=started, method="GET", url=f"http://localhost{TEST_PATH}",
        path=TEST_PATH, status_code=200, profile=Profile(session, note=note),
        extra={"test_alert": True},
    )


@dataclass
class _Outcomes:
    """``alert_sent`` / ``alert_failed`` of one alert, per notifier."""

    alert_id: str
    results: dict[int, tuple[bool, str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    report: Report | None = None

    def sent(self, sender: Any, metrics: PerformanceMetrics, notifier: Notifier,
             **_: Any) -> None:
        if metrics.id == self.alert_id:
            with self.lock:
                self.results[id(notifier)] = (True, "delivered")

    def failed(self, sender: Any, metrics: PerformanceMetrics, notifier: Notifier,
               error: BaseException, **_: Any) -> None:
        if metrics.id == self.alert_id:
            with self.lock:
                self.results[id(notifier)] = (False, describe_error(error))


def _deliver(monitor: Monitor, sender: Flask, metrics: PerformanceMetrics,
             outcomes: _Outcomes) -> None:
    """On the delivery thread: render and dispatch, skipping dedupe."""
    from .report import render_report

    report = render_report(metrics)
    outcomes.report = report
    monitor.pipeline.dispatch(sender, metrics, report)


@perfwatch.command("test-alert")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=90.0, show_default=True,
              help="Seconds to wait for every notifier to deliver (or give up).")
@click.pass_context
def test_alert_command(ctx: click.Context, timeout: float) -> None:
    """Send a synthetic slow-request alert through every configured notifier.

    The alert carries a real pyinstrument report of a little synthetic work and
    skips dedupe. Waits for delivery and says what happened to each notifier;
    exit status 1 if any failed.
    """
    app = _load_app(ctx)
    monitor = _monitor(app)
    if not monitor.notifiers:
        _fail("PERFWATCH_NOTIFIERS is empty: there is no notifier to test.")
    names = ", ".join(n.name or type(n).__name__ for n in monitor.notifiers)
    click.echo(f"Profiling some synthetic work, then sending a test alert through: {names}")
    metrics = synthetic_metrics(monitor.config)
    click.echo(metrics.summary())
    outcomes = _Outcomes(metrics.id)
    signals.alert_sent.connect(outcomes.sent, sender=app, weak=False)
    signals.alert_failed.connect(outcomes.failed, sender=app, weak=False)
    try:
        if not monitor.worker.submit(partial(_deliver, monitor, app, metrics, outcomes)):
            _fail("the alert queue is full (or closed); the test alert was not sent.")
        finished = monitor.flush(timeout)
    finally:
        signals.alert_sent.disconnect(outcomes.sent, sender=app)
        signals.alert_failed.disconnect(outcomes.failed, sender=app)

    width = max(len(n.name or type(n).__name__) for n in monitor.notifiers)
    failures = 0
    with outcomes.lock:
        results = dict(outcomes.results)
    for notifier in monitor.notifiers:
        ok, detail = results.get(id(notifier), (False, ""))
        if not detail:
            detail = (f"no answer within {timeout:g}s (still trying; see the log)"
                      if not finished else "no outcome (see the log)")
        if ok and outcomes.report is not None and outcomes.report.path is not None \
                and notifier.name == "local":
            detail = f"report written to {outcomes.report.path}"
        failures += not ok
        _row(notifier.name or type(notifier).__name__, ok, detail, width)
    report = outcomes.report
    if failures and report is not None and report.path is not None:
        click.echo(f"The report was kept at {report.path}")
    if failures:
        click.echo(f"{_status(False)}: {failures} of {len(monitor.notifiers)} notifier(s) "
                   "did not deliver the test alert.")
        ctx.exit(1)
    click.echo(f"{_status(True)}: the test alert was delivered by every notifier.")


# --- reports -----------------------------------------------------------------------

_FILENAME_RE = re.compile(
    r"^perfwatch-(?P<stamp>\d{8}T\d{6}Z)-(?P<label>.+)-(?P<id>[0-9a-f]{8})(?:-\d+)?\.html$")
_HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
                 "CONNECT"}
_SECONDS_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*s\b")
#: Stop reading a report after this many bytes if its header was not found.
_MAX_SCAN = 4 * 1024 * 1024


@dataclass
class ReportInfo:
    """What ``reports`` knows about one report file. ``source`` says where the
    request fields came from: ``metadata`` (the JSON block), ``header`` (the
    header table) or ``filename``."""

    path: Path
    size: int
    modified: datetime
    source: str = "filename"
    kind: str | None = None
    endpoint: str | None = None
    method: str | None = None
    url: str | None = None
    duration: float | None = None
    threshold: float | None = None
    status_code: int | None = None
    started_at: datetime | None = None
    hung: bool = False

    @property
    def when(self) -> datetime:
        return self.started_at or self.modified

    def to_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "endpoint": self.endpoint,
            "kind": self.kind,
            "method": self.method,
            "url": self.url,
            "duration": self.duration,
            "threshold": self.threshold,
            "status_code": self.status_code,
            "hung": self.hung,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "age_seconds": round((now - self.when).total_seconds(), 3),
            "size_bytes": self.size,
            "source": self.source,
        }


class _HeaderParser(HTMLParser):
    """Collects the rows of ``<header id="perfwatch-request">`` and the JSON of
    ``<script id="perfwatch-metadata">``, whichever the report has."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: dict[str, str] = {}
        self.metadata_text: str | None = None
        self.header_done = False
        self._header_depth = 0
        self._in_metadata = False
        self._cell: str | None = None
        self._text: list[str] = []
        self._label: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "script" and attr.get("id") == METADATA_ID:
            self._in_metadata = True
            self.metadata_text = ""
        elif self._header_depth:
            if tag == "header":
                self._header_depth += 1
            elif tag in ("th", "td"):
                self._cell, self._text = tag, []
            elif tag == "details":
                self._header_depth += 1  # rows inside <details> are params, not ours
        elif tag == "header" and attr.get("id") == HEADER_ID:
            self._header_depth = 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._in_metadata:
            self._in_metadata = False
        elif self._header_depth:
            if tag in ("header", "details"):
                self._header_depth -= 1
                if self._header_depth == 0:
                    self.header_done = True
            elif tag == self._cell:
                text = "".join(self._text).strip()
                if self._header_depth == 1:
                    if tag == "th":
                        self._label = text
                    elif self._label is not None:
                        self.rows.setdefault(self._label, text)
                        self._label = None
                self._cell = None

    def handle_data(self, data: str) -> None:
        if self._in_metadata and self.metadata_text is not None:
            self.metadata_text += data
        elif self._cell is not None:
            self._text.append(data)


def _seconds(text: str | None) -> float | None:
    match = _SECONDS_RE.match(text or "")
    return float(match.group(1)) if match else None


def _parse_started(text: str | None) -> datetime | None:
    if not text:
        return None
    for fmt in ("%Y-%m-%d %H:%M:%S.%f UTC", "%Y-%m-%d %H:%M:%S UTC"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def _from_metadata(info: ReportInfo, text: str) -> bool:
    try:
        data = json.loads(text)
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False

    def number(key: str) -> float | None:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value) if math.isfinite(value) else None

    def string(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) else None

    info.kind = string("kind")
    info.endpoint = string("name")
    info.method = string("method")
    info.url = string("url") or string("path")
    info.duration = number("duration")
    info.threshold = number("threshold")
    status = data.get("status_code")
    info.status_code = status if isinstance(status, int) and not isinstance(status, bool) \
        else None
    info.hung = data.get("hung") is True
    started = string("started_at")
    if started:
        try:
            info.started_at = datetime.fromisoformat(started).astimezone(UTC)
        except ValueError:
            info.started_at = None
    info.source = "metadata"
    return True


def _from_header(info: ReportInfo, rows: dict[str, str]) -> bool:
    if "Endpoint" in rows:
        info.kind, info.endpoint = "request", rows["Endpoint"]
    elif "Function" in rows:
        info.kind, info.endpoint = "function", rows["Function"]
    else:
        return False
    method, _, url = rows.get("Request", "").partition(" ")
    if method and url:
        info.method, info.url = method, url
    info.duration = _seconds(rows.get("Duration"))
    info.hung = "still running" in rows.get("Duration", "")
    info.threshold = _seconds(rows.get("Threshold"))
    status = rows.get("Status", "")
    info.status_code = int(status) if status.isdigit() else None
    info.started_at = _parse_started(rows.get("Started")) or info.started_at
    info.source = "header"
    return True


def _from_filename(info: ReportInfo) -> None:
    match = _FILENAME_RE.match(info.path.name)
    if match is None:
        return
    info.started_at = datetime.strptime(match["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    method, sep, rest = match["label"].partition("-")
    if sep and method in _HTTP_METHODS:
        info.method, info.endpoint = method, rest
    else:
        info.endpoint = match["label"]


def read_report(path: Path) -> ReportInfo:
    """The request fields of one report file: from its JSON metadata block if it
    has one, else from its header table, else from its file name. Reads only
    as far as the header block."""
    stat = path.stat()
    info = ReportInfo(path=path, size=stat.st_size,
                      modified=datetime.fromtimestamp(stat.st_mtime, UTC))
    _from_filename(info)
    parser = _HeaderParser()
    read = 0
    with path.open(encoding="utf-8", errors="replace") as fh:
        while not parser.header_done and read < _MAX_SCAN:
            chunk = fh.read(64 * 1024)
            if not chunk:
                break
            read += len(chunk)
            parser.feed(chunk)
    if parser.metadata_text and _from_metadata(info, parser.metadata_text):
        return info
    _from_header(info, parser.rows)
    return info


def list_reports(directory: Path, limit: int | None = None) -> list[ReportInfo]:
    """Report files in ``directory``, newest first (at most ``limit``)."""
    paths = [p for p in directory.glob("perfwatch-*.html") if p.is_file()]
    infos = []
    for path in paths:
        try:
            infos.append(read_report(path))
        except OSError:
            continue  # removed or unreadable meanwhile
    infos.sort(key=lambda i: (i.when, i.modified), reverse=True)
    return infos[:limit] if limit else infos


def format_age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


@perfwatch.command("reports")
@click.option("--limit", "-n", type=click.IntRange(min=0), default=20, show_default=True,
              help="Show at most this many (0: all).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Read this directory instead of the app's "
              "PERFWATCH_REPORT_DIR (no app needed).")
@click.pass_context
def reports_command(ctx: click.Context, limit: int, as_json: bool,
                    directory: Path | None) -> None:
    """List the most recent reports: age, duration, endpoint and file."""
    if directory is None:
        directory = _monitor(_load_app(ctx)).config.resolved_report_dir
    directory = directory.resolve()
    now = datetime.now(UTC)
    infos = list_reports(directory, limit) if directory.is_dir() else []
    if as_json:
        click.echo(json.dumps([i.to_dict(now) for i in infos], indent=2))
        return
    if not directory.is_dir():
        click.echo(f"No reports: {directory} does not exist (no report written yet).")
        return
    if not infos:
        click.echo(f"No reports in {directory}.")
        return
    total = sum(1 for _ in directory.glob("perfwatch-*.html"))
    click.echo(f"{len(infos)} of {total} report(s) in {directory}, newest first:")
    table = [("AGE", "DURATION", "STATUS", "ENDPOINT", "FILE")]
    for info in infos:
        duration = "?" if info.duration is None else f"{info.duration:.3f}s"
        if info.hung:
            duration += "+"
        endpoint = " ".join(p for p in (info.method, info.endpoint) if p) or "?"
        table.append((format_age((now - info.when).total_seconds()), duration,
                      str(info.status_code or "-"), endpoint, info.path.name))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  " + "  ".join([*cells, row[4]]))
