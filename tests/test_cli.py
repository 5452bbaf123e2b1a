"""``flask perfwatch check / test-alert / reports`` through Flask's CLI runner,
against real targets: report directories, failing notifiers, the Mattermost
stand-in, a sqlite store and a closed redis port; plus the real ``flask``
executable finding the command through its entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import SLOW, THRESHOLD, build_app, reports_in
from flask import Flask
from notifiers_for_tests import HangingNotifier

from flask_perfwatch import PerfWatch
from flask_perfwatch.cli import perfwatch, read_report

REPO = Path(__file__).resolve().parent.parent
MakeApp = Callable[..., tuple[Flask, PerfWatch]]


def run(app: Flask, *args: str) -> Result:
    """``flask perfwatch ARGS`` for ``app``; the exception is kept, not raised."""
    return app.test_cli_runner().invoke(perfwatch, list(args))


def lines_with(result: Result, text: str) -> list[str]:
    return [line.strip() for line in result.output.splitlines() if text in line]


def status_line(result: Result, label: str) -> str:
    """The ``  label  OK|FAILED  detail`` row of a notifier or the store."""
    found = [line for line in (row.split() for row in result.output.splitlines())
             if line[:1] == [label] and len(line) >= 2 and line[1] in ("OK", "FAILED")]
    assert len(found) == 1, result.output
    return " ".join(found[0])


# --- check ----------------------------------------------------------------------


def test_check_shows_every_key_with_its_source_and_passes(make_app: MakeApp,
                                                          report_dir: Path) -> None:
    app, _ = make_app(dedup_window="2h")
    result = run(app, "check")
    assert result.exit_code == 0, result.output
    assert "on app 'testapp'" in result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()
            if line.startswith("  PERFWATCH_")}
    from flask_perfwatch.config import config_fields, key_name

    assert set(rows) == {key_name(f.name) for f in config_fields()}
    assert rows["PERFWATCH_THRESHOLD"] == ["keyword", "argument", f"{THRESHOLD:g}"]
    assert rows["PERFWATCH_DEDUP_WINDOW"] == ["keyword", "argument", "7200"]
    assert rows["PERFWATCH_ENABLED"] == ["default", "true"]
    assert rows["PERFWATCH_MATTERMOST_URL"] == ["default", "(not", "set)"]
    assert "Validation: OK" in result.output
    assert status_line(result, "local") == f"local OK writes reports to {report_dir}"
    assert status_line(result, "memory").startswith("memory OK memory://")
    assert result.output.rstrip().endswith("OK: flask_perfwatch is ready.")


def test_check_shows_the_monitors_own_stats(make_app: MakeApp) -> None:
    app, _ = make_app()
    client = app.test_client()
    for _ in range(3):
        assert client.get("/fast").status_code == 200
    result = run(app, "check")
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("  requests ")]
    assert line.startswith("  requests 3, slow 0, hung 0, alerts 0, alerts_sent 0")
    assert "overhead_per_request_us" in line


def test_check_reads_app_config_and_environment_sources(
        make_app: MakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERFWATCH_QUEUE_SIZE", "7")
    app = build_app()
    app.config["PERFWATCH_IGNORE"] = ["health", "/static/*"]
    app, _ = make_app(app=app)
    result = run(app, "check")
    assert result.exit_code == 0, result.output
    [queue] = lines_with(result, "PERFWATCH_QUEUE_SIZE")
    assert queue.split() == ["PERFWATCH_QUEUE_SIZE", "environment", "7"]
    [ignore] = lines_with(result, "PERFWATCH_IGNORE")
    assert ignore.split(None, 2) == ["PERFWATCH_IGNORE", "app.config", "health, /static/*"]


def test_check_masks_secrets_and_warns_about_unused_mattermost_settings(
        make_app: MakeApp) -> None:
    app, _ = make_app(mattermost_token="tok-s3cret-value", store="memory://")
    result = run(app, "check")
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    assert lines_with(result, "PERFWATCH_MATTERMOST_TOKEN")[0].endswith("[REDACTED]")
    assert ("warning: PERFWATCH_MATTERMOST_TOKEN is set (from keyword argument) but "
            "'mattermost' is not in PERFWATCH_NOTIFIERS") in result.output


def test_check_says_when_the_profiler_cannot_sample_here(make_app: MakeApp,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a free-threaded CPython (simulated: none is installed here) the
    sampler only times requests; check says so, and still passes."""
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    app, _ = make_app()
    result = run(app, "check")
    assert result.exit_code == 0, result.output
    [warning] = lines_with(result, "warning: profiler 'sampler'")
    assert "free-threaded CPython" in warning
    assert "PERFWATCH_PROFILER=pyinstrument" in warning
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: True, raising=False)
    app, _ = make_app()
    assert not lines_with(run(app, "check"), "warning: profiler")


