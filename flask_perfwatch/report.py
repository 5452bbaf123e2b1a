"""The report of one alert, rendered once and shared by every notifier."""

from __future__ import annotations

import html
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .metrics import PerformanceMetrics

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

    def write(self, directory: Path) -> Path:
        """Write :attr:`html` into ``directory`` under a unique name (mode 0600)
        and remember it as :attr:`path`. Returns the path."""
        if self.path is not None and self.path.parent == directory:
            return self.path
        directory.mkdir(parents=True, exist_ok=True)
        stem, suffix = os.path.splitext(self.filename)
        for attempt in range(100):
            name = self.filename if attempt == 0 else f"{stem}-{attempt}{suffix}"
            path = directory / name
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.html)
            self.path = path
            return path
        raise FileExistsError(f"no free report name for {self.filename} in {directory}")


def report_filename(metrics: PerformanceMetrics) -> str:
    """``perfwatch-20261128T085210Z-GET-orders.export-3fa2b1c4.html``: UTC time,
    method and endpoint, filesystem-safe and short."""
    stamp = metrics.started_at.strftime("%Y%m%dT%H%M%SZ")
    parts = [part for part in (metrics.method, metrics.name) if part]
    label = _UNSAFE.sub("_", "-".join(parts)).replace("..", "_").strip("._-")[:80]
    label = label or metrics.kind
    return f"perfwatch-{stamp}-{label}-{metrics.id[:8]}.html"


def render_report(metrics: PerformanceMetrics) -> Report:
    """Render the HTML and text once. Runs on the delivery thread."""
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
    header = _header_html(metrics)
    if profile_html is not None and "<body>" in profile_html:
        page = profile_html.replace("<body>", "<body>\n" + header, 1)
    else:
        page = _standalone_page(metrics, header)
    text = metrics.summary()
    if profile is not None and profile.note:
        text += "\n" + profile.note
    if profile_text:
        text += "\n\n" + profile_text
    return Report(html=page, text=text, filename=report_filename(metrics))


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


def _header_html(m: PerformanceMetrics) -> str:
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
    if m.suppressed:
        rows.append(("Repeats", suppressed_text(m)))
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
    elif m.profile.note:
        note = f'<div class="note">{esc(m.profile.note)}</div>'
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
