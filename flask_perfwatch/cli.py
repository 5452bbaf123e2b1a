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

import heapq
import html
import json
import math
import os
import re
import stat
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
from ._util import error_name, safe_text
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


def _shown(value: object) -> str:
    """``value`` as text that is safe to print: control characters escaped
    (:func:`safe_text`), and the lone surrogates that stand for undecodable bytes
    of a file name as ``\\udcxx``, so that printing can never fail on them.

    Every piece of data the CLI prints (config values, error messages, report
    fields, file names) goes through this; only the CLI's own words do not."""
    text = safe_text(str(value))
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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
              "Fix that setting (PERFWATCH_* in app.config, the environment or the "
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
    """One ``label  OK|FAILED  detail`` line. ``label`` comes escaped (its width
    was measured so, see :func:`_notifier_name`); ``detail`` is escaped here."""
    click.echo(f"  {label:<{width}}  {_status(ok, 6)}  {_shown(detail)}")


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
    for warning in _warnings(config):
        click.echo(f"  {click.style('warning:', fg='yellow')} {_shown(warning)}")

    failures = 0
    click.echo("\nNotifiers:")
    if not monitor.notifiers:
        click.echo("  (none)")
    scheme = _shown(config.store.partition(":")[0])
    width = max([len(_notifier_name(n)) for n in monitor.notifiers] + [len(scheme)])
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
        _fail("PERFWATCH_NOTIFIERS is empty: there is no notifier to test.")
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

    width = max(len(_notifier_name(n)) for n in monitor.notifiers)
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
        _row(_notifier_name(notifier), ok, detail, width)
    report = outcomes.report
    if failures and report is not None and report.path is not None:
        click.echo(f"The report was kept at {_shown(report.path)}")
    if failures:
        click.echo(f"{_status(False)}: {failures} of {len(monitor.notifiers)} notifier(s) "
                   "did not deliver the test alert.")
        ctx.exit(1)
    click.echo(f"{_status(True)}: the test alert was delivered by every notifier.")


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

_FILENAME_RE = re.compile(
    r"perfwatch-(?P<stamp>[0-9]{8}T[0-9]{6}Z)-(?P<label>.+)-(?P<id>[0-9a-f]{8})"
    r"(?:-[0-9]+)?\.html", re.DOTALL)
_HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
                 "CONNECT"}
_SECONDS_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*s\b", re.ASCII)
_ROW_RE = re.compile(r"<th>([^<]*)</th>\s*<td>([^<]*)</td>")
_NAME_PREFIX, _NAME_SUFFIX = "perfwatch-", ".html"
_HEADER_START = f'<header id="{HEADER_ID}">'.encode()
_HEADER_END = b"</header>"
_METADATA_START = f'id="{METADATA_ID}">'.encode()

