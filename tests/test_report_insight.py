"""What a report and every channel's message show of the insight fields:
CPU against wait (and on what it waited), the trace, the SQL table with its
N+1 flag, and regressions; and that the report reader still tells a
regression report from a request's."""

from __future__ import annotations

import dataclasses
import email.policy
import html
import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from conftest import SLOW, burn
from flask import Flask

from flask_perfwatch import Config, PerformanceMetrics, PerfWatch
from flask_perfwatch.notifiers import LogNotifier
from flask_perfwatch.notifiers._message import alert_facts, headline
from flask_perfwatch.notifiers.discord import build_content
from flask_perfwatch.notifiers.email import OUTPUT_POLICY, EmailNotifier, build_subject
from flask_perfwatch.notifiers.mattermost import build_message as mattermost_message
from flask_perfwatch.notifiers.pagerduty import MAX_EVENT_BYTES
from flask_perfwatch.notifiers.pagerduty import build_event as pagerduty_event
from flask_perfwatch.notifiers.pagerduty import encode as pagerduty_encode
from flask_perfwatch.notifiers.slack import build_message as slack_message
from flask_perfwatch.notifiers.teams import build_card
from flask_perfwatch.notifiers.webhook import build_event as webhook_event
from flask_perfwatch.profiling import Profile
from flask_perfwatch.report import (
    METADATA_ID,
    N_PLUS_ONE_CALLS,
    SQL_SHOWN,
    list_reports,
    read_report,
    render_report,
    wait_kind,
)
from flask_perfwatch.testing import SignalRecorder

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
SLEEP_LINE = {"line": "line 16: time.sleep(0.2)", "function": "view",
              "file": "/srv/shop/app.py", "lineno": 16, "seconds": 0.4}
DB_LINE = {"line": "line 30: rows = cursor.fetchall()", "function": "orders",
           "file": "/srv/shop/db.py", "lineno": 30, "seconds": 0.1}


def make_metrics(**changes: Any) -> PerformanceMetrics:
    values: dict[str, Any] = {
        "kind": "request", "name": "orders.export", "duration": 0.49, "threshold": 0.3,
        "started_at": datetime(2026, 11, 28, 9, 52, 10, 123456, tzinfo=UTC), "method": "GET",
        "url": "https://shop.example/export?fmt=csv", "path": "/export", "status_code": 200,
    }
    values.update(changes)
    return PerformanceMetrics(**values)


def real_profile(*, cpu_time: float | None = None,
                 waits: list[dict[str, Any]] | None = None) -> Profile:
    """A real pyinstrument profile of a little CPU work, carrying the CPU time
    and waiting lines the sampler engine records (given here, so this file
    does not depend on the engine's own tests)."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.001)
    profiler.start()
    burn(0.02)
    session = profiler.stop()
    profile = Profile(session, note="the first 21 ms were not sampled")
    profile.cpu_time = cpu_time
    profile.waits = list(waits or [])
    return profile


def rows_of(page: str) -> dict[str, str]:
    """The header's label/value rows (unescaped), as a reader of the page sees them."""
    header = page[page.index('<header id="perfwatch-request">'):page.index("</header>")]
    return {html.unescape(k): html.unescape(v)
            for k, v in re.findall(r"<tr><th>([^<]*)</th><td>([^<]*)</td></tr>", header)}


def sql_rows(page: str) -> list[str]:
    """The rows of the SQL table, as HTML."""
    table = page[page.index("<summary>SQL:"):]
    table = table[:table.index("</tbody>")]
    return re.findall(r"<tr(?: class=\"pw-suspect\")?><td class=\"pw-sql\".*?</tr>", table)


# -- CPU against wait ---------------------------------------------------------------


