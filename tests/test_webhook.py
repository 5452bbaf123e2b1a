"""The ``webhook`` notifier through a real Flask app, the pipeline and urllib3,
against :class:`event_servers.WebhookReceiver` on 127.0.0.1, which verifies
signatures with the maintained ``standardwebhooks`` package.

Faults and their expected outcome:

- 503/500/502 (once or twice), 408, 429 with ``Retry-After``, a connection
  dropped before or after the receiver took the event, an answer slower than
  the timeout: retried, the same ``webhook-id`` every time (the receiver
  processes the event once), each attempt signed with a fresh timestamp;
- a first attempt whose timestamp is now older than five minutes (a long
  wait): the retry is re-signed and verifies;
- 400, 401, 403, 404, 422: ``alert_failed`` at once, no retry;
- 410 Gone: ``alert_failed``, the notifier disabled (one log line), later
  alerts fail without a request;
- retries used up: ``alert_failed`` naming the attempts and the last error.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from channel_harness import Channel, channel_app
from click.testing import Result
from conftest import SLOW, reports_in, wait_until
from event_servers import WebhookReceiver, new_secret
from flask import Flask
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from flask_perfwatch import PerfWatch
from flask_perfwatch.cli import perfwatch as perfwatch_command
from flask_perfwatch.exceptions import ConfigError
from flask_perfwatch.metrics import PerformanceMetrics, utcnow
from flask_perfwatch.notifiers.webhook import WebhookNotifier, build_event
from flask_perfwatch.report import Report
from flask_perfwatch.testing import SignalRecorder

pytestmark = pytest.mark.slow

MakeApp = Callable[..., tuple[Flask, PerfWatch]]
BASE_URL = "https://perf.example.com/reports/"


#: The test app posting to the receiver.
Setup = Channel[WebhookNotifier]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


@pytest.fixture
def signed() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=new_secret()) as server:
        yield server


def hook_app(make_app: MakeApp, receiver: WebhookReceiver, **overrides: Any) -> Setup:
    """The test app posting to ``receiver`` (signed when it has a secret);
    backoff waits are recorded in ``setup.delays``, not slept."""
    overrides.setdefault("webhook_url", receiver.url)
    overrides.setdefault("webhook_timeout", 3.0)
    if receiver.secret is not None:
        overrides.setdefault("webhook_secret", receiver.secret)
    return channel_app(make_app, WebhookNotifier, notifiers=["webhook"], **overrides)


def run(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(perfwatch_command, list(args))


def the_event(receiver: WebhookReceiver) -> Any:
    assert len(receiver.events) == 1, list(receiver.events)
    [event] = receiver.events.values()
    return event


# --- delivery --------------------------------------------------------------------


def test_one_slow_request_is_one_signed_event_linking_the_report(
        make_app: MakeApp, signed: WebhookReceiver, report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    h = hook_app(make_app, signed, report_base_url=BASE_URL)
    assert h.get("/fast").status_code == 200
    response = h.get("/slow?user=42&token=s3cr3t-value")
    assert response.status_code == 201
    [sent] = signals_recorder.wait_for("alert_sent")
    h.flush()
    metrics: PerformanceMetrics = sent.kwargs["metrics"]

    [hit] = signed.requests
    assert signed.rejected == []
    event = the_event(signed)
    # the receiver verified it; verify again here, by hand, from the raw bytes
    assert Webhook(signed.secret or "").verify(hit.body, hit.headers) == event
    assert event["type"] == "perfwatch.slow_request"
    data = event["data"]
    assert data["name"] == "slow"
    assert data["duration"] == metrics.duration >= SLOW
    assert data["threshold"] == metrics.threshold
    assert data["id"] == metrics.id
    assert data["summary"] == metrics.summary()
    assert data["params"] == {"user": "42", "token": "[REDACTED]"}
    assert data["dedupe_key"] == metrics.dedupe_key
    [report] = reports_in(report_dir)
    assert data["report_url"] == BASE_URL + report.name
    assert "report_path" not in data
    stamp = datetime.fromisoformat(event["timestamp"])
    assert event["timestamp"].endswith("Z")
    assert abs((stamp - metrics.started_at).total_seconds() - metrics.duration) < 0.01
    assert hit.headers["webhook-id"] == "msg_" + metrics.id
    assert abs(int(hit.headers["webhook-timestamp"]) - time.time()) < 60
    assert hit.headers["webhook-signature"].startswith("v1,")
    assert hit.headers["Content-Type"] == "application/json"
    assert b"s3cr3t" not in hit.body
    assert signals_recorder.count("alert_failed") == 0
    assert h.delays == []


def test_unsigned_event_carries_an_id_the_custom_headers_and_the_local_path(
        make_app: MakeApp, receiver: WebhookReceiver, report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    h = hook_app(make_app, receiver,
                 webhook_headers={"Authorization": "Bearer hdr-token-1f2e3d",
                                  "X-Tenant": "acme-prod"})
    h.get("/slow")
    [sent] = signals_recorder.wait_for("alert_sent")
    h.flush()
    [hit] = receiver.requests
    event = the_event(receiver)
    data = event["data"]
    [report] = reports_in(report_dir)
    assert data["report_path"] == str(report)
    assert "report_url" not in data
    assert data["name"] == "slow"
    assert data["duration"] == sent.kwargs["metrics"].duration
    assert hit.headers["webhook-id"] == "msg_" + sent.kwargs["metrics"].id
    assert "webhook-timestamp" in hit.headers
    assert "webhook-signature" not in hit.headers
    assert hit.headers["Authorization"] == "Bearer hdr-token-1f2e3d"
    assert hit.headers["X-Tenant"] == "acme-prod"


def test_each_alert_has_its_own_webhook_id(make_app: MakeApp, signed: WebhookReceiver,
                                           signals_recorder: SignalRecorder) -> None:
    h = hook_app(make_app, signed)
    h.get("/named/a?sleep=0.5")
    h.get("/named/b?sleep=0.5")
    signals_recorder.wait_for("alert_sent", 2)
    h.flush()
    assert len(signed.events) == 2
    assert {e["data"]["name"] for e in signed.events.values()} == {"named"}
    assert len({hit.headers["webhook-id"] for hit in signed.requests}) == 2


def test_a_hung_request_is_a_request_hung_event() -> None:
    metrics = PerformanceMetrics(kind="request", name="export", duration=31.0, threshold=1.0,
                                 started_at=utcnow(), method="GET", url="http://x/export",
                                 hung=True)
    report = Report(html="<html></html>", text="", filename="r.html", url=BASE_URL + "r.html")
    event = build_event(metrics, report)
    assert event["type"] == "perfwatch.request_hung"
    assert event["data"]["hung"] is True
    assert event["data"]["report_url"] == BASE_URL + "r.html"
    assert event["data"]["summary"].startswith("Hung request GET http://x/export")


# --- retries: same id, fresh signature --------------------------------------------


def test_a_retry_keeps_the_id_and_is_signed_with_a_fresh_timestamp(
        make_app: MakeApp, signed: WebhookReceiver, signals_recorder: SignalRecorder) -> None:
    """The first attempt is made "ten minutes ago" (the notifier's clock is
    turned back for it) and fails with a 503. Had the retry reused that
    attempt's timestamp and signature, the receiver (``standardwebhooks``,
    five minutes' tolerance) would refuse it; re-signed, it verifies."""
    h = hook_app(make_app, signed)
    readings: list[float] = []

    def clock() -> float:
        now = time.time() - (600 if not readings else 0)
        readings.append(now)
        return now

    h.notifier.clock = clock
    signed.fail("hook", 503, body={"error": "try later"})
    h.get("/slow")
    signals_recorder.wait_for("alert_sent")
    h.flush()
    first, second = signed.requests
    assert (first.status, second.status) == (503, 200)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    old, fresh = int(first.headers["webhook-timestamp"]), int(second.headers["webhook-timestamp"])
    assert fresh - old >= 590
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    webhook = Webhook(signed.secret or "")
    with pytest.raises(WebhookVerificationError, match="too old"):
        webhook.verify(first.body, first.headers)
    webhook.verify(second.body, second.headers)
    assert signed.rejected == []
    assert len(signed.events) == 1
    assert 0.5 <= h.delays[0] <= 1.0
    assert len(h.delays) == 1
    assert signals_recorder.count("alert_failed") == 0


