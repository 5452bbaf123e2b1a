"""The Mattermost notifier, driven through a real Flask app and the real
``mattermostdriver`` against the wire-level stand-in in ``mattermost_server.py``.

Faults and their expected outcome:

- transient (5xx, 429 with Retry-After or X-RateLimit-Reset, dropped
  connections, a response slower than the timeout): delivered exactly once,
  the report uploaded once, never a duplicate post;
- retries used up, or a wait longer than the backoff budget: ``alert_failed``,
  the report kept on disk;
- 400/401/403 and a 413 on the post: ``alert_failed`` at once, no retry;
- a report too big for the server (413 on upload) or uploads disabled (501):
  shrunk, else posted without it, saying where the local copy is;
- a hung server: the app's responses and latency are unaffected.
"""

from __future__ import annotations

import logging
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import SLOW, reports_in, wait_until
from mattermost_harness import Harness
from mattermost_server import MattermostStandIn
from werkzeug.serving import make_server

from flask_perfwatch import Config
from flask_perfwatch.exceptions import ConfigError, NotifierError
from flask_perfwatch.metrics import PerformanceMetrics
from flask_perfwatch.notifiers._message import alert_facts
from flask_perfwatch.notifiers.mattermost import (
    MAX_MESSAGE_LENGTH,
    MattermostNotifier,
    build_message,
)
from flask_perfwatch.profiling.base import Profile
from flask_perfwatch.report import Report, format_size, render_report
from flask_perfwatch.testing import SignalRecorder

pytestmark = pytest.mark.slow


def assert_one_post_with_report(standin: MattermostStandIn, report: Report) -> dict[str, Any]:
    assert len(standin.posts) == 1, [p["message"][:60] for p in standin.posts]
    post = standin.posts[0]
    files = standin.attached_files(post)
    assert len(files) == 1
    assert files[0].data == report.html.encode()
    assert files[0].name == report.filename
    assert files[0].mime_type == "text/html"
    assert post["channel_id"] == standin.channel_id
    return post


# --- the happy path ------------------------------------------------------------


def test_one_slow_request_is_one_post_with_the_report_attached(
        mm_app: Callable[..., Harness], standin: MattermostStandIn,
        signals_recorder: SignalRecorder) -> None:
    h = mm_app()
    assert standin.arrivals == []  # nothing is sent at init
    assert h.get("/fast").status_code == 200
    response = h.get("/slow?user=42&token=s3cr3t-value")
    assert response.status_code == 201
    assert response.data == b"slow"
    signals_recorder.wait_for("alert_sent")
    h.flush()

    [report] = h.reports
    post = assert_one_post_with_report(standin, report)
    [sent] = signals_recorder.of("alert_sent")
    metrics = sent.kwargs["metrics"]
    message = post["message"]
    assert message.startswith("#### :hourglass: Slow request `GET /slow` took ")
    assert "- **Endpoint:** `slow`" in message
    assert "user=42" in message
    assert "token=[REDACTED]" in message
    assert "s3cr3t" not in message
    assert "s3cr3t" not in standin.attached_files(post)[0].data.decode()
    assert (f"- **Duration:** {metrics.duration:.3f} s, {metrics.over_by:.1f}x the 0.300 s "
            "threshold") in message
    assert "- **Status:** 201" in message
    assert f"- **Host:** `{metrics.host}`, pid {metrics.pid}" in message
    assert "- **Suppressed:** none since the last alert" in message
    assert f"open `{report.filename}` in a browser" in message
    assert post["pending_post_id"].startswith(standin.user_id + ":")
    assert post["props"] == {"perfwatch_alert_id": metrics.id}
    assert "pyinstrument" in report.html
    assert signals_recorder.count("alert_failed") == 0
    # a single delivery: token check, channel lookup, upload, post
    assert standin.arrivals == ["me", "channel_by_name", "upload", "post"]
    assert all(hit.headers["Authorization"] == f"Bearer {standin.token}"
               for hit in standin.requests)


