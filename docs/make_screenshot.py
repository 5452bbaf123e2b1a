"""Make the report screenshots in ``docs/_static/``: real reports of real
requests through the example app, loaded in headless Chromium (1280 px wide).

``report.png``
    one CPU-bound request (``/forecast``), profiled by pyinstrument.
``reading-a-report.png``
    one ``/orders`` request (SQL through SQLAlchemy, one query per order, then
    a slow payment API), with the default sampler engine and the request
    traced by OpenTelemetry: the header shows the CPU and waiting rows, the
    trace and the SQL table (docs/reading-a-report.rst). The script checks
    that each is there before taking the picture.

::

    python docs/make_screenshot.py [report] [reading-a-report]   # default: both

Needs Chromium (``apt-get install chromium``) and the package installed with
its test dependencies (SQLAlchemy, the OpenTelemetry SDK and its Flask
instrumentation): ``./dev check`` installs them.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
STATIC = DOCS / "_static"


def run_request(directory: Path, url: str, *, traced: bool = False, **config: Any) -> Path:
    """One real slow request through the example app; returns its report."""
    sys.path.insert(0, str(REPO))
    from example_app import create_app, perfwatch

    app = create_app(PERFWATCH_REPORT_DIR=str(directory), **config)
    if traced:
        from opentelemetry import trace
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        from opentelemetry.sdk.trace import TracerProvider

        trace.set_tracer_provider(TracerProvider())  # records spans; exports none
        FlaskInstrumentor().instrument_app(app)
    response = app.test_client().get(url)
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}")
    if not perfwatch.flush(30, app):
        raise SystemExit("the report was not written within 30 s")
    reports = sorted(directory.glob("perfwatch-*.html"))
    if len(reports) != 1:
        raise SystemExit(f"expected one report in {directory}, found {len(reports)}")
    return reports[0]


def report_page(directory: Path) -> Path:
    return run_request(directory, "/forecast?count=3000&region=emea&api_key=s3cret",
                       PERFWATCH_THRESHOLD=0.1, PERFWATCH_PROFILER="pyinstrument")


#: What the "Reading a report" screenshot must show: marks in the header's
#: markup, and in pyinstrument's page below it.
HEADER_MARKS = {
    "the CPU row": "<th>CPU</th>",
    "the waiting row": "<th>Mostly waiting</th><td>sleeping at orders.py line",
    "the trace row": "<th>Trace</th>",
    "the SQL table": "<summary>SQL:",
    "an N+1 flag": '<span class="pw-flag">N+1?</span>',
}
PROFILE_MARKS = {"the waiting line in the call tree": ": time.sleep(0.6)"}


def insight_page(directory: Path) -> Path:
    try:
        import opentelemetry.sdk  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"{exc.name} is missing: install the test dependencies") from None
    report = run_request(directory, "/orders?customer=7", traced=True,
                         PERFWATCH_THRESHOLD=0.3, PERFWATCH_PROFILER="sampler")
    header, _, profile = report.read_text().partition("</header>")
    missing = [what for what, mark in HEADER_MARKS.items() if mark not in header]
    missing += [what for what, mark in PROFILE_MARKS.items() if mark not in profile]
    if missing:
        raise SystemExit(f"the report of /orders lacks {', '.join(missing)}: {report}")
    return report


#: name -> (how to make the report, window height)
SCREENSHOTS = {
    "report": (report_page, 900),
    "reading-a-report": (insight_page, 760),
}


def screenshot(report: Path, output: Path, profile_dir: Path, height: int) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Chromium is not installed (apt-get install chromium)")
    output.parent.mkdir(parents=True, exist_ok=True)
    args = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-extensions",
        # no traffic beyond the file: pyinstrument's page asks Google Fonts for its
        # fonts, and Chromium calls home even with the flags above
        "--host-resolver-rules=MAP * ~NOTFOUND", "--hide-scrollbars",
        f"--user-data-dir={profile_dir}", "--virtual-time-budget=5000",
        f"--window-size=1280,{height}", f"--screenshot={output}", report.as_uri(),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 or not output.is_file():
        raise SystemExit(f"chromium failed ({done.returncode}):\n{done.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"which screenshots: {', '.join(SCREENSHOTS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(SCREENSHOTS))
    if unknown:
        parser.error(f"no screenshot named {', '.join(unknown)}")
    for name in args.names or list(SCREENSHOTS):
        make, height = SCREENSHOTS[name]
        output = STATIC / f"{name}.png"
        with tempfile.TemporaryDirectory(prefix="perfwatch-screenshot-") as tmp:
            report = make(Path(tmp) / "reports")
            screenshot(report, output, Path(tmp) / "chromium-profile", height)
        sys.stdout.write(f"wrote {output}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