def test_a_request_that_mostly_waited_names_the_kind_and_the_line() -> None:
    metrics = make_metrics(profile=real_profile(cpu_time=0.06, waits=[SLEEP_LINE, DB_LINE]))
    assert metrics.cpu_time == 0.06  # copied from the profile
    report = render_report(metrics)
    rows = rows_of(report.html)
    assert rows["CPU"] == "0.06 s of 0.49 s (12 %)"
    assert rows["Mostly waiting"] == ("sleeping at app.py line 16: time.sleep(0.2) "
                                      "(0.40 s there; 0.43 s off the CPU in all)")
    assert "CPU 0.06 s of 0.49 s (12 %)" in report.text.splitlines()
    assert "Mostly waiting: sleeping at app.py line 16: time.sleep(0.2) (0.40 s there; " \
           "0.43 s off the CPU in all)" in report.text.splitlines()
    # the heaviest lines, listed under the header
    waited = report.html[report.html.index("<summary>Where it waited"):]
    assert waited.index("time.sleep(0.2)") < waited.index("cursor.fetchall()")
    assert "the first 21 ms were not sampled" in report.html


def test_a_request_that_mostly_ran_has_a_cpu_row_and_no_waiting_row() -> None:
    metrics = make_metrics(profile=real_profile(cpu_time=0.36, waits=[SLEEP_LINE]))
    rows = rows_of(render_report(metrics).html)
    assert rows["CPU"] == "0.36 s of 0.49 s (73 %)"
    assert "Mostly waiting" not in rows


@pytest.mark.parametrize("cpu_time", [None, "0.2", float("nan")])
def test_no_cpu_row_without_a_measured_cpu_time(cpu_time: Any) -> None:
    metrics = make_metrics(profile=real_profile(waits=[SLEEP_LINE]), cpu_time=cpu_time)
    report = render_report(metrics)
    assert "CPU" not in rows_of(report.html)
    assert "Mostly waiting" not in rows_of(report.html)
    assert "CPU" not in report.text
    assert [f.label for f in alert_facts(metrics) if f.label in ("CPU", "Mostly waiting")] == []


def test_sql_that_fills_the_wait_makes_it_database_and_names_the_database_line() -> None:
    queries = [{"statement": "SELECT * FROM orders WHERE id = ?", "duration": 0.3, "calls": 3}]
    metrics = make_metrics(cpu_time=0.06, queries=queries,
                           profile=real_profile(waits=[SLEEP_LINE, DB_LINE]))
    rows = rows_of(render_report(metrics).html)
    assert rows["Mostly waiting"] == ("database at db.py line 30: rows = cursor.fetchall() "
                                      "(0.10 s there; 0.30 s in SQL; 0.43 s off the CPU in all)")
    # SQL that explains little of the wait does not decide it
    small = dataclasses.replace(metrics, queries=[{**queries[0], "duration": 0.1}])
    assert rows_of(render_report(small).html)["Mostly waiting"].startswith("sleeping at app.py")


def test_a_wait_nobody_recorded_says_so_instead_of_guessing() -> None:
    rows = rows_of(render_report(make_metrics(cpu_time=0.06)).html)
    assert rows["Mostly waiting"] == ("0.43 s off the CPU in all; where is unknown (no waiting "
                                      "line was recorded)")


@pytest.mark.parametrize(("line", "function", "kind"), [
    ("line 16: time.sleep(0.2)", "view", "sleeping"),
    ("line 9: await asyncio.sleep(1)", "view", "sleeping"),
    ("line 3: cur.execute(query, args)", "report", "database"),
    ("line 4: session.commit()", "save", "database"),
    ("line 5: data = sock.recv(4096)", "read", "network I/O"),
    ("line 6: resp = requests.get(url, timeout=5)", "fetch_rates", "network I/O"),
    ("line 7: with urlopen(url) as r:", "fetch", "network I/O"),
    ("line 8: with self._lock:", "update", "a lock or another thread"),
    ("line 9: item = jobs.get()", "next_job", "a lock or another thread"),
    ("line 10: worker.join()", "finish", "a lock or another thread"),
    ("line 11: done.wait(timeout=2)", "finish", "a lock or another thread"),
    ("line 12: packed = zlib.compress(data)", "pack", "a C call"),
    ("line 13: text = ', '.join(names)", "label", "a C call"),
    ("line 14", "blocking_recv", "network I/O"),  # no source: the function says
])
def test_kinds_of_wait(line: str, function: str, kind: str) -> None:
    assert wait_kind({"line": line, "function": function}) == kind