def test_the_second_alert_reuses_the_login_and_the_channel(
        mm_app: Callable[..., Harness], standin: MattermostStandIn,
        signals_recorder: SignalRecorder) -> None:
    h = mm_app(dedup_window="1h")
    h.get("/slow?page=1")
    h.get("/slow?page=1")  # suppressed by dedupe
    h.get("/slow?page=2")
    signals_recorder.wait_for("alert_sent", 2)
    h.flush()
    assert len(standin.posts) == 2
    assert standin.arrivals.count("me") == 1
    assert standin.arrivals.count("channel_by_name") == 1
    assert len({p["pending_post_id"] for p in standin.posts}) == 2


def test_local_and_mattermost_get_the_same_report(
        mm_app: Callable[..., Harness], standin: MattermostStandIn, report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    h = mm_app(notifiers=("local", "mattermost"))
    h.get("/slow")
    signals_recorder.wait_for("alert_sent", 2)
    h.flush()
    [report] = h.reports
    assert_one_post_with_report(standin, report)
    [path] = reports_in(report_dir)
    assert path.read_bytes() == standin.attached_files(standin.posts[0])[0].data
    assert {e.kwargs["notifier"].name for e in signals_recorder.of("alert_sent")} == \
        {"local", "mattermost"}


def test_over_a_real_socket(mm_app: Callable[..., Harness], standin: MattermostStandIn,
                            signals_recorder: SignalRecorder) -> None:
    h = mm_app(mattermost_channel_id=standin.channel_id)
    server = make_server("127.0.0.1", 0, h.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        response = requests.get(f"http://127.0.0.1:{server.port}/slow", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert response.status_code == 201
    assert response.text == "slow"
    signals_recorder.wait_for("alert_sent")
    h.flush()
    [report] = h.reports
    assert_one_post_with_report(standin, report)
    # by id: no lookup at all
    assert standin.arrivals == ["me", "upload", "post"]


# --- transient faults: delivered once ------------------------------------------

TRANSIENT: dict[str, Callable[[MattermostStandIn], None]] = {
    "post 500 twice": lambda s: s.fail("post", 500, times=2),
    "upload 503 from a proxy (not JSON)": lambda s: s.fail(
        "upload", 503, body=b"<html><body>503 Service Unavailable</body></html>"),
    "users/me 502": lambda s: s.fail("me", 502),
    "channel lookup 500": lambda s: s.fail("channel_by_name", 500),
    "upload connection dropped mid-request": lambda s: s.drop("upload"),
    "post connection dropped mid-request": lambda s: s.drop("post"),
    "post created, then connection dropped": lambda s: s.drop("post", when="after"),
    "upload stored, then connection dropped": lambda s: s.drop("upload", when="after"),
    "post created, connection dropped mid-answer": lambda s: s.drop("post", when="response"),
    "post 429 + Retry-After": lambda s: s.rate_limit("post", retry_after=3),
    "upload 429 + X-RateLimit-Reset only": lambda s: s.rate_limit(
        "upload", retry_after=None, reset=7),
}


@pytest.mark.parametrize("fault", TRANSIENT.keys())
def test_transient_fault_delivers_exactly_once(
        fault: str, mm_app: Callable[..., Harness], standin: MattermostStandIn,
        signals_recorder: SignalRecorder) -> None:
    h = mm_app()
    TRANSIENT[fault](standin)
    h.get("/slow")
    signals_recorder.wait_for("alert_sent")
    h.flush()
    [report] = h.reports
    assert_one_post_with_report(standin, report)
    assert signals_recorder.count("alert_failed") == 0
    assert len(h.delays) == (2 if "twice" in fault else 1)
    if "Retry-After" in fault:
        assert h.delays == [3.0]
    elif "X-RateLimit-Reset" in fault:
        assert h.delays == [7.0]
    else:
        assert 0.5 <= h.delays[0] <= 1.0  # first backoff: 1 s with jitter
    # an upload that succeeded is never repeated because the post failed
    if "upload" not in fault:
        assert len(standin.hits("upload")) == 1
    if fault.startswith("post created"):
        # the retry carried the same pending_post_id: the server answered with
        # the post it had already created instead of making a second one
        assert len(standin.hits("post")) == 2


def test_a_post_slower_than_the_timeout_is_retried_and_not_duplicated(
        mm_app: Callable[..., Harness], standin: MattermostStandIn,
        signals_recorder: SignalRecorder) -> None:
    h = mm_app(mattermost_timeout=0.5)
    standin.delay("post", 1.5)  # the server still creates it, after the client gave up
    h.get("/slow")
    signals_recorder.wait_for("alert_sent")
    h.flush()
    wait_until(lambda: len(standin.hits("post")) == 2, message="the late post handled")
    [report] = h.reports
    assert_one_post_with_report(standin, report)
    assert len(standin.hits("upload")) == 1


def test_retry_after_is_really_waited_for(
        mm_app: Callable[..., Harness], standin: MattermostStandIn,
        signals_recorder: SignalRecorder) -> None:
    h = mm_app()
    h.notifier.policy.sleep = time.sleep
    standin.rate_limit("post", retry_after=1)
    h.get("/slow")
    signals_recorder.wait_for("alert_sent")
    h.flush()
    limited, accepted = standin.hits("post")
    assert (limited.status, accepted.status) == (429, 201)
    assert accepted.at - limited.at >= 1.0
    assert len(standin.posts) == 1


# --- giving up ---------------------------------------------------------------------


@pytest.mark.parametrize("notifiers", [("mattermost",), ("local", "mattermost")])
def test_gives_up_after_the_retries_and_keeps_the_report(
        notifiers: tuple[str, ...], mm_app: Callable[..., Harness],
        standin: MattermostStandIn, report_dir: Path, signals_recorder: SignalRecorder,
        caplog: pytest.LogCaptureFixture) -> None:
    h = mm_app(notifiers=notifiers, mattermost_retries=2)
    standin.fail("post", 500, times=10)
    with caplog.at_level(logging.WARNING, "flask_perfwatch"):
        assert h.get("/slow").status_code == 201
        [failed] = signals_recorder.wait_for("alert_failed")
        h.flush()
    error = failed.kwargs["error"]
    assert isinstance(error, NotifierError)
    assert error.retryable
    assert "gave up after 3 attempt(s)" in str(error)
    assert "server error (500 Unable to save the post.)" in str(error)
    assert len(standin.hits("post")) == 3
    assert len(standin.hits("upload")) == 1
    assert standin.posts == []
    # exponential backoff with jitter: 1 s then 2 s, each drawn in [half, all]
    assert len(h.delays) == 2
    assert 0.5 <= h.delays[0] <= 1.0
    assert 1.0 <= h.delays[1] <= 2.0
    # each failure logged with its reason; the report is kept and its path logged
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 2
    # one copy: where `local` put it, or written by the pipeline when alone
    [path] = reports_in(report_dir)
    assert path.read_text(encoding="utf-8") == h.reports[0].html
    assert any(str(path) in r.getMessage() and r.levelno == logging.ERROR
               for r in caplog.records)
    assert signals_recorder.count("alert_sent") == (1 if "local" in notifiers else 0)


def test_gives_up_at_once_when_retry_after_exceeds_the_budget(
        mm_app: Callable[..., Harness], standin: MattermostStandIn, report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    h = mm_app()
    standin.rate_limit("post", retry_after=600)
    h.get("/slow")
    [failed] = signals_recorder.wait_for("alert_failed")
    h.flush()
    assert "would pass the 60s this alert may spend waiting" in str(failed.kwargs["error"])
    assert h.delays == []
    assert len(standin.hits("post")) == 1
    assert len(reports_in(report_dir)) == 1


def test_the_policy_comes_from_the_config_and_the_notifier_timeout(
        mm_app: Callable[..., Harness], standin: MattermostStandIn,
        signals_recorder: SignalRecorder) -> None:
    # the shared policy: retries from PERFWATCH_MATTERMOST_RETRIES, a budget
    # under PERFWATCH_NOTIFIER_TIMEOUT (0.8 of it), so a Retry-After that fits
    # the default 60 s gives up at once with a 10 s notifier timeout
    h = mm_app(mattermost_retries=5, notifier_timeout=10)
    assert (h.notifier.policy.retries, h.notifier.policy.budget) == (5, 8.0)
    standin.rate_limit("post", retry_after=9)
    h.get("/slow")
    [failed] = signals_recorder.wait_for("alert_failed")
    h.flush()
    assert str(failed.kwargs["error"]).startswith(
        "Mattermost: gave up after 1 attempt(s): the next wait (9.0s) would pass the 8s")
    assert h.delays == []
    assert len(standin.hits("post")) == 1


FATAL: dict[str, tuple[Callable[[MattermostStandIn], None], str, str]] = {
    "post 400": (lambda s: s.fail("post", 400), "post", "rejected as invalid (400"),
    "post 403": (lambda s: s.fail("post", 403), "post", "add the account to the team"),
    "upload 403": (lambda s: s.fail("upload", 403), "upload", "not allowed (403"),
    "post 413": (lambda s: s.fail("post", 413), "post", "too large for the server (413"),
}


@pytest.mark.parametrize("fault", FATAL.keys())
def test_client_errors_fail_at_once(
        fault: str, mm_app: Callable[..., Harness], standin: MattermostStandIn,
        report_dir: Path, signals_recorder: SignalRecorder) -> None:
    inject, route, expected = FATAL[fault]
    h = mm_app()
    inject(standin)
    h.get("/slow")
    [failed] = signals_recorder.wait_for("alert_failed")
    h.flush()
    error = failed.kwargs["error"]
    assert isinstance(error, NotifierError)
    assert not error.retryable
    assert expected in str(error)
    assert len(standin.hits(route)) == 1
    assert h.delays == []
    assert standin.posts == []
    assert len(reports_in(report_dir)) == 1


def test_a_bad_token_fails_at_once_without_leaking_it(
        mm_app: Callable[..., Harness], standin: MattermostStandIn,
        signals_recorder: SignalRecorder, caplog: pytest.LogCaptureFixture) -> None:
    h = mm_app(mattermost_token="wrong-token-value")
    with caplog.at_level(logging.DEBUG):
        h.get("/slow")
        [failed] = signals_recorder.wait_for("alert_failed")
        h.flush()
    message = str(failed.kwargs["error"])
    assert "the token was rejected (401 Invalid or expired session" in message
    assert "PERFWATCH_MATTERMOST_TOKEN" in message
    assert standin.arrivals == ["me"]
    assert h.delays == []
    assert "wrong-token-value" not in caplog.text
    assert "wrong-token-value" not in message


# --- a hung server costs the app nothing --------------------------------------------


def test_a_hung_server_does_not_touch_the_app(
        mm_app: Callable[..., Harness], standin: MattermostStandIn,
        signals_recorder: SignalRecorder) -> None:
    h = mm_app(mattermost_timeout=0.4, mattermost_retries=1)
    client = h.app.test_client()

    def fast_latencies() -> list[float]:
        times = []
        for _ in range(20):
            start = time.perf_counter()
            assert client.get("/fast").data == b"fast"
            times.append(time.perf_counter() - start)
        return times

    before = statistics.median(fast_latencies())
    standin.delay("*", 30.0, times=1000)  # every call hangs
    start = time.perf_counter()
    response = client.get("/slow")
    slow_elapsed = time.perf_counter() - start
    assert response.status_code == 201
    assert slow_elapsed < SLOW + 2  # the server hangs for 30 s: blocking would show
    wait_until(lambda: standin.arrivals, message="the worker to be stuck on the server")
    during = fast_latencies()
    assert statistics.median(during) < before + 0.1
    [failed] = signals_recorder.wait_for("alert_failed")
    assert "no answer within 0.4s (PERFWATCH_MATTERMOST_TIMEOUT)" in str(failed.kwargs["error"])
    assert standin.arrivals == ["me", "me"]


# --- server limits ------------------------------------------------------------------


def test_a_report_too_big_for_the_server_is_posted_without_it(
        mm_app: Callable[..., Harness], standin: MattermostStandIn, report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    h = mm_app()
    standin.max_file_size = 2000  # smaller than any pyinstrument report
    h.get("/slow?a=1")
    signals_recorder.wait_for("alert_sent")
    h.flush()
    [post] = standin.posts
    assert post["file_ids"] == []
    [path] = reports_in(report_dir)
    assert "The report is not attached: it is larger than the server accepts" in post["message"]
    assert f"at `{path}`" in post["message"]
    assert path.read_text(encoding="utf-8") == h.reports[0].html
    # each 413 is answered with a smaller report, never the same one again
    sizes = [int(hit.headers["Content-Length"]) for hit in standin.hits("upload")]
    assert sizes == sorted(set(sizes), reverse=True)
    assert all(hit.status == 413 for hit in standin.hits("upload"))
    assert h.delays == []
    # the limit is remembered: the next alert only tries a report smaller than
    # the smallest one refused (at most one upload), not the whole ladder again
    uploads = standin.hits("upload")
    h.get("/slow?a=2")
    signals_recorder.wait_for("alert_sent", 2)
    h.flush()
    again = standin.hits("upload")[len(uploads):]
    assert len(again) <= 1
    assert all(int(hit.headers["Content-Length"]) < sizes[-1] for hit in again)
    assert len(standin.posts) == 2


def test_uploads_disabled_on_the_server(
        mm_app: Callable[..., Harness], standin: MattermostStandIn, report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    h = mm_app()
    standin.uploads_enabled = False
    h.get("/slow")
    signals_recorder.wait_for("alert_sent")
    h.flush()
    [post] = standin.posts
    assert post["file_ids"] == []
    assert "file uploads are disabled on the server" in post["message"]
    assert str(reports_in(report_dir)[0]) in post["message"]


def big_profile_metrics(nodes: int = 3000) -> PerformanceMetrics:
    """A request whose profile has many tiny call-tree nodes (a big report)."""
    from pyinstrument.session import Session

    stem = "<module>\x00/app/wsgi.py\x001"
    root = [stem, "handle\x00/app/views.py\x0010", "export\x00/app/export.py\x0020"]
    records: list[tuple[list[str], float]] = [([*root, "query\x00/app/db.py\x0030"], 0.7)]
    records += [([*root, f"helper_{i}\x00/app/helpers_{i % 40}.py\x00{i}"], 0.3 / nodes)
                for i in range(nodes)]
    session = Session(frame_records=records, start_time=time.time(), duration=1.0,
                      min_interval=0.001, max_interval=0.001, sample_count=len(records),
                      start_call_stack=[stem], target_description="GET /export", cpu_time=1.0,
                      sys_path=sys.path, sys_prefixes=Session.current_sys_prefixes())
    return PerformanceMetrics(kind="request", name="export", duration=1.0, threshold=0.3,
                              started_at=datetime.now(UTC), method="GET",
                              url="http://localhost/export", path="/export", status_code=200,
                              profile=Profile(session))


def direct_notifier(standin: MattermostStandIn, report_dir: Path) -> MattermostNotifier:
    notifier = MattermostNotifier(Config(
        notifiers=("mattermost",), report_dir=str(report_dir), mattermost_url=standin.url,
        mattermost_token=standin.token, mattermost_channel_id=standin.channel_id))
    notifier.policy.sleep = lambda seconds: None
    return notifier


@pytest.mark.parametrize("limit_known", [False, True], ids=["learned from 413", "configured"])
def test_a_big_report_is_shrunk_to_fit(limit_known: bool, standin: MattermostStandIn,
                                       report_dir: Path) -> None:
    metrics = big_profile_metrics()
    report = render_report(metrics)
    full = len(report.html.encode())
    standin.max_file_size = 200_000
    assert full > standin.max_file_size
    notifier = direct_notifier(standin, report_dir)
    if limit_known:
        notifier.max_file_size = 200_000
    notifier.send(metrics, report)
    [post] = standin.posts
    [attached] = standin.attached_files(post)
    assert len(attached.data) < 200_000
    html = attached.data.decode()
    # thinned by render_report(max_bytes=...), whose header says so
    assert "Profile thinned:" in html
    assert "query" in html  # the part that matters survived
    assert "helper_17" not in html
    assert f"shrunk from {format_size(full)} to fit the upload limit" in post["message"]
    statuses = [hit.status for hit in standin.hits("upload")]
    assert statuses == ([201] if limit_known else [413, 201])


def test_a_report_that_fits_only_without_its_profile_is_left_out(
        standin: MattermostStandIn, report_dir: Path) -> None:
    # render_report(max_bytes=...) drops the profile when even the thinnest one
    # is too big; such a page says nothing the message does not: not attached
    metrics = big_profile_metrics()
    standin.max_file_size = 50_000  # under any thinned pyinstrument page
    notifier = direct_notifier(standin, report_dir)
    notifier.send(metrics, render_report(metrics))
    [post] = standin.posts
    assert post["file_ids"] == []
    assert "The report is not attached: it is larger than the server accepts" in post["message"]
    assert all(hit.status == 413 for hit in standin.hits("upload"))
    [path] = reports_in(report_dir)
    assert "helper_17" in path.read_text(encoding="utf-8")  # the full report is kept


def test_a_long_message_is_cut_cleanly(standin: MattermostStandIn, report_dir: Path) -> None:
    metrics = big_profile_metrics(10)
    notifier = direct_notifier(standin, report_dir)
    notifier.max_message_length = 300
    notifier.send(metrics, render_report(metrics))
    [post] = standin.posts
    message = post["message"]
    assert len(message) <= 300
    assert message.startswith("#### :hourglass: Slow request `GET /export`")
    assert message.endswith("_(message shortened to fit the server's limit; "
                            "the report has everything)_")
    assert all(line.count("`") % 2 == 0 for line in message.splitlines())
    assert len(standin.attached_files(post)) == 1


def test_message_text() -> None:
    base = PerformanceMetrics(kind="request", name="orders.export", duration=2.412,
                              threshold=1.0, started_at=datetime(2026, 11, 28, 8, 52, 10,
                                                                 tzinfo=UTC),
                              method="GET", path="/orders/export", status_code=200,
                              url="https://shop.example.com/orders/export?q=@channel",
                              suppressed=3, host="web-3", pid=4121,
                              suppressed_since=datetime(2026, 11, 28, 7, 0, tzinfo=UTC))
    text = build_message(base, attachment="ATTACHED")
    assert text == (
        "#### :hourglass: Slow request `GET /orders/export` took 2.412 s "
        "(2.4x the 1.000 s threshold)\n"
        "- **Endpoint:** `orders.export`\n"
        "- **URL:** `https://shop.example.com/orders/export?q=@channel`\n"
        "- **Status:** 200\n"
        "- **Duration:** 2.412 s, 2.4x the 1.000 s threshold\n"
        "- **Started:** 2026-11-28 08:52:10 UTC\n"
        "- **Host:** `web-3`, pid 4121\n"
        "- **Suppressed:** 3 similar slow requests suppressed since 2026-11-28 07:00 UTC\n"
        "- **Profile:** none captured \\(profiler off or no sample taken\\)\n"
        "\n"
        "ATTACHED")
    import dataclasses

    hung = build_message(dataclasses.replace(base, hung=True, url="/x`y`"))
    assert hung.startswith("#### :rotating_light: Hung request `GET /orders/export` still "
                           "running after 2.412 s")
    assert "- **URL:** `` /x`y` ``" in hung
    func = build_message(dataclasses.replace(base, kind="function", name="pkg.build",
                                             status_code=None))
    assert "Slow function `pkg.build()` took" in func
    assert "- **Called in:** `GET https://shop.example.com" in func
    assert "**Endpoint:**" not in func
    limited = build_message(dataclasses.replace(base, endpoint_suppressed=2))
    assert ("- **Also suppressed:** 2 more alerts of this endpoint suppressed \\(any params; "
            "PERFWATCH\\_ENDPOINT\\_ALERT\\_LIMIT per dedupe window\\)") in limited
    huge = build_message(dataclasses.replace(base, name="n" * 50_000, error="E" * 50_000,
                                             url="u" * 50_000))
    assert len(huge) <= MAX_MESSAGE_LENGTH
    assert all(line.count("`") % 2 == 0 for line in huge.splitlines())


def test_the_post_shows_the_shared_facts_in_their_order() -> None:
    """Which facts and in which order is decided once (``_message.alert_facts``);
    the post shows each of them, in that order, and nothing else."""
    import dataclasses

    metrics = big_profile_metrics(10)
    assert metrics.profile is not None
    metrics = dataclasses.replace(metrics, error="ValueError", suppressed=2, endpoint_suppressed=4,
                                  profile=Profile(metrics.profile.session, note="every 1 ms"))
    facts = alert_facts(metrics)
    message = build_message(metrics)
    labels = re.findall(r"^- \*\*(.+?):\*\* ", message, flags=re.MULTILINE)
    assert labels == [f.label for f in facts] == [
        "Endpoint", "URL", "Status", "Error", "Duration", "Started", "Host", "Suppressed",
        "Also suppressed", "Profile"]
    assert "- **Profile:** every 1 ms" in message


# --- the channel ----------------------------------------------------------------------


def test_the_channel_is_looked_up_again_after_a_404(
        mm_app: Callable[..., Harness], standin: MattermostStandIn,
        signals_recorder: SignalRecorder) -> None:
    h = mm_app()
    h.get("/slow?n=1")
    signals_recorder.wait_for("alert_sent")
    h.flush()
    new_id = standin.recreate_channel()
    h.get("/slow?n=2")
    signals_recorder.wait_for("alert_sent", 2)
    h.flush()
    assert standin.arrivals.count("channel_by_name") == 2
    assert [p["channel_id"] for p in standin.posts][1] == new_id
    assert standin.attached_files(standin.posts[1])[0].data == h.reports[1].html.encode()
    assert h.delays == [0.0]  # retried at once: the fix is a new lookup


def test_a_channel_recreated_between_upload_and_post_gets_a_fresh_upload(
        mm_app: Callable[..., Harness], standin: MattermostStandIn,
        signals_recorder: SignalRecorder) -> None:
    h = mm_app()
    standin.before("post", standin.recreate_channel)
    h.get("/slow")
    signals_recorder.wait_for("alert_sent")
    h.flush()
    # the first upload belongs to the old channel and could not be attached
    # (the server would silently drop it): the report was uploaded again
    assert [hit.status for hit in standin.hits("upload")] == [201, 201]
    assert [hit.status for hit in standin.hits("post")] == [404, 201]
    assert_one_post_with_report(standin, h.reports[0])


def test_a_missing_channel_id_fails_at_once(
        mm_app: Callable[..., Harness], standin: MattermostStandIn,
        signals_recorder: SignalRecorder) -> None:
    h = mm_app(mattermost_channel_id=standin.channel_id)
    standin.recreate_channel()
    h.get("/slow")
    [failed] = signals_recorder.wait_for("alert_failed")
    h.flush()
    assert "check PERFWATCH_MATTERMOST_CHANNEL_ID" in str(failed.kwargs["error"])
    assert len(standin.hits("upload")) == 1
    assert standin.posts == []


def test_an_attachment_the_server_dropped_is_logged(
        mm_app: Callable[..., Harness], standin: MattermostStandIn, report_dir: Path,
        signals_recorder: SignalRecorder, caplog: pytest.LogCaptureFixture) -> None:
    h = mm_app()

    def attach_elsewhere() -> None:
        for stored in standin.files.values():
            stored.post_id = "someotherpost"

    standin.before("post", attach_elsewhere)
    with caplog.at_level(logging.WARNING, "flask_perfwatch"):
        h.get("/slow")
        signals_recorder.wait_for("alert_sent")
        h.flush()
    [post] = standin.posts
    assert post["file_ids"] == []
    [path] = reports_in(report_dir)
    assert any("dropped its attachment" in r.getMessage() and str(path) in r.getMessage()
               for r in caplog.records)


# --- configuration and check() ----------------------------------------------------------

CHANNEL_ID = "wrgghbrgh1oo4ymsmtbp1hnbi7"
GOOD = {"mattermost_url": "https://chat.example.com", "mattermost_token": "t0ken",
        "mattermost_channel_id": CHANNEL_ID}


@pytest.mark.parametrize(("overrides", "key", "expected"), [
    ({"mattermost_url": None}, "PERFWATCH_MATTERMOST_URL", "the Mattermost server's URL"),
    ({"mattermost_url": "chat.example.com"}, "PERFWATCH_MATTERMOST_URL", "http(s) URL"),
    ({"mattermost_url": "https://chat.example.com/api/v4"}, "PERFWATCH_MATTERMOST_URL",
     "without the /api/v4 suffix"),
    ({"mattermost_url": "https://bot:pw@chat.example.com"}, "PERFWATCH_MATTERMOST_URL",
     "no credentials in the URL"),
    ({"mattermost_url": "https://chat.example.com/?x=1"}, "PERFWATCH_MATTERMOST_URL",
     "no query string"),
    ({"mattermost_token": None}, "PERFWATCH_MATTERMOST_TOKEN", "personal access token"),
    ({"mattermost_channel_id": None}, "PERFWATCH_MATTERMOST_CHANNEL_ID",
     "or PERFWATCH_MATTERMOST_TEAM + PERFWATCH_MATTERMOST_CHANNEL"),
    ({"mattermost_channel_id": "town-square"}, "PERFWATCH_MATTERMOST_CHANNEL_ID",
     "26 lower-case letters and digits"),
    ({"mattermost_channel_id": None, "mattermost_team": "eng"}, "PERFWATCH_MATTERMOST_CHANNEL",
     "together with the team name"),
    ({"mattermost_team": "eng"}, "PERFWATCH_MATTERMOST_TEAM", "to be unset when"),
    ({"mattermost_channel_id": None, "mattermost_team": "eng",
      "mattermost_channel": "Town Square"}, "PERFWATCH_MATTERMOST_CHANNEL",
     "not the display name"),
])
def test_config_errors_at_init_app(overrides: dict[str, Any], key: str, expected: str,
                                   make_app: Callable[..., Any]) -> None:
    settings = {**GOOD, **overrides}
    with pytest.raises(ConfigError) as info:
        make_app(notifiers=["mattermost"], **settings)
    assert str(info.value).startswith(f"{key}=")
    # the source named is the one the value came from: a keyword argument when
    # the test passed that setting (None included), else the default
    passed = key.removeprefix("PERFWATCH_").lower() in settings
    source = "keyword argument" if passed else "default"
    assert str(info.value).split(": ", 1)[0].endswith(f" (from {source})")
    assert expected in str(info.value)
    assert "t0ken" not in str(info.value)


@pytest.mark.parametrize(("url", "options"), [
    ("https://chat.example.com", ("https", "chat.example.com", 443, "/api/v4")),
    ("http://127.0.0.1:8065/", ("http", "127.0.0.1", 8065, "/api/v4")),
    ("https://example.com/mattermost", ("https", "example.com", 443, "/mattermost/api/v4")),
    ("https://[::1]:8443", ("https", "[::1]", 8443, "/api/v4")),
])
def test_url_to_driver_options(url: str, options: tuple[Any, ...]) -> None:
    notifier = MattermostNotifier(Config(**{**GOOD, "mattermost_url": url,
                                            "mattermost_verify": False,
                                            "mattermost_timeout": 4}))
    driver_options = notifier._driver.options
    assert (driver_options["scheme"], driver_options["url"], driver_options["port"],
            driver_options["basepath"]) == options
    assert driver_options["verify"] is False
    assert driver_options["request_timeout"] == 4.0


def test_missing_driver_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mattermostdriver", None)
    with pytest.raises(ConfigError, match=re.escape("pip install 'flask-perfwatch[mattermost]'")):
        MattermostNotifier(Config(**GOOD))


def test_check(standin: MattermostStandIn, report_dir: Path) -> None:
    notifier = direct_notifier(standin, report_dir)
    assert notifier.check() == (f"posts as @perfwatch-bot to ~perf-alerts "
                                f"({standin.channel_id}) on {standin.url}")
    by_name = MattermostNotifier(Config(
        mattermost_url=standin.url, mattermost_token=standin.token,
        mattermost_team=standin.team_name, mattermost_channel="nope"))
    with pytest.raises(NotifierError, match="team 'engineering' / channel 'nope' not found"):
        by_name.check()
    bad = MattermostNotifier(Config(mattermost_url=standin.url, mattermost_token="bad",
                                    mattermost_channel_id=standin.channel_id))
    with pytest.raises(NotifierError, match="PERFWATCH_MATTERMOST_TOKEN"):
        bad.check()
    assert standin.posts == []
