"""The ``pagerduty`` notifier through a real Flask app, the pipeline and urllib3,
against :class:`event_servers.PagerDutyStandIn` (the Events API v2 on
127.0.0.1, validating events and grouping them by ``dedup_key`` as PagerDuty
does).

Faults and their expected outcome:

- 429 (no ``Retry-After``, as PagerDuty sends it: backoff), 429 with one
  (honoured), 500/502/503, a connection dropped before or after the event was
  accepted, an answer slower than the timeout: retried with the same
  ``dedup_key``, so PagerDuty holds one incident;
- 400 (an unknown routing key, an invalid event): ``alert_failed`` at once,
  no retry, PagerDuty's own explanation in the error, never the key;
- retries used up: ``alert_failed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from channel_harness import Channel, channel_app
from click.testing import Result
from conftest import reports_in, wait_until
from event_servers import PagerDutyStandIn
from flask import Flask

from flask_perfwatch import PerfWatch
from flask_perfwatch.cli import perfwatch as perfwatch_command
from flask_perfwatch.exceptions import ConfigError
from flask_perfwatch.metrics import PerformanceMetrics, utcnow
from flask_perfwatch.notifiers.pagerduty import (
    MAX_SUMMARY,
    PagerDutyNotifier,
    build_event,
    dedup_key,
)
from flask_perfwatch.report import Report
from flask_perfwatch.testing import SignalRecorder

pytestmark = pytest.mark.slow

MakeApp = Callable[..., tuple[Flask, PerfWatch]]
BASE_URL = "https://perf.example.com/reports/"


#: The test app triggering PagerDuty events.
Setup = Channel[PagerDutyNotifier]


@pytest.fixture
def pd() -> Iterator[PagerDutyStandIn]:
    with PagerDutyStandIn() as server:
        yield server


def pd_app(make_app: MakeApp, pd: PagerDutyStandIn, **overrides: Any) -> Setup:
    """The test app triggering events on the stand-in; backoff waits are
    recorded in ``setup.delays``, not slept."""
    overrides.setdefault("pagerduty_url", pd.url)
    overrides.setdefault("pagerduty_routing_key", pd.routing_key)
    overrides.setdefault("pagerduty_timeout", 3.0)
    return channel_app(make_app, PagerDutyNotifier, notifiers=["pagerduty"], **overrides)


def run(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(perfwatch_command, list(args))


# --- delivery --------------------------------------------------------------------


def test_one_slow_request_is_one_trigger_linking_the_report(
        make_app: MakeApp, pd: PagerDutyStandIn, report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    h = pd_app(make_app, pd, report_base_url=BASE_URL, pagerduty_severity="critical")
    assert h.get("/fast").status_code == 200
    assert h.get("/slow?user=42&token=s3cr3t-value").status_code == 201
    [sent] = signals_recorder.wait_for("alert_sent")
    h.flush()
    metrics: PerformanceMetrics = sent.kwargs["metrics"]

    [hit] = pd.requests
    assert hit.status == 202
    [event] = pd.events
    assert event["routing_key"] == pd.routing_key
    assert event["event_action"] == "trigger"
    assert event["client"] == "flask-perfwatch"
    assert metrics.dedupe_key
    assert event["dedup_key"] == "perfwatch-" + metrics.dedupe_key
    payload = event["payload"]
    assert payload["summary"] == metrics.summary()
    assert "slow" in payload["summary"]
    assert f"{metrics.duration:.3f}s" in payload["summary"]
    assert payload["source"] == metrics.host
    assert payload["severity"] == "critical"
    assert payload["component"] == "slow"
    assert payload["class"] == "slow_request"
    stamp = datetime.fromisoformat(payload["timestamp"])
    assert abs((stamp - metrics.started_at).total_seconds() - metrics.duration) < 0.01
    details = payload["custom_details"]
    assert details["name"] == "slow"
    assert details["duration"] == metrics.duration
    assert details["params"] == {"user": "42", "token": "[REDACTED]"}
    assert "report_path" not in details
    [report] = reports_in(report_dir)
    assert event["links"] == [{"href": BASE_URL + report.name, "text": "Profile report"}]
    assert b"s3cr3t" not in hit.body
    assert hit.headers["Content-Type"] == "application/json"
    assert list(pd.incidents) == [event["dedup_key"]]
    assert signals_recorder.count("alert_failed") == 0
    assert h.delays == []


def test_without_a_base_url_the_details_give_the_local_path(
        make_app: MakeApp, pd: PagerDutyStandIn, report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    h = pd_app(make_app, pd)
    h.get("/slow")
    signals_recorder.wait_for("alert_sent")
    h.flush()
    [event] = pd.events
    assert "links" not in event
    [report] = reports_in(report_dir)
    assert event["payload"]["custom_details"]["report_path"] == str(report)
    assert event["payload"]["severity"] == "warning"  # the default


def test_pagerduty_groups_what_perfwatch_groups(make_app: MakeApp, pd: PagerDutyStandIn,
                                                signals_recorder: SignalRecorder) -> None:
    h = pd_app(make_app, pd)  # dedupe window 0: every slow request alerts
    for path in ("/named/a?x=1&sleep=0.5", "/named/a?sleep=0.5&x=1", "/named/a?x=2&sleep=0.5",
                 "/slow?x=1&sleep=0.5"):
        h.get(path)
    signals_recorder.wait_for("alert_sent", 4)
    h.flush()
    keys = [e["dedup_key"] for e in pd.events]
    assert len(keys) == 4
    by_query = {e["payload"]["custom_details"]["url"]: e["dedup_key"] for e in pd.events}
    assert by_query["http://localhost/named/a?x=1&sleep=0.5"] == \
        by_query["http://localhost/named/a?sleep=0.5&x=1"]
    # other params, or another endpoint with the same params: other keys
    assert len(set(keys)) == 3
    assert sorted(len(i.events) for i in pd.incidents.values()) == [1, 1, 2]


def test_a_long_summary_is_cut_to_pagerdutys_limit(make_app: MakeApp, pd: PagerDutyStandIn,
                                                   signals_recorder: SignalRecorder) -> None:
    h = pd_app(make_app, pd)
    label = "x" * 1500
    h.get(f"/named/{label}?sleep=0.5")
    [sent] = signals_recorder.wait_for("alert_sent")
    h.flush()
    full = sent.kwargs["metrics"].summary()
    assert len(full) > MAX_SUMMARY
    [event] = pd.events
    summary = event["payload"]["summary"]
    assert len(summary) == MAX_SUMMARY
    assert summary == full[:MAX_SUMMARY - 1] + "…"
    assert event["payload"]["custom_details"]["summary"] == full


def test_a_hung_request_is_its_own_class_and_incident() -> None:
    started = utcnow()
    slow = PerformanceMetrics(kind="request", name="export", duration=2.0, threshold=1.0,
                              started_at=started, method="GET", url="http://x/export")
    hung = PerformanceMetrics(kind="request", name="export", duration=31.0, threshold=1.0,
                              started_at=started, method="GET", url="http://x/export",
                              hung=True)
    report = Report(html="", text="", filename="r.html")
    event = build_event(hung, report, routing_key="k" * 32, severity="error")
    assert event["payload"]["class"] == "request_hung"
    assert event["payload"]["custom_details"]["hung"] is True
    # outside the pipeline (no dedupe key yet): derived from kind, method, endpoint
    assert dedup_key(hung).startswith("perfwatch-hung:")
    assert dedup_key(slow).startswith("perfwatch-")
    assert dedup_key(slow) != dedup_key(hung)
    again = PerformanceMetrics(kind="request", name="export", duration=5.0, threshold=1.0,
                               started_at=utcnow(), method="GET", url="http://x/export?p=2")
    assert dedup_key(again) == dedup_key(slow)


# --- retries: one incident --------------------------------------------------------

TRANSIENT: dict[str, Callable[[PagerDutyStandIn], None]] = {
    "429 without Retry-After": lambda s: s.fail(
        "enqueue", 429, body={"status": "throttle event", "message": "Requests for this "
                              "service are arriving too quickly. Please retry later."}),
    "429 + Retry-After": lambda s: s.fail("enqueue", 429, headers={"Retry-After": "5"}),
    "500 twice": lambda s: s.fail("enqueue", 500, times=2),
    "502 from a proxy, not JSON": lambda s: s.fail("enqueue", 502, body=b"<html>bad</html>"),
    "503": lambda s: s.fail("enqueue", 503),
    "connection dropped before PagerDuty read it": lambda s: s.drop("enqueue"),
    "accepted, then the connection dropped": lambda s: s.drop("enqueue", when="after"),
    "answer slower than the timeout": lambda s: s.delay("enqueue", 3),
}


@pytest.mark.parametrize("fault", TRANSIENT.keys())
def test_a_transient_fault_is_retried_into_one_incident(
        fault: str, make_app: MakeApp, pd: PagerDutyStandIn,
        signals_recorder: SignalRecorder) -> None:
    h = pd_app(make_app, pd, pagerduty_timeout=1.0)
    TRANSIENT[fault](pd)
    h.get("/slow")
    signals_recorder.wait_for("alert_sent")
    h.flush()
    attempts = 3 if "twice" in fault else 2
    assert len(pd.requests) == attempts
    assert len({hit.json()["dedup_key"] for hit in pd.requests}) == 1
    assert len(pd.incidents) == 1
    assert signals_recorder.count("alert_failed") == 0
    assert len(h.delays) == attempts - 1
    if "+ Retry-After" in fault:
        assert h.delays == [5.0]
    else:
        assert all(0.5 * 2 ** i <= d <= 2 ** i for i, d in enumerate(h.delays))
    if fault in ("accepted, then the connection dropped", "answer slower than the timeout"):
        # PagerDuty took both triggers (the slow one late) and merged them
        wait_until(lambda: len(pd.events) == 2, 20, message="the first trigger")
        [incident] = pd.incidents.values()
        assert len(incident.events) == 2
        assert len(pd.events) == 2


def test_retries_used_up_fail_the_alert(make_app: MakeApp, pd: PagerDutyStandIn,
                                        signals_recorder: SignalRecorder) -> None:
    h = pd_app(make_app, pd, pagerduty_retries=1)
    pd.fail("enqueue", 500, times=5)
    h.get("/slow")
    error = h.failure(signals_recorder, retryable=True)
    assert len(pd.requests) == 2
    assert str(error) == \
        "pagerduty: gave up after 2 attempt(s); last error: PagerDuty event: HTTP 500"
    assert pd.incidents == {}


# --- permanent failures and secrets --------------------------------------------------


def test_an_unknown_routing_key_is_a_permanent_failure_that_never_shows_the_key(
        make_app: MakeApp, pd: PagerDutyStandIn, signals_recorder: SignalRecorder,
        caplog: pytest.LogCaptureFixture) -> None:
    wrong = "0123456789abcdef0123456789ABCDEF"
    h = pd_app(make_app, pd, pagerduty_routing_key=wrong)
    with caplog.at_level(logging.DEBUG, "flask_perfwatch"):
        h.get("/slow")
        error = h.failure(signals_recorder, retryable=False)
    [hit] = pd.requests
    assert hit.status == 400
    assert h.delays == []
    assert str(error) == ("pagerduty: PagerDuty rejected the event (400): Event object is "
                          "invalid: Invalid routing key")
    for record in caplog.records:
        assert wrong not in record.getMessage()
        assert wrong not in (record.exc_text or "")
    assert pd.incidents == {}


def test_a_400_that_echoes_the_key_is_scrubbed(make_app: MakeApp, pd: PagerDutyStandIn,
                                               signals_recorder: SignalRecorder,
                                               caplog: pytest.LogCaptureFixture) -> None:
    h = pd_app(make_app, pd)
    pd.fail("enqueue", 400, body={"status": "invalid event", "message": "Event object is "
                                  "invalid", "errors": [f"no service for {pd.routing_key}"]})
    with caplog.at_level(logging.DEBUG, "flask_perfwatch"):
        h.get("/slow")
        [failed] = signals_recorder.wait_for("alert_failed")
        h.flush()
        check = run(h.app, "check")
    assert len(pd.requests) == 1
    assert str(failed.kwargs["error"]) == ("pagerduty: PagerDuty rejected the event (400): "
                                           "Event object is invalid: no service for "
                                           "[REDACTED]")
    texts = [r.getMessage() for r in caplog.records] + [r.exc_text or "" for r in caplog.records]
    texts += [check.output, repr(h.notifier)]
    assert all(pd.routing_key not in text for text in texts)


@pytest.mark.parametrize("status", [403, 404, 413])
def test_other_client_errors_are_permanent(status: int, make_app: MakeApp,
                                           pd: PagerDutyStandIn,
                                           signals_recorder: SignalRecorder) -> None:
    h = pd_app(make_app, pd)
    pd.fail("enqueue", status, body=b"nope", times=5)
    h.get("/slow")
    error = h.failure(signals_recorder, retryable=False)
    assert len(pd.requests) == 1
    assert str(error) == f"pagerduty: PagerDuty event: HTTP {status} nope"


@pytest.mark.parametrize("key", [None, "u+z9Xy-AbCdEfGhIjKlM", "0123456789abcdef0123456789abcde!"])
def test_a_missing_or_malformed_routing_key_is_a_config_error(
        key: str | None, make_app: MakeApp, pd: PagerDutyStandIn) -> None:
    with pytest.raises(ConfigError) as info:
        make_app(notifiers=["pagerduty"], pagerduty_routing_key=key)
    message = str(info.value)
    shown = "None" if key is None else "'[REDACTED]'"
    assert message.startswith(f"PERFWATCH_PAGERDUTY_ROUTING_KEY={shown} (from ")
    assert "32-character integration key of an Events API v2 integration" in message
    if key is not None:
        assert key not in message


def test_check_contacts_nothing_and_masks_the_key(make_app: MakeApp,
                                                  pd: PagerDutyStandIn) -> None:
    h = pd_app(make_app, pd)
    result = run(h.app, "check")
    assert result.exit_code == 0, result.output
    [line] = [row.strip() for row in result.output.splitlines()
              if row.strip().startswith("pagerduty ")]
    assert line.split(None, 2)[:2] == ["pagerduty", "OK"]
    assert line.endswith(f"triggers warning events on {pd.url} with routing key [REDACTED] "
                         "(set, 32 characters); not contacted (the Events API cannot test a "
                         "key without creating an event)")
    assert pd.routing_key not in result.output
    assert pd.requests == []


def test_test_alert_goes_through_pagerduty(make_app: MakeApp, pd: PagerDutyStandIn) -> None:
    h = pd_app(make_app, pd, report_base_url=BASE_URL)
    result = run(h.app, "test-alert")
    assert result.exit_code == 0, result.output
    [event] = pd.events
    assert event["payload"]["component"] == "perfwatch.test_alert"
    assert event["links"][0]["href"].startswith(BASE_URL)
    assert pd.routing_key not in result.output