def test_check_fails_when_the_report_dir_became_unusable(make_app: MakeApp,
                                                         report_dir: Path) -> None:
    app, _ = make_app()
    shutil.rmtree(report_dir)
    report_dir.write_text("a file where the report directory was\n")  # even root cannot
    result = run(app, "check")
    assert result.exit_code == 1, result.output
    assert status_line(result, "local") == \
        f"local FAILED OSError: cannot write to {report_dir}: Not a directory"
    assert "FAILED: 1 check(s) failed." in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_check_fails_for_a_read_only_report_dir(make_app: MakeApp, report_dir: Path) -> None:
    app, _ = make_app()
    report_dir.chmod(0o500)
    try:
        result = run(app, "check")
    finally:
        report_dir.chmod(0o700)
    assert result.exit_code == 1, result.output
    assert "local FAILED" in status_line(result, "local")


def test_check_reaches_a_sqlite_store(make_app: MakeApp, tmp_path: Path) -> None:
    app, _ = make_app(store=f"sqlite:///{tmp_path}/dedupe.db", store_prefix="shop")
    result = run(app, "check")
    assert result.exit_code == 0, result.output
    assert status_line(result, "sqlite") == \
        f"sqlite OK sqlite:///{tmp_path}/dedupe.db (0 entries for prefix 'shop')"


def test_check_fails_for_an_unreachable_redis_and_hides_its_password(
        make_app: MakeApp) -> None:
    pytest.importorskip("redis")
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app, _ = make_app(store=f"redis://:hunter2pw@127.0.0.1:{port}/0")
    result = run(app, "check")
    assert result.exit_code == 1, result.output
    assert "hunter2pw" not in result.output
    assert f"redis://:[REDACTED]@127.0.0.1:{port}/0" in result.output
    line = status_line(result, "redis")
    assert line.startswith("redis FAILED ConnectionError"), line


def _invoke_with_factory(factory: Callable[[], Flask], *args: str) -> Result:
    from flask.cli import ScriptInfo

    return CliRunner().invoke(perfwatch, list(args), obj=ScriptInfo(create_app=factory))


@pytest.mark.parametrize("command", ["check", "test-alert", "reports"])
def test_a_config_error_is_reported_without_a_traceback(command: str, tmp_path: Path) -> None:
    def create_app() -> Flask:
        app = build_app()
        PerfWatch(app, threshold="fast", report_dir=str(tmp_path))
        return app

    result = _invoke_with_factory(create_app, command)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "PerfWatch could not be set up, so the app did not load" in result.output
    assert "PERFWATCH_THRESHOLD='fast' (from keyword argument): expected " in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["check", "test-alert", "reports"])
def test_an_app_without_perfwatch_gets_a_clear_message(command: str) -> None:
    app = Flask("plain")
    result = run(app, command)
    assert result.exit_code == 1, result.output
    assert "Error: PerfWatch is not set up on app 'plain'" in result.output
    assert "PerfWatch(app)" in result.output


# --- test-alert -------------------------------------------------------------------


def test_test_alert_writes_a_real_report_every_time(make_app: MakeApp,
                                                    report_dir: Path) -> None:
    app, _ = make_app()
    first = run(app, "test-alert")
    assert first.exit_code == 0, first.output
    second = run(app, "test-alert")  # dedupe would swallow it: a test skips dedupe
    assert second.exit_code == 0, second.output
    reports = reports_in(report_dir)
    assert len(reports) == 2
    line = status_line(first, "local")
    written = Path(line.removeprefix("local OK report written to "))
    assert written in reports
    html = written.read_text(encoding="utf-8")
    assert 'id="perfwatch-request"' in html
    assert "This is a test alert sent by `flask perfwatch test-alert`" in html
    # a real pyinstrument profile of the synthetic work
    assert "simulated_template_rendering" in html
    assert "simulated_database_query" in html
    info = read_report(written)
    assert info.endpoint == "perfwatch.test_alert"
    assert info.duration is not None
    assert info.duration > THRESHOLD
    assert "OK: the test alert was delivered by every notifier." in first.output


