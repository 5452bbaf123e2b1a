"""The report of one alert, rendered once and shared by every notifier."""

from __future__ import annotations

import heapq
import html
import json
import logging
import math
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._sql import OVERFLOW_STATEMENT
from ._util import error_name, printable
from .config import key_name
from .metrics import PerformanceMetrics
from .reportdir import ReportFolder, encode, ensure_dir, write_atomic

if TYPE_CHECKING:
    from .profiling.base import Profile

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

#: The id of the header block every report carries (read back by :func:`read_report`).
HEADER_ID = "perfwatch-request"
#: The id of the machine-readable metadata block (read back by :func:`read_report`).
METADATA_ID = "perfwatch-metadata"
#: Header rows that :func:`read_report` reads back, when a report has no metadata block.
ROW_REQUEST, ROW_ENDPOINT, ROW_FUNCTION = "Request", "Endpoint", "Function"
ROW_DURATION, ROW_THRESHOLD, ROW_STATUS, ROW_STARTED = "Duration", "Threshold", "Status", "Started"
#: A regression report's row (its endpoint is under ROW_ENDPOINT): :func:`read_report`
#: tells the two kinds apart by it.
ROW_REGRESSION = "Regression"
#: A regression report's start: when its recent window began (read as ROW_STARTED).
ROW_RECENT_SINCE = "Recent since"
#: Insight rows (not read back).
ROW_CPU, ROW_WAITING, ROW_TRACE, ROW_SPAN = "CPU", "Mostly waiting", "Trace", "Span"


@dataclass
class Report:
    """``html``: a whole HTML page (pyinstrument's report under a header block
    describing the request); ``text``: the summary plus the console tree;
    ``filename``: a safe suggested file name; ``path``: the local file, once a
    notifier (or the pipeline's safety net) wrote one."""

    html: str
    text: str
    filename: str
    path: Path | None = None
    #: Where a recipient can open the report, or None when no link exists:
    #: with ``PERFWATCH_REPORT_STORE=s3://...``, a presigned GET link valid
    #: ``PERFWATCH_REPORT_LINK_TTL`` (a bearer secret: left out of the repr),
    #: else ``PERFWATCH_REPORT_BASE_URL`` + the file's name.
    url: str | None = field(default=None, repr=False)
    #: What the page holds of the profile: ``"full"``, ``"thinned"`` (to fit
    #: a size cap), ``"dropped"`` (too big even thinned, or failed to render)
    #: or ``"none"`` (the request had no profile).
    profile_state: str = "none"
    #: notifiers deliver on threads of their own: one copy on disk, not one each
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def link(self) -> str | None:
        """What a channel that cannot attach the file points to: :attr:`url`,
        else the local :attr:`path` (useful on the same host), else None."""
        if self.url is not None:
            return self.url
        return str(self.path) if self.path is not None else None

    def write(self, directory: Path | ReportFolder) -> Path:
        """Write :attr:`html` into ``directory`` (created 0700 if missing) under
        a unique name, mode 0600, atomically: never over or through an existing
        file or symlink, and nothing left behind if the write fails (see
        :func:`~flask_perfwatch.reportdir.write_atomic`). Remembers the file as
        :attr:`path` (a second call for the same directory returns it). A
        :class:`~flask_perfwatch.reportdir.ReportFolder` also counts the bytes
        toward its size limit."""
        folder = directory.directory if isinstance(directory, ReportFolder) else directory
        with self._lock:
            if self.path is not None and self.path.parent == folder:
                return self.path
            if isinstance(directory, ReportFolder):
                self.path = directory.write(self.filename, self.html)
            else:
                self.path = write_atomic(ensure_dir(directory), self.filename, self.html)
            return self.path


def report_filename(metrics: PerformanceMetrics) -> str:
    """``perfwatch-20261128T085210Z-GET-orders.export-3fa2b1c4.html``: UTC time,
    method and endpoint, filesystem-safe and short."""
    stamp = metrics.started_at.strftime("%Y%m%dT%H%M%SZ")
    parts = [part for part in (metrics.method, metrics.name) if part]
    label = _UNSAFE.sub("_", "-".join(parts)).replace("..", "_").strip("._-")[:80]
    label = label or metrics.kind
    return f"perfwatch-{stamp}-{label}-{metrics.id[:8]}.html"


