"""Make ``docs/_static/report.png``: a screenshot of a real report.

Runs one slow request (``/forecast``, CPU-bound) through the example app with
flask_perfwatch, then has headless Chromium load the report it wrote and take
a 1280x900 screenshot::

    python docs/make_screenshot.py [--output docs/_static/report.png]

Needs Chromium (``apt-get install chromium``) and the package installed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent


def make_report(directory: Path) -> Path:
    """One real slow request through the example app; returns its report."""
    sys.path.insert(0, str(REPO))
    from example_app import create_app, perfwatch

    app = create_app(PERFWATCH_REPORT_DIR=str(directory), PERFWATCH_THRESHOLD=0.1,
                     PERFWATCH_PROFILER="pyinstrument")
    response = app.test_client().get("/forecast?count=3000&region=emea&api_key=s3cret")
    if response.status_code != 200:
        raise SystemExit(f"/forecast answered {response.status_code}")
    if not perfwatch.flush(30, app):
        raise SystemExit("the report was not written within 30 s")
    reports = sorted(directory.glob("perfwatch-*.html"))
    if len(reports) != 1:
        raise SystemExit(f"expected one report in {directory}, found {len(reports)}")
    return reports[0]


def screenshot(report: Path, output: Path, profile_dir: Path) -> None:
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
        "--window-size=1280,900", f"--screenshot={output}", report.as_uri(),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 or not output.is_file():
        raise SystemExit(f"chromium failed ({done.returncode}):\n{done.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DOCS / "_static" / "report.png")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="perfwatch-screenshot-") as tmp:
        report = make_report(Path(tmp) / "reports")
        screenshot(report, args.output.resolve(), Path(tmp) / "chromium-profile")
    sys.stdout.write(f"wrote {args.output}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