def test_test_alert_reports_each_failing_notifier_and_keeps_the_report(
        make_app: MakeApp, report_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    app, _ = make_app(notifiers=["notifiers_for_tests:FailingNotifier", "local",
                                 "notifiers_for_tests:BrokenNotifier"])
    result = run(app, "test-alert")
    assert result.exit_code == 1, result.output
    assert status_line(result, "failing") == \
        "failing FAILED NotifierError: the chat server said no"
    assert status_line(result, "broken") == "broken FAILED ZeroDivisionError: bug in a notifier"
    assert status_line(result, "local").startswith("local OK report written to ")
    [report] = reports_in(report_dir)
    assert f"The report was kept at {report}" in result.output
    assert "FAILED: 2 of 3 notifier(s) did not deliver the test alert." in result.output


def test_test_alert_without_a_working_notifier_still_keeps_the_report(
        make_app: MakeApp, report_dir: Path) -> None:
    app, _ = make_app(notifiers=["notifiers_for_tests:FailingNotifier"])
    result = run(app, "test-alert")
    assert result.exit_code == 1, result.output
    [report] = reports_in(report_dir)
    assert f"The report was kept at {report}" in result.output


def test_test_alert_with_no_notifiers_fails(make_app: MakeApp) -> None:
    app, _ = make_app(notifiers=[])
    result = run(app, "test-alert")
    assert result.exit_code == 1
    assert "PERFWATCH_NOTIFIERS is empty: there is no notifier to test." in result.output


@pytest.fixture
def hanging() -> Iterator[type[HangingNotifier]]:
    try:
        yield HangingNotifier
    finally:
        HangingNotifier.release.set()


def test_test_alert_gives_up_waiting_after_its_timeout(
        make_app: MakeApp, hanging: type[HangingNotifier]) -> None:
    app, _ = make_app(notifiers=["notifiers_for_tests:HangingNotifier"])
    result = run(app, "test-alert", "--timeout", "0.5")
    assert hanging.entered.is_set()
    assert result.exit_code == 1, result.output
    assert status_line(result, "hanging") == \
        "hanging FAILED no answer within 0.5s (still trying; see the log)"


# --- reports ----------------------------------------------------------------------


def _slow_requests(app: Flask, perfwatch_: PerfWatch, *paths: str) -> None:
    client = app.test_client()
    for path in paths:
        client.get(path)
        assert perfwatch_.flush(20, app)


def test_reports_lists_real_reports_newest_first(make_app: MakeApp, report_dir: Path) -> None:
    app, pw = make_app()
    _slow_requests(app, pw, "/slow?q=1&api_key=k", "/cpu")
    result = run(app, "reports")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"2 of 2 report(s) in {report_dir.resolve()}, newest first:"
    assert lines[1].split() == ["AGE", "DURATION", "STATUS", "ENDPOINT", "FILE"]
    newest, older = (line.split() for line in lines[2:])  # AGE is "12s ago": two words
    assert newest[3:6] == ["200", "GET", "cpu"]
    assert older[3:6] == ["201", "GET", "slow"]
    for row in (newest, older):
        assert row[0].endswith("s"), row
        assert row[1] == "ago", row
        assert float(row[2].removesuffix("s")) >= SLOW, row
    assert {line.split()[-1] for line in lines[2:]} == {p.name for p in reports_in(report_dir)}


def test_reports_json_and_limit(make_app: MakeApp, report_dir: Path) -> None:
    app, pw = make_app()
    _slow_requests(app, pw, "/slow?q=1&api_key=k", "/cpu")
    result = run(app, "reports", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [d["endpoint"] for d in data] == ["cpu", "slow"]
    slow = data[1]
    assert slow["method"] == "GET"
    assert slow["url"] == "http://localhost/slow?q=1&api_key=[REDACTED]"
    assert slow["status_code"] == 201
    assert slow["duration"] >= SLOW
    assert slow["threshold"] == THRESHOLD
    assert slow["kind"] == "request"
    assert slow["source"] in ("metadata", "header")
    assert Path(slow["path"]).parent == report_dir.resolve()
    assert 0 <= slow["age_seconds"] < 120
    started = datetime.fromisoformat(slow["started_at"])
    assert abs((datetime.now(UTC) - started).total_seconds()) < 120

    limited = json.loads(run(app, "reports", "--json", "--limit", "1").output)
    assert [d["endpoint"] for d in limited] == ["cpu"]
    table = run(app, "reports", "-n", "1")
    assert table.output.splitlines()[0].startswith("1 of 2 report(s)")


def test_reports_of_an_empty_or_missing_dir(make_app: MakeApp, report_dir: Path) -> None:
    app, _ = make_app()
    result = run(app, "reports")
    assert result.exit_code == 0
    assert result.output == f"No reports in {report_dir.resolve()}.\n"
    assert run(app, "reports", "--json").output == "[]\n"
    shutil.rmtree(report_dir)
    result = run(app, "reports")
    assert result.exit_code == 0
    assert "does not exist (no report written yet)" in result.output


def test_reports_dir_option_needs_no_app(tmp_path: Path) -> None:
    def no_app() -> Flask:
        raise AssertionError("the app must not be loaded")

    name = "perfwatch-20260102T030405Z-POST-orders.export-0123abcd.html"
    (tmp_path / name).write_text("<html><body>not a report we can read</body></html>")
    result = _invoke_with_factory(no_app, "reports", "--dir", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.output)
    assert entry["source"] == "filename"
    assert entry["method"] == "POST"
    assert entry["endpoint"] == "orders.export"
    assert entry["started_at"] == "2026-01-02T03:04:05+00:00"
    assert entry["duration"] is None


# --- reading report files -----------------------------------------------------------


def _page(body: str) -> str:
    return f"<!DOCTYPE html><html><head></head><body>\n{body}\n<div id=app></div></body></html>"


HEADER = ("<header id=\"perfwatch-request\"><h1>Slow request</h1><table>"
          "<tr><th>Request</th><td>GET http://h/a?x=%3C/script%3E&amp;y=1</td></tr>"
          "<tr><th>Endpoint</th><td>a&lt;b</td></tr>"
          "<tr><th>Duration</th><td>1.250 s so far (still running)</td></tr>"
          "<tr><th>Threshold</th><td>0.500 s</td></tr>"
          "<tr><th>Status</th><td>504</td></tr>"
          "<tr><th>Started</th><td>2026-11-28 09:06:44.123 UTC</td></tr></table>"
          "<details><summary>Query parameters</summary><table>"
          "<tr><th>Endpoint</th><td>not this one</td></tr></table></details></header>")


def test_read_report_parses_the_header_block(tmp_path: Path) -> None:
    path = tmp_path / "perfwatch-20261128T090644Z-GET-a_b-0123abcd.html"
    path.write_text(_page(HEADER), encoding="utf-8")
    info = read_report(path)
    assert info.source == "header"
    assert (info.kind, info.endpoint, info.method) == ("request", "a<b", "GET")
    assert info.url == "http://h/a?x=%3C/script%3E&y=1"
    assert (info.duration, info.threshold, info.status_code, info.hung) == (1.25, 0.5, 504, True)
    assert info.started_at == datetime(2026, 11, 28, 9, 6, 44, 123000, tzinfo=UTC)


def test_read_report_prefers_a_metadata_block(tmp_path: Path) -> None:
    metadata = {"kind": "function", "name": "jobs.rebuild", "method": None, "url": None,
                "path": None, "duration": 2.5, "threshold": 1.0, "status_code": None,
                "hung": False, "started_at": "2026-11-28T09:06:44.500000+00:00",
                "note": "</script><b>"}
    block = ('<script type="application/json" id="perfwatch-metadata">'
             + json.dumps(metadata).replace("<", "\\u003c") + "</script>")
    path = tmp_path / "perfwatch-20261128T090644Z-jobs.rebuild-0123abcd.html"
    path.write_text(_page(block + HEADER), encoding="utf-8")
    info = read_report(path)
    assert info.source == "metadata"
    assert (info.kind, info.endpoint, info.duration, info.threshold) == \
        ("function", "jobs.rebuild", 2.5, 1.0)
    assert info.started_at == datetime(2026, 11, 28, 9, 6, 44, 500000, tzinfo=UTC)


def test_read_report_falls_back_when_the_metadata_is_broken(tmp_path: Path) -> None:
    block = '<script type="application/json" id="perfwatch-metadata">{not json</script>'
    path = tmp_path / "perfwatch-20261128T090644Z-GET-a-0123abcd.html"
    path.write_text(_page(block + HEADER), encoding="utf-8")
    info = read_report(path)
    assert info.source == "header"
    assert info.endpoint == "a<b"


# --- Mattermost (the wire-level stand-in) ----------------------------------------------


def _mm_app(mm_app: Callable[..., Any], **overrides: Any) -> Flask:
    """The conftest ``mm_app`` with the local notifier beside Mattermost, no retries."""
    app: Flask = mm_app(notifiers=("mattermost", "local"), mattermost_retries=0, **overrides).app
    return app


@pytest.mark.slow
def test_check_reaches_mattermost(mm_app: Callable[..., Any], standin: Any) -> None:
    app = _mm_app(mm_app)
    result = run(app, "check")
    assert result.exit_code == 0, result.output
    line = status_line(result, "mattermost")
    assert line.startswith("mattermost OK posts as @")
    assert f"to ~perf-alerts ({standin.channel_id}) on {standin.url}" in line
    assert standin.posts == []  # a check posts nothing
    assert standin.token not in result.output


@pytest.mark.slow
def test_check_reports_a_rejected_mattermost_token(mm_app: Callable[..., Any]) -> None:
    app = _mm_app(mm_app, mattermost_token="wrong-token-value")
    result = run(app, "check")
    assert result.exit_code == 1, result.output
    line = status_line(result, "mattermost")
    assert line.startswith("mattermost FAILED NotifierError: Mattermost: checking the token")
    assert "rejected" in line
    assert "wrong-token-value" not in result.output
    assert status_line(result, "local").startswith("local OK")


@pytest.mark.slow
def test_test_alert_posts_to_mattermost_with_the_report(mm_app: Callable[..., Any], standin: Any,
                                                        report_dir: Path) -> None:
    app = _mm_app(mm_app)
    result = run(app, "test-alert")
    assert result.exit_code == 0, result.output
    assert status_line(result, "mattermost") == "mattermost OK delivered"
    [post] = standin.posts
    assert "perfwatch.test_alert" in post["message"]
    [attached] = standin.attached_files(post)
    [report] = reports_in(report_dir)
    assert attached.data == report.read_bytes()


# --- the real `flask` command -----------------------------------------------------------


def _flask(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    flask = Path(sys.executable).with_name("flask")
    assert flask.exists(), f"no flask executable beside {sys.executable}"
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("PERFWATCH_", "FLASK_"))}
    environ.update(PERFWATCH_REPORT_DIR=str(tmp_path / "reports"), NO_COLOR="1", **env)
    return subprocess.run([str(flask), "--app", "example_app", "perfwatch", *args],
                          cwd=REPO, env=environ, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.slow
def test_the_flask_command_finds_perfwatch_through_its_entry_point(tmp_path: Path) -> None:
    names = [ep.value for ep in entry_points(group="flask.commands") if ep.name == "perfwatch"]
    assert names == ["flask_perfwatch.cli:perfwatch"], \
        "reinstall the package (pip install -e .) to register the flask.commands entry point"
    done = _flask("check", tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "on app 'example_app.app'" in done.stdout
    assert f"local OK writes reports to {tmp_path / 'reports'}" in \
        [" ".join(line.split()) for line in done.stdout.splitlines()]
    row = next(line for line in done.stdout.splitlines() if "PERFWATCH_THRESHOLD" in line)
    assert row.split() == ["PERFWATCH_THRESHOLD", "app.config", "0.5"]


@pytest.mark.slow
def test_the_flask_command_reports_a_config_error(tmp_path: Path) -> None:
    done = _flask("check", tmp_path=tmp_path, PERFWATCH_QUEUE_SIZE="lots")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "PERFWATCH_QUEUE_SIZE='lots' (from environment): expected an integer >= 1" \
        in done.stderr
    assert "Traceback" not in done.stderr