#: When a report is over its size cap, the profile is thinned with each of
#: these in turn (frames under this fraction of the time are merged into their
#: callers) until it fits; if none fits, the profile is dropped.
THINNING_STEPS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1)


def render_report(metrics: PerformanceMetrics, *, max_bytes: int = 0) -> Report:
    """Render the HTML and text once. Runs on the delivery thread.

    ``max_bytes`` (``PERFWATCH_REPORT_FILE_MAX_BYTES``; 0: no cap) caps the
    HTML page's size in UTF-8 bytes. A bigger page is rendered again with the
    profile thinned (:data:`THINNING_STEPS`, see
    :meth:`~flask_perfwatch.profiling.Profile.thinned`), and as a last resort
    without the profile; the header says which. The metadata-only page is the
    floor: it is returned even if it is larger still. Never raises for size."""
    profile_html = None
    profile_text = ""
    profile = metrics.profile
    if profile is not None:
        try:
            profile_html = profile.html()
            profile_text = profile.text()
        except Exception:
            logger.exception("could not render the profile of %s; the report will carry "
                             "the request metadata only", metrics.summary())
            profile_html = None
    page = _page(metrics, profile, profile_html)
    size_note = None
    state = "none" if profile is None else "full" if profile_html is not None else "dropped"
    if max_bytes > 0 and profile is not None and profile_html is not None \
            and len(encode(page)) > max_bytes:
        page, size_note, state = _fit(metrics, profile, max_bytes)
    text = metrics.summary()
    for line in [*insight_lines(metrics), *repeats_lines(metrics)]:
        text += "\n" + line
    if profile is not None and profile.note:
        text += "\n" + profile.note
    if size_note:
        text += "\n" + size_note
    if profile_text:
        text += "\n\n" + profile_text
    return Report(html=page, text=text, filename=report_filename(metrics), profile_state=state)


def _page(metrics: PerformanceMetrics, profile: Profile | None, profile_html: str | None,
          size_note: str | None = None) -> str:
    header = _header_html(metrics, profile, size_note)
    if profile_html is not None and "<body>" in profile_html:
        return profile_html.replace("<body>", "<body>\n" + header, 1)
    return _standalone_page(metrics, header)


def _fit(metrics: PerformanceMetrics, profile: Profile, max_bytes: int
         ) -> tuple[str, str, str]:
    """The page with the profile thinned just enough to fit ``max_bytes``, or
    the metadata-only page; with the note saying what was done."""
    cap = format_size(max_bytes)
    for fraction in THINNING_STEPS:
        try:
            thin = profile.thinned(fraction)
            thin_html = thin.html()
        except Exception:
            logger.exception("could not thin the profile of %s; dropping it from the report",
                             metrics.summary())
            break
        note = (f"Profile thinned: {thin.merged_frames} frames under {fraction * 100:g}% of "
                f"the time were merged into their callers to keep the report under {cap} "
                "(and repeated calls into one per call path).")
        page = _page(metrics, thin, thin_html, note)
        if len(encode(page)) <= max_bytes:
            logger.info("the report of %s was over %s; %s", metrics.summary(), cap, note)
            return page, note, "thinned"
    note = (f"The profile ({profile.sample_count} samples) was too large for a report under "
            f"{cap}, even thinned, and was dropped; this report carries the request metadata "
            "only.")
    logger.warning("%s: %s", metrics.summary(), note)
    return _page(metrics, None, None, note), note, "dropped"