#: Read at most this many bytes of one report file: its header block (all we
#: need) is at the start; a longer file is read only this far.
_MAX_SCAN = 4 * 1024 * 1024
#: Read files in chunks this big, stopping after the header block.
_CHUNK = 32 * 1024
#: One listing reads at most this many bytes at full depth; after that each
#: further file is read only ``_SCAN_AFTER_BUDGET`` deep (still enough for a
#: real report), so planted 4 MiB files cannot make a listing slow.
_LISTING_BUDGET = 256 * 1024 * 1024
_SCAN_AFTER_BUDGET = 64 * 1024
#: Read at most this many report files per listing: the newest by modification
#: time (lstat); the rest are counted as not examined.
_MAX_EXAMINED = 10_000
#: Look at most at this many directory entries (of any name), so that a folder
#: holding millions of files cannot stall the command.
_MAX_DIR_ENTRIES = 1_000_000
#: Keep (and print) at most this many skipped-file notes; the rest are counted.
_MAX_NOTES = 20
#: Table cells (except the file name) are cut to this many characters.
_MAX_CELL = 120

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class ReportSkipped(Exception):
    """Raised by :func:`read_report` for a file it will not (or could not) read;
    ``list_reports`` collects them. ``reason`` is a kind of file (``not a regular
    file (FIFO)``) or the name of the exception that reading raised, never any of
    the file's content."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path.name}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class ReportInfo:
    """What ``reports`` knows about one report file. ``source`` says where the
    request fields came from: ``metadata`` (the JSON block), ``header`` (the
    header table) or ``filename``. Every text field is as the file has it:
    escape it (``safe_text``) before printing."""

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


@dataclass
class ReportListing:
    """What :func:`list_reports` found in a directory.

    ``reports`` are newest first (at most the ``limit``); ``total`` counts every
    report read, limit aside. ``skipped`` holds the first ``_MAX_NOTES`` files
    left out (non-regular files, files that could not be read or parsed) and
    ``skipped_count`` counts them all; ``not_examined`` counts the regular files
    beyond the ``_MAX_EXAMINED`` newest, and ``scan_stopped`` says the
    directory had more than ``_MAX_DIR_ENTRIES`` entries, the rest unseen.
    """

    directory: Path
    reports: list[ReportInfo] = field(default_factory=list)
    total: int = 0
    skipped: list[ReportSkipped] = field(default_factory=list)
    skipped_count: int = 0
    not_examined: int = 0
    scan_stopped: bool = False

    def skip(self, skipped: ReportSkipped) -> None:
        self.skipped_count += 1
        if len(self.skipped) < _MAX_NOTES:
            self.skipped.append(skipped)

    def notes(self) -> list[str]:
        """One line (data escaped) per skipped file, then one per limit hit."""
        lines = [f"note: skipped {_shown(s.path.name)}: {_shown(s.reason)}"
                 for s in self.skipped]
        if self.skipped_count > len(self.skipped):
            lines.append(f"note: ... and {self.skipped_count - len(self.skipped)} more "
                         "file(s) skipped")
        if self.not_examined:
            lines.append(f"note: {self.not_examined} older report file(s) not examined: "
                         f"only the {_MAX_EXAMINED} newest are read")
        if self.scan_stopped:
            lines.append(f"note: stopped after {_MAX_DIR_ENTRIES} directory entries; "
                         f"the rest of {_shown(self.directory)} was not looked at")
        return lines


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link, not followed"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return f"not a regular file ({name})"
    return "not a regular file"


def _open_regular(path: Path, dir_fd: int | None) -> tuple[int, os.stat_result]:
    """An fd of ``path`` (its name relative to ``dir_fd`` when given) and its
    fstat, for a regular file only.

    The caller checked with lstat already; this closes the gap between that
    check and the open: ``O_NOFOLLOW`` refuses a symlink swapped in meanwhile,
    ``O_NONBLOCK`` makes opening a swapped-in FIFO return at once instead of
    waiting for a writer, and the fstat of the fd refuses anything but a regular
    file before a single byte is read."""
    name: str | Path = path.name if dir_fd is not None else path
    fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ReportSkipped(path, _kind(st.st_mode))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _read_prefix(fd: int, cap: int) -> bytes:
    """At most ``cap`` bytes from ``fd``, stopping at the chunk that ends the
    header block (all that is parsed)."""
    chunks: list[bytes] = []
    read = 0
    tail = b""
    while read < cap:
        chunk = os.read(fd, min(_CHUNK, cap - read))
        if not chunk:
            break
        chunks.append(chunk)
        read += len(chunk)
        if _HEADER_END in tail + chunk:
            break
        tail = (tail + chunk)[1 - len(_HEADER_END):]
    return b"".join(chunks)


def _metadata_text(data: bytes) -> str | None:
    """The text of the ``<script id="perfwatch-metadata">`` block, found by plain
    searches (linear in the data, whatever it holds)."""
    at = data.find(_METADATA_START)
    if at < 0:
        return None
    tag = data.rfind(b"<", 0, at)
    if tag < 0 or not data.startswith(b"<script", tag):
        return None
    start = at + len(_METADATA_START)
    end = data.find(b"</script>", start)  # the writer escapes "<" inside the JSON
    if end < 0:
        return None
    return data[start:end].decode("utf-8", errors="replace")


def _header_rows(data: bytes) -> dict[str, str]:
    """The label/value rows of ``<header id="perfwatch-request">``, leaving out
    the rows inside its ``<details>`` (params, not ours). The writer escapes
    every value, so a cell never holds a tag; plain searches and a regex
    without nested repeats keep this linear."""
    start = data.find(_HEADER_START)
    if start < 0:
        return {}
    end = data.find(_HEADER_END, start)
    text = data[start:end if end >= 0 else len(data)].decode("utf-8", errors="replace")
    parts = []
    at = 0
    while (opened := text.find("<details", at)) >= 0:
        parts.append(text[at:opened])
        closed = text.find("</details>", opened)
        if closed < 0:
            at = len(text)
            break
        at = closed + len("</details>")
    parts.append(text[at:])
    rows: dict[str, str] = {}
    for match in _ROW_RE.finditer("".join(parts)):
        rows.setdefault(html.unescape(match[1]).strip(), html.unescape(match[2]).strip())
    return rows


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
    """Fill ``info`` from the JSON block; False if it is not JSON of an object.

    JSON nested too deep (``RecursionError``) or a value that cannot be
    converted (an integer duration too big for a float, a start time that
    overflows in UTC) raises: our writer cannot have produced that file, so the
    caller skips it with a note."""
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
        value = float(value)  # OverflowError for an integer beyond any float
        return value if math.isfinite(value) else None

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
            parsed = datetime.fromisoformat(started)
        except ValueError:
            parsed = None
        info.started_at = parsed.astimezone(UTC) if parsed else None
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
    # isdigit() is also true of "²", which int() refuses: a ValueError, and the
    # file (not written by us) is skipped.
    info.status_code = int(status) if status.isdigit() else None
    info.started_at = _parse_started(rows.get("Started")) or info.started_at
    info.source = "header"
    return True


def _from_filename(info: ReportInfo) -> None:
    match = _FILENAME_RE.fullmatch(info.path.name)
    if match is None:
        return
    info.started_at = datetime.strptime(match["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    method, sep, rest = match["label"].partition("-")
    if sep and method in _HTTP_METHODS:
        info.method, info.endpoint = method, rest
    else:
        info.endpoint = match["label"]


def _read(path: Path, dir_fd: int | None, cap: int) -> tuple[ReportInfo, int]:
    """:func:`read_report`, reading at most ``cap`` bytes; also returns how many
    bytes were read."""
    try:
        st = os.stat(path.name if dir_fd is not None else path, dir_fd=dir_fd,
                     follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise ReportSkipped(path, _kind(st.st_mode))
        fd, st = _open_regular(path, dir_fd)
        try:
            data = _read_prefix(fd, cap)
        finally:
            os.close(fd)
        info = ReportInfo(path=path, size=st.st_size,
                          modified=datetime.fromtimestamp(st.st_mtime, UTC))
        _from_filename(info)
        metadata = _metadata_text(data)
        if not (metadata and _from_metadata(info, metadata)):
            _from_header(info, _header_rows(data))
    except ReportSkipped:
        raise
    except Exception as exc:  # whatever a crafted file makes fail: skip it, say why
        raise ReportSkipped(path, error_name(exc) or "error") from exc
    return info, len(data)


def read_report(path: Path) -> ReportInfo:
    """The request fields of one report file: from its JSON metadata block if it
    has one, else from its header table, else from its file name.

    Reads only a regular file (never through a symlink, never a FIFO or device),
    and only as far as the header block (at most ``_MAX_SCAN`` bytes). Raises
    :class:`ReportSkipped`, and nothing else, for a file it will not or could not
    read: a crafted file costs a note, never a crash."""
    return _read(path, None, _MAX_SCAN)[0]


def _newest_candidates(dir_fd: int, listing: ReportListing) -> list[str]:
    """Names of the regular ``perfwatch-*.html`` files to read: the
    ``_MAX_EXAMINED`` newest by lstat mtime, newest first. Other entries of that
    name are skipped (noted); entries of other names cost only their name."""
    newest: list[tuple[int, str]] = []  # a min-heap of (mtime_ns, name)
    with os.scandir(dir_fd) as entries:
        for seen, entry in enumerate(entries, 1):
            if seen > _MAX_DIR_ENTRIES:
                listing.scan_stopped = True
                break
            name = entry.name
            if not (name.startswith(_NAME_PREFIX) and name.endswith(_NAME_SUFFIX)):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed meanwhile
            except OSError as exc:
                listing.skip(ReportSkipped(listing.directory / name,
                                           error_name(exc) or "OSError"))
                continue
            if not stat.S_ISREG(st.st_mode):
                listing.skip(ReportSkipped(listing.directory / name, _kind(st.st_mode)))
                continue
            if len(newest) < _MAX_EXAMINED:
                heapq.heappush(newest, (st.st_mtime_ns, name))
            else:
                heapq.heappushpop(newest, (st.st_mtime_ns, name))
                listing.not_examined += 1
    return [name for _, name in sorted(newest, reverse=True)]


def list_reports(directory: Path, limit: int | None = None) -> ReportListing:
    """The report files in ``directory``, newest first (at most ``limit``).

    Every file goes through :func:`read_report`'s rules (a file it refuses is in
    ``skipped``, the rest count in ``total``); see :class:`ReportListing` for the
    bounds on how much is read. Raises OSError only if the directory itself
    cannot be opened."""
    listing = ReportListing(directory=directory)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    infos = []
    try:
        budget = _LISTING_BUDGET
        for name in _newest_candidates(dir_fd, listing):
            path = directory / name
            try:
                info, read = _read(path, dir_fd,
                                   _MAX_SCAN if budget > 0 else _SCAN_AFTER_BUDGET)
            except ReportSkipped as skipped:
                if not isinstance(skipped.__cause__, FileNotFoundError):  # not removed
                    listing.skip(skipped)
                continue
            budget -= read
            infos.append(info)
    finally:
        os.close(dir_fd)
    infos.sort(key=lambda i: (i.when, i.modified), reverse=True)
    listing.total = len(infos)
    listing.reports = infos[:limit] if limit else infos
    return listing


def format_age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


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
        table = [("AGE", "DURATION", "STATUS", "ENDPOINT", "FILE")]
        for info in infos:
            duration = "?" if info.duration is None else f"{info.duration:.3f}s"
            if info.hung:
                duration += "+"
            endpoint = " ".join(p for p in (info.method, info.endpoint) if p) or "?"
            table.append((format_age((now - info.when).total_seconds()), _cell(duration),
                          _cell(str(info.status_code or "-")), _cell(endpoint),
                          _shown(info.path.name)))
        widths = [max(len(row[i]) for row in table) for i in range(4)]
        for row in table:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            click.echo("  " + "  ".join([*cells, row[4]]))
    for note in listing.notes():
        click.echo(note, err=True)
