"""The Discord notifier, driven through a real Flask app, the pipeline and
urllib3 against the Discord webhook stand-in in ``webhook_chat_servers.py``.

Faults and their expected outcome:

- 429 (JSON ``retry_after`` in float seconds, or milliseconds on API v6):
  the body's wait is honoured, one message;
- 5xx: retried with backoff, one message;
- no answer within the timeout, a connection dropped after Discord created
  the message: retried, so the message may arrive twice (webhooks take no
  idempotency key): the re-sent one says it may be a repeat;
- a connection dropped before Discord read the request: one message;
- 400, 401, 403: ``alert_failed`` at once, no retry;
- 404 (Unknown Webhook): this alert fails, the webhook is not used again (a
  log line says so, once) and later alerts fail without a request;
- 413 (file too large): sent again at once without the file, with the
  report's link or local path; later alerts skip the file up front;
- an emptied rate-limit bucket: the next post waits for it instead of a 429;
- hostile request data never pings (``allowed_mentions``) nor renders;
- the token never reaches a message, a log line, an error, ``check()`` or a repr.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from channel_harness import Channel, channel_app
from conftest import reports_in, wait_until
from flask import Flask
from webhook_chat_servers import DiscordMessage, DiscordWebhookStandIn

from flask_perfwatch import Config, PerfWatch
from flask_perfwatch.cli import perfwatch as perfwatch_cli
from flask_perfwatch.exceptions import ConfigError, NotifierError
from flask_perfwatch.metrics import PerformanceMetrics
from flask_perfwatch.notifiers._message import alert_facts
from flask_perfwatch.notifiers.discord import DiscordNotifier, build_content
from flask_perfwatch.profiling.base import Profile
from flask_perfwatch.testing import SignalRecorder

pytestmark = pytest.mark.slow

BASE_URL = "https://perf.example.com/reports/"




@pytest.fixture
def discord() -> Iterator[DiscordWebhookStandIn]:
    with DiscordWebhookStandIn() as server:
        yield server


@pytest.fixture
def discord_app(discord: DiscordWebhookStandIn,
                make_app: Callable[..., tuple[Flask, PerfWatch]]) -> Callable[..., Channel]:
    """``discord_app(**overrides)``: the test app posting to the stand-in, its
    backoff waits recorded (not slept) and the reports it was given kept."""

    def factory(*, notifiers: tuple[str, ...] = ("discord",), **overrides: Any) -> Channel:
        overrides.setdefault("discord_webhook_url", discord.url)
        overrides.setdefault("discord_timeout", 3.0)
        return channel_app(make_app, DiscordNotifier, notifiers=notifiers, **overrides)

    return factory


def outside_code(content: str) -> str:
    """``content`` without its inline code spans: what Discord renders."""
    return re.sub(r"`[^`\n]*`", "", content)


def alert_id(message: DiscordMessage) -> str:
    found = re.search(r"flask_perfwatch alert `([0-9a-f]{8})`", message.content)
    assert found, message.content
    return found.group(1)


# --- delivery ----------------------------------------------------------------------


def test_one_slow_request_is_one_message_with_the_report_attached(
        discord_app: Callable[..., Channel], discord: DiscordWebhookStandIn, report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    ch = discord_app()
    assert discord.requests == []  # nothing sent at init
    assert ch.get("/fast").status_code == 200
    assert ch.get("/slow?user=42").status_code == 201
    [sent] = signals_recorder.wait_for("alert_sent")
    ch.flush()
    metrics = sent.kwargs["metrics"]
    [report] = ch.reports
    [hit] = discord.hits("execute")
    assert hit.status == 200
    assert hit.path.startswith(f"/api/v10/webhooks/123/{discord.token}?")
    assert hit.query["wait"] == ["true"]
    assert hit.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    [message] = discord.messages
    assert message.payload["allowed_mentions"] == {"parse": []}
    assert message.payload["flags"] == 4  # SUPPRESS_EMBEDS
    assert message.payload["attachments"] == [{
        "id": 0, "filename": report.filename, "description": "flask_perfwatch report (HTML)"}]
    [attached] = message.files
    assert (attached.field, attached.filename, attached.content_type) == \
        ("files[0]", report.filename, "text/html")
    assert attached.data == report.html.encode("utf-8")
    assert "pyinstrument" in report.html
    content = message.content
    assert len(content) <= 2000
    assert content.splitlines()[0] == (
        f":hourglass: **Slow request** `GET /slow` took **{metrics.duration:.3f} s** "
        f"({metrics.over_by:.1f}x the 0.300 s threshold)")
    assert "**Endpoint:** `slow`" in content
    assert "**URL:** `http://localhost/slow?user=42`" in content
    assert "**Status:** 201" in content
    assert (f"**Duration:** {metrics.duration:.3f} s, {metrics.over_by:.1f}x the 0.300 s "
            "threshold") in content
    assert f"**Host:** `{metrics.host}`, pid {metrics.pid}" in content
    assert f"**Started:** {metrics.started_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" in content
    assert "**Suppressed:** none since the last alert" in content
    assert f"**Report:** attached: `{report.filename}`, open it in a browser" in content
    assert alert_id(message) == metrics.id[:8]
    # attached, so not written to disk
    assert reports_in(report_dir) == []
    assert ch.delays == []
    assert discord.pings == []


# --- retryable faults ------------------------------------------------------------------


def test_429_waits_for_the_bodys_float_retry_after(
        discord_app: Callable[..., Channel], discord: DiscordWebhookStandIn,
        signals_recorder: SignalRecorder, caplog: pytest.LogCaptureFixture) -> None:
    ch = discord_app()
    discord.rate_limit(2.25, is_global=True)  # Retry-After header: 3
    with caplog.at_level(logging.WARNING, "flask_perfwatch"):
        ch.get("/slow")
        signals_recorder.wait_for("alert_sent")
        ch.flush()
    limited, accepted = discord.hits("execute")
    assert (limited.status, accepted.status) == (429, 200)
    assert ch.delays == [2.25]
    assert len(discord.messages) == 1
    [retry] = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert "rate limited (429 global: You are being rate limited.)" in retry


def test_429_from_api_v6_counts_milliseconds(
        discord_app: Callable[..., Channel], discord: DiscordWebhookStandIn,
        signals_recorder: SignalRecorder) -> None:
    """A URL naming v6 is kept as it is; its 429 says ``retry_after: 2250``."""
    ch = discord_app(discord_webhook_url=discord.url.replace("/api/", "/api/v6/"))
    discord.rate_limit(2.25)
    ch.get("/slow")
    signals_recorder.wait_for("alert_sent")
    ch.flush()
    limited, _ = discord.hits("execute")
    assert limited.path.startswith("/api/v6/webhooks/")
    assert ch.delays == [2.25]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried_with_backoff(
        status: int, discord_app: Callable[..., Channel], discord: DiscordWebhookStandIn,
        signals_recorder: SignalRecorder) -> None:
    ch = discord_app()
    discord.fail("execute", status, times=2, body=b"<html>upstream connect error</html>")
    ch.get("/slow")
    signals_recorder.wait_for("alert_sent")
    ch.flush()
    assert [h.status for h in discord.hits("execute")] == [status, status, 200]
    assert len(discord.messages) == 1
    assert 0.5 <= ch.delays[0] <= 1.0
    assert 1.0 <= ch.delays[1] <= 2.0
    assert "Possibly a repeat" not in discord.messages[0].content


def test_a_connection_dropped_before_discord_read_it_is_retried_once(
        discord_app: Callable[..., Channel], discord: DiscordWebhookStandIn,
        signals_recorder: SignalRecorder) -> None:
    ch = discord_app()
    discord.drop("execute")
    ch.get("/slow")
    signals_recorder.wait_for("alert_sent")
    ch.flush()
    assert [h.fault for h in discord.hits("execute")] == ["drop", None]
    [message] = discord.messages
    assert len(message.files) == 1
    assert "**Possibly a repeat:**" in message.content  # it cannot know


def test_a_connection_dropped_after_the_message_was_created_gives_a_marked_duplicate(
        discord_app: Callable[..., Channel], discord: DiscordWebhookStandIn,
        signals_recorder: SignalRecorder) -> None:
    """The at-least-once case: webhooks take no idempotency key and a message
    cannot be found without its id, so the alert is sent again."""
    ch = discord_app()
    discord.drop("execute", when="after")
    ch.get("/slow")
    [sent] = signals_recorder.wait_for("alert_sent")
    ch.flush()
    first, second = discord.messages
    assert "Possibly a repeat" not in first.content
    assert f"**Possibly a repeat:** an earlier attempt to post alert " \
           f"`{sent.kwargs['metrics'].id[:8]}` got no answer." in second.content
    assert alert_id(first) == alert_id(second)


def test_an_answer_slower_than_the_timeout_is_retried(
        discord_app: Callable[..., Channel], discord: DiscordWebhookStandIn,
        signals_recorder: SignalRecorder) -> None:
    ch = discord_app(discord_timeout=0.5)
    discord.delay("execute", 2.0)
    ch.get("/slow")
    signals_recorder.wait_for("alert_sent")
    ch.flush()
    assert len(ch.delays) == 1
    wait_until(lambda: len(discord.messages) == 2, message="the late message")
    assert sorted("Possibly a repeat" in m.content for m in discord.messages) == [False, True]
    assert len({alert_id(m) for m in discord.messages}) == 1


def test_gives_up_after_the_retries(
        discord_app: Callable[..., Channel], discord: DiscordWebhookStandIn, report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    ch = discord_app(discord_retries=1)
    discord.fail("execute", 502, times=5)
    ch.get("/slow")
    error = ch.failure(signals_recorder, retryable=True)
    assert str(error).startswith("Discord: gave up after 2 attempt(s); last error: posting "
                                 "the message: Discord failed (HTTP 502")
    assert len(discord.hits("execute")) == 2
    assert len(reports_in(report_dir)) == 1  # kept by the pipeline


def test_an_emptied_bucket_makes_the_next_post_wait(
        discord_app: Callable[..., Channel], discord: DiscordWebhookStandIn,
        signals_recorder: SignalRecorder) -> None:
    ch = discord_app()
    discord.bucket_reset_after = 1.5
    ch.get("/slow")
    signals_recorder.wait_for("alert_sent")
    ch.flush()
    assert ch.delays == []
    ch.get("/slow?second=1")
    signals_recorder.wait_for("alert_sent", 2)
    ch.flush()
    [wait] = ch.delays
    assert 0 < wait <= 1.5
    assert [h.status for h in discord.hits("execute")] == [200, 200]


# --- permanent faults -------------------------------------------------------------------

PERMANENT: dict[str, tuple[Callable[[DiscordWebhookStandIn], dict[str, Any]], str]] = {
    "400": (lambda s: (s.fail("execute", 400, body={"message": "Invalid Form Body",
                                                    "code": 50035}), {})[1],
            "Discord rejected the message (400: Invalid Form Body (code 50035))"),
    "401 wrong token": (lambda s: {"discord_webhook_url": s.url.replace(s.token, "WRONGTOKEN")},
                        "the webhook token was refused (401: Invalid Webhook Token (code 50027))"),
    "403": (lambda s: (s.fail("execute", 403, body={"message": "Missing Permissions",
                                                    "code": 50013}), {})[1],
            "the webhook token was refused (403: Missing Permissions (code 50013))"),
}


@pytest.mark.parametrize("fault", PERMANENT.keys())
def test_client_errors_fail_at_once(
        fault: str, discord_app: Callable[..., Channel], discord: DiscordWebhookStandIn,
        report_dir: Path, signals_recorder: SignalRecorder) -> None:
    inject, expected = PERMANENT[fault]
    ch = discord_app(**inject(discord))
    ch.get("/slow")
    error = ch.failure(signals_recorder, retryable=False)
    assert str(error).startswith("Discord: posting the message: " + expected), str(error)
    assert len(discord.hits("execute")) == 1
    assert ch.delays == []
    assert discord.messages == []
    assert len(reports_in(report_dir)) == 1
    assert ch.notifier.disabled is None  # only a 404 retires the webhook


def test_a_deleted_webhook_is_not_used_again(
        discord_app: Callable[..., Channel], discord: DiscordWebhookStandIn,
        signals_recorder: SignalRecorder, caplog: pytest.LogCaptureFixture) -> None:
    ch = discord_app()
    discord.deleted = True
    with caplog.at_level(logging.WARNING, "flask_perfwatch"):
        ch.get("/slow")
        [first] = signals_recorder.wait_for("alert_failed")
        ch.get("/slow?again=1")
        ch.get("/slow?again=2")
        _, second, third = signals_recorder.wait_for("alert_failed", 3)
        ch.flush()
    assert str(first.kwargs["error"]).startswith(
        "Discord: posting the message: the webhook is gone (404: Unknown Webhook (code 10015)):"
        " it was deleted or the URL is wrong; set PERFWATCH_DISCORD_WEBHOOK_URL")
    for later in (second, third):
        error = later.kwargs["error"]
        assert not error.retryable
        assert str(error).startswith("Discord: not posting: the webhook answered 404 at ")
        assert "not used again" in str(error)
    assert len(discord.hits("execute")) == 1  # no request after the 404
    said = [r.getMessage() for r in caplog.records
            if r.name == "flask_perfwatch.notifiers.discord"]
    assert len([m for m in said if "stops using it" in m]) == 1
    assert discord.token not in caplog.text
    with pytest.raises(NotifierError, match="not posting: the webhook answered 404"):
        ch.notifier.check()


def test_a_file_too_large_is_left_out_with_the_local_path(
        discord_app: Callable[..., Channel], discord: DiscordWebhookStandIn, report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    ch = discord_app()
    discord.max_file_size = 2000  # a report is bigger
    ch.get("/slow")
    [sent] = signals_recorder.wait_for("alert_sent")
    ch.flush()
    too_large, accepted = discord.hits("execute")
    assert (too_large.status, accepted.status) == (413, 200)
    [message] = discord.messages
    assert message.files == []
    assert message.payload["attachments"] == []
    [path] = reports_in(report_dir)
    [report] = ch.reports
    assert path.read_text(encoding="utf-8") == report.html
    assert re.search(r"\*\*Report:\*\* not attached \(Discord refused the \d+(?:\.\d)? KiB "
                     r"file as too large \(413\)\); kept at `" + re.escape(str(path)) + "` on `"
                     + re.escape(sent.kwargs["metrics"].host) + "`", message.content)
    assert ch.delays == []  # not a retry: sent again at once
    # the next alert knows the limit: one request, no file
    ch.get("/slow?next=1")
    signals_recorder.wait_for("alert_sent", 2)
    ch.flush()
    assert [h.status for h in discord.hits("execute")] == [413, 200, 200]
    assert discord.messages[1].files == []


def test_a_file_too_large_links_to_the_report_when_served(
        discord_app: Callable[..., Channel], discord: DiscordWebhookStandIn,
        signals_recorder: SignalRecorder) -> None:
    ch = discord_app(report_base_url=BASE_URL)
    discord.max_file_size = 2000
    ch.get("/slow")
    signals_recorder.wait_for("alert_sent")
    ch.flush()
    [message] = discord.messages
    [report] = ch.reports
    assert report.url is not None
    assert report.url.startswith(BASE_URL)
    assert f"; open it at {report.url}\n" in message.content


# --- size and hostile data -----------------------------------------------------------------

HOSTILE = ["@everyone", "@here", "<@&123>", "<@42>", "**bold**", "[x](https://evil.example)",
           "||spoiler||", "`code`"]


def test_hostile_request_data_never_pings_nor_renders(
        discord_app: Callable[..., Channel], discord: DiscordWebhookStandIn,
        signals_recorder: SignalRecorder) -> None:
    ch = discord_app()
    ch.get("/named/" + quote(" ".join(HOSTILE)) + "?sleep=0.5&who=" + quote("@everyone"))
    signals_recorder.wait_for("alert_sent")
    ch.flush()
    [message] = discord.messages
    assert message.payload["allowed_mentions"] == {"parse": []}
    assert discord.pings == []
    rendered = outside_code(message.content)
    for hostile in HOSTILE:
        assert hostile not in rendered, hostile
    assert all(line.count("`") % 2 == 0 for line in message.content.splitlines())
    assert "@everyone @here <@&123> <@42> **bold**" in message.content  # shown, in code
    assert "\u02cbcode\u02cb" in message.content  # a backtick cannot close the span


def test_without_allowed_mentions_the_stand_in_sees_a_ping(
        discord: DiscordWebhookStandIn) -> None:
    """The stand-in's mention check is real: the same content without
    ``allowed_mentions`` would have pinged."""
    from webhook_chat_servers import would_ping

    content = build_content(big_metrics(url="https://x/@everyone <@&123>"))
    assert would_ping(content, None) == ["@everyone", "<@&123>"]
    assert would_ping(content, {"parse": []}) == []


def big_metrics(**overrides: Any) -> PerformanceMetrics:
    values: dict[str, Any] = {
        "kind": "request", "name": "orders.export", "duration": 1.25, "threshold": 0.5,
        "started_at": datetime(2026, 12, 1, 10, 0, tzinfo=UTC), "method": "GET",
        "url": "https://shop.example.com/orders", "path": "/orders", "status_code": 200,
    }
    values.update(overrides)
    return PerformanceMetrics(**values)


def test_the_content_shows_the_shared_facts_in_their_order() -> None:
    """Which facts and in which order is decided once (``_message.alert_facts``);
    the message shows each of them, in that order, between its own title,
    report line and alert id."""
    metrics = big_metrics(error="ValueError", suppressed=2, endpoint_suppressed=4, hung=True)
    content = build_content(metrics, report_line="attached: `r.html`", resent=True)
    lines = content.splitlines()
    assert lines[0] == (":rotating_light: **Hung request** `GET /orders` still running after "
                        "**1.250 s** (2.5x the 0.500 s threshold)")
    assert lines[1].startswith("**Possibly a repeat:**")
    labels = re.findall(r"^\*\*(.+?):\*\* ", "\n".join(lines[2:-2]), flags=re.MULTILINE)
    assert len(labels) == len(lines[2:-2])
    assert labels == [f.label for f in alert_facts(metrics)] == [
        "Endpoint", "URL", "Status", "Error", "Duration", "Started", "Host", "Suppressed",
        "Also suppressed", "Profile"]
    assert lines[-2:] == ["**Report:** attached: `r.html`",
                          f"-# flask_perfwatch alert `{metrics.id[:8]}`"]


def test_our_own_text_outside_code_is_escaped() -> None:
    """Only values from the request are code; our own text (here an engine's
    profile note, and the endpoint limit's key name) is shown as text with
    every Markdown, mention and link character escaped, and never holds a
    backtick that could open or close a code span."""
    from pyinstrument.session import Session

    session = Session(frame_records=[], start_time=0.0, duration=0.0, min_interval=0.001,
                      max_interval=0.001, sample_count=0, start_call_stack=[],
                      target_description="", cpu_time=0.0, sys_path=[], sys_prefixes=[])
    note = "@everyone **bold** <@&123> [x](https://evil.example) `tick` ||s|| ~~no~~ # h"
    metrics = big_metrics(endpoint_suppressed=2, profile=Profile(session, note=note))
    content = build_content(metrics)
    assert ("**Profile:** \\@everyone \\*\\*bold\\*\\* \\<\\@&123\\> "
            "\\[x\\](https://evil.example) \u02cbtick\u02cb \\|\\|s\\|\\| "
            "\\~\\~no\\~\\~ \\# h\n") in content
    assert ("**Also suppressed:** 2 more alerts of this endpoint suppressed (any params; "
            "PERFWATCH\\_ENDPOINT\\_ALERT\\_LIMIT per dedupe window)") in content
    assert all(line.count("`") % 2 == 0 for line in content.splitlines())


@pytest.mark.parametrize("limit", [2000, 600])
def test_content_fits_whatever_the_input(limit: int) -> None:
    metrics = big_metrics(name="🐢" * 5000, url="https://x/" + "€" * 9000, path="/" + "a" * 9000,
                          error="E" * 9000, host="h" * 3000, hung=True)
    content = build_content(metrics, report_line="attached: `r.html`", resent=True,
                            limit=limit)
    assert len(content) <= limit
    assert "**Hung request**" in content
    assert "still running after **1.250 s**" in content
    assert "**Report:** attached: `r.html`" in content
    assert "**Duration:** 1.250 s, 2.5x the 0.500 s threshold" in content
    # 2000 holds every fact with the values cut; 600 only the brief ones
    assert ("**Host:**" in content) is (limit == 2000)
    assert all(line.count("`") % 2 == 0 for line in content.splitlines())


def test_a_huge_request_fits_2000_characters(
        discord_app: Callable[..., Channel], discord: DiscordWebhookStandIn,
        signals_recorder: SignalRecorder) -> None:
    ch = discord_app()
    ch.get("/named/" + "x" * 3000 + "?sleep=0.5&" + "&".join(f"p{i}=" + "v" * 900
                                                             for i in range(20)))
    [sent] = signals_recorder.wait_for("alert_sent")
    ch.flush()
    [message] = discord.messages
    assert len(message.content) <= 2000
    assert f"**{sent.kwargs['metrics'].duration:.3f} s**" in message.content
    assert "**Endpoint:** `named`" in message.content
    assert "…`" in message.content  # the URL was cut
    assert len(message.files) == 1


# --- secrets -----------------------------------------------------------------------------


def test_the_token_never_leaks(
        discord_app: Callable[..., Channel], discord: DiscordWebhookStandIn,
        signals_recorder: SignalRecorder, caplog: pytest.LogCaptureFixture) -> None:
    ch = discord_app(discord_retries=1)
    # a proxy that echoes the URL in its error page, then a 401 that names the token
    discord.fail("execute", 502, body=f"<h1>bad gateway for {discord.url}</h1>".encode())
    discord.fail("execute", 401, body={"message": f"Invalid Webhook Token {discord.token}",
                                       "code": 50027})
    with caplog.at_level(logging.DEBUG):
        ch.get("/slow")
        [failed] = signals_recorder.wait_for("alert_failed")
        ch.get("/slow?again=1")
        signals_recorder.wait_for("alert_sent")
        ch.flush()
        line = ch.notifier.check()
    error = str(failed.kwargs["error"])
    assert "Invalid Webhook Token [REDACTED] (code 50027)" in error
    assert "bad gateway for [REDACTED]" in caplog.text
    for text in (error, caplog.text, line, repr(ch.notifier)):
        assert discord.token not in text
    for hit in discord.requests:
        assert discord.token.encode() not in hit.body
        assert discord.token not in "".join(f"{k}: {v}" for k, v in hit.headers.items())
    assert repr(ch.notifier) == f"<DiscordNotifier http://127.0.0.1:{discord.port}/[REDACTED] " \
                                "webhook 123>"


# --- configuration, check and the CLI ---------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    (None, "(needed by the discord notifier)"),
    ("https://discord.com/api/channels/1/messages", "a Discord webhook URL such as"),
    ("https://discord.com/api/webhooks/123/SECRETTOKEN/slack", "a Discord webhook URL such as"),
    ("https://discord.com/api/webhooks/abc/SECRETTOKEN", "a Discord webhook URL such as"),
])
def test_config_errors_at_init_app(url: str | None, expected: str,
                                   make_app: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError) as info:
        make_app(notifiers=["discord"], discord_webhook_url=url)
    message = str(info.value)
    assert message.startswith("PERFWATCH_DISCORD_WEBHOOK_URL=")
    assert expected in message
    assert "SECRETTOKEN" not in message


@pytest.mark.parametrize(("url", "posted"), [
    ("https://discord.com/api/webhooks/123/tok-EN_1", "https://discord.com/api/v10/webhooks/123/"
                                                      "tok-EN_1"),
    ("https://discord.com/api/v9/webhooks/123/tok/", "https://discord.com/api/v9/webhooks/123/"
                                                     "tok"),
    ("https://ptb.discord.com/api/webhooks/123/tok?thread_id=77&wait=false",
     "https://ptb.discord.com/api/v10/webhooks/123/tok?thread_id=77"),
    ("http://127.0.0.1:9/proxy/api/webhooks/123/tok", "http://127.0.0.1:9/proxy/api/v10/"
                                                      "webhooks/123/tok"),
])
def test_the_url_gets_an_api_version(url: str, posted: str) -> None:
    notifier = DiscordNotifier(Config(discord_webhook_url=url))
    assert notifier.url == posted
    assert notifier._post_url == posted + ("&" if "?" in posted else "?") + "wait=true"
    notifier.close()


def test_check_reads_the_webhook_without_posting(discord: DiscordWebhookStandIn) -> None:
    notifier = DiscordNotifier(Config(discord_webhook_url=discord.url))
    line = notifier.check()
    assert line == ("posts as 'perfwatch alerts' to channel 1100000000000000042 (server "
                    "1000000000000000007); nothing was posted")
    assert [h.route for h in discord.requests] == ["get"]
    bad = DiscordNotifier(Config(discord_webhook_url=discord.url.replace(discord.token, "nope")))
    with pytest.raises(NotifierError, match=r"token was refused \(401: Invalid Webhook Token"):
        bad.check()
    discord.deleted = True
    with pytest.raises(NotifierError, match=r"the webhook is gone \(404: Unknown Webhook"):
        notifier.check()
    assert notifier.disabled is None  # a check does not retire it
    assert discord.messages == []
    notifier.close()
    bad.close()


def test_flask_perfwatch_check_and_test_alert(
        discord_app: Callable[..., Channel], discord: DiscordWebhookStandIn) -> None:
    ch = discord_app(notifiers=("discord", "local"))
    runner = ch.app.test_cli_runner()
    result = runner.invoke(perfwatch_cli, ["check"])
    assert result.exit_code == 0, result.output
    assert any(line.split(None, 2)[:2] == ["discord", "OK"] and "posts as 'perfwatch alerts'"
               in line for line in result.output.splitlines()), result.output
    assert discord.messages == []
    assert discord.token not in result.output
    result = runner.invoke(perfwatch_cli, ["test-alert"])
    assert result.exit_code == 0, result.output
    assert any(line.split() == ["discord", "OK", "delivered"]
               for line in result.output.splitlines()), result.output
    [message] = discord.messages
    assert "**Endpoint:** `perfwatch.test_alert`" in message.content
    assert json.loads(json.dumps(message.payload))["allowed_mentions"] == {"parse": []}