def format_size(size: int) -> str:
    """``5 MiB``, ``1.5 MiB``, ``512 KiB``, ``900 bytes``."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"


_STYLE = """
body{margin:0;min-height:100vh;display:flex;flex-direction:column}
#app{position:relative;flex:1 0 70vh}
#perfwatch-request{flex:none;font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",
Helvetica,Arial,
sans-serif;background:#1f2430;color:#e6e6e6;padding:14px 22px;border-bottom:3px solid #e0533d}
#perfwatch-request h1{font-size:17px;margin:0 0 8px;color:#fff;word-break:break-all}
#perfwatch-request table{border-collapse:collapse}
#perfwatch-request th{text-align:left;color:#9aa4b5;font-weight:normal;padding:1px 16px 1px 0;
vertical-align:top;white-space:nowrap}
#perfwatch-request td{padding:1px 0;word-break:break-all;font-family:ui-monospace,Menlo,monospace}
#perfwatch-request details{margin-top:6px}
#perfwatch-request .note{color:#f0c36d;margin-top:6px}
#perfwatch-request .pw-section{margin-top:8px}
#perfwatch-request .pw-scroll{max-height:40vh;overflow:auto}
#perfwatch-request .pw-grid th{color:#9aa4b5;padding:1px 14px 1px 0}
#perfwatch-request .pw-grid td{padding:1px 14px 1px 0;word-break:normal}
#perfwatch-request td.pw-num{text-align:right;white-space:nowrap}
#perfwatch-request td.pw-sql{word-break:break-word;max-width:70vw}
#perfwatch-request td.pw-label{color:#9aa4b5;font-family:inherit}
#perfwatch-request .pw-flag{background:#e0533d;color:#fff;border-radius:3px;padding:0 4px;
font-weight:bold}
#perfwatch-request summary{cursor:pointer}
#perfwatch-request ul{margin:4px 0;padding-left:20px}
"""


def _header_html(m: PerformanceMetrics, profile: Profile | None,
                 size_note: str | None = None) -> str:
    esc = html.escape
    regression = m.kind == "regression"
    rows: list[tuple[str, str]] = []
    if m.method:
        rows.append((ROW_REQUEST, f"{m.method} {m.url or m.path}"))
    rows.append((ROW_FUNCTION if m.kind == "function" else ROW_ENDPOINT, m.name))
    if regression:
        rows.append((ROW_REGRESSION, regression_text(m)))
        rows.append((ROW_DURATION, f"{m.duration:.3f} s (recent p95)"))
        rows.append((ROW_THRESHOLD, f"{m.threshold:.3f} s (baseline p95 times the factor)"))
    else:
        rows.append((ROW_DURATION,
                     f"{m.duration:.3f} s{' so far (still running)' if m.hung else ''}"))
        rows.append((ROW_THRESHOLD, f"{m.threshold:.3f} s"))
    cpu = cpu_insight(m)
    if cpu is not None:
        rows.append((ROW_CPU, cpu.text()))
        if cpu.waiting is not None:
            rows.append((ROW_WAITING, cpu.waiting.text()))
    if m.status_code is not None:
        rows.append((ROW_STATUS, str(m.status_code)))
    if m.error:
        rows.append(("Error", m.error))
    rows.append((ROW_RECENT_SINCE if regression else ROW_STARTED,
                 m.started_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"))
    if m.trace_id:
        rows.append((ROW_TRACE, m.trace_id))
    if m.span_id:
        rows.append((ROW_SPAN, m.span_id))
    rows.append(("Host", f"{m.host} (pid {m.pid}, thread {m.thread})"))
    for line in repeats_lines(m):
        rows.append(("Repeats", line))
    table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    sections = _regression_html(m) if regression else ""
    sections += _sql_html(m)
    details = _waits_html(m)
    if m.params:
        details += _kv_details("Query parameters", m.params)
    if m.headers:
        details += _kv_details("Request headers", m.headers)
    note = ""
    if regression:
        note = f'<div class="note">{esc(regression_profile_text(m))}</div>'
    elif m.profile is None:
        note = ('<div class="note">No profile was captured (profiling engine off, or no '
                "sample taken); this report carries the request metadata only.</div>")
    if profile is not None and profile.note:
        note += f'<div class="note">{esc(profile.note)}</div>'
    if size_note:
        note += f'<div class="note">{esc(size_note)}</div>'
    title = esc(m.summary())
    return (f"<style>{_STYLE}</style>\n<header id=\"{HEADER_ID}\">"
            f"<h1>{title}</h1><table>{table}</table>{sections}{details}{note}"
            f"{_metadata_script(m)}</header>\n")


def _regression_html(m: PerformanceMetrics) -> str:
    """The regression's two windows side by side, and its other facts. Body
    cells are ``<td>`` only, so the header's reader never takes them for rows."""
    esc = html.escape
    data = m.regression or {}
    head = "".join(f'<th scope="col">{esc(title)}</th>' for _, title in WINDOW_COLUMNS)
    body = "".join(
        f'<tr><td class="pw-label">{esc(label)}</td>'
        + "".join(f'<td class="pw-num">{esc(cell)}</td>' for cell in window_cells(data.get(key)))
        + "</tr>"
        for key, label in (("baseline", "baseline"), ("recent", "recent")))
    notes = "".join(f"<li>{esc(note)}</li>" for note in regression_notes(m))
    return (f'<div class="pw-section"><table class="pw-grid"><thead><tr><th scope="col">'
            f"</th>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"{f'<ul>{notes}</ul>' if notes else ''}</div>")


def _sql_html(m: PerformanceMetrics) -> str:
    """The SQL table: every row given (the capture bounds them), slowest first
    as given; a long statement is cut, its text (itself cut at
    :data:`SQL_TOOLTIP`) in the cell's tooltip."""
    sql = sql_insight(m)
    if sql is None:
        return ""
    esc = html.escape
    rows = []
    for statement, calls, seconds in (query_row(q) for q in m.queries):
        shown = _short(statement, SQL_SHOWN)
        tip = f' title="{esc(_short(statement, SQL_TOOLTIP))}"' if shown != statement else ""
        flag = ' <span class="pw-flag">N+1?</span>' if is_n_plus_one(calls, statement) else ""
        mean = f"{seconds / calls * 1000:.2f} ms" if seconds is not None and calls else UNKNOWN
        rows.append(
            f'<tr{_SUSPECT if flag else ""}><td class="pw-sql"{tip}>{esc(shown)}'
            f'</td><td class="pw-num">{calls if calls is not None else UNKNOWN}{flag}</td>'
            f'<td class="pw-num">{_seconds_cell(seconds)}</td>'
            f'<td class="pw-num">{mean}</td></tr>')
    head = "".join(f'<th scope="col">{title}</th>'
                   for title in ("statement", "calls", "total", "mean"))
    return (f'<details class="pw-section" open><summary>SQL: {esc(sql.text())}'
            f'</summary><div class="pw-scroll"><table class="pw-grid"><thead><tr>{head}</tr>'
            f"</thead><tbody>{''.join(rows)}</tbody></table></div></details>")


def _seconds_cell(seconds: float | None) -> str:
    return format_seconds(seconds) if seconds is not None else UNKNOWN


def _waits_html(m: PerformanceMetrics) -> str:
    """The heaviest waiting lines of the profile, when it recorded any."""
    waits = [w for w in (m.profile.waits if m.profile is not None else [])
             if isinstance(w, dict)][:WAIT_ROWS]
    if not waits:
        return ""
    esc = html.escape
    rows = "".join(
        f'<tr><td class="pw-num">{_seconds_cell(_number(w.get("seconds")))}</td>'
        f'<td>{esc(wait_kind(w))}</td><td class="pw-sql">{esc(wait_where(w))}</td></tr>'
        for w in waits)
    return (f"<details><summary>Where it waited (lines in a C call, heaviest first)</summary>"
            f'<table class="pw-grid">{rows}</table></details>')


#: Version of the JSON block every report carries (``flask perfwatch reports`` reads it).
METADATA_FORMAT = 1


def _metadata_script(m: PerformanceMetrics) -> str:
    """The metrics as machine-readable JSON, safe inside a ``<script>`` block."""
    data = {"format": METADATA_FORMAT, **m.to_dict()}
    data.pop("headers", None)
    text = (json.dumps(data, default=str)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    return f'<script type="application/json" id="{METADATA_ID}">{text}</script>'



def repeats_lines(m: PerformanceMetrics) -> list[str]:
    """What dedupe and the endpoint limit held back since the previous alert."""
    lines = [suppressed_text(m)] if m.suppressed else []
    if m.endpoint_suppressed:
        lines.append(endpoint_suppressed_text(m))
    return lines


def endpoint_suppressed_text(m: PerformanceMetrics) -> str:
    """"12 more alerts of this endpoint suppressed (PERFWATCH_ENDPOINT_ALERT_LIMIT)"."""
    noun = "alert" + ("s" if m.endpoint_suppressed != 1 else "")
    return (f"{m.endpoint_suppressed} more {noun} of this endpoint suppressed (any params; "
            f"{key_name('endpoint_alert_limit')} per dedupe window)")


def suppressed_text(m: PerformanceMetrics) -> str:
    """"3 similar slow requests since 2026-11-20 14:02 UTC" (dedupe's count)."""
    noun = f"slow {m.kind}" + ("s" if m.suppressed != 1 else "")
    since = m.suppressed_since.strftime("%Y-%m-%d %H:%M UTC") if m.suppressed_since \
        else "the previous alert"
    return f"{m.suppressed} similar {noun} suppressed since {since}"


def _kv_details(title: str, items: dict[str, str] | dict[str, str | list[str]]) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(', '.join(v) if isinstance(v, list) else v)}</td></tr>"
        for k, v in items.items()
    )
    return f"<details><summary>{esc(title)}</summary><table>{rows}</table></details>"