def test_cpu_and_waiting_rows_through_a_real_app_and_sampler_profile(
        make_app: Callable[..., tuple[Flask, PerfWatch]],
        signals_recorder: SignalRecorder) -> None:
    app, _ = make_app(profiler="sampler", notifiers=["local"])
    assert app.test_client().get("/slow").status_code == 201
    [slow] = signals_recorder.wait_for("slow_request")
    metrics: PerformanceMetrics = slow.kwargs["metrics"]
    assert metrics.profile is not None
    assert metrics.duration >= SLOW
    # what the engine measures is the engine's business: give it here, as it
    # would record the view's line
    source = Path(__file__).with_name("conftest.py").read_text().splitlines()
    lineno = source.index("        time.sleep(SLOW)") + 1
    metrics.profile.waits = [{"line": f"line {lineno}: time.sleep(SLOW)", "function": "slow",
                              "file": str(Path(__file__).with_name("conftest.py")),
                              "lineno": lineno, "seconds": SLOW}]
    metrics.cpu_time = 0.01
    report = render_report(metrics)
    rows = rows_of(report.html)
    assert rows["CPU"].startswith(f"0.01 s of {metrics.duration:.2f} s (")
    assert rows["Mostly waiting"].startswith(
        f"sleeping at conftest.py line {lineno}: time.sleep(SLOW) ({SLOW:.2f} s there; ")
    assert "pyinstrumentHTMLRenderer" in report.html  # pyinstrument's page under the header
    assert "were not sampled" in report.html


# -- trace ---------------------------------------------------------------------------


def test_trace_and_span_rows_only_when_present() -> None:
    rows = rows_of(render_report(make_metrics(trace_id=TRACE, span_id=SPAN)).html)
    assert (rows["Trace"], rows["Span"]) == (TRACE, SPAN)
    plain = rows_of(render_report(make_metrics()).html)
    assert "Trace" not in plain
    assert "Span" not in plain


# -- SQL -------------------------------------------------------------------------------


def test_sql_table_escapes_cuts_flags_and_sums() -> None:
    hostile = "SELECT '</td><script>alert(1)</script>' FROM t WHERE a = ?"
    long = "SELECT " + ", ".join(f"column_{i}" for i in range(80)) + " FROM wide WHERE id = ?"
    queries = [
        {"statement": "SELECT * FROM item WHERE order_id = ?", "duration": 0.3,
         "calls": N_PLUS_ONE_CALLS},
        {"statement": hostile, "duration": 0.09, "calls": 9},
        {"statement": long, "duration": 0.03, "calls": 1},
    ]
    report = render_report(make_metrics(queries=queries))
    page = report.html
    assert "<script>alert(1)" not in page
    assert "&lt;/td&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<summary>SQL: 3 statements, 20 calls, 0.42 s; 1 possible N+1</summary>" in page
    first, second, third = sql_rows(page)
    assert first.startswith('<tr class="pw-suspect">')
    assert '<span class="pw-flag">N+1?</span>' in first
    assert "<td class=\"pw-num\">0.30 s</td>" in first
    assert "30.00 ms" in first  # the mean
    assert "N+1?" not in second  # 9 calls: not flagged
    assert "10.00 ms" in second
    # a long statement is cut, its whole text in the tooltip
    shown = re.search(r'<td class="pw-sql" title="([^"]*)">([^<]*)</td>', third)
    assert shown is not None
    assert html.unescape(shown.group(1)) == long
    assert html.unescape(shown.group(2)) == long[:SQL_SHOWN] + "…"
    lines = report.text.splitlines()
    assert "SQL: 3 statements, 20 calls, 0.42 s; 1 possible N+1" in lines
    assert any(line.endswith("N+1?") and "order_id" in line for line in lines)


def test_sql_table_renders_every_row_given_even_one_it_does_not_understand() -> None:
    queries = [{"statement": f"SELECT {i} FROM t", "duration": 0.001, "calls": 1}
               for i in range(200)]
    queries.append({"statement": "(37 more statements not kept)", "duration": 0.05,
                    "calls": None, "kept": False})
    report = render_report(make_metrics(queries=queries))
    rows = sql_rows(report.html)
    assert len(rows) == 201
    assert "(37 more statements not kept)" in rows[-1]
    assert "SQL: 201 statements, 200 calls, 0.25 s" in report.text
    assert "... 196 more in the report" in report.text  # the text lists five


