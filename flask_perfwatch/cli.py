"""``flask perfwatch``: check the setup, send a test alert, list reports.

Registered under Flask's own ``flask`` command through the ``flask.commands``
entry point, so every app that uses the extension has it::

    flask --app myapp perfwatch check
    flask --app myapp perfwatch test-alert
    flask --app myapp perfwatch reports --limit 5 [--json]
    flask --app myapp perfwatch endpoints [--json]

Each command loads the app the way ``flask`` does (``--app`` or
``FLASK_APP``). A configuration error raised by ``init_app`` is reported as
such (exit status 1) rather than as a traceback.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from flask import Flask, current_app
from flask.cli import ScriptInfo

from . import __version__, signals
from ._endpoints import read_snapshots
from ._util import error_name, printable
from .config import PREFIX, config_fields, key_name
from .exceptions import ConfigError
from .extension import EXTENSION_KEY
from .monitor import STATS_LOG_INTERVAL

# reading reports lives beside writing them, in report.py (re-exported here)
from .report import (  # noqa: F401
    HEADER_ID,
    METADATA_ID,
    ReportInfo,
    ReportListing,
    ReportSkipped,
    list_reports,
    read_report,
)
from .reportstore import FILE_STORE, format_ttl

if TYPE_CHECKING:
    from .config import Config
    from .metrics import PerformanceMetrics
    from .monitor import Monitor
    from .notifiers import Notifier
    from .report import Report
    from .reportstore import S3ReportStore
    from .stores import Store

_shown = printable


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
        _fail(f"PerfWatch could not be set up, so the app did not load:\n  {_shown(exc)}\n"
              f"Fix that setting ({PREFIX}* in app.config, the environment or the "
              "config file) and run this again.")
    ctx.with_resource(app.app_context())
    return app


def _monitor(app: Flask) -> Monitor:
    state = app.extensions.get(EXTENSION_KEY)
    monitor = getattr(state, "monitor", None)
    if monitor is None:
        _fail(f"PerfWatch is not set up on app {_shown(repr(app.name))}. Add `PerfWatch(app)` (or "
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
        return f"{value:.12g}"
    if isinstance(value, tuple | list):
        return ", ".join(str(v) for v in value) or "(empty)"
    return str(value)


def describe_error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_store(store: Store) -> str:
    """Reach the dedupe store without claiming anything (:meth:`Store.check
    <flask_perfwatch.stores.Store.check>`); a one-line description, or an
    exception saying why it cannot be used."""
    return store.check()


def _warnings(config: Config) -> Iterator[str]:
    if not config.enabled:
        yield f"{key_name('enabled')} is false: nothing is timed, profiled or alerted."
    if not config.notifiers:
        yield f"{key_name('notifiers')} is empty: slow requests are only logged."
    if "mattermost" not in config.notifiers:
        # the notifier's keys, by field name (key names are spelled only in config.py)
        mattermost_keys = {key_name(f.name) for f in config_fields()
                           if f.name.startswith("mattermost_")}
        for key, _value, source in config.describe():
            if key in mattermost_keys and source != "default":
                yield (f"{key} is set (from {source}) but 'mattermost' is not in "
                       f"{key_name('notifiers')}, so nothing is posted to Mattermost.")
                break
    if config.report_store == FILE_STORE:
        for name in ("s3_endpoint_url", "report_link_ttl"):
            source = config.sources.get(name, "default")
            if source != "default":
                yield (f"{key_name(name)} is set (from {source}) but {key_name('report_store')} "
                       "is not an s3:// URL, so it has no effect.")


def _row(label: str, ok: bool, detail: str, width: int) -> None:
    """One ``label  OK|FAILED  detail`` line. ``label`` comes escaped (its width
    was measured so, see :func:`_notifier_name`); ``detail`` is escaped here."""
    click.echo(f"  {label:<{width}}  {_status(ok, 6)}  {_shown(detail)}")


def check_report_store(config: Config, store: S3ReportStore | None) -> str:
    """Describe where reports are kept and linked from; for an S3 store,
    reach the bucket without writing (:meth:`S3ReportStore.check
    <flask_perfwatch.reportstore.S3ReportStore.check>`), raising if it cannot
    be used."""
    if store is not None:
        return store.check()
    links = (f"links are {config.report_base_url}<file name>" if config.report_base_url
             else f"no links (set {key_name('report_base_url')} or an s3:// "
                  f"{key_name('report_store')}): channels give the local path")
    return f"reports stay in {config.resolved_report_dir}; {links}"


def _notifier_name(notifier: Notifier) -> str:
    """The notifier's name as printed (escaped: a plug-in's name is data too)."""
    return _shown(notifier.name or type(notifier).__name__)


@perfwatch.command("check")
@click.pass_context
def check_command(ctx: click.Context) -> None:
    """Show the effective configuration and reach every notifier and the store.

    Exit status 0 when everything works, 1 otherwise.
    """
    app = _load_app(ctx)
    monitor = _monitor(app)
    config = monitor.config
    click.echo(f"flask_perfwatch {__version__} on app {_shown(repr(app.name))}")
    click.echo("\nConfiguration (key, where the value came from, value):")
    rows = [(_shown(key), _shown(format_value(value)), _shown(source))
            for key, value, source in config.describe()]
    key_width = max(len(key) for key, _, _ in rows)
    source_width = max(len(source) for _, _, source in rows)
    for key, value, source in rows:
        click.echo(f"  {key:<{key_width}}  {source:<{source_width}}  {value}")
    click.echo(f"\nValidation: {_status(True)} (every value is valid; the notifiers and the store "
               "were built)")
    warnings = list(_warnings(config))
    if monitor.engine.unavailable is not None:  # e.g. the sampler on free-threaded CPython
        warnings.append(f"profiler {monitor.engine.name!r}: {monitor.engine.unavailable}")
    for warning in warnings:
        click.echo(f"  {click.style('warning:', fg='yellow')} {_shown(warning)}")

    failures = 0
    click.echo("\nNotifiers:")
    if not monitor.notifiers:
        click.echo("  (none)")
    scheme = _shown(config.store.partition(":")[0])
    report_store = monitor.pipeline.report_store
    store_name = report_store.name if report_store is not None else "file"
    width = max([len(_notifier_name(n)) for n in monitor.notifiers]
                + [len(scheme), len(store_name)])
    for notifier in monitor.notifiers:
        try:
            detail, ok = notifier.check(), True
        except Exception as exc:
            detail, ok = describe_error(exc), False
            failures += 1
        _row(_notifier_name(notifier), ok, detail, width)

    click.echo("\nDedupe store:")
    try:
        detail, ok = check_store(monitor.store), True
    except Exception as exc:
        detail, ok = describe_error(exc), False
        failures += 1
    _row(scheme, ok, detail, width)

    click.echo("\nReport store:")
    try:
        detail, ok = check_report_store(config, report_store), True
    except Exception as exc:
        detail, ok = describe_error(exc), False
        failures += 1
    _row(store_name, ok, detail, width)

    click.echo("\nMonitor stats of this process (a server logs its own at DEBUG every "
               f"{STATS_LOG_INTERVAL:.0f} s, and returns them from perfwatch.stats()):")
    stats = monitor.snapshot()
    click.echo("  " + _shown(", ".join(
        f"{key} {value:.1f}" if isinstance(value, float) else f"{key} {value}"
        for key, value in stats.items())))

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

    def keep_report(self, report: Report) -> None:
        self.report = report

    def failed(self, sender: Any, metrics: PerformanceMetrics, notifier: Notifier,
               error: BaseException, **_: Any) -> None:
        if metrics.id == self.alert_id:
            with self.lock:
                self.results[id(notifier)] = (False, describe_error(error))


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
        _fail(f"{key_name('notifiers')} is empty: there is no notifier to test.")
    names = ", ".join(_notifier_name(n) for n in monitor.notifiers)
    click.echo(f"Profiling some synthetic work, then sending a test alert through: {names}")
    metrics = synthetic_metrics(monitor.config)
    click.echo(_shown(metrics.summary()))
    outcomes = _Outcomes(metrics.id)
    signals.alert_sent.connect(outcomes.sent, sender=app, weak=False)
    signals.alert_failed.connect(outcomes.failed, sender=app, weak=False)
    try:
        if not monitor.pipeline.submit(app, metrics, dedupe=False,
                                       on_report=outcomes.keep_report):
            _fail("the alert queue is full (or closed); the test alert was not sent.")
        finished = monitor.flush(timeout)
    finally:
        signals.alert_sent.disconnect(outcomes.sent, sender=app)
        signals.alert_failed.disconnect(outcomes.failed, sender=app)

    store = monitor.pipeline.report_store
    width = max([len(_notifier_name(n)) for n in monitor.notifiers]
                + [len(store.name) if store is not None else 0])
    failures = 0
    with outcomes.lock:
        results = dict(outcomes.results)
    if store is not None:  # the upload came first: every channel got its link, or not
        ok, detail = results.get(id(store), (False, "no outcome (see the log)"))
        if ok and outcomes.report is not None:
            name = outcomes.report.path.name if outcomes.report.path is not None \
                else outcomes.report.filename
            # the key, not the link: a presigned link is a bearer secret
            detail = (f"report uploaded to s3://{store.bucket}/{store.key_for(name)} (its link "
                      f"is valid {format_ttl(store.link_ttl)})")
        failures += not ok
        _row(store.name, ok, detail, width)
    for notifier in monitor.notifiers:
        ok, detail = results.get(id(notifier), (False, ""))
        if not detail:
            detail = (f"no answer within {timeout:g}s (still trying; see the log)"
                      if not finished else "no outcome (see the log)")
        if ok and outcomes.report is not None and outcomes.report.path is not None \
                and notifier.name == "local":
            detail = f"report written to {outcomes.report.path}"
        failures += not ok
        _row(_notifier_name(notifier), ok, detail, width)
    report = outcomes.report
    if failures and report is not None and report.path is not None:
        click.echo(f"The report was kept at {_shown(report.path)}")
    if failures:
        targets = len(monitor.notifiers) + (store is not None)
        what = "notifier(s) and report store" if store is not None else "notifier(s)"
        click.echo(f"{_status(False)}: {failures} of {targets} {what} did not deliver the "
                   "test alert.")
        ctx.exit(1)
    click.echo(f"{_status(True)}: the test alert was delivered by every notifier"
               + (" and the report store." if store is not None else "."))


# --- reports -----------------------------------------------------------------------
#
# The report folder is by default under the shared system temp dir, so anyone on the
# machine may plant files there, and the fields inside a report come from HTTP
# requests. ``reports`` therefore reads it as hostile input: it looks at regular
# files only (never a symlink, FIFO, device or directory), opens them so that
# neither a swapped-in symlink nor a FIFO can block it, reads a bounded prefix of
# a bounded number of files, parses them with linear-time string searches (not
# html.parser, which spends tens of seconds on one crafted 4 MiB file), skips any
# file that makes it fail (with a note on stderr), and escapes every control
# character it prints.

def format_age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


#: A table cell is cut to this many characters, so one huge value cannot widen every row.
_MAX_CELL = 120


def _cell(text: str) -> str:
    """A table cell: escaped, and cut to ``_MAX_CELL`` characters so that one
    huge value cannot widen every row."""
    text = _shown(text)
    return text if len(text) <= _MAX_CELL else text[:_MAX_CELL - 3] + "..."


def _resolved(directory: Path) -> Path:
    try:
        return directory.resolve()
    except (OSError, RuntimeError):  # a symlink loop, say: show it as given
        return directory.absolute()


def _echo_table(table: list[tuple[str, ...]], *, right: int, last_free: bool = False) -> None:
    """Print rows of cells as columns, indented by two spaces: the last
    ``right`` columns right-aligned (numbers), the others left-aligned; with
    ``last_free`` the last column is not padded (a file name)."""
    columns = len(table[0]) - (1 if last_free else 0)
    widths = [max(len(row[i]) for row in table) for i in range(columns)]
    first_right = len(table[0]) - right
    for row in table:
        cells = [cell.rjust(widths[i]) if i >= first_right else cell.ljust(widths[i])
                 for i, cell in enumerate(row[:columns])]
        click.echo("  " + "  ".join([*cells, *row[columns:]]))


@perfwatch.command("reports")
@click.option("--limit", "-n", type=click.IntRange(min=0), default=20, show_default=True,
              help="Show at most this many (0: all).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Read this directory instead of the app's "
              f"{key_name('report_dir')} (no app needed).")
@click.pass_context
def reports_command(ctx: click.Context, limit: int, as_json: bool,
                    directory: Path | None) -> None:
    """List the most recent reports: age, duration, endpoint and file.

    Files that are not regular report files (symlinks, FIFOs, directories...)
    or that cannot be read are skipped, with a note on standard error.
    """
    if directory is None:
        directory = _monitor(_load_app(ctx)).config.resolved_report_dir
    directory = _resolved(directory)
    now = datetime.now(UTC)
    if not directory.is_dir():
        problem = "is not a directory" if directory.exists() else \
            "does not exist (no report written yet)"
        click.echo("[]" if as_json else f"No reports: {_shown(directory)} {problem}.")
        return
    try:
        listing = list_reports(directory, limit)
    except OSError as exc:
        _fail(f"cannot read the report directory {_shown(directory)}: {error_name(exc)}")
    infos = listing.reports
    if as_json:  # json.dumps escapes every control and non-ASCII character
        click.echo(json.dumps([i.to_dict(now) for i in infos], indent=2))
    elif not infos:
        click.echo(f"No reports in {_shown(directory)}.")
    else:
        click.echo(f"{len(infos)} of {listing.total} report(s) in {_shown(directory)}, "
                   "newest first:")
        table: list[tuple[str, ...]] = [("AGE", "DURATION", "STATUS", "ENDPOINT", "FILE")]
        for info in infos:
            duration = "?" if info.duration is None else f"{info.duration:.3f}s"
            if info.hung:
                duration += "+"
            endpoint = " ".join(p for p in (info.method, info.endpoint) if p) or "?"
            if info.kind == "regression":  # its duration is the endpoint's recent p95
                endpoint += " (regression)"
            table.append((format_age((now - info.when).total_seconds()), _cell(duration),
                          _cell(str(info.status_code or "-")), _cell(endpoint),
                          _shown(info.path.name)))
        _echo_table(table, right=0, last_free=True)
    for note in listing.notes():
        click.echo(note, err=True)


# --- endpoints -------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


@perfwatch.command("endpoints")
@click.option("--limit", "-n", type=click.IntRange(min=0), default=50, show_default=True,
              help="Show at most this many (0: all).")
@click.option("--json", "as_json", is_flag=True,
              help="Print {endpoint: {count, p50, p95, p99, max, slow}} (seconds) instead.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Read the statistics under this report directory instead "
              f"of the app's {key_name('report_dir')} (no app needed).")
@click.pass_context
def endpoints_command(ctx: click.Context, limit: int, as_json: bool,
                      directory: Path | None) -> None:
    """Latency per endpoint, slowest p95 first, over every process of the app.

    Each monitored process writes its endpoints' histograms under the report
    directory (``.endpoints/``, at most every 10 seconds while it serves
    requests, and when it closes or exits); this command merges those written in the
    last hour. Percentiles are within about 9 % (fixed buckets).
    """
    if directory is None:
        directory = _monitor(_load_app(ctx)).config.resolved_report_dir
    directory = _resolved(directory)
    windows, processes, problems = read_snapshots(directory)
    stats = {name: window.summary() for name, window in windows.items()}
    ranked = sorted(stats.items(), key=lambda item: (-item[1]["p95"], item[0]))
    if limit:
        ranked = ranked[:limit]
    if as_json:  # json.dumps escapes every control and non-ASCII character
        click.echo(json.dumps(dict(ranked), indent=2))
    elif not ranked:
        click.echo(f"No endpoint statistics under {_shown(directory)} (a monitored process "
                   "writes them every 10 s while it serves requests, once an endpoint has "
                   "had 100 requests or a minute has passed, and when it exits).")
    else:
        click.echo(f"{len(ranked)} of {len(stats)} endpoint(s) from {processes} process(es), "
                   f"slowest p95 first (times in ms; statistics under {_shown(directory)}):")
        table: list[tuple[str, ...]] = [("ENDPOINT", "COUNT", "P50", "P95", "P99", "MAX",
                                          "SLOW")]
        for name, values in ranked:
            table.append((_cell(name), str(values["count"]), _ms(values["p50"]),
                          _ms(values["p95"]),
                          _ms(values["p99"]), _ms(values["max"]), str(values["slow"])))
        _echo_table(table, right=len(table[0]) - 1)
    for problem in problems:
        click.echo(f"skipped {_shown(problem)}", err=True)