# --- insight: CPU vs wait, SQL, trace, regression ------------------------------
#
# Shared by the page's header, the text form and the channels' facts
# (notifiers/_message.py), so a report and a chat message say the same thing in
# the same words. Every value here is shown as measured: no CPU time, no CPU
# row; no SQL, no SQL table. The text is raw: the page escapes it, each
# channel escapes it its own way.

#: Under this share of CPU in its duration, a request mostly waited: the
#: report then says on what, and where.
MOSTLY_WAITING = 0.5
#: SQL time at least this share of the time off the CPU makes the wait "database".
SQL_WAIT_SHARE = 0.5
#: A statement run at least this many times in one request is flagged ``N+1?``:
#: probably one query per row of an earlier one.
N_PLUS_ONE_CALLS = 10
#: Characters of a statement shown in the SQL table (and a message), and kept
#: at most in its tooltip: the table stays readable and the page bounded.
SQL_SHOWN, SQL_TOOLTIP = 160, 1000
#: Statements listed in the text form (the HTML table has every row given).
SQL_TEXT_ROWS = 5
#: Waiting lines listed under the header (heaviest first).
WAIT_ROWS = 5
#: A table cell whose value is not known.
UNKNOWN = "-"
_SUSPECT = ' class="pw-suspect"'
#: Characters of a waiting line or a regression's extra value shown at most.
SHORT_TEXT = 200