TRANSIENT: dict[str, Callable[[WebhookReceiver], None]] = {
    "503 once": lambda s: s.fail("hook", 503),
    "500 twice": lambda s: s.fail("hook", 500, times=2),
    "502 from a proxy, not JSON": lambda s: s.fail(
        "hook", 502, body=b"<html><body>502 Bad Gateway</body></html>"),
    "408": lambda s: s.fail("hook", 408),
    "429 + Retry-After": lambda s: s.fail("hook", 429, headers={"Retry-After": "7"}),
    "503 + Retry-After as an HTTP date": lambda s: s.fail(
        "hook", 503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
    "connection dropped before the receiver read it": lambda s: s.drop("hook"),
    "connection dropped after the receiver took it": lambda s: s.drop("hook", when="after"),
    "answer slower than the timeout": lambda s: s.delay("hook", 3),
}


@pytest.mark.parametrize("fault", TRANSIENT.keys())
def test_a_transient_fault_is_retried_and_processed_once(
        fault: str, make_app: MakeApp, signed: WebhookReceiver,
        signals_recorder: SignalRecorder) -> None:
    h = hook_app(make_app, signed, webhook_timeout=1.0)
    TRANSIENT[fault](signed)
    h.get("/slow")
    signals_recorder.wait_for("alert_sent")
    h.flush()
    attempts = 3 if "twice" in fault else 2
    assert len(signed.requests) == attempts
    assert len({hit.headers["webhook-id"] for hit in signed.requests}) == 1
    assert signed.rejected == []
    event = the_event(signed)
    assert event["data"]["name"] == "slow"
    assert signals_recorder.count("alert_failed") == 0
    assert len(h.delays) == attempts - 1
    if "Retry-After" in fault and "date" not in fault:
        assert h.delays == [7.0]
    elif "date" in fault:
        assert h.delays == [0.0]  # a date in the past: at once
    else:
        assert all(0.5 * 2 ** i <= d <= 2 ** i for i, d in enumerate(h.delays))
    if fault.endswith(("after the receiver took it", "slower than the timeout")):
        # delivered twice (the slow one late), processed once: the receiver
        # knew the webhook-id
        wait_until(lambda: len(signed.deliveries) == 2, 20, message="the first delivery")
        assert len(signed.events) == 1


# --- permanent failures -------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_a_client_error_fails_at_once(status: int, make_app: MakeApp,
                                      receiver: WebhookReceiver,
                                      signals_recorder: SignalRecorder) -> None:
    h = hook_app(make_app, receiver)
    receiver.fail("hook", status, body={"error": "no such hook"}, times=5)
    h.get("/slow")
    error = h.failure(signals_recorder, retryable=False)
    assert len(receiver.requests) == 1
    assert h.delays == []
    assert str(error) == f'webhook: webhook POST: HTTP {status} {{"error": "no such hook"}}'
    assert signals_recorder.count("alert_sent") == 0


