"""The one delivery policy every channel uses (``notifiers/delivery.py``), the
HTTP client of the webhook-style channels (``notifiers/_http.py``) against a
real server on 127.0.0.1, report links, the ``log`` channel, and the
channels' registration through the entry point group."""

from __future__ import annotations

import gc
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from conftest import reports_in
from http_standin import Hit, StandIn, json_answer

from flask_perfwatch import __version__
from flask_perfwatch._registry import NOTIFIERS
from flask_perfwatch.exceptions import NotifierError
from flask_perfwatch.notifiers._http import HTTPClient, check_status
from flask_perfwatch.notifiers.delivery import (
    MAX_RETRY_AFTER,
    Permanent,
    Retryable,
    RetryPolicy,
    deliver,
    parse_retry_after,
)
from flask_perfwatch.testing import SignalRecorder

SECRET = "s3cr3t-path-token-0123456789"


def _policy(retries: int = 3, budget: float = 60.0) -> tuple[RetryPolicy, list[float]]:
    delays: list[float] = []
    return RetryPolicy(retries=retries, budget=budget, sleep=delays.append), delays


# -- the policy ------------------------------------------------------------------


def test_retryable_failures_are_retried_then_succeed() -> None:
    policy, delays = _policy()
    seen: list[int] = []

    def attempt(number: int) -> str:
        seen.append(number)
        if number < 3:
            raise Retryable("HTTP 503")
        return "sent"

    assert deliver("Chat", attempt, policy) == "sent"
    assert seen == [1, 2, 3]
    # backoff with jitter: between half and all of 1s, then of 2s
    assert 0.5 <= delays[0] <= 1.0
    assert 1.0 <= delays[1] <= 2.0


def test_retry_after_is_honoured_over_the_backoff() -> None:
    policy, delays = _policy()
    answers = iter([Retryable("429", retry_after=7.5), Retryable("429", retry_after=0.0)])

    def attempt(number: int) -> str:
        failure = next(answers, None)
        if failure is not None:
            raise failure
        return "sent"

    assert deliver("Chat", attempt, policy) == "sent"
    assert delays == [7.5, 0.0]


def test_permanent_failures_are_not_retried() -> None:
    policy, delays = _policy()
    calls: list[int] = []

    def attempt(number: int) -> None:
        calls.append(number)
        raise Permanent("invalid_auth: the token was revoked")

    with pytest.raises(NotifierError) as error:
        deliver("Slack", attempt, policy)
    assert str(error.value) == "Slack: invalid_auth: the token was revoked"
    assert error.value.retryable is False
    assert calls == [1]
    assert delays == []


def test_gives_up_after_the_retries() -> None:
    policy, delays = _policy(retries=2)
    with pytest.raises(NotifierError) as error:
        deliver("Chat", lambda n: (_ for _ in ()).throw(Retryable(f"HTTP 50{n}")), policy)
    assert str(error.value) == "Chat: gave up after 3 attempt(s); last error: HTTP 503"
    assert error.value.retryable is True
    assert len(delays) == 2


def test_the_budget_bounds_the_waiting() -> None:
    policy, delays = _policy(retries=10, budget=10.0)
    with pytest.raises(NotifierError, match=r"gave up after 3 attempt\(s\): the next wait "
                                            r"\(4\.0s\) would pass the 10s"):
        deliver("Chat", lambda n: (_ for _ in ()).throw(Retryable("busy", retry_after=4.0)),
                policy)
    assert delays == [4.0, 4.0]


def test_an_unclassified_error_is_not_retried_and_keeps_its_type() -> None:
    policy, delays = _policy()
    with pytest.raises(KeyError):
        deliver("Chat", lambda n: {}["missing"], policy)
    assert delays == []


def test_parse_retry_after() -> None:
    now = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 1.5 ") == 1.5  # Discord-style decimals
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("1e9") == MAX_RETRY_AFTER
    assert parse_retry_after("nan") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(date, now=now.timestamp()) == pytest.approx(30.0)


# -- HTTP against a real server ----------------------------------------------------


class HookServer(StandIn):
    def __init__(self) -> None:
        super().__init__()
        self.routes["hook"] = ("POST", re.compile(r"^/hooks/\w[\w-]*$"), self._hook)

    def _hook(self, hit: Hit, match: re.Match[str]) -> tuple[int, dict[str, str], bytes]:
        return json_answer(200, {"ok": True})


@pytest.fixture
def hooks() -> Iterator[HookServer]:
    with HookServer() as server:
        yield server  # type: ignore[misc]


def _post(client: HTTPClient, url: str) -> Any:
    response = client.post(url, what="posting the alert", json_body={"text": "slow"})
    check_status(response, "posting the alert")
    return response


def test_http_statuses_are_classified(hooks: HookServer) -> None:
    client = HTTPClient(timeout=5)
    url = f"{hooks.base_url}/hooks/{SECRET}"
    assert _post(client, url).json() == {"ok": True}
    hooks.fail("hook", 429, headers={"Retry-After": "12"})
    with pytest.raises(Retryable) as retry:
        _post(client, url)
    assert retry.value.retry_after == 12.0
    hooks.fail("hook", 503, body={"error": "maintenance"})
    with pytest.raises(Retryable, match="HTTP 503"):
        _post(client, url)
    hooks.fail("hook", 404, body={"error": f"no hook {SECRET}"})
    with pytest.raises(Permanent, match="HTTP 404"):
        _post(client, url)
    assert [hit.json() for hit in hooks.hits("hook")] == [{"text": "slow"}] * 4
    assert {hit.headers["User-Agent"] for hit in hooks.requests} == \
        {f"flask-perfwatch/{__version__}"}