#: The kinds of wait, tried in order on a waiting line's code (then its
#: function): the first whose pattern matches names the wait.
WAIT_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("sleeping", re.compile(r"\bsleep", re.I)),
    ("database", re.compile(r"execute|cursor|fetch|commit", re.I)),
    ("network I/O", re.compile(r"socket|recv|send|select|poll|ssl|http|requests|urlopen|"
                               r"connect", re.I)),
    ("a lock or another thread", re.compile(
        r"acquire|\bwait|\.join\(\s*(?:\)|timeout)|(?<![a-z])_*r?lock|queue|\.get\(\s*\)|"
        r"\bevent\b|\.result\(", re.I)),
)
#: The kind of a waiting line no pattern recognises.
C_CALL = "a C call"


def format_seconds(seconds: float) -> str:
    """``0.42 s``, or ``3.1 ms`` under a tenth of a second (where two
    decimals of a second would read 0.00)."""
    return f"{seconds:.2f} s" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def _short(text: str, limit: int = SHORT_TEXT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "…"


def _number(value: Any) -> float | None:
    """A finite number, or None for anything else (bools, strings, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def wait_kind(wait: dict[str, Any]) -> str:
    """What a waiting line (an item of ``Profile.waits``) most likely waits
    for: ``"sleeping"``, ``"database"``, ``"network I/O"``, ``"a lock or
    another thread"`` or, when nothing in its code or function says,
    ``"a C call"``."""
    line = str(wait.get("line") or "")
    code = line.partition(": ")[2] if line.startswith("line ") else line
    for text in (code, str(wait.get("function") or "")):
        for kind, pattern in WAIT_KINDS:
            if text and pattern.search(text):
                return kind
    return C_CALL


def wait_where(wait: dict[str, Any]) -> str:
    """``app.py line 16: time.sleep(0.2)``: the file's name and the line."""
    path = str(wait.get("file") or "")
    name = path.replace("\\", "/").rpartition("/")[2]
    line = str(wait.get("line") or "")
    if not line and _number(wait.get("lineno")) is not None:
        line = f"line {wait['lineno']}"
    return _short(f"{name} {line}".strip())


@dataclass(frozen=True)
class WaitInsight:
    """On what a request that mostly waited most likely waited."""

    #: Seconds of the request not on the CPU.
    seconds: float
    #: One of :data:`WAIT_KINDS`' names or :data:`C_CALL`; None: unknown
    #: (no waiting line was recorded and SQL does not explain it).
    kind: str | None
    #: The heaviest waiting line of that kind: ``app.py line 16: time.sleep(0.2)``.
    where: str | None
    #: Seconds the profile saw at that line.
    where_seconds: float | None
    #: Seconds in SQL, when SQL is what it waited for.
    sql_seconds: float | None

    def text(self) -> str:
        """``sleeping at app.py line 16: time.sleep(0.2) (0.40 s there; 0.43 s
        off the CPU in all)`` (the value of the "Mostly waiting" row)."""
        total = f"{self.seconds:.2f} s off the CPU in all"
        if self.kind is None:
            return f"{total}; where is unknown (no waiting line was recorded)"
        text = self.kind
        if self.where:
            text += f" at {self.where}"
        there = [f"{self.where_seconds:.2f} s there"] if self.where_seconds is not None else []
        if self.sql_seconds is not None:
            there.append(f"{self.sql_seconds:.2f} s in SQL")
        return f"{text} ({'; '.join([*there, total])})"


@dataclass(frozen=True)
class CpuInsight:
    """CPU time against the duration it was measured over."""

    cpu: float
    duration: float
    #: Set when the CPU was under :data:`MOSTLY_WAITING` of the duration.
    waiting: WaitInsight | None

    @property
    def share(self) -> float | None:
        return self.cpu / self.duration if self.duration > 0 else None

    def text(self) -> str:
        """``0.36 s of 0.49 s (73 %)``."""
        share = self.share
        pct = f" ({share * 100:.0f} %)" if share is not None else ""
        return f"{self.cpu:.2f} s of {self.duration:.2f} s{pct}"


def cpu_insight(m: PerformanceMetrics) -> CpuInsight | None:
    """The CPU row's facts, or None when the CPU time was not measured. For
    a regression, the CPU time is the profiled (slowest recent) request's,
    so it is set against that request's duration, not the p95."""
    cpu = _number(m.cpu_time)
    if cpu is None:
        return None
    duration: float | None = m.duration
    if m.kind == "regression":
        duration = slowest_profiled(m)
        if duration is None and m.profile is not None:
            duration = _number(m.profile.duration)
        if duration is None:
            return None
    assert duration is not None
    waiting = None
    if duration > 0 and cpu < MOSTLY_WAITING * duration:
        waiting = _wait_insight(m, max(duration - cpu, 0.0))
    return CpuInsight(cpu=cpu, duration=duration, waiting=waiting)


def _wait_insight(m: PerformanceMetrics, seconds: float) -> WaitInsight:
    waits = [w for w in (m.profile.waits if m.profile is not None else [])
             if isinstance(w, dict)]
    sql = sql_insight(m)
    if sql is not None and sql.seconds > 0 and sql.seconds >= SQL_WAIT_SHARE * seconds:
        line = next((w for w in waits if wait_kind(w) == "database"), None)
        return WaitInsight(seconds, "database", wait_where(line) if line else None,
                           _number(line.get("seconds")) if line else None, sql.seconds)
    if not waits:
        return WaitInsight(seconds, None, None, None, None)
    top = waits[0]
    return WaitInsight(seconds, wait_kind(top), wait_where(top) or None,
                       _number(top.get("seconds")), None)


def query_row(query: Any) -> tuple[str, int | None, float | None]:
    """``(statement, calls, total seconds)`` of one item of ``metrics.queries``,
    whatever it holds (a value of the wrong type reads as unknown)."""
    if not isinstance(query, dict):
        return str(query), None, None
    calls = query.get("calls")
    calls = calls if isinstance(calls, int) and not isinstance(calls, bool) else None
    return str(query.get("statement", "")), calls, _number(query.get("duration"))


def is_n_plus_one(calls: int | None, statement: str = "") -> bool:
    """Run :data:`N_PLUS_ONE_CALLS` times or more in one request (not the
    row that sums the statements the capture did not keep)."""
    return calls is not None and calls >= N_PLUS_ONE_CALLS and statement != OVERFLOW_STATEMENT


@dataclass(frozen=True)
class SqlInsight:
    """What ``metrics.queries`` adds up to."""

    statements: int
    #: More distinct statements ran than the capture keeps (see
    #: :data:`~flask_perfwatch._sql.OVERFLOW_STATEMENT`).
    more: bool
    calls: int
    seconds: float
    #: Statements flagged ``N+1?``.
    suspects: int

    def text(self) -> str:
        """``12 statements, 87 calls, 0.42 s; 1 possible N+1``."""
        text = (f"{_plural(self.statements, 'statement')}{'+' if self.more else ''}, "
                f"{_plural(self.calls, 'call')}, "
                f"{format_seconds(self.seconds)}")
        if self.suspects:
            text += f"; {self.suspects} possible N+1"
        return text


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def sql_insight(m: PerformanceMetrics) -> SqlInsight | None:
    """The SQL summary, or None when no SQL was recorded."""
    if not m.queries:
        return None
    rows = [query_row(q) for q in m.queries]
    return SqlInsight(statements=sum(s != OVERFLOW_STATEMENT for s, _, _ in rows),
                      more=any(s == OVERFLOW_STATEMENT for s, _, _ in rows),
                      calls=sum(c or 0 for _, c, _ in rows),
                      seconds=sum(d or 0.0 for _, _, d in rows),
                      suspects=sum(is_n_plus_one(c, s) for s, c, _ in rows))


#: The columns of a regression's comparison: (key, heading).
WINDOW_COLUMNS = (("count", "requests"), ("p50", "p50"), ("p95", "p95"), ("p99", "p99"),
                  ("max", "max"), ("slow", "slow"))
#: Keys of ``metrics.regression`` shown in their own words; any other is
#: listed as it is.
_REGRESSION_KNOWN = {"factor", "baseline", "recent", "slowest_profiled", "min_delta"}


def window_cells(window: Any) -> list[str]:
    """A regression window's values, in :data:`WINDOW_COLUMNS` order
    (``UNKNOWN`` for a missing one)."""
    data = window if isinstance(window, dict) else {}
    cells = []
    for key, _ in WINDOW_COLUMNS:
        value = _number(data.get(key))
        if value is None:
            cells.append(UNKNOWN)
        elif key in ("count", "slow"):
            cells.append(f"{value:,.0f}")
        else:
            cells.append(f"{value:.3f} s")
    return cells


def window_text(window: Any) -> str:
    """``p95 1.240 s, p50 0.210 s, p99 1.900 s, max 2.100 s; 100 requests, 12 slow``."""
    cells = dict(zip((k for k, _ in WINDOW_COLUMNS), window_cells(window), strict=True))
    return (f"p95 {cells['p95']}, p50 {cells['p50']}, p99 {cells['p99']}, max {cells['max']}; "
            f"{cells['count']} requests, {cells['slow']} slow")


def baseline_p95(m: PerformanceMetrics) -> float | None:
    """A regression's baseline p95: as recorded, else the threshold over the factor."""
    data = m.regression or {}
    baseline = data.get("baseline")
    p95 = _number(baseline.get("p95")) if isinstance(baseline, dict) else None
    if p95 is None:
        factor = _number(data.get("factor"))
        p95 = m.threshold / factor if factor else None
    return p95


def regression_text(m: PerformanceMetrics) -> str:
    """``recent p95 1.240 s is 4.1x the baseline p95 0.300 s (alert factor 2)``."""
    was = baseline_p95(m)
    text = f"recent p95 {m.duration:.3f} s"
    if was is not None and was > 0:
        text += f" is {m.duration / was:.1f}x the baseline p95 {was:.3f} s"
    factor = _number((m.regression or {}).get("factor"))
    if factor is not None:
        text += f" (alert factor {factor:g})"
    return text


def regression_notes(m: PerformanceMetrics) -> list[str]:
    """The regression's other facts: its minimum rise, and any key of
    ``metrics.regression`` this version does not know, as it is (cut)."""
    data = m.regression or {}
    notes = []
    delta = _number(data.get("min_delta"))
    if delta is not None:
        notes.append(f"an alert also needs the p95 to rise by at least {delta * 1000:g} ms")
    for key, value in data.items():
        if key not in _REGRESSION_KNOWN:
            shown = json.dumps(value, default=str) if not isinstance(value, str) else value
            notes.append(_short(f"{key}: {shown}"))
    return notes


def slowest_profiled(m: PerformanceMetrics) -> float | None:
    """The duration of the request whose profile a regression report carries."""
    return _number((m.regression or {}).get("slowest_profiled"))


def regression_profile_text(m: PerformanceMetrics) -> str:
    """What the profile of a regression report is of."""
    if m.profile is None:
        return ("No profile of a recent slow request was kept (none was slow enough to be "
                "profiled, or it is older than the recent window): this report carries the "
                "endpoint's latency only.")
    slowest = slowest_profiled(m)
    took = f" ({slowest:.3f} s)" if slowest is not None else ""
    return f"The profile below is of the slowest recent request that was profiled{took}."


def insight_lines(m: PerformanceMetrics) -> list[str]:
    """The insight as lines of the text form (and the e-mail's body)."""
    lines = []
    if m.kind == "regression":
        lines.append(f"Regression: {regression_text(m)}")
        lines.append(f"  recent:   {window_text((m.regression or {}).get('recent'))}")
        lines.append(f"  baseline: {window_text((m.regression or {}).get('baseline'))}")
        lines += [f"  {note}" for note in regression_notes(m)]
        lines.append(regression_profile_text(m))
    cpu = cpu_insight(m)
    if cpu is not None:
        lines.append(f"CPU {cpu.text()}")
        if cpu.waiting is not None:
            lines.append(f"Mostly waiting: {cpu.waiting.text()}")
    if m.trace_id:
        lines.append(f"Trace {m.trace_id}" + (f" (span {m.span_id})" if m.span_id else ""))
    sql = sql_insight(m)
    if sql is not None:
        lines.append(f"SQL: {sql.text()}")
        for statement, calls, seconds in (query_row(q) for q in m.queries[:SQL_TEXT_ROWS]):
            took = format_seconds(seconds) if seconds is not None else "?"
            flag = "  N+1?" if is_n_plus_one(calls, statement) else ""
            lines.append(f"  {took:>9} {calls if calls is not None else '?':>5} x  "
                         f"{_short(statement, SQL_SHOWN)}{flag}")
        if len(m.queries) > SQL_TEXT_ROWS:
            lines.append(f"  ... {len(m.queries) - SQL_TEXT_ROWS} more in the report")
    return lines


def _standalone_page(m: PerformanceMetrics, header: str) -> str:
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(m.summary())}</title>\n</head>\n<body>\n{header}</body>\n</html>\n"
    )


