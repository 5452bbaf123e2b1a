"""The report of one alert, rendered once and shared by every notifier."""

from __future__ import annotations

import html
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .metrics import PerformanceMetrics
from .reportdir import ReportFolder, encode, ensure_dir, write_atomic

if TYPE_CHECKING:
    from .profiling.base import Profile

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


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
    #: notifiers deliver on threads of their own: one copy on disk, not one each
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

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
    if max_bytes > 0 and profile is not None and profile_html is not None \
            and len(encode(page)) > max_bytes:
        page, size_note = _fit(metrics, profile, max_bytes)
    text = metrics.summary()
    for line in repeats_lines(metrics):
        text += "\n" + line
    if profile is not None and profile.note:
        text += "\n" + profile.note
    if size_note:
        text += "\n" + size_note
    if profile_text:
        text += "\n\n" + profile_text
    return Report(html=page, text=text, filename=report_filename(metrics))


def _page(metrics: PerformanceMetrics, profile: Profile | None, profile_html: str | None,
          size_note: str | None = None) -> str:
    header = _header_html(metrics, profile, size_note)
    if profile_html is not None and "<body>" in profile_html:
        return profile_html.replace("<body>", "<body>\n" + header, 1)
    return _standalone_page(metrics, header)


def _fit(metrics: PerformanceMetrics, profile: Profile, max_bytes: int) -> tuple[str, str]:
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
            return page, note
    note = (f"The profile ({profile.sample_count} samples) was too large for a report under "
            f"{cap}, even thinned, and was dropped; this report carries the request metadata "
            "only.")
    logger.warning("%s: %s", metrics.summary(), note)
    return _page(metrics, None, None, note), note


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
"""


def _header_html(m: PerformanceMetrics, profile: Profile | None,
                 size_note: str | None = None) -> str:
    esc = html.escape
    rows: list[tuple[str, str]] = []
    if m.method:
        rows.append(("Request", f"{m.method} {m.url or m.path}"))
    rows.append(("Endpoint" if m.kind == "request" else "Function", m.name))
    rows.append(("Duration", f"{m.duration:.3f} s{' so far (still running)' if m.hung else ''}"))
    rows.append(("Threshold", f"{m.threshold:.3f} s"))
    if m.status_code is not None:
        rows.append(("Status", str(m.status_code)))
    if m.error:
        rows.append(("Error", m.error))
    rows.append(("Started", m.started_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"))
    rows.append(("Host", f"{m.host} (pid {m.pid}, thread {m.thread})"))
    for line in repeats_lines(m):
        rows.append(("Repeats", line))
    table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    details = ""
    if m.params:
        details += _kv_details("Query parameters", m.params)
    if m.headers:
        details += _kv_details("Request headers", m.headers)
    note = ""
    if m.profile is None:
        note = ('<div class="note">No profile was captured (profiling engine off, or no '
                "sample taken); this report carries the request metadata only.</div>")
    elif profile is not None and profile.note:
        note = f'<div class="note">{esc(profile.note)}</div>'
    if size_note:
        note += f'<div class="note">{esc(size_note)}</div>'
    title = esc(m.summary())
    return (f"<style>{_STYLE}</style>\n<header id=\"perfwatch-request\">"
            f"<h1>{title}</h1><table>{table}</table>{details}{note}"
            f"{_metadata_script(m)}</header>\n")


#: Version of the JSON block every report carries (``flask perfwatch reports`` reads it).
METADATA_FORMAT = 1


def _metadata_script(m: PerformanceMetrics) -> str:
    """The metrics as machine-readable JSON, safe inside a ``<script>`` block."""
    data = {"format": METADATA_FORMAT, **m.to_dict()}
    data.pop("headers", None)
    text = (json.dumps(data, default=str)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    return f'<script type="application/json" id="perfwatch-metadata">{text}</script>'



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
            "PERFWATCH_ENDPOINT_ALERT_LIMIT per dedupe window)")


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


def _standalone_page(m: PerformanceMetrics, header: str) -> str:
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(m.summary())}</title>\n</head>\n<body>\n{header}</body>\n</html>\n"
    )