def test_no_sql_no_table() -> None:
    metrics = make_metrics()
    report = render_report(metrics)
    assert "<summary>SQL:" not in report.html
    assert report.text == metrics.summary()


# -- regressions -----------------------------------------------------------------------


def regression(**changes: Any) -> PerformanceMetrics:
    values: dict[str, Any] = {
        "kind": "regression", "name": "orders.export", "duration": 1.24, "threshold": 0.6,
        "started_at": datetime(2026, 11, 28, 9, 40, 0, tzinfo=UTC), "method": None,
        "url": None, "path": None, "status_code": None,
        "regression": {
            "factor": 2.0, "min_delta": 0.005,
            "baseline": {"count": 1900, "p50": 0.11, "p95": 0.3, "p99": 0.52, "max": 0.93,
                         "slow": 3},
            "recent": {"count": 100, "p50": 0.41, "p95": 1.24, "p99": 1.81, "max": 2.12,
                       "slow": 12},
            "slowest_profiled": None, "window": "<b>last 5 min</b>",
        },
    }
    values.update(changes)
    return make_metrics(**values)


def test_a_regression_report_compares_both_windows() -> None:
    metrics = regression()
    report = render_report(metrics)
    rows = rows_of(report.html)
    assert rows["Endpoint"] == "orders.export"
    assert rows["Regression"] == ("recent p95 1.240 s is 4.1x the baseline p95 0.300 s "
                                  "(alert factor 2)")
    assert rows["Duration"] == "1.240 s (recent p95)"
    assert rows["Recent since"] == "2026-11-28 09:40:00.000 UTC"
    body = report.html[report.html.index('<div class="pw-section">'):]
    grid = [re.findall(r'<td class="pw-num">([^<]*)</td>', row)
            for row in re.findall(r'<td class="pw-label">(?:baseline|recent)</td>.*?</tr>',
                                  body)]
    assert grid == [["1,900", "0.110 s", "0.300 s", "0.520 s", "0.930 s", "3"],
                    ["100", "0.410 s", "1.240 s", "1.810 s", "2.120 s", "12"]]
    assert "window: &lt;b&gt;last 5 min&lt;/b&gt;" in body  # an extra key, as it is
    assert "No profile of a recent slow request was kept" in report.html
    assert "No profile was captured" not in report.html
    lines = report.text.splitlines()
    assert lines[0] == metrics.summary()
    assert "  recent:   p95 1.240 s, p50 0.410 s, p99 1.810 s, max 2.120 s; 100 requests, " \
           "12 slow" in lines
    assert "  baseline: p95 0.300 s, p50 0.110 s, p99 0.520 s, max 0.930 s; 1,900 requests, " \
           "3 slow" in lines


def test_a_regression_with_a_profile_sets_cpu_against_that_request() -> None:
    data = {**regression().regression, "slowest_profiled": 2.0}  # type: ignore[dict-item]
    metrics = regression(profile=real_profile(cpu_time=0.5, waits=[SLEEP_LINE]),
                         regression=data)
    report = render_report(metrics)
    rows = rows_of(report.html)
    assert rows["CPU"] == "0.50 s of 2.00 s (25 %)"  # not of the p95
    assert rows["Mostly waiting"].startswith("sleeping at app.py line 16")
    assert "The profile below is of the slowest recent request that was profiled " \
           "(2.000 s)." in report.html
    # without the profiled request's duration, no CPU figure is made up from the p95
    unknown = {**data, "slowest_profiled": None}
    no_profile = regression(cpu_time=0.5, regression=unknown)
    assert "CPU" not in rows_of(render_report(no_profile).html)


def test_a_regression_with_odd_fields_still_renders() -> None:
    metrics = regression(regression={"factor": None, "recent": [1, 2], "baseline": None})
    rows = rows_of(render_report(metrics).html)
    assert rows["Regression"] == "recent p95 1.240 s"
    assert rows["Endpoint"] == "orders.export"


# -- reading reports back --------------------------------------------------------------