def test_retries_used_up_fail_the_alert(make_app: MakeApp, receiver: WebhookReceiver,
                                        signals_recorder: SignalRecorder) -> None:
    h = hook_app(make_app, receiver, webhook_retries=2)
    receiver.fail("hook", 503, times=10)
    h.get("/slow")
    error = h.failure(signals_recorder, retryable=True)
    assert len(receiver.requests) == 3
    assert len(h.delays) == 2
    assert str(error) == "webhook: gave up after 3 attempt(s); last error: webhook POST: HTTP 503"


def test_410_gone_disables_the_endpoint(make_app: MakeApp, receiver: WebhookReceiver,
                                        signals_recorder: SignalRecorder,
                                        caplog: pytest.LogCaptureFixture) -> None:
    h = hook_app(make_app, receiver)
    receiver.fail("hook", 410, body={"error": "this hook was deleted"})
    with caplog.at_level(logging.DEBUG, "flask_perfwatch"):
        h.get("/slow")
        [first] = signals_recorder.wait_for("alert_failed")
        h.flush()
        assert len(receiver.requests) == 1
        h.get("/named/later?sleep=0.5")
        h.get("/named/again?sleep=0.5")
        failures = signals_recorder.wait_for("alert_failed", 3)
        h.flush()
    assert len(receiver.requests) == 1  # later alerts fail without a request
    assert h.delays == []
    assert all(f.kwargs["error"].retryable is False for f in failures)
    assert "answered 410 Gone" in str(first.kwargs["error"])
    assert all("disabled until the app restarts" in str(f.kwargs["error"]) for f in failures)
    own = [r for r in caplog.records if r.name == "flask_perfwatch.notifiers.webhook"]
    assert [r.levelname for r in own] == ["ERROR"]
    assert "410 Gone" in own[0].getMessage()
    assert f"127.0.0.1:{receiver.port}/hooks/perf" in own[0].getMessage()
    result = run(h.app, "check")
    assert result.exit_code == 1
    assert "410 Gone" in result.output


# --- secrets ------------------------------------------------------------------------


