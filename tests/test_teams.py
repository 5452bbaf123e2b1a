"""The Teams notifier, driven through a real Flask app, the pipeline and
urllib3 against the Workflows webhook stand-in in ``webhook_chat_servers.py``.

Faults and their expected outcome:

- 429 + Retry-After, 5xx: retried (the wait the server asked for), one card;
- no answer within the timeout, a connection dropped after the workflow ran:
  retried, so the card may arrive twice (Workflows has no idempotency key):
  the re-sent card says it may be a repeat, and both carry the alert id;
- a connection dropped before the workflow ran: retried, one card;
- 400, 401, 403, 404: ``alert_failed`` at once, no retry, report kept;
- retries used up: ``alert_failed`` (retryable), report kept;
- huge or hostile request data: the card stays under 28 KB and nothing from
  the request is read as Markdown;
- the webhook URL (``sig=``, workflow id) never reaches a message, a log line,
  an error, ``check()`` or a repr.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from channel_harness import Channel, channel_app
from conftest import monitor_of, reports_in, wait_until
from flask import Flask
from webhook_chat_servers import (
    TEAMS_MESSAGE_LIMIT,
    TeamsWorkflowStandIn,
    card_problems,
    card_text,
    card_texts,
)

from flask_perfwatch import Config, PerfWatch
from flask_perfwatch.cli import perfwatch as perfwatch_cli
from flask_perfwatch.exceptions import ConfigError
from flask_perfwatch.metrics import PerformanceMetrics
from flask_perfwatch.notifiers._message import alert_facts
from flask_perfwatch.notifiers.teams import (
    MAX_PAYLOAD_BYTES,
    TeamsNotifier,
    build_card,
    build_payload,
)
from flask_perfwatch.report import Report
from flask_perfwatch.testing import SignalRecorder

pytestmark = pytest.mark.slow

LONG_WORKFLOW_ID = "4f1c0a2b9d8e47f6a5b4c3d2e1f0a9b8"
BASE_URL = "https://perf.example.com/reports/"




@pytest.fixture
def teams() -> Iterator[TeamsWorkflowStandIn]:
    with TeamsWorkflowStandIn() as server:
        yield server
    assert not server.errors, server.errors


@pytest.fixture
def teams_app(teams: TeamsWorkflowStandIn, make_app: Callable[..., tuple[Flask, PerfWatch]]
              ) -> Callable[..., Channel]:
    """``teams_app(**overrides)``: the test app posting to the stand-in, its
    backoff waits recorded (not slept) and the reports it was given kept."""

    def factory(*, notifiers: tuple[str, ...] = ("teams",), **overrides: Any) -> Channel:
        overrides.setdefault("teams_webhook_url", teams.url)
        overrides.setdefault("teams_timeout", 3.0)
        return channel_app(make_app, TeamsNotifier, notifiers=notifiers, **overrides)

    return factory


def alert_ids(cards: list[dict[str, Any]]) -> list[str]:
    return [card["body"][-1]["text"].rsplit(" ", 1)[-1] for card in cards]


# --- delivery ----------------------------------------------------------------------


def test_one_slow_request_is_one_card_with_a_button_to_the_report(
        teams_app: Callable[..., Channel], teams: TeamsWorkflowStandIn,
        signals_recorder: SignalRecorder) -> None:
    ch = teams_app(report_base_url=BASE_URL)
    assert teams.requests == []  # nothing sent at init
    assert ch.get("/fast").status_code == 200
    assert ch.get("/slow?user=42").status_code == 201
    [sent] = signals_recorder.wait_for("alert_sent")
    ch.flush()
    metrics = sent.kwargs["metrics"]
    [report] = ch.reports
    [hit] = teams.hits("invoke")
    assert hit.status == 202
    assert hit.headers["Content-Type"] == "application/json; charset=utf-8"
    envelope = hit.json()
    assert envelope["type"] == "message"
    [attachment] = envelope["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert attachment["contentUrl"] is None
    [card] = teams.cards
    assert attachment["content"] == card
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    text = card_text(card)
    assert text.splitlines()[0] == f"Slow request GET /slow took {metrics.duration:.3f} s"
    assert "Endpoint: slow" in text
    assert f"Duration: {metrics.duration:.3f} s, " in text
    assert "the 0.300 s threshold" in text
    assert "URL: http://localhost/slow?user=42" in text
    assert "Status: 201" in text
    assert f"Host: {metrics.host}, pid {metrics.pid}" in text
    assert f"Started: {metrics.started_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" in text
    assert "Suppressed: none since the last alert" in text
    assert alert_ids([card]) == [metrics.id[:8]]
    # the report is linked: written before dispatch, its URL behind the button
    assert report.path is not None
    assert report.path.read_text(encoding="utf-8") == report.html
    assert report.url == BASE_URL + report.path.name
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open the report",
                                "url": report.url}]
    assert "Report: open it with the button below" in text
    assert ch.delays == []
    assert signals_recorder.count("alert_failed") == 0


def test_without_a_base_url_the_card_names_the_local_path(
        teams_app: Callable[..., Channel], teams: TeamsWorkflowStandIn, report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    ch = teams_app()
    ch.get("/slow")
    signals_recorder.wait_for("alert_sent")
    ch.flush()
    [card] = teams.cards
    [report] = ch.reports
    [path] = reports_in(report_dir)
    assert report.url is None
    assert report.link() == str(path)
    assert card["actions"] == []
    assert f"Report: kept at {path} on " in card_text(card)
    assert "PERFWATCH_REPORT_BASE_URL" in card_text(card)


# --- retryable faults ------------------------------------------------------------------


def test_429_waits_as_long_as_retry_after_says(
        teams_app: Callable[..., Channel], teams: TeamsWorkflowStandIn,
        signals_recorder: SignalRecorder, caplog: pytest.LogCaptureFixture) -> None:
    ch = teams_app()
    teams.throttle(retry_after=7)
    with caplog.at_level(logging.WARNING, "flask_perfwatch"):
        ch.get("/slow")
        signals_recorder.wait_for("alert_sent")
        ch.flush()
    assert [h.status for h in teams.hits("invoke")] == [429, 202]
    assert ch.delays == [7.0]
    assert len(teams.cards) == 1
    [retry] = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert "the workflow is throttled (429: WorkflowRequestsThrottled" in retry


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retried_with_backoff(
        status: int, teams_app: Callable[..., Channel], teams: TeamsWorkflowStandIn,
        signals_recorder: SignalRecorder) -> None:
    ch = teams_app()
    teams.fail("invoke", status, times=2, body=b"<html>Service Unavailable</html>")
    ch.get("/slow")
    signals_recorder.wait_for("alert_sent")
    ch.flush()
    assert [h.status for h in teams.hits("invoke")] == [status, status, 202]
    assert len(teams.cards) == 1
    assert len(ch.delays) == 2
    assert 0.5 <= ch.delays[0] <= 1.0  # 1 s, jittered
    assert 1.0 <= ch.delays[1] <= 2.0  # then 2 s
    # a plain error is retried without claiming the card may repeat
    assert "Possibly a repeat" not in card_text(teams.cards[0])


def test_a_connection_dropped_before_the_workflow_ran_is_retried_once(
        teams_app: Callable[..., Channel], teams: TeamsWorkflowStandIn,
        signals_recorder: SignalRecorder) -> None:
    ch = teams_app()
    teams.drop("invoke")
    ch.get("/slow")
    signals_recorder.wait_for("alert_sent")
    ch.flush()
    assert [h.fault for h in teams.hits("invoke")] == ["drop", None]
    assert len(teams.cards) == 1
    assert len(ch.delays) == 1
    # the client cannot tell it apart from a drop after the run: it warns
    assert "Possibly a repeat" in card_text(teams.cards[0])


def test_a_connection_dropped_after_the_workflow_ran_gives_a_marked_duplicate(
        teams_app: Callable[..., Channel], teams: TeamsWorkflowStandIn,
        signals_recorder: SignalRecorder) -> None:
    """The at-least-once case: the card was posted, the answer was lost. A
    Workflows webhook has no idempotency key and nothing to read back, so
    the card is sent again and says it may be a repeat."""
    ch = teams_app()
    teams.drop("invoke", when="after")
    ch.get("/slow")
    [sent] = signals_recorder.wait_for("alert_sent")
    ch.flush()
    assert [h.fault for h in teams.hits("invoke")] == ["drop-after", None]
    first, second = teams.cards
    assert "Possibly a repeat" not in card_text(first)
    assert "Possibly a repeat: an earlier attempt to post this alert got no answer" \
        in card_text(second)
    assert alert_ids([first, second]) == [sent.kwargs["metrics"].id[:8]] * 2


def test_an_answer_slower_than_the_timeout_is_retried(
        teams_app: Callable[..., Channel], teams: TeamsWorkflowStandIn,
        signals_recorder: SignalRecorder) -> None:
    ch = teams_app(teams_timeout=0.5)
    teams.delay("invoke", 2.0)  # the workflow still runs, after the client gave up
    ch.get("/slow")
    [sent] = signals_recorder.wait_for("alert_sent")
    ch.flush()
    assert len(ch.delays) == 1
    wait_until(lambda: len(teams.cards) == 2, message="the late card")
    flagged = ["Possibly a repeat" in card_text(c) for c in teams.cards]
    assert sorted(flagged) == [False, True]
    assert alert_ids(teams.cards) == [sent.kwargs["metrics"].id[:8]] * 2


def test_gives_up_after_the_retries_and_keeps_the_report(
        teams_app: Callable[..., Channel], teams: TeamsWorkflowStandIn, report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    ch = teams_app(teams_retries=2)
    teams.fail("invoke", 503, times=10)
    ch.get("/slow")
    error = ch.failure(signals_recorder, retryable=True)
    assert str(error).startswith("Teams: gave up after 3 attempt(s); last error: the workflow "
                                 "service failed (HTTP 503")
    assert len(teams.hits("invoke")) == 3
    assert len(ch.delays) == 2
    assert teams.cards == []
    assert len(reports_in(report_dir)) == 1


# --- permanent faults -------------------------------------------------------------------

PERMANENT: dict[str, tuple[Callable[[TeamsWorkflowStandIn], dict[str, Any]], str]] = {
    "400 rejected": (lambda s: (s.fail("invoke", 400, body={"error": {
        "code": "TriggerInputSchemaMismatch", "message": "bad input"}}), {})[1],
        "the workflow rejected the card (400: TriggerInputSchemaMismatch: bad input)"),
    "401 wrong sig": (lambda s: {"teams_webhook_url": s.url.replace(s.sig, "WRONG-SIG")},
                      "the webhook URL was refused (401: DirectApiAuthorizationRequired"),
    "403": (lambda s: (s.fail("invoke", 403), {})[1], "the webhook URL was refused (403)"),
    "404 unknown workflow": (
        lambda s: {"teams_webhook_url": s.url.replace("/workflows/abc/", "/workflows/gone/")},
        "no such workflow (404: WorkflowNotFound: The workflow 'gone' could not be found.)"),
}


@pytest.mark.parametrize("fault", PERMANENT.keys())
def test_client_errors_fail_at_once(
        fault: str, teams_app: Callable[..., Channel], teams: TeamsWorkflowStandIn,
        report_dir: Path, signals_recorder: SignalRecorder) -> None:
    inject, expected = PERMANENT[fault]
    ch = teams_app(**inject(teams))
    ch.get("/slow")
    error = ch.failure(signals_recorder, retryable=False)
    assert str(error).startswith("Teams: " + expected), str(error)
    if fault.startswith(("401", "403", "404")):
        assert "PERFWATCH_TEAMS_WEBHOOK_URL" in str(error)
    assert len(teams.hits("invoke")) == 1
    assert ch.delays == []
    assert teams.cards == []
    assert len(reports_in(report_dir)) == 1


# --- size and hostile data -----------------------------------------------------------------


def test_a_huge_url_is_cut_and_the_card_stays_under_28_kb(
        teams_app: Callable[..., Channel], teams: TeamsWorkflowStandIn,
        signals_recorder: SignalRecorder) -> None:
    ch = teams_app()
    path = "/named/" + "€" * 3000
    params = "&".join(f"p{i}=" + "ü" * 900 for i in range(40))
    ch.get(f"{path}?sleep=0.5&{params}")
    [sent] = signals_recorder.wait_for("alert_sent")
    ch.flush()
    [hit] = teams.hits("invoke")
    assert len(hit.body) <= MAX_PAYLOAD_BYTES < TEAMS_MESSAGE_LIMIT
    assert teams.lost == []
    [card] = teams.cards
    text = card_text(card)
    metrics = sent.kwargs["metrics"]
    assert len(metrics.url) > 2000
    assert "Endpoint: named" in text
    assert f"took {metrics.duration:.3f} s" in text
    assert "URL: " + metrics.url[:2000] + "…\n" in text


def big_metrics(**overrides: Any) -> PerformanceMetrics:
    values: dict[str, Any] = {
        "kind": "request", "name": "🐢" * 20000, "duration": 1.25, "threshold": 0.5,
        "started_at": datetime(2026, 12, 1, 10, 0, tzinfo=UTC), "method": "GET",
        "url": "https://shop.example.com/" + "€" * 30000, "path": "/" + "ß" * 30000,
        "status_code": 500, "error": "E" * 30000, "host": "h" * 5000,
    }
    values.update(overrides)
    return PerformanceMetrics(**values)


@pytest.mark.parametrize("max_bytes", [MAX_PAYLOAD_BYTES, 6000, 100])
def test_any_input_fits_the_payload_limit(max_bytes: int) -> None:
    report = Report(html="<html></html>", text="", filename="r.html",
                    url=BASE_URL + "r.html")
    body = build_payload(big_metrics(), report, resent=True, max_bytes=max_bytes)
    card = json.loads(body)["attachments"][0]["content"]
    assert card_problems(card) == []
    if max_bytes >= 6000:
        assert len(body) <= max_bytes
        assert "URL: https://shop.example.com/€€" in card_text(card)
    assert "Duration: 1.250 s, 2.5x the 0.500 s threshold" in card_text(card)
    assert card["actions"][0]["url"] == BASE_URL + "r.html"


def test_hung_and_function_alerts_have_their_own_titles() -> None:
    report = Report(html="", text="", filename="r.html")
    hung = build_card(big_metrics(name="orders", path="/orders", hung=True), report)
    title = hung["body"][0]["inlines"]
    assert "".join(r["text"] for r in title) == "Hung request GET /orders still running after " \
                                                "1.250 s"
    assert title[0]["color"] == "Attention"
    call = build_card(big_metrics(kind="function", name="tasks.export", method=None), report)
    assert card_text(call).splitlines()[0] == "Slow function tasks.export() took 1.250 s"
    assert card_text(call).count("Report: not written") == 1


def test_the_card_shows_the_shared_facts_in_their_order() -> None:
    """Which facts and in which order is decided once (``_message.alert_facts``);
    the card has a row for each of them, in that order, then its own Report
    row; the minimal card (for a tiny ``max_bytes``) only the brief ones."""
    report = Report(html="", text="", filename="r.html", url=BASE_URL + "r.html")
    metrics = big_metrics(name="orders", suppressed=2, endpoint_suppressed=4)

    def labels(card: dict[str, Any]) -> list[str]:
        return [block["inlines"][0]["text"].removesuffix(": ") for block in card["body"][1:-1]]

    assert labels(build_card(metrics, report)) == [
        *[f.label for f in alert_facts(metrics)], "Report"]
    assert [f.label for f in alert_facts(metrics)] == [
        "Endpoint", "URL", "Status", "Error", "Duration", "Started", "Host", "Suppressed",
        "Also suppressed", "Profile"]
    assert labels(build_card(metrics, report, minimal=True)) == ["Endpoint", "Duration",
                                                                 "Report"]
    # values from the request are monospace runs, our own text plain ones
    rows = {block["inlines"][0]["text"]: block["inlines"][1:] for block in
            build_card(metrics, report)["body"][1:-1]}
    assert [run.get("fontType") for run in rows["Host: "]] == ["Monospace", None]
    assert rows["Host: "][1]["text"] == f", pid {metrics.pid}"
    assert [run.get("fontType") for run in rows["Also suppressed: "]] == [None]


HOSTILE = ["@everyone", "**bold**", "[x](https://evil.example)", "<at>boss</at>", "# head"]


def test_hostile_request_data_is_shown_as_typed_never_as_markdown(
        teams_app: Callable[..., Channel], teams: TeamsWorkflowStandIn,
        signals_recorder: SignalRecorder) -> None:
    ch = teams_app()
    ch.get("/named/" + quote(" ".join(HOSTILE)) + "?sleep=0.5&q=%5Bx%5D(https://evil.example)")
    signals_recorder.wait_for("alert_sent")
    ch.flush()
    [card] = teams.cards
    assert card_problems(card) == []
    markdown, plain = card_texts(card)
    for text in markdown:
        for hostile in HOSTILE:
            assert hostile not in text, (hostile, text)
    runs = " ".join(plain)
    for hostile in HOSTILE:
        assert hostile in runs  # shown, as typed
    assert "msteams" not in json.dumps(card["body"])  # no mention entities


# --- secrets -----------------------------------------------------------------------------


def test_the_webhook_url_never_leaks(
        make_app: Callable[..., tuple[Flask, PerfWatch]], signals_recorder: SignalRecorder,
        caplog: pytest.LogCaptureFixture) -> None:
    with TeamsWorkflowStandIn(workflow_id=LONG_WORKFLOW_ID, sig="s1gN4tUr3-value_xyz") as s:
        app, perfwatch = make_app(notifiers=["teams"], teams_webhook_url=s.url,
                                  dedup_window=0, teams_retries=1)
        notifier = next(n for n in monitor_of(app).notifiers if isinstance(n, TeamsNotifier))
        delays: list[float] = []
        notifier.policy.sleep = delays.append
        # a server that echoes the signature and the workflow in its errors
        s.fail("invoke", 500, body={"error": {"code": "Boom", "message": f"sig {s.sig} of "
                                              f"{s.url} / workflow {LONG_WORKFLOW_ID}"}})
        s.fail("invoke", 401, body={"error": {"code": "DirectApiInvalidAuthorizationSignature",
                                              "message": f"signature '{s.sig}' is not valid"}})
        with caplog.at_level(logging.DEBUG):
            app.test_client().get("/slow")
            [failed] = signals_recorder.wait_for("alert_failed")
            app.test_client().get("/slow?again=1")
            signals_recorder.wait_for("alert_sent")
            assert perfwatch.flush(20, app)
            line = notifier.check()
        error = str(failed.kwargs["error"])
        assert "signature '[REDACTED]' is not valid" in error
        said = [error, caplog.text, line, repr(notifier)]
        for secret in (s.sig, LONG_WORKFLOW_ID, s.url):
            for text in said:
                assert secret not in text
            for hit in s.requests:
                assert secret not in hit.body.decode("utf-8", "replace")
                assert secret not in "".join(f"{k}: {v}" for k, v in hit.headers.items())
        assert "sig [REDACTED] of [REDACTED] / workflow [REDACTED]" in caplog.text
        assert line.startswith(f"Workflows webhook http://127.0.0.1:{s.port}/[REDACTED] set "
                               "and well-formed, signed (sig=); not contacted")
        assert repr(notifier) == f"<TeamsNotifier http://127.0.0.1:{s.port}/[REDACTED]>"
        assert len(s.cards) == 1


# --- configuration, check and the CLI ---------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    (None, "a Teams Workflows webhook URL (needed by the teams notifier"),
    ("https://contoso.webhook.office.com/webhookb2/1111-2222@3333/IncomingWebhook/"
     "c0ffee0123456789/4444", "Office 365 connector URL, and those are retired"),
    ("https://bot:hunter2@prod-00.westus.logic.azure.com/workflows/x", "without user:password@"),
])
def test_config_errors_at_init_app(url: str | None, expected: str,
                                   make_app: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError) as info:
        make_app(notifiers=["teams"], teams_webhook_url=url)
    message = str(info.value)
    assert message.startswith("PERFWATCH_TEAMS_WEBHOOK_URL=")
    assert expected in message
    for secret in ("c0ffee0123456789", "webhookb2", "hunter2", "/workflows/x"):
        assert secret not in message


def test_check_does_not_contact_the_workflow(teams: TeamsWorkflowStandIn) -> None:
    notifier = TeamsNotifier(Config(teams_webhook_url=teams.url))
    unsigned = TeamsNotifier(Config(teams_webhook_url="https://example.com/hook"))
    try:
        assert "not contacted" in notifier.check()
        assert teams.requests == []
        assert "no sig= parameter" in unsigned.check()
    finally:  # a live client's secrets stay in urllib3's log filter
        notifier.close()
        unsigned.close()


def test_flask_perfwatch_check_and_test_alert(
        teams_app: Callable[..., Channel], teams: TeamsWorkflowStandIn) -> None:
    ch = teams_app(report_base_url=BASE_URL)
    runner = ch.app.test_cli_runner()
    result = runner.invoke(perfwatch_cli, ["check"])
    assert result.exit_code == 0, result.output
    [row] = [line.split(None, 2) for line in result.output.splitlines()
             if line.strip().startswith("teams ")]
    assert row[:2] == ["teams", "OK"]
    assert "not contacted" in row[2]
    assert teams.requests == []
    assert teams.sig not in result.output
    result = runner.invoke(perfwatch_cli, ["test-alert"])
    assert result.exit_code == 0, result.output
    assert any(line.split() == ["teams", "OK", "delivered"]
               for line in result.output.splitlines()), result.output
    [card] = teams.cards
    assert "Endpoint: perfwatch.test_alert" in card_text(card)
    assert card["actions"][0]["url"].startswith(BASE_URL)