def test_the_reader_tells_a_regression_report_from_a_request_report(tmp_path: Path) -> None:
    written = {
        "regression": render_report(regression()).write(tmp_path),
        "request": render_report(make_metrics(cpu_time=0.06, trace_id=TRACE, queries=[
            {"statement": "SELECT 1", "duration": 0.01, "calls": 12}])).write(tmp_path),
    }
    for kind, path in written.items():
        info = read_report(path)
        assert (info.source, info.kind, info.endpoint) == ("metadata", kind, "orders.export")
    # without the metadata block, from the header rows alone
    for kind, path in written.items():
        page = path.read_text()
        start = page.index(f'<script type="application/json" id="{METADATA_ID}">')
        bare = tmp_path / "bare" / path.name
        bare.parent.mkdir(exist_ok=True)
        bare.write_text(page[:start] + page[page.index("</script>", start) + 9:])
        info = read_report(bare)
        assert (info.source, info.kind, info.endpoint) == ("header", kind, "orders.export")
        assert info.duration == (1.24 if kind == "regression" else 0.49)
        assert info.started_at == (datetime(2026, 11, 28, 9, 40, tzinfo=UTC)
                                   if kind == "regression"
                                   else datetime(2026, 11, 28, 9, 52, 10, 123000, tzinfo=UTC))
    listing = list_reports(tmp_path / "bare")
    assert sorted((i.kind, i.endpoint) for i in listing.reports) == [
        ("regression", "orders.export"), ("request", "orders.export")]


# -- channel messages --------------------------------------------------------------------


def insightful() -> PerformanceMetrics:
    return make_metrics(
        cpu_time=0.06, trace_id=TRACE, span_id=SPAN,
        profile=real_profile(waits=[SLEEP_LINE]),
        queries=[{"statement": "SELECT * FROM item WHERE order_id = ?", "duration": 0.03,
                  "calls": 80},
                 {"statement": "SELECT * FROM orders", "duration": 0.012, "calls": 7}])


CPU_TEXT = "0.06 s of 0.49 s (12 %)"
SQL_TEXT = "2 statements, 87 calls, 42.0 ms; 1 possible N+1"


def test_slack_mattermost_and_discord_messages_carry_the_insight() -> None:
    metrics = insightful()
    slack = slack_message(metrics)
    assert f"• *CPU:* {CPU_TEXT}" in slack.splitlines()
    assert ("• *Mostly waiting:* `app.py line 16: time.sleep(0.2)`, sleeping; 0.43 s off the "
            "CPU") in slack.splitlines()
    assert f"• *SQL:* {SQL_TEXT}" in slack.splitlines()
    assert f"• *Trace:* `{TRACE}`, span {SPAN}" in slack.splitlines()
    mattermost = mattermost_message(metrics)
    assert f"- **Trace:** `{TRACE}`, span {SPAN}" in mattermost.splitlines()
    assert r"- **CPU:** 0.06 s of 0.49 s \(12 %\)" in mattermost.splitlines()
    assert r"- **SQL:** 2 statements, 87 calls, 42.0 ms; 1 possible N\+1" in \
        mattermost.splitlines()
    discord = build_content(metrics)
    assert f"**Trace:** `{TRACE}`, span {SPAN}" in discord.splitlines()
    assert f"**CPU:** {CPU_TEXT}" in discord.splitlines()
    # none of it without the fields
    bare = slack_message(make_metrics())
    assert "CPU" not in bare
    assert "Trace" not in bare
    assert "SQL" not in bare


def test_teams_card_carries_the_insight() -> None:
    metrics = insightful()
    card = build_card(metrics, render_report(metrics))
    texts = {}
    for block in card["body"]:
        runs = [inline["text"] for inline in block.get("inlines", [])]
        if runs:
            texts[runs[0]] = "".join(runs[1:])
    assert texts["CPU: "] == CPU_TEXT
    assert texts["Trace: "] == f"{TRACE}, span {SPAN}"
    assert texts["SQL: "] == SQL_TEXT
    assert texts["Mostly waiting: "] == "app.py line 16: time.sleep(0.2), sleeping; 0.43 s " \
                                        "off the CPU"