def test_no_secret_in_any_log_line_error_or_byte_sent(
        make_app: MakeApp, signed: WebhookReceiver, signals_recorder: SignalRecorder,
        caplog: pytest.LogCaptureFixture) -> None:
    """The receiver echoes header values back in its errors (as some do); the
    signing secret must never be sent, the header values only in their headers."""
    secret = signed.secret or ""
    tenant, api_key, url_token = "tenant-77f2e9b4", "k7f3a9c2e1d05", "urlS3cretValue9"
    h = hook_app(make_app, signed, webhook_url=f"{signed.url}?token={url_token}",
                 webhook_headers={"X-Tenant": tenant, "X-Api-Key": api_key})
    signed.fail("hook", 503, body={"error": f"tenant {tenant} is over quota"})
    signed.fail("hook", 401, body={"error": f"key {api_key} was revoked"})
    with caplog.at_level(logging.DEBUG, "flask_perfwatch"):
        h.get("/slow")
        [failed] = signals_recorder.wait_for("alert_failed")
        h.flush()
        check = run(h.app, "check")
    assert check.exit_code == 0, check.output
    texts = [r.getMessage() for r in caplog.records]
    texts += [r.exc_text or "" for r in caplog.records]
    texts += [str(failed.kwargs["error"]), check.output, repr(h.notifier)]
    assert any("[REDACTED] is over quota" in t for t in texts)  # scrubbed, not dropped
    assert "key [REDACTED] was revoked" in str(failed.kwargs["error"])
    for text in texts:
        for value in (secret, secret.removeprefix("whsec_"), tenant, api_key, url_token):
            assert value not in text, (value, text)
    sent = signed.received_bytes()
    assert secret.removeprefix("whsec_").encode() not in sent
    assert secret.encode() not in sent
    for hit in signed.requests:
        assert tenant.encode() not in hit.body
        assert api_key.encode() not in hit.body


# --- configuration and the CLI -----------------------------------------------------


@pytest.mark.parametrize(("secret", "why"), [
    ("c2VjcmV0LWtleS1ieXRlcw==", "does not start with 'whsec_'"),
    ("whsec_not base64!", "is not base64"),
    ("whsec_", "is empty"),
    ("whsec_abcde", "is not base64"),
])
def test_a_malformed_secret_is_a_config_error_that_does_not_show_it(
        secret: str, why: str, make_app: MakeApp, receiver: WebhookReceiver) -> None:
    with pytest.raises(ConfigError) as info:
        make_app(notifiers=["webhook"], webhook_url=receiver.url, webhook_secret=secret)
    message = str(info.value)
    assert message.startswith("PERFWATCH_WEBHOOK_SECRET='[REDACTED]' (from ")
    assert why in message
    if secret.removeprefix("whsec_"):
        assert secret.removeprefix("whsec_") not in message


def test_an_unpadded_secret_is_accepted(make_app: MakeApp, receiver: WebhookReceiver) -> None:
    secret = new_secret().rstrip("=")
    assert not secret.endswith("=")
    hook_app(make_app, receiver, webhook_secret=secret)


def test_the_url_is_required(make_app: MakeApp) -> None:
    with pytest.raises(ConfigError, match=r"^PERFWATCH_WEBHOOK_URL=None \(from default\)"):
        make_app(notifiers=["webhook"])


def test_a_header_the_notifier_sets_itself_is_refused(make_app: MakeApp,
                                                      receiver: WebhookReceiver) -> None:
    with pytest.raises(ConfigError) as info:
        make_app(notifiers=["webhook"], webhook_url=receiver.url,
                 webhook_headers={"Webhook-Signature": "v1,forged", "X-Ok": "fine"})
    message = str(info.value)
    assert message.startswith("PERFWATCH_WEBHOOK_HEADERS=")
    assert "Webhook-Signature" in message
    assert "forged" not in message
    assert "fine" not in message


def test_check_contacts_nothing(make_app: MakeApp, signed: WebhookReceiver) -> None:
    h = hook_app(make_app, signed, webhook_headers={"X-Tenant": "acme-prod"})
    result = run(h.app, "check")
    assert result.exit_code == 0, result.output
    [line] = [row.strip() for row in result.output.splitlines()
              if row.strip().startswith("webhook ")]
    assert line.split(None, 2)[:2] == ["webhook", "OK"]
    assert line.endswith(f"POSTs signed (Standard Webhooks) JSON to {signed.url}, with 1 extra "
                         "header(s); not contacted (any POST would deliver an alert)")
    assert signed.requests == []


def test_test_alert_goes_through_the_webhook(make_app: MakeApp, signed: WebhookReceiver
                                             ) -> None:
    h = hook_app(make_app, signed, report_base_url=BASE_URL)
    result = run(h.app, "test-alert")
    assert result.exit_code == 0, result.output
    event = the_event(signed)
    assert event["data"]["name"] == "perfwatch.test_alert"
    assert event["data"]["report_url"].startswith(BASE_URL)
    [hit] = signed.requests
    Webhook(signed.secret or "").verify(hit.body, hit.headers)
    assert json.loads(hit.body) == event