def test_http_connection_faults_are_retryable_and_never_quote_the_url(
        hooks: HookServer) -> None:
    client = HTTPClient(timeout=0.5)
    url = f"{hooks.base_url}/hooks/{SECRET}"
    reasons = []
    hooks.drop("hook")
    with pytest.raises(Retryable) as dropped:
        _post(client, url)
    reasons.append(dropped.value.reason)
    hooks.delay("hook", 30)  # released by close(); the client times out first
    with pytest.raises(Retryable) as slow:
        _post(client, url)
    reasons.append(slow.value.reason)
    with pytest.raises(Retryable) as refused:
        _post(client, f"http://127.0.0.1:1/hooks/{SECRET}")
    reasons.append(refused.value.reason)
    assert "dropped" in reasons[0]
    assert reasons[1] == "posting the alert: no answer within 0.5s"
    assert reasons[2] == "posting the alert: could not connect (ConnectionRefusedError)"
    assert not any(SECRET in reason for reason in reasons)


# -- report links and the log channel ------------------------------------------------


def test_log_channel_logs_one_line_with_the_report_path(
        make_app, report_dir: Path, caplog: pytest.LogCaptureFixture,
        signals_recorder: SignalRecorder) -> None:
    caplog.set_level(logging.WARNING, "flask_perfwatch.alerts")
    app, _ = make_app(notifiers=["log"])
    assert app.test_client().get("/slow?q=1").status_code == 201
    signals_recorder.wait_for("alert_sent")
    [record] = [r for r in caplog.records if r.name == "flask_perfwatch.alerts"]
    message = record.getMessage()
    [path] = reports_in(report_dir)  # written for the link: log cannot attach it
    assert message.startswith("Slow request GET http://localhost/slow?q=1 [slow] took ")
    assert message.endswith(f"; report: {path}")
    assert "\n" not in message
    assert record.levelno == logging.WARNING
    assert record.perfwatch_alert["name"] == "slow"  # type: ignore[attr-defined]
    assert record.perfwatch_report == str(path)  # type: ignore[attr-defined]


def test_report_base_url_gives_reports_a_link(
        make_app, report_dir: Path, caplog: pytest.LogCaptureFixture,
        signals_recorder: SignalRecorder) -> None:
    caplog.set_level(logging.WARNING, "flask_perfwatch.alerts")
    app, _ = make_app(notifiers=["log"], report_base_url="https://perf.example.com/r")
    app.test_client().get("/slow")
    signals_recorder.wait_for("alert_sent")
    [path] = reports_in(report_dir)
    [record] = [r for r in caplog.records if r.name == "flask_perfwatch.alerts"]
    assert record.getMessage().endswith(f"; report: https://perf.example.com/r/{path.name}")


def test_log_check_says_when_the_logger_drops_warnings() -> None:
    from flask_perfwatch import Config
    from flask_perfwatch.notifiers import LogNotifier

    notifier = LogNotifier(Config())
    assert "flask_perfwatch.alerts" in notifier.check()
    alerts = logging.getLogger("flask_perfwatch.alerts")
    alerts.setLevel(logging.ERROR)
    try:
        with pytest.raises(RuntimeError, match="drops WARNING"):
            notifier.check()
    finally:
        alerts.setLevel(logging.NOTSET)


def test_every_builtin_channel_is_registered_through_the_entry_point_group() -> None:
    registered = {ep.name: ep.value for ep in entry_points(group="flask_perfwatch.notifiers")}
    assert {name: registered.get(name) for name in NOTIFIERS} == dict(NOTIFIERS)
    assert set(NOTIFIERS) == {"local", "log", "mattermost", "slack", "teams", "discord",
                              "email", "webhook", "pagerduty"}


def test_urllib3_debug_lines_never_show_a_client_secret(
        hooks: HookServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "urllib3")
    client = HTTPClient(timeout=5, secrets=[SECRET])
    _post(client, f"{hooks.base_url}/hooks/{SECRET}")
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
    assert any("/hooks/[REDACTED]" in line for line in lines)  # urllib3 does log the path
    assert not any(SECRET in line for line in lines)
    client.close()
    caplog.clear()
    _post(HTTPClient(timeout=5), f"{hooks.base_url}/hooks/{SECRET}")  # no secrets given
    assert any(SECRET in r.getMessage() for r in caplog.records)  # the filter is gone
    # a client never closed gives its secrets up when it is collected
    other = "an0ther-s3cret-path-token"
    unclosed = HTTPClient(timeout=5, secrets=[other])
    _post(unclosed, f"{hooks.base_url}/hooks/{other}")
    del unclosed
    gc.collect()
    caplog.clear()
    _post(HTTPClient(timeout=5), f"{hooks.base_url}/hooks/{other}")
    assert any(other in r.getMessage() for r in caplog.records)
