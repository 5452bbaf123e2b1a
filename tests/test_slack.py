"""The Slack notifier, driven through a real Flask app and the real
``slack_sdk`` ``WebClient`` against the wire-level stand-in in
``slack_server.py``.

Faults and their expected outcome (one message in the channel at most, ever):

- transient (5xx, ``internal_error``/``fatal_error``/``service_unavailable``,
  429 ``ratelimited`` with Retry-After, dropped connections, answers slower
  than the timeout), on any step: delivered exactly once, resuming where the
  previous attempt stopped; a completion whose answer was lost is checked with
  ``files.info`` before it is repeated;
- the token rejected, the channel unknown, not joined or archived: failed at
  once, one attempt, no fallback;
- the report cannot be uploaded (no ``files:write``, the upload URL refusing,
  the upload still failing on the last attempt, the completion refused):
  ``chat.postMessage`` with the report's link or path; a lost answer to that
  post is checked in the channel's history before it is repeated;
- retries used up, or a Retry-After beyond the budget: ``alert_failed``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from channel_harness import Channel, channel_app
from click.testing import Result
from conftest import SLOW, reports_in, wait_until
from flask import Flask
from slack_server import SlackStandIn

from flask_perfwatch import Config, PerfWatch
from flask_perfwatch.cli import perfwatch as perfwatch_cli
from flask_perfwatch.exceptions import ConfigError, NotifierError
from flask_perfwatch.metrics import PerformanceMetrics
from flask_perfwatch.notifiers._message import alert_facts
from flask_perfwatch.notifiers.slack import SlackNotifier, build_message
from flask_perfwatch.report import Report
from flask_perfwatch.testing import SignalRecorder

pytestmark = pytest.mark.slow

#: A Flask app whose Slack notifier talks to the stand-in.
Harness = Channel[SlackNotifier]

UPLOAD_FLOW = ["files.getUploadURLExternal", "upload", "files.completeUploadExternal"]


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    """The Slack Web API stand-in; fails the test if the client misused it."""
    pytest.importorskip("slack_sdk")
    with SlackStandIn() as server:
        yield server
    assert not server.errors, server.errors


@pytest.fixture
def slack_app(slack: SlackStandIn, make_app: Callable[..., tuple[Flask, PerfWatch]]
              ) -> Callable[..., Harness]:
    """``slack_app(**overrides)``: the test app posting to the stand-in; the
    backoff waits are recorded in ``harness.delays`` instead of slept."""

    def factory(*, notifiers: tuple[str, ...] = ("slack",), **overrides: Any) -> Harness:
        overrides.setdefault("slack_token", slack.token)
        overrides.setdefault("slack_channel", slack.channel_id)
        overrides.setdefault("slack_api_url", slack.api_url)
        overrides.setdefault("slack_timeout", 3.0)
        return channel_app(make_app, SlackNotifier, notifiers=notifiers, **overrides)

    return factory


def routes(slack: SlackStandIn) -> list[str]:
    return [hit.route for hit in slack.requests]


def assert_one_message_with_the_report(slack: SlackStandIn, report: Report) -> str:
    """The channel holds exactly one message, with the report uploaded: its text."""
    [message] = slack.messages_in()
    assert message.via == "files.completeUploadExternal"
    stored = slack.file_of(message)
    assert stored.data == report.html.encode()
    assert stored.filename == report.filename
    assert stored.title == report.filename
    assert f"download `{report.filename}` and open it in a browser" in message.text
    return message.text


def assert_one_fallback_message(slack: SlackStandIn) -> str:
    [message] = slack.messages_in()
    assert message.via == "chat.postMessage"
    assert message.files == []
    return message.text


# --- the happy path ----------------------------------------------------------------------


def test_one_slow_request_is_one_message_with_the_report_uploaded(
        slack_app: Callable[..., Harness], slack: SlackStandIn,
        signals_recorder: SignalRecorder, caplog: pytest.LogCaptureFixture) -> None:
    h = slack_app()
    assert slack.requests == []  # nothing is sent at init
    with caplog.at_level(logging.DEBUG):
        assert h.get("/fast").status_code == 200
        response = h.get("/slow?user=42&token=s3cr3t-value")
        assert response.status_code == 201
        assert response.data == b"slow"
        [sent] = signals_recorder.wait_for("alert_sent")
        h.flush()

    [report] = h.reports
    text = assert_one_message_with_the_report(slack, report)
    metrics = sent.kwargs["metrics"]
    assert text.startswith(f":hourglass: *Slow request* `GET /slow` took "
                           f"*{metrics.duration:.3f} s* (")
    assert "• *Endpoint:* `slow`" in text
    assert "user=42" in text
    assert "token=[REDACTED]" in text
    assert "• *Status:* 201" in text
    assert f"• *Host:* `{metrics.host}`, pid {metrics.pid}" in text
    assert (f"• *Duration:* {metrics.duration:.3f} s, {metrics.over_by:.1f}x the 0.300 s "
            "threshold") in text
    assert "• *Suppressed:* none since the last alert" in text
    assert "s3cr3t" not in text
    assert signals_recorder.count("alert_failed") == 0
    assert routes(slack) == UPLOAD_FLOW
    assert h.delays == []
    # the bytes of the upload are the report, sent raw, announced with their length
    get_url, upload, _ = slack.requests
    assert get_url.body == (f"filename={report.filename}&length={len(report.html.encode())}"
                            ).encode()
    assert upload.body == report.html.encode()
    # the token: in the Authorization header of each API call, nowhere else
    for hit in slack.requests:
        auth = [v for k, v in hit.headers.items() if k.lower() == "authorization"]
        assert auth == ([] if hit.route == "upload" else [f"Bearer {slack.token}"])
    assert slack.token.encode() in slack.received_bytes()  # the check below can see it
    assert slack.token.encode() not in slack.sent_bytes_except_auth()
    assert slack.token not in caplog.text
    assert slack.token not in repr(h.notifier)
    # slack_sdk's own DEBUG lines are kept, on our logger, masked
    assert any(r.name == "flask_perfwatch.notifiers.slack.sdk" for r in caplog.records)


def test_two_alerts_are_two_messages(slack_app: Callable[..., Harness], slack: SlackStandIn,
                                     signals_recorder: SignalRecorder) -> None:
    h = slack_app()
    h.get("/slow?page=1")
    h.get("/slow?page=2")
    signals_recorder.wait_for("alert_sent", 2)
    h.flush()
    messages = slack.messages_in()
    assert len(messages) == 2
    assert sorted("page=1" in m.text for m in messages) == [False, True]
    assert [slack.file_of(m).data for m in messages] == \
        [r.html.encode() for r in h.reports]


def test_a_hostile_path_cannot_mention_anyone(slack_app: Callable[..., Harness],
                                              slack: SlackStandIn,
                                              signals_recorder: SignalRecorder) -> None:
    h = slack_app()
    h.get("/named/<!everyone>?q=<!channel>&sleep=0.5&x=<@U0PERFBOT1>")
    signals_recorder.wait_for("alert_sent")
    h.flush()
    text = assert_one_message_with_the_report(slack, h.reports[0])
    assert "`GET /named/&lt;!everyone&gt;`" in text
    # no Slack control sequence can be formed: no raw < or > at all
    assert "<" not in text
    assert ">" not in text


def test_message_text() -> None:
    base = PerformanceMetrics(kind="request", name="orders.export", duration=2.412,
                              threshold=1.0, started_at=datetime(2026, 11, 28, 8, 52, 10,
                                                                 tzinfo=UTC),
                              method="GET", path="/orders/export", status_code=200,
                              url="https://shop.example.com/orders/export?a=1&b=<!here>",
                              suppressed=3, host="web-3", pid=4121,
                              suppressed_since=datetime(2026, 11, 28, 7, 0, tzinfo=UTC))
    assert build_message(base, attachment="ATTACHED") == (
        ":hourglass: *Slow request* `GET /orders/export` took *2.412 s* "
        "(2.4x the 1.000 s threshold)\n"
        "• *Endpoint:* `orders.export`\n"
        "• *URL:* `https://shop.example.com/orders/export?a=1&amp;b=&lt;!here&gt;`\n"
        "• *Status:* 200\n"
        "• *Duration:* 2.412 s, 2.4x the 1.000 s threshold\n"
        "• *Started:* 2026-11-28 08:52:10 UTC\n"
        "• *Host:* `web-3`, pid 4121\n"
        "• *Suppressed:* 3 similar slow requests suppressed since 2026-11-28 07:00 UTC\n"
        "• *Profile:* none captured (profiler off or no sample taken)\n"
        "ATTACHED")
    hung = build_message(dataclasses.replace(base, hung=True, path="/x`y`\n<!channel>",
                                             error="Boom <@U123|x> & more"))
    # one line: a newline is shown escaped, a backtick cannot end the code span
    assert hung.startswith(":rotating_light: *Hung request* `GET /x'y'\\n&lt;!channel&gt;` "
                           "still running after *2.412 s*")
    assert "• *Error:* `Boom &lt;@U123|x&gt; &amp; more`" in hung
    func = build_message(dataclasses.replace(base, kind="function", name="pkg.build",
                                             status_code=None))
    assert func.startswith(":hourglass: *Slow function* `pkg.build()` took")
    assert "• *Called in:* `GET https://shop.example.com/orders/export?a=1&amp;" in func
    assert "*Endpoint:*" not in func
    huge = build_message(dataclasses.replace(base, name="n" * 50_000, url="u" * 50_000))
    assert len(huge) < 2000
    assert all(line.count("`") % 2 == 0 for line in huge.splitlines())


def test_the_message_shows_the_shared_facts_in_their_order() -> None:
    """Which facts and in which order is decided once (``_message.alert_facts``);
    the message shows each of them, in that order, and nothing else."""
    metrics = PerformanceMetrics(kind="request", name="orders.export", duration=2.412,
                                 threshold=1.0, started_at=datetime(2026, 11, 28, 8, 52, 10,
                                                                    tzinfo=UTC),
                                 method="GET", path="/orders/export", status_code=500,
                                 url="https://shop.example.com/orders/export",
                                 error="ValueError", suppressed=1, endpoint_suppressed=4)
    text = build_message(metrics)
    labels = re.findall(r"^• \*(.+?):\* ", text, flags=re.MULTILINE)
    assert labels == [f.label for f in alert_facts(metrics)] == [
        "Endpoint", "URL", "Status", "Error", "Duration", "Started", "Host", "Suppressed",
        "Also suppressed", "Profile"]
    assert ("• *Also suppressed:* 4 more alerts of this endpoint suppressed (any params; "
            "PERFWATCH_ENDPOINT_ALERT_LIMIT per dedupe window)") in text


# --- transient faults: delivered exactly once ----------------------------------------------

TRANSIENT: dict[str, Callable[[SlackStandIn], None]] = {
    "getUploadURL 500": lambda s: s.fail("files.getUploadURLExternal", 500,
                                         body=b"<html>500 Internal Server Error</html>"),
    "getUploadURL internal_error": lambda s: s.error("files.getUploadURLExternal",
                                                     "internal_error"),
    "getUploadURL slower than the timeout": lambda s: s.delay("files.getUploadURLExternal",
                                                              2.0),
    "getUploadURL answer lost": lambda s: s.drop("files.getUploadURLExternal", when="after"),
    "upload 503": lambda s: s.fail("upload", 503, body=b"Service Unavailable"),
    "upload dropped": lambda s: s.drop("upload"),
    "upload stored, answer lost": lambda s: s.drop("upload", when="after"),
    "complete service_unavailable": lambda s: s.error("files.completeUploadExternal",
                                                      "service_unavailable"),
    "complete fatal_error": lambda s: s.error("files.completeUploadExternal", "fatal_error"),
    "complete internal_error": lambda s: s.error("files.completeUploadExternal",
                                                 "internal_error"),
    "complete request_timeout": lambda s: s.error("files.completeUploadExternal",
                                                  "request_timeout"),
    "complete 502": lambda s: s.fail("files.completeUploadExternal", 502),
    "complete dropped before taking effect": lambda s: s.drop("files.completeUploadExternal"),
    "complete took effect, answer lost": lambda s: s.drop("files.completeUploadExternal",
                                                          when="after"),
    "getUploadURL 429 + Retry-After": lambda s: s.rate_limit("files.getUploadURLExternal", 3),
    "complete 429 + Retry-After": lambda s: s.rate_limit("files.completeUploadExternal", 7),
    "upload 429 without Retry-After": lambda s: s.fail("upload", 429),
}


@pytest.mark.parametrize("fault", TRANSIENT.keys())
def test_transient_fault_delivers_exactly_once(
        fault: str, slack_app: Callable[..., Harness], slack: SlackStandIn,
        signals_recorder: SignalRecorder) -> None:
    h = slack_app(slack_timeout=1.0)
    TRANSIENT[fault](slack)
    h.get("/slow")
    signals_recorder.wait_for("alert_sent")
    h.flush()
    [report] = h.reports
    assert_one_message_with_the_report(slack, report)
    assert signals_recorder.count("alert_failed") == 0
    assert len(h.delays) == 1
    if "+ Retry-After" in fault:
        assert h.delays == [3.0 if "getUploadURL" in fault else 7.0]
    else:
        assert 0.5 <= h.delays[0] <= 1.0  # the first backoff: 1 s with jitter
    completions = slack.hits("files.completeUploadExternal")
    file_checks = slack.hits("files.info")
    if fault.startswith("complete") and not fault.endswith(
            ("Retry-After", "service_unavailable", "request_timeout")):
        # the outcome was unknown: asked files.info before completing again
        assert len(file_checks) == 1
        assert len(completions) == (1 if fault.endswith("answer lost") else 2)
    else:
        assert file_checks == []
    if fault.startswith(("upload", "complete")):
        # the URL and the bytes that got through are kept: one getUploadURL
        assert len(slack.hits("files.getUploadURLExternal")) == 1
    if fault.startswith("complete"):
        assert len(slack.hits("upload")) == 1
    assert slack.hits("chat.postMessage") == []


def test_a_completion_slower_than_the_timeout_is_not_posted_twice(
        slack_app: Callable[..., Harness], slack: SlackStandIn,
        signals_recorder: SignalRecorder) -> None:
    h = slack_app(slack_timeout=0.5)
    # the server completes it after the client gave up (and after the retry)
    slack.delay("files.completeUploadExternal", 2.0)
    h.get("/slow")
    signals_recorder.wait_for("alert_sent")
    h.flush()
    wait_until(lambda: all(hit.status is not None
                           for hit in slack.hits("files.completeUploadExternal")),
               message="the late completion handled")
    late, retry = slack.hits("files.completeUploadExternal")
    assert (late.fault, retry.fault) == ("delay", None)
    assert_one_message_with_the_report(slack, h.reports[0])
    assert len(slack.hits("files.info")) == 1


@pytest.mark.parametrize("when", ["request", "after"])
def test_without_files_read_a_lost_completion_relies_on_slack_completing_once(
        when: str, slack_app: Callable[..., Harness], slack: SlackStandIn,
        signals_recorder: SignalRecorder) -> None:
    slack.scopes.discard("files:read")
    h = slack_app()
    slack.drop("files.completeUploadExternal", when=when)
    h.get("/slow")
    if when == "request":  # it did not take effect: completed by the retry
        signals_recorder.wait_for("alert_sent")
        h.flush()
        assert routes(slack) == [*UPLOAD_FLOW, "files.info", "files.completeUploadExternal"]
    else:  # it did: Slack refuses a second completion, and nothing can confirm the first
        [failed] = signals_recorder.wait_for("alert_failed")
        h.flush()
        error = failed.kwargs["error"]
        assert not error.retryable
        assert str(error) == (
            "Slack: files.completeUploadExternal: Slack refused the request (file_not_found); "
            "an earlier completion whose answer was lost may have posted the alert, so it is "
            "not posted again")
        assert routes(slack) == [*UPLOAD_FLOW, "files.info", "files.completeUploadExternal",
                                 "files.info"]
    assert_one_message_with_the_report(slack, h.reports[0])


def test_gives_up_after_the_retries_and_keeps_the_report(
        slack_app: Callable[..., Harness], slack: SlackStandIn, report_dir: Path,
        signals_recorder: SignalRecorder, caplog: pytest.LogCaptureFixture) -> None:
    h = slack_app(slack_retries=2)
    slack.fail("files.completeUploadExternal", 500, times=10)
    with caplog.at_level(logging.WARNING, "flask_perfwatch"):
        h.get("/slow")
        [failed] = signals_recorder.wait_for("alert_failed")
        h.flush()
    error = failed.kwargs["error"]
    assert isinstance(error, NotifierError)
    assert error.retryable
    assert str(error) == ("Slack: gave up after 3 attempt(s); last error: "
                          "files.completeUploadExternal: Slack failed (HTTP 500)")
    # the completion may have worked each time: never a fallback post
    assert routes(slack) == [*UPLOAD_FLOW, "files.info", "files.completeUploadExternal",
                             "files.info", "files.completeUploadExternal"]
    assert slack.messages == []
    assert len(h.delays) == 2
    assert 0.5 <= h.delays[0] <= 1.0
    assert 1.0 <= h.delays[1] <= 2.0
    assert len([r for r in caplog.records if "retrying in" in r.getMessage()]) == 2
    [path] = reports_in(report_dir)
    assert path.read_text(encoding="utf-8") == h.reports[0].html


def test_a_retry_after_beyond_the_budget_gives_up_at_once(
        slack_app: Callable[..., Harness], slack: SlackStandIn,
        signals_recorder: SignalRecorder) -> None:
    h = slack_app()
    slack.rate_limit("files.getUploadURLExternal", 600)
    h.get("/slow")
    [failed] = signals_recorder.wait_for("alert_failed")
    h.flush()
    assert "the next wait (600.0s) would pass the 60s" in str(failed.kwargs["error"])
    assert "rate limited (HTTP 429 ratelimited, Retry-After 600s)" in \
        str(failed.kwargs["error"])
    assert h.delays == []
    assert routes(slack) == ["files.getUploadURLExternal"]


# --- permanent faults: one attempt, no fallback ----------------------------------------------

PERMANENT: dict[str, tuple[dict[str, Any], Callable[[SlackStandIn], None], list[str], str]] = {
    "wrong token": ({"slack_token": "xoxb-1234567890-wrong-token-value"}, lambda s: None,
                    ["files.getUploadURLExternal"],
                    "files.getUploadURLExternal: the token was rejected (invalid_auth); check "
                    "PERFWATCH_SLACK_TOKEN"),
    "revoked token": ({}, lambda s: setattr(s, "revoked", True),
                      ["files.getUploadURLExternal"],
                      "the token was rejected (token_revoked)"),
    "bot not in the channel": ({"slack_channel": "C0RANDOM01"}, lambda s: None, UPLOAD_FLOW,
                               "files.completeUploadExternal: the bot is not a member of "
                               "channel C0RANDOM01 (not_in_channel); invite it with /invite"),
    "unknown channel": ({"slack_channel": "C0NOSUCH01"}, lambda s: None, UPLOAD_FLOW,
                        "channel C0NOSUCH01 not found (channel_not_found); check "
                        "PERFWATCH_SLACK_CHANNEL"),
    "private channel, bot not in it": ({"slack_channel": "C0SECRET01"}, lambda s: None,
                                       UPLOAD_FLOW, "(channel_not_found)"),
    "archived channel": ({"slack_channel": "C0OLDSTUFF"}, lambda s: None, UPLOAD_FLOW,
                         "channel C0OLDSTUFF is archived (is_archived)"),
}


@pytest.mark.parametrize("case", PERMANENT.keys())
def test_permanent_fault_fails_at_once(
        case: str, slack_app: Callable[..., Harness], slack: SlackStandIn, report_dir: Path,
        signals_recorder: SignalRecorder, caplog: pytest.LogCaptureFixture) -> None:
    overrides, inject, expected_routes, expected = PERMANENT[case]
    h = slack_app(**overrides)
    inject(slack)
    with caplog.at_level(logging.DEBUG):
        h.get("/slow")
        [failed] = signals_recorder.wait_for("alert_failed")
        h.flush()
    error = failed.kwargs["error"]
    assert isinstance(error, NotifierError)
    assert not error.retryable
    assert expected in str(error)
    assert routes(slack) == expected_routes
    assert h.delays == []
    assert slack.messages == []
    assert len(reports_in(report_dir)) == 1
    for secret in (slack.token, overrides.get("slack_token", slack.token)):
        assert secret not in str(error)
        assert secret not in caplog.text


# --- the report cannot be uploaded: chat.postMessage with its link ---------------------------


def test_without_files_write_the_message_links_the_report(
        slack_app: Callable[..., Harness], slack: SlackStandIn, report_dir: Path,
        signals_recorder: SignalRecorder, caplog: pytest.LogCaptureFixture) -> None:
    slack.scopes.discard("files:write")
    h = slack_app()
    with caplog.at_level(logging.WARNING, "flask_perfwatch"):
        h.get("/slow?n=1")
        [sent] = signals_recorder.wait_for("alert_sent")
        h.flush()
    text = assert_one_fallback_message(slack)
    [path] = reports_in(report_dir)
    assert path.read_text(encoding="utf-8") == h.reports[0].html
    host = sent.kwargs["metrics"].host
    assert text.endswith(
        "The report could not be attached (files.getUploadURLExternal: the token lacks the "
        "files:write scope (missing_scope); add it under OAuth &amp; Permissions and reinstall "
        f"the app); it is kept on `{host}` at `{path}`.")
    assert text.startswith(":hourglass: *Slow request* `GET /slow` took")
    [post] = slack.hits("chat.postMessage")
    body = post.json()
    assert body["metadata"] == {"event_type": "perfwatch_alert",
                                "event_payload": {"alert_id": sent.kwargs["metrics"].id}}
    assert (body["unfurl_links"], body["unfurl_media"]) == (False, False)
    assert any("until the app restarts" in r.getMessage() for r in caplog.records)
    # the next alert does not try to upload again
    h.get("/slow?n=2")
    signals_recorder.wait_for("alert_sent", 2)
    h.flush()
    assert routes(slack) == ["files.getUploadURLExternal", "chat.postMessage",
                             "chat.postMessage"]
    assert slack.token.encode() not in slack.sent_bytes_except_auth()


def test_the_fallback_links_to_the_report_url(
        slack_app: Callable[..., Harness], slack: SlackStandIn,
        signals_recorder: SignalRecorder) -> None:
    h = slack_app(report_base_url="https://perf.example.com/reports/")
    slack.fail("upload", 403, body=b"Forbidden")
    h.get("/slow")
    signals_recorder.wait_for("alert_sent")
    h.flush()
    text = assert_one_fallback_message(slack)
    [report] = h.reports
    assert report.url == f"https://perf.example.com/reports/{report.filename}"
    assert text.endswith("The report could not be attached (uploading the report: HTTP 403): "
                         f"<{report.url}|open it>.")
    assert routes(slack) == [*UPLOAD_FLOW[:2], "chat.postMessage"]
    assert h.delays == []


def test_an_upload_failing_to_the_last_attempt_falls_back(
        slack_app: Callable[..., Harness], slack: SlackStandIn,
        signals_recorder: SignalRecorder) -> None:
    h = slack_app(slack_retries=1)
    slack.fail("upload", 503, times=10)
    h.get("/slow")
    signals_recorder.wait_for("alert_sent")
    h.flush()
    text = assert_one_fallback_message(slack)
    assert "(the upload kept failing: uploading the report: HTTP 503)" in text
    assert routes(slack) == ["files.getUploadURLExternal", "upload", "upload",
                             "chat.postMessage"]
    assert len(h.delays) == 1


def test_a_refused_completion_falls_back(slack_app: Callable[..., Harness],
                                         slack: SlackStandIn,
                                         signals_recorder: SignalRecorder) -> None:
    h = slack_app()
    slack.error("files.completeUploadExternal", "invalid_arguments")
    h.get("/slow")
    signals_recorder.wait_for("alert_sent")
    h.flush()
    text = assert_one_fallback_message(slack)
    assert "(files.completeUploadExternal: Slack refused the request (invalid_arguments))" \
        in text
    assert routes(slack) == [*UPLOAD_FLOW, "chat.postMessage"]


@pytest.mark.parametrize("when", ["request", "after"])
def test_a_lost_fallback_post_is_checked_before_it_is_repeated(
        when: str, slack_app: Callable[..., Harness], slack: SlackStandIn,
        signals_recorder: SignalRecorder) -> None:
    slack.scopes.discard("files:write")
    h = slack_app()
    slack.drop("chat.postMessage", when=when)
    h.get("/slow")
    signals_recorder.wait_for("alert_sent")
    h.flush()
    assert_one_fallback_message(slack)
    took_effect = when == "after"
    assert routes(slack) == ["files.getUploadURLExternal", "chat.postMessage",
                             "conversations.history"] + ([] if took_effect
                                                         else ["chat.postMessage"])
    assert len(h.delays) == 1


def test_a_lost_fallback_post_is_not_repeated_when_the_history_is_unreadable(
        slack_app: Callable[..., Harness], slack: SlackStandIn,
        signals_recorder: SignalRecorder) -> None:
    slack.scopes -= {"files:write", "channels:history"}
    h = slack_app()
    slack.drop("chat.postMessage")  # it did not arrive, but nothing can tell
    h.get("/slow")
    [failed] = signals_recorder.wait_for("alert_failed")
    h.flush()
    error = str(failed.kwargs["error"])
    assert error.startswith("Slack: the answer to chat.postMessage was lost and the "
                            "channel's history cannot be read")
    assert "it is not posted again, to avoid a duplicate" in error
    assert routes(slack) == ["files.getUploadURLExternal", "chat.postMessage",
                             "conversations.history"]


# --- configuration, check() and the CLI ----------------------------------------------------

GOOD = {"notifiers": ("slack",), "slack_token": "xoxb-1-abc", "slack_channel": "C0123456789"}


@pytest.mark.parametrize(("overrides", "key", "expected"), [
    ({"slack_token": None}, "PERFWATCH_SLACK_TOKEN", "a Slack bot token (xoxb-...)"),
    ({"slack_token": "Bearer xoxb-1-s3cr3t"}, "PERFWATCH_SLACK_TOKEN", "starting with 'xoxb-'"),
    ({"slack_channel": None}, "PERFWATCH_SLACK_CHANNEL", "a channel ID such as 'C0123456789'"),
    ({"slack_channel": "#perf-alerts"}, "PERFWATCH_SLACK_CHANNEL", "not its '#name'"),
])
def test_config_errors_at_init_app(overrides: dict[str, Any], key: str, expected: str,
                                   make_app: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError) as info:
        make_app(**{**GOOD, **overrides})
    assert str(info.value).startswith(f"{key}=")
    assert "(from keyword argument)" in str(info.value)
    assert expected in str(info.value)
    assert "s3cr3t" not in str(info.value)
    assert "abc" not in str(info.value)


def test_missing_slack_sdk_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "slack_sdk", None)
    with pytest.raises(ConfigError,
                       match=re.escape("needs the slack_sdk package: pip install "
                                       "'flask-perfwatch[slack]'")):
        SlackNotifier(Config(**GOOD))


def notifier_for(slack: SlackStandIn, **overrides: Any) -> SlackNotifier:
    settings: dict[str, Any] = {"slack_token": slack.token, "slack_channel": slack.channel_id,
                                "slack_api_url": slack.api_url, "slack_timeout": 3.0}
    return SlackNotifier(Config(**{**settings, **overrides}))


def test_check_confirms_the_token_and_the_channel_without_posting(slack: SlackStandIn) -> None:
    assert notifier_for(slack).check() == (
        "posts as @perfwatch on Acme Perf (https://acme-perf.slack.com/) to #perf-alerts "
        "(C0PERFALRT)")
    with pytest.raises(NotifierError, match=re.escape(
            "Slack: the bot @perfwatch is not a member of #random (C0RANDOM01): invite it "
            "with /invite @perfwatch")):
        notifier_for(slack, slack_channel="C0RANDOM01").check()
    with pytest.raises(NotifierError, match=re.escape("channel #old-stuff (C0OLDSTUFF) is "
                                                      "archived")):
        notifier_for(slack, slack_channel="C0OLDSTUFF").check()
    with pytest.raises(NotifierError, match=r"channel C0NOSUCH01 not found \(channel_not_fo"):
        notifier_for(slack, slack_channel="C0NOSUCH01").check()
    with pytest.raises(NotifierError) as info:
        notifier_for(slack, slack_token="xoxb-1234567890-wrong-token-value").check()
    assert str(info.value) == ("Slack: auth.test: the token was rejected (invalid_auth); "
                               "check PERFWATCH_SLACK_TOKEN")
    assert not info.value.retryable
    slack.scopes -= {"channels:read", "files:write"}
    line = notifier_for(slack).check()
    assert "to channel C0PERFALRT (not looked up: conversations.info: the token lacks the " \
           "channels:read scope (missing_scope)" in line
    assert line.endswith("; reports will be linked, not uploaded (the token lacks files:write)")
    assert {hit.route for hit in slack.requests} == {"auth.test", "conversations.info"}
    assert slack.messages == []


def test_check_of_an_unreachable_api_is_retryable(slack: SlackStandIn) -> None:
    slack.fail("auth.test", 503)
    with pytest.raises(NotifierError, match=re.escape("Slack: auth.test: Slack failed "
                                                      "(HTTP 503)")) as info:
        notifier_for(slack).check()
    assert info.value.retryable


def run_cli(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(perfwatch_cli, list(args))


def cli_row(result: Result, label: str) -> str:
    [row] = [" ".join(line.split()) for line in result.output.splitlines()
             if line.split()[:1] == [label] and line.split()[1:2] in (["OK"], ["FAILED"])]
    return row


def test_flask_perfwatch_check_and_test_alert(slack_app: Callable[..., Harness],
                                              slack: SlackStandIn) -> None:
    h = slack_app(notifiers=("slack", "local"), slack_retries=0)
    result = run_cli(h.app, "check")
    assert result.exit_code == 0, result.output
    assert cli_row(result, "slack") == ("slack OK posts as @perfwatch on Acme Perf "
                                        "(https://acme-perf.slack.com/) to #perf-alerts "
                                        "(C0PERFALRT)")
    assert slack.token not in result.output
    assert slack.messages == []
    result = run_cli(h.app, "test-alert")
    assert result.exit_code == 0, result.output
    assert cli_row(result, "slack") == "slack OK delivered"
    [message] = slack.messages_in()
    assert "`perfwatch.test_alert`" in message.text
    assert slack.file_of(message).data == h.reports[0].html.encode()
    assert slack.token not in result.output


def test_a_hung_api_costs_the_app_nothing(slack_app: Callable[..., Harness],
                                           slack: SlackStandIn,
                                           signals_recorder: SignalRecorder) -> None:
    h = slack_app(slack_timeout=0.5, slack_retries=0)
    slack.delay("files.getUploadURLExternal", 30.0)
    client = h.app.test_client()
    start = time.perf_counter()
    assert client.get("/slow").status_code == 201
    assert time.perf_counter() - start < SLOW + 2  # the API hangs for 30 s
    signals_recorder.wait_for("alert_sent")
    h.flush()
    # retries=0: the one attempt is the last, so the message goes out with the link
    text = assert_one_fallback_message(slack)
    assert "(the upload kept failing: files.getUploadURLExternal: no answer within 0.5s " \
           "(PERFWATCH_SLACK_TIMEOUT))" in text
    assert routes(slack) == ["files.getUploadURLExternal", "chat.postMessage"]