# --- reading reports back (flask perfwatch reports) ----------------------------
#
# The reader sits beside the writer above on purpose: it finds the blocks by the
# same HEADER_ID / METADATA_ID constants and the header rows by the same labels
# (ROW_* above), so renaming one renames both. Report folders may be shared and
# their files planted, so every file is read defensively: regular files only,
# never through a symlink, never blocking, size-capped; a bad file is skipped.

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
        lines = [f"note: skipped {printable(s.path.name)}: {printable(s.reason)}"
                 for s in self.skipped]
        if self.skipped_count > len(self.skipped):
            lines.append(f"note: ... and {self.skipped_count - len(self.skipped)} more "
                         "file(s) skipped")
        if self.not_examined:
            lines.append(f"note: {self.not_examined} older report file(s) not examined: "
                         f"only the {_MAX_EXAMINED} newest are read")
        if self.scan_stopped:
            lines.append(f"note: stopped after {_MAX_DIR_ENTRIES} directory entries; "
                         f"the rest of {printable(self.directory)} was not looked at")
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
    if ROW_ENDPOINT in rows:
        info.kind = "regression" if ROW_REGRESSION in rows else "request"
        info.endpoint = rows[ROW_ENDPOINT]
    elif ROW_FUNCTION in rows:
        info.kind, info.endpoint = "function", rows[ROW_FUNCTION]
    else:
        return False
    method, _, url = rows.get(ROW_REQUEST, "").partition(" ")
    if method and url:
        info.method, info.url = method, url
    info.duration = _seconds(rows.get(ROW_DURATION))
    info.hung = "still running" in rows.get(ROW_DURATION, "")
    info.threshold = _seconds(rows.get(ROW_THRESHOLD))
    status = rows.get(ROW_STATUS, "")
    # isdigit() is also true of "²", which int() refuses: a ValueError, and the
    # file (not written by us) is skipped.
    info.status_code = int(status) if status.isdigit() else None
    info.started_at = _parse_started(rows.get(ROW_STARTED) or rows.get(ROW_RECENT_SINCE)) \
        or info.started_at
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