def test_email_body_carries_the_insight() -> None:
    metrics = insightful()
    notifier = EmailNotifier(Config(email_host="127.0.0.1", email_from="perf@shop.example",
                                    email_to=("ops@shop.example",)))
    raw = notifier.build_message(metrics, render_report(metrics)).as_bytes(policy=OUTPUT_POLICY)
    sent = message_from_bytes(raw, _class=EmailMessage, policy=email.policy.default)
    body = sent.get_body(("plain",))
    assert body is not None
    lines = body.get_content().splitlines()
    assert f"CPU {CPU_TEXT}" in lines
    assert f"Trace {TRACE} (span {SPAN})" in lines
    assert f"SQL: {SQL_TEXT}" in lines
    assert "Mostly waiting: sleeping at app.py line 16: time.sleep(0.2) (0.40 s there; " \
           "0.43 s off the CPU in all)" in lines


def test_log_line_carries_the_insight(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "flask_perfwatch.alerts")
    metrics = insightful()
    LogNotifier(Config()).send(metrics, render_report(metrics))
    [record] = [r for r in caplog.records if r.name == "flask_perfwatch.alerts"]
    assert record.getMessage() == (
        f"{metrics.summary()}; CPU {CPU_TEXT}, mostly waiting: sleeping at app.py line 16: "
        "time.sleep(0.2) (0.40 s there; 0.43 s off the CPU in all); "
        f"SQL: {SQL_TEXT}; trace {TRACE}")
    caplog.clear()
    plain = make_metrics()
    LogNotifier(Config()).send(plain, render_report(plain))
    [record] = [r for r in caplog.records if r.name == "flask_perfwatch.alerts"]
    assert record.getMessage() == plain.summary()


def test_pagerduty_and_webhook_data_carry_the_fields() -> None:
    metrics = insightful()
    report = render_report(metrics)
    details = pagerduty_event(metrics, report, routing_key="r" * 32,
                              severity="warning")["payload"]["custom_details"]
    data = webhook_event(metrics, report)["data"]
    for fields in (details, data):
        assert (fields["trace_id"], fields["span_id"], fields["cpu_time"]) == (TRACE, SPAN, 0.06)
        assert fields["queries"][0]["calls"] == 80
    # statements are among what a too-big PagerDuty event leaves out
    huge = dataclasses.replace(metrics, queries=[
        {"statement": f"SELECT {i}, '{'x' * 4000}'", "duration": 0.001, "calls": 1}
        for i in range(200)])
    event = pagerduty_event(huge, report, routing_key="r" * 32, severity="warning")
    body = pagerduty_encode(event)
    assert len(body) <= MAX_EVENT_BYTES
    sent = json.loads(body)["payload"]["custom_details"]
    assert "queries" not in sent
    assert "queries" in sent["left_out"]


def test_regression_messages_read_as_regressions() -> None:
    metrics = regression()
    title = headline(metrics)
    assert (title.lead, title.subject, title.verb, title.duration, title.ratio, title.emoji) == (
        "Regression", "orders.export", "p95 now", "1.240 s", "4.1x its baseline p95 0.300 s",
        "chart_with_upwards_trend")
    slack = slack_message(metrics).splitlines()
    assert slack[0] == (":chart_with_upwards_trend: *Regression* `orders.export` p95 now "
                        "*1.240 s* (4.1x its baseline p95 0.300 s)")
    assert "• *Recent:* p95 1.240 s, p50 0.410 s, p99 1.810 s, max 2.120 s; 100 requests, " \
           "12 slow" in slack
    assert "• *Baseline:* p95 0.300 s, p50 0.110 s, p99 0.520 s, max 0.930 s; 1,900 " \
           "requests, 3 slow" in slack
    assert "• *Profile:* none kept (no recent request of this endpoint was profiled)" in slack
    assert not any("Duration" in line or "Slow" in line for line in slack)
    assert build_subject(metrics) == (
        "[perfwatch] Regression: endpoint orders.export p95 1.240s is over 0.600s "
        "(baseline p95 0.300s)")
    brief = [f.label for f in alert_facts(metrics, brief=True)]
    assert brief == ["Endpoint", "Regression"]
    event = pagerduty_event(metrics, render_report(metrics), routing_key="r" * 32,
                            severity="warning")
    assert event["payload"]["class"] == "endpoint_regressed"
