"""The HTML report in a real browser: headless Chromium loads a report made by
a real slow request, runs pyinstrument's scripts, and the resulting DOM must
show our request header and pyinstrument's rendered call tree.

Skipped where Chromium is not installed; under CI (``CI`` set) a missing
Chromium is a failure, so the check cannot silently vanish there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import reports_in
from flask import Flask

from flask_perfwatch import PerfWatch

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser")

#: A pyinstrument frame as its JavaScript app renders it in the call tree.
RENDERED_FRAME = re.compile(r'<div class="name\b[^"]*">(?P<name>[^<]+)</div>')


def find_chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    reason = ("Chromium is not installed (apt-get install chromium); the real-browser "
              "check of the HTML report needs it")
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, and under CI it must run.")
    pytest.skip(reason)


def chromium_args(chromium: str, profile_dir: Path) -> list[str]:
    """Headless, no network beyond the file, no first-run/background noise."""
    return [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-extensions",
        # no traffic beyond the file: pyinstrument's page asks Google Fonts for its
        # fonts, and Chromium calls home even with the flags above
        "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile_dir}",
        "--virtual-time-budget=5000",
    ]


def dump_dom(report: Path, tmp_path: Path) -> str:
    """The DOM of ``report`` after its scripts ran, as Chromium serialises it."""
    args = [*chromium_args(find_chromium(), tmp_path / "chromium-profile"),
            "--window-size=1280,900", "--dump-dom", report.resolve().as_uri()]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"chromium exited with {done.returncode}:\n{done.stderr}"
    return done.stdout


def slow_report(make_app: Callable[..., tuple[Flask, PerfWatch]], report_dir: Path) -> Path:
    """The report of one real slow request (``/cpu`` burns the CPU in ``burn``)."""
    find_chromium()  # skip (or fail under CI) before doing any work
    app, perfwatch = make_app(profiler="pyinstrument")
    app.test_client().get("/cpu?shelf=<b>tools</b>&token=s3cret")
    assert perfwatch.flush(20, app), "the report was not written within 20 s"
    [report] = reports_in(report_dir)
    return report


def test_the_report_renders_in_chromium(make_app: Callable[..., tuple[Flask, PerfWatch]],
                                        report_dir: Path, tmp_path: Path) -> None:
    report = slow_report(make_app, report_dir)
    source = report.read_text(encoding="utf-8")

    dom = dump_dom(report, tmp_path)

    # our header block, with the method and the (redacted, escaped) URL
    header = re.search(r'<header id="perfwatch-request">(.*?)</header>', dom, re.S)
    assert header is not None, dom[:2000]
    assert "GET http://localhost/cpu?shelf=%3Cb%3Etools%3C/b%3E&amp;token=[REDACTED]" \
        in header.group(1)
    assert "<b>" not in header.group(1)
    assert "s3cret" not in dom

    # pyinstrument's app ran: the call tree is rendered, with the slow function
    frames = [m.group("name") for m in RENDERED_FRAME.finditer(dom)]
    assert "burn" in frames, f"rendered frames: {frames}"
    assert "cpu" in frames, f"rendered frames: {frames}"
    assert not RENDERED_FRAME.search(source), "the tree must come from the page's scripts"
    # the text shown (pyinstrument before 5.1.3 puts <wbr> line-break hints after slashes)
    description = re.search(r'class="target-description[^"]*"[^>]*>((?:[^<]|<wbr>)*)<', dom)
    assert description is not None
    assert description.group(1).replace("<wbr>", "") == "GET /cpu"


#: Appended to a copy of the report: once the page's own scripts ran, asks the
#: browser's layout what a reader would see at the header and at the slow
#: frame, and writes the answer into the DOM.
PROBE = """
<script>
window.addEventListener("load", () => setTimeout(() => {
  const seen = (el) => {
    if (!el) return false;
    const r = el.getBoundingClientRect();
    const hit = document.elementFromPoint(r.left + Math.min(20, r.width / 2),
                                          r.top + r.height / 2);
    return r.height > 0 && hit !== null && (el === hit || el.contains(hit));
  };
  const header = document.getElementById("perfwatch-request");
  const frame = [...document.querySelectorAll(".name")].find((e) => e.textContent === "burn");
  const out = document.createElement("pre");
  out.id = "perfwatch-probe";
  out.textContent = JSON.stringify({header: seen(header), frame: seen(frame)});
  document.body.appendChild(out);
}, 200));
</script>
"""


def test_the_header_and_the_tree_are_both_visible(
        make_app: Callable[..., tuple[Flask, PerfWatch]], report_dir: Path,
        tmp_path: Path) -> None:
    report = slow_report(make_app, report_dir)
    head, body_end, tail = report.read_text(encoding="utf-8").rpartition("</body>")
    assert body_end, "the report has no </body>"
    probed = tmp_path / "probed.html"
    probed.write_text(head + PROBE + body_end + tail, encoding="utf-8")

    dom = dump_dom(probed, tmp_path)

    found = re.search(r'<pre id="perfwatch-probe">([^<]*)</pre>', dom)
    assert found is not None, "the probe did not run"
    assert json.loads(found.group(1)) == {"header": True, "frame": True}
