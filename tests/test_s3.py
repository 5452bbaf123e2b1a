"""The S3 report store (``PERFWATCH_REPORT_STORE=s3://bucket/prefix``) through
a real Flask app, the pipeline and boto3, against a real S3 API server on
127.0.0.1 (moto's server mode, :mod:`s3_server`); boto3 is never mocked and
finds fake credentials only.

Faults and their expected outcome (the report always stays in the local
folder, and every notifier still gets the alert):

- the bucket does not exist: ``alert_failed`` from the store (``NoSuchBucket``),
  the notifiers get the local path;
- access denied (an IAM user without ``s3:PutObject``, moto's IAM checks on):
  ``alert_failed`` (``AccessDenied``); an unknown access key
  (``InvalidAccessKeyId``) likewise, and neither the key nor the secret
  appears in any message or log line;
- the endpoint is down (a closed port): ``alert_failed``
  (``EndpointConnectionError``) within seconds;
- the endpoint accepts but never answers: ``alert_failed``
  (``ReadTimeoutError``) after the read timeout; the next alert skips the
  upload at once (no new connection) during the cooldown.
"""

from __future__ import annotations

import html
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3
from channel_harness import channel_app
from click.testing import Result
from conftest import SLOW, monitor_of, reports_in, run_in_child, wait_until
from flask import Flask
from http_standin import Answer, Hit, StandIn
from redis_server import HOST, free_port
from s3_server import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    MotoServer,
    fake_aws_environment,
    running_moto,
)

from flask_perfwatch import Config, PerfWatch, reportstore
from flask_perfwatch.cli import perfwatch as perfwatch_command
from flask_perfwatch.exceptions import ConfigError
from flask_perfwatch.report import Report
from flask_perfwatch.reportstore import (
    MAX_LINK_TTL,
    ReportStoreError,
    S3Location,
    S3ReportStore,
    report_key_name,
)
from flask_perfwatch.testing import SignalRecorder

pytestmark = pytest.mark.slow

MakeApp = Callable[..., tuple[Flask, PerfWatch]]
PREFIX = "reports/"
DAY = 86400.0


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto server for the module (it starts in about a second)."""
    with running_moto(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """boto3 finds the fake credentials, no region, and nothing else."""
    fake_aws_environment(monkeypatch, tmp_path)


@pytest.fixture
def bucket(moto: MotoServer) -> str:
    """A fresh bucket for each test."""
    return moto.new_bucket()


@pytest.fixture
def s3_app(make_app: MakeApp, moto: MotoServer, bucket: str) -> MakeApp:
    """``s3_app(**overrides)``: the test app with the S3 report store on the
    test's bucket (prefix ``reports/``), the ``log`` notifier, no dedupe."""

    def factory(**overrides: Any) -> tuple[Flask, PerfWatch]:
        return make_app(**s3_overrides(moto, bucket, **overrides))

    return factory


def s3_overrides(moto: MotoServer, bucket: str, **overrides: Any) -> dict[str, Any]:
    overrides.setdefault("report_store", f"s3://{bucket}/reports")
    overrides.setdefault("s3_endpoint_url", moto.url)
    overrides.setdefault("dedup_window", 0)
    overrides.setdefault("notifiers", ["log"])
    return overrides


def objects(moto: MotoServer, bucket: str) -> dict[str, bytes]:
    """Every object of ``bucket``: key -> bytes."""
    client = moto.client()
    try:
        keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket) for item in page.get("Contents", [])]
        return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}
    finally:
        client.close()


def download(url: str) -> urllib3.BaseHTTPResponse:
    """GET ``url`` (a presigned link) as a browser would: no credentials."""
    return urllib3.request("GET", url, retries=False, timeout=10.0)


def link_query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def alert_line(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    """The one record the ``log`` notifier wrote."""
    [record] = [r for r in caplog.records if r.name == "flask_perfwatch.alerts"]
    return record


def our_log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Everything flask_perfwatch logged, but the ``log`` channel's alert
    lines (delivering the link is that channel's job)."""
    return "\n".join(r.getMessage() for r in caplog.records
                     if r.name.startswith("flask_perfwatch")
                     and r.name != "flask_perfwatch.alerts")


def store_of(app: Flask) -> S3ReportStore:
    store = monitor_of(app).pipeline.report_store
    assert store is not None
    return store


def run(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(perfwatch_command, list(args))


def status_line(result: Result, label: str) -> str:
    found = [" ".join(words) for words in (row.split() for row in result.output.splitlines())
             if words[:1] == [label] and len(words) >= 2 and words[1] in ("OK", "FAILED")]
    assert len(found) == 1, result.output
    return found[0]


def a_report(name: str = "perfwatch-20261202T080000Z-GET-orders-0123abcd.html") -> Report:
    return Report(html=f"<html><body>{name} ünïcode</body></html>", text=name, filename=name)


# --- upload and link ---------------------------------------------------------------


def test_a_slow_request_uploads_its_report_and_links_it(
        s3_app: MakeApp, moto: MotoServer, bucket: str, report_dir: Path,
        signals_recorder: SignalRecorder, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="flask_perfwatch")
    app, perfwatch = s3_app()
    response = app.test_client().get("/slow?user=42")
    assert response.status_code == 201  # the response is untouched
    [sent_s3, sent_log] = signals_recorder.wait_for("alert_sent", 2)
    assert perfwatch.flush(20, app)
    assert [sent_s3.kwargs["notifier"].name, sent_log.kwargs["notifier"].name] == ["s3", "log"]
    assert signals_recorder.count("alert_failed") == 0

    # the local file is still written, and the object is that file
    [local] = reports_in(report_dir)
    stored = objects(moto, bucket)
    assert stored == {PREFIX + local.name: local.read_bytes()}
    head = moto.client().head_object(Bucket=bucket, Key=PREFIX + local.name)
    assert head["ContentType"] == "text/html; charset=utf-8"

    # every channel got the presigned link, which downloads the report as is
    link = alert_line(caplog).perfwatch_report  # type: ignore[attr-defined]
    assert link.startswith(f"{moto.url}/{bucket}/{PREFIX}{local.name}?")
    query = link_query(link)
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Expires"] == str(MAX_LINK_TTL)  # default: 7 days, S3's maximum
    assert query["X-Amz-Credential"].startswith(f"{ACCESS_KEY_ID}/")
    assert "/us-east-1/s3/aws4_request" in query["X-Amz-Credential"]  # no region: the default
    answer = download(link)
    assert answer.status == 200
    assert answer.data == local.read_bytes()
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"

    # counted like a notifier; the link (a bearer secret) is in no log line of ours
    assert perfwatch.stats(app)["notifiers"]["s3"] == {"sent": 1, "failed": 0}
    assert query["X-Amz-Signature"] not in our_log_text(caplog)
    assert SECRET_ACCESS_KEY not in caplog.text


def test_the_link_lasts_the_configured_ttl(s3_app: MakeApp, report_dir: Path,
                                            signals_recorder: SignalRecorder,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flask_perfwatch.alerts")
    app, perfwatch = s3_app(report_link_ttl="90m")
    before = time.gmtime(time.time() - 5)
    app.test_client().get("/slow")
    signals_recorder.wait_for("alert_sent", 2)
    assert perfwatch.flush(20, app)
    query = link_query(alert_line(caplog).perfwatch_report)  # type: ignore[attr-defined]
    assert query["X-Amz-Expires"] == "5400"
    signed_at = time.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    assert before <= signed_at <= time.gmtime(time.time() + 5)


def test_each_report_is_its_own_object_under_the_prefix(
        s3_app: MakeApp, moto: MotoServer, bucket: str, report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    app, perfwatch = s3_app(report_store=f"s3://{bucket}/team/perf/")
    client = app.test_client()
    client.get("/slow?n=1")
    client.get("/named/a..b/../c?sleep=0.8")
    signals_recorder.wait_for("alert_sent", 4)
    assert perfwatch.flush(20, app)
    local = {p.name: p.read_bytes() for p in reports_in(report_dir)}
    assert len(local) == 2
    assert objects(moto, bucket) == {"team/perf/" + name: data for name, data in local.items()}


def test_the_webhook_and_pagerduty_get_the_stored_link(
        make_app: MakeApp, moto: MotoServer, bucket: str, report_dir: Path,
        signals_recorder: SignalRecorder) -> None:
    from event_servers import PagerDutyStandIn, WebhookReceiver

    from flask_perfwatch.notifiers.webhook import WebhookNotifier

    with WebhookReceiver() as receiver, PagerDutyStandIn() as pd:
        h = channel_app(make_app, WebhookNotifier, **s3_overrides(
            moto, bucket, notifiers=["webhook", "pagerduty"], webhook_url=receiver.url,
            webhook_timeout=3.0, pagerduty_url=pd.url, pagerduty_routing_key=pd.routing_key,
            pagerduty_timeout=3.0))
        h.get("/slow")
        signals_recorder.wait_for("alert_sent", 3)
        h.flush()
        [report] = h.reports
        assert report.url is not None
        [(_, event)] = receiver.deliveries
        [pd_event] = pd.events
    assert event["data"]["report_url"] == report.url
    assert "report_path" not in event["data"]
    assert pd_event["links"] == [{"href": report.url, "text": "Profile report"}]
    assert "X-Amz-Signature" not in repr(report)  # the link is a secret: not in the repr
    [local] = reports_in(report_dir)
    assert download(report.url).data == local.read_bytes()


# --- the chat channels link to the stored report when they cannot attach it -----------


def test_discord_links_to_the_stored_report_when_the_file_is_too_large(
        make_app: MakeApp, moto: MotoServer, bucket: str,
        signals_recorder: SignalRecorder) -> None:
    from webhook_chat_servers import DiscordWebhookStandIn

    from flask_perfwatch.notifiers.discord import DiscordNotifier

    with DiscordWebhookStandIn() as discord:
        discord.max_file_size = 2000  # any report is bigger
        h = channel_app(make_app, DiscordNotifier, **s3_overrides(
            moto, bucket, notifiers=["discord"], discord_webhook_url=discord.url,
            discord_timeout=3.0))
        h.get("/slow")
        signals_recorder.wait_for("alert_sent", 2)
        h.flush()
        [message] = discord.messages
    [report] = h.reports
    assert report.url is not None
    assert message.files == []
    assert f"; open it at {report.url}\n" in message.content
    assert download(report.url).data == report.html.encode()


def test_slack_links_to_the_stored_report_when_the_upload_is_refused(
        make_app: MakeApp, moto: MotoServer, bucket: str,
        signals_recorder: SignalRecorder) -> None:
    pytest.importorskip("slack_sdk")
    from slack_server import SlackStandIn

    from flask_perfwatch.notifiers.slack import SlackNotifier

    with SlackStandIn() as slack:
        slack.fail("upload", 403, body=b"Forbidden")
        h = channel_app(make_app, SlackNotifier, **s3_overrides(
            moto, bucket, notifiers=["slack"], slack_token=slack.token,
            slack_channel=slack.channel_id, slack_api_url=slack.api_url, slack_timeout=3.0))
        h.get("/slow")
        signals_recorder.wait_for("alert_sent", 2)
        h.flush()
        [message] = slack.messages_in()
        assert not slack.errors, slack.errors
    [report] = h.reports
    assert report.url is not None
    assert message.via == "chat.postMessage"
    # Slack escapes & < > in a link's target; a client shows it unescaped
    assert html.unescape(message.text).endswith(
        f"The report could not be attached (uploading the report: HTTP 403): "
        f"<{report.url}|open it>.")
    assert download(report.url).data == report.html.encode()


def test_mattermost_links_to_the_stored_report_when_the_file_is_too_large(
        make_app: MakeApp, moto: MotoServer, bucket: str,
        signals_recorder: SignalRecorder) -> None:
    pytest.importorskip("mattermostdriver")
    from mattermost_harness import build_harness
    from mattermost_server import MattermostStandIn

    with MattermostStandIn() as standin:
        standin.max_file_size = 2000  # any report is bigger
        h = build_harness(standin, make_app, **s3_overrides(moto, bucket,
                                                            notifiers=("mattermost",)))
        h.get("/slow")
        signals_recorder.wait_for("alert_sent", 2)
        h.flush()
        [post] = standin.posts
    [report] = h.reports
    assert report.url is not None
    assert post["file_ids"] == []
    assert report.url in post["message"]


# --- faults: the report stays local, every notifier is still alerted -----------------


def assert_failed_but_delivered(signals_recorder: SignalRecorder, perfwatch: PerfWatch,
                                app: Flask, report_dir: Path, caplog: pytest.LogCaptureFixture,
                                code: str) -> ReportStoreError:
    """The store's ``alert_failed`` (with ``code``), the ``log`` notifier's
    ``alert_sent`` with the local path, the report on disk; the error."""
    [failed] = signals_recorder.wait_for("alert_failed")
    [sent] = signals_recorder.wait_for("alert_sent")
    assert perfwatch.flush(20, app)
    assert failed.kwargs["notifier"].name == "s3"
    assert sent.kwargs["notifier"].name == "log"
    assert failed.kwargs["metrics"] is sent.kwargs["metrics"]
    error = failed.kwargs["error"]
    assert isinstance(error, ReportStoreError)
    assert error.code == code, str(error)
    [local] = reports_in(report_dir)
    assert alert_line(caplog).perfwatch_report == str(local)  # type: ignore[attr-defined]
    [logged] = [r for r in caplog.records if r.name == "flask_perfwatch.pipeline"
                and r.levelno == logging.ERROR]
    message = logged.getMessage()
    assert f"report store 's3' failed for {sent.kwargs['metrics'].summary()}: " in message
    assert code in message
    assert f"report kept at {local}" in message
    assert perfwatch.stats(app)["notifiers"]["s3"] == {"sent": 0, "failed": 1}
    return error


def test_a_missing_bucket_is_a_clear_alert_failed(
        s3_app: MakeApp, bucket: str, report_dir: Path, signals_recorder: SignalRecorder,
        caplog: pytest.LogCaptureFixture) -> None:
    app, perfwatch = s3_app(report_store="s3://perfwatch-no-such-bucket/reports")
    app.test_client().get("/slow")
    error = assert_failed_but_delivered(signals_recorder, perfwatch, app, report_dir, caplog,
                                        "NoSuchBucket")
    assert str(error).startswith("uploading reports/perfwatch-")
    assert "to bucket 'perfwatch-no-such-bucket': NoSuchBucket (The specified bucket does " \
           "not exist), HTTP 404; the bucket does not exist: create it, or fix " \
           "PERFWATCH_REPORT_STORE" in str(error)


@pytest.fixture
def iam_enforced(moto: MotoServer, bucket: str) -> Iterator[None]:
    """moto checks every request's signature and IAM policies while the test
    runs (once the test's bucket exists)."""
    moto.enforce_iam(True)
    try:
        yield
    finally:
        moto.enforce_iam(False)


def test_denied_access_is_a_clear_alert_failed(
        s3_app: MakeApp, moto: MotoServer, bucket: str, report_dir: Path,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, signals_recorder: SignalRecorder,
        caplog: pytest.LogCaptureFixture) -> None:
    access_key, secret_key = moto.restricted_user(allow=["s3:GetObject", "s3:ListBucket"],
                                                  bucket=bucket)
    fake_aws_environment(monkeypatch, tmp_path, access_key=access_key, secret_key=secret_key)
    app, perfwatch = s3_app()
    moto.enforce_iam(True)
    try:
        app.test_client().get("/slow")
        error = assert_failed_but_delivered(signals_recorder, perfwatch, app, report_dir,
                                            caplog, "AccessDenied")
    finally:
        moto.enforce_iam(False)
    assert "AccessDenied (Access Denied), HTTP 403; the credentials boto3 found may not " \
           "s3:PutObject here" in str(error)
    assert objects(moto, bucket) == {}
    for secret in (access_key, secret_key):
        assert secret not in caplog.text
        assert secret not in str(error)


@pytest.mark.usefixtures("iam_enforced")
def test_an_unknown_access_key_never_leaks(
        s3_app: MakeApp, report_dir: Path, signals_recorder: SignalRecorder,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="flask_perfwatch")
    app, perfwatch = s3_app()  # the fake key: moto's IAM does not know it
    app.test_client().get("/slow")
    error = assert_failed_but_delivered(signals_recorder, perfwatch, app, report_dir, caplog,
                                        "InvalidAccessKeyId")
    assert "the store does not know the access key boto3 found" in str(error)
    for secret in (ACCESS_KEY_ID, SECRET_ACCESS_KEY):
        assert secret not in caplog.text
        assert secret not in str(error)


class EchoingS3(StandIn):
    """An S3-compatible server that refuses every upload with an error
    message quoting the request's credentials (as a careless one might)."""

    def __init__(self) -> None:
        super().__init__()
        self.routes["put"] = ("PUT", re.compile(r"^/.*$"), self._refuse)

    def _refuse(self, hit: Hit, match: re.Match[str]) -> Answer:
        signature = hit.headers.get("Authorization", "").rpartition("Signature=")[2]
        body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
                f"<Message>Signature={signature}: no access for {ACCESS_KEY_ID} with secret "
                f"{SECRET_ACCESS_KEY}</Message></Error>")
        return 403, {"Content-Type": "application/xml"}, body.encode()


def test_a_server_quoting_the_credentials_never_makes_them_leak(
        s3_app: MakeApp, report_dir: Path, signals_recorder: SignalRecorder,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="flask_perfwatch")
    with EchoingS3() as server:
        app, perfwatch = s3_app(s3_endpoint_url=server.base_url)
        app.test_client().get("/slow")
        error = assert_failed_but_delivered(signals_recorder, perfwatch, app, report_dir,
                                            caplog, "AccessDenied")
        [hit] = server.hits("put")
    signature = hit.headers["Authorization"].rpartition("Signature=")[2]
    assert len(signature) == 64  # the server did get (and quote) the real header
    assert "no access for [REDACTED] with secret [REDACTED]" in str(error)
    for secret in (ACCESS_KEY_ID, SECRET_ACCESS_KEY, signature):
        assert secret not in str(error)
        assert secret not in caplog.text


def test_a_server_that_is_down_fails_fast(
        s3_app: MakeApp, report_dir: Path, signals_recorder: SignalRecorder,
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there
    app, perfwatch = s3_app(s3_endpoint_url=f"http://{HOST}:{port}")
    started = time.monotonic()
    app.test_client().get("/slow")
    error = assert_failed_but_delivered(signals_recorder, perfwatch, app, report_dir, caplog,
                                        "EndpointConnectionError")
    assert time.monotonic() - started < SLOW + 10
    assert f"the endpoint http://{HOST}:{port} could not be reached" in str(error)
    assert error.retryable


class SilentServer:
    """Accepts connections on 127.0.0.1 and reads them, never answering."""

    def __init__(self) -> None:
        self.sock = socket.create_server((HOST, 0))
        self.url = f"http://{HOST}:{self.sock.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            reader = threading.Thread(target=self._drain, args=(conn,), daemon=True)
            self._threads.append(reader)
            reader.start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()
        self._accepting.join(5)
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


def test_a_server_that_never_answers_times_out_then_is_skipped(
        s3_app: MakeApp, silent: SilentServer, report_dir: Path,
        monkeypatch: pytest.MonkeyPatch, signals_recorder: SignalRecorder,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(reportstore, "READ_TIMEOUT", 0.5)
    app, perfwatch = s3_app(s3_endpoint_url=silent.url)
    started = time.monotonic()
    assert app.test_client().get("/slow?n=1").status_code == 201
    served = time.monotonic() - started
    error = assert_failed_but_delivered(signals_recorder, perfwatch, app, report_dir, caplog,
                                        "ReadTimeoutError")
    assert time.monotonic() - started < SLOW + 10
    assert len(silent.connections) == reportstore.MAX_ATTEMPTS  # one retry, then given up
    assert error.retryable
    # the request did not wait for the upload (two attempts of over a second each)
    assert served < SLOW + 1.0 < time.monotonic() - started

    # within the cooldown the next alert skips the upload: no new connection, no wait
    caplog.clear()
    app.test_client().get("/slow?n=2")
    [_, skipped] = signals_recorder.wait_for("alert_failed", 2)
    assert perfwatch.flush(20, app)
    assert skipped.kwargs["error"].code == "Skipped"
    assert "skipped, the endpoint was unreachable" in str(skipped.kwargs["error"])
    assert len(silent.connections) == reportstore.MAX_ATTEMPTS
    assert signals_recorder.count("alert_sent") == 2  # the log notifier, both times
    assert len(reports_in(report_dir)) == 2


# --- retention ---------------------------------------------------------------------


OURS = [f"{PREFIX}perfwatch-20261101T00000{i}Z-GET-a-0000000{i}.html" for i in range(5)]
FOREIGN = [f"{PREFIX}notes.txt", f"{PREFIX}perfwatch-x.html.bak", f"{PREFIX}sub/perfwatch-x.html",
           "other/perfwatch-y.html", "perfwatch-at-the-root.html"]


def plant(moto: MotoServer, bucket: str, keys: list[str]) -> list[float]:
    """Put ``keys`` in the bucket; their last-modified times (epoch seconds)."""
    client = moto.client()
    try:
        for key in keys:
            client.put_object(Bucket=bucket, Key=key, Body=b"<html>old</html>")
        return [client.head_object(Bucket=bucket, Key=key)["LastModified"].timestamp()
                for key in keys]
    finally:
        client.close()


def a_store(moto: MotoServer, bucket: str, **kwargs: Any) -> S3ReportStore:
    kwargs.setdefault("retention", 30 * DAY)
    return S3ReportStore(S3Location(bucket, PREFIX), endpoint_url=moto.url, **kwargs)


def test_pruning_removes_only_our_old_reports(moto: MotoServer, bucket: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reportstore, "DELETE_BATCH", 2)  # several pages and delete batches
    times = plant(moto, bucket, OURS + FOREIGN)
    store = a_store(moto, bucket)
    try:
        young = store.prune(now=min(times) + 30 * DAY - 60)
        assert (young.removed, young.kept, young.errors) == (0, len(OURS), 0)
        assert set(objects(moto, bucket)) == set(OURS + FOREIGN)

        old = store.prune(now=max(times) + 30 * DAY + 60)
        assert (old.removed, old.kept, old.errors) == (len(OURS), 0, 0)
        assert old.freed == len(OURS) * len(b"<html>old</html>")
        assert set(objects(moto, bucket)) == set(FOREIGN)
    finally:
        store.close()


def test_retention_zero_keeps_everything(moto: MotoServer, bucket: str) -> None:
    times = plant(moto, bucket, OURS)
    store = a_store(moto, bucket, retention=0)
    try:
        assert store.prune(now=max(times) + 3650 * DAY).removed == 0
        assert store.prune_if_due() is None
        assert set(objects(moto, bucket)) == set(OURS)
    finally:
        store.close()


def test_pruning_runs_at_most_once_per_interval(moto: MotoServer, bucket: str) -> None:
    now = [1000.0]
    store = a_store(moto, bucket, interval=3600.0, clock=lambda: now[0],
                    wall_clock=lambda: time.time() + 31 * DAY)
    try:
        plant(moto, bucket, OURS[:2])
        first = store.prune_if_due()
        assert first is not None
        assert first.removed == 2
        plant(moto, bucket, OURS[2:3])
        now[0] += 3599.0
        assert store.prune_if_due() is None  # not due: nothing listed, nothing removed
        assert set(objects(moto, bucket)) == {OURS[2]}
        now[0] += 1.0
        due = store.prune_if_due()
        assert due is not None
        assert due.removed == 1
        assert objects(moto, bucket) == {}
    finally:
        store.close()


def test_the_pipeline_prunes_the_bucket_after_an_alert(
        s3_app: MakeApp, moto: MotoServer, bucket: str, signals_recorder: SignalRecorder,
        report_dir: Path) -> None:
    plant(moto, bucket, OURS[:2] + FOREIGN)
    app, perfwatch = s3_app(report_retention="30d")
    store = store_of(app)
    assert store.retention == 30 * DAY
    store._wall_clock = lambda: time.time() + 31 * DAY  # what is there now is then old
    app.test_client().get("/slow")
    signals_recorder.wait_for("alert_sent", 2)
    assert perfwatch.flush(20, app)
    # the planted reports, and the one just uploaded, are older than 30 days "then"
    wait_until(lambda: set(objects(moto, bucket)) == set(FOREIGN), timeout=10,
               message="the bucket pruned")
    assert len(reports_in(report_dir)) == 1  # the local folder keeps its own retention


def test_pruning_errors_are_logged_with_their_code_and_never_raised(
        moto: MotoServer, caplog: pytest.LogCaptureFixture) -> None:
    store = a_store(moto, "perfwatch-no-such-bucket")
    try:
        result = store.prune()
    finally:
        store.close()
    assert result.errors == 1
    [record] = [r for r in caplog.records if r.name == "flask_perfwatch.reportstore"]
    assert record.levelno == logging.WARNING
    assert "pruning the report store s3://perfwatch-no-such-bucket/reports/: 1 error(s) " \
           "(pruning s3://perfwatch-no-such-bucket/reports/: NoSuchBucket" in record.getMessage()


def test_refused_pruning_stops_instead_of_failing_every_hour(
        moto: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Credentials without s3:ListBucket (a lifecycle rule does the pruning):
    one warning, then no more attempts; uploads go on."""
    plant(moto, bucket, OURS[:1])
    access_key, secret_key = moto.restricted_user(allow=["s3:PutObject", "s3:GetObject"],
                                                  bucket=bucket)
    fake_aws_environment(monkeypatch, tmp_path, access_key=access_key, secret_key=secret_key)
    now = [0.0]
    store = a_store(moto, bucket, clock=lambda: now[0],
                    wall_clock=lambda: time.time() + 31 * DAY)
    moto.enforce_iam(True)
    try:
        first = store.prune_if_due()
        now[0] += 10 * store.interval
        again = store.prune_if_due()
        store.upload(a_report())
    finally:
        moto.enforce_iam(False)
        store.close()
    assert first is not None
    assert first.errors == 1
    assert again is None
    assert store.prune_denied
    [warning] = [r for r in caplog.records if r.name == "flask_perfwatch.reportstore"]
    assert warning.getMessage().startswith(
        f"pruning the report store s3://{bucket}/reports/ was refused (pruning "
        f"s3://{bucket}/reports/: AccessDenied (Access Denied), HTTP 403; ")
    assert "this process stops pruning the bucket" in warning.getMessage()
    assert set(objects(moto, bucket)) == {OURS[0], f"{PREFIX}{a_report().filename}"}


# --- the store on its own -------------------------------------------------------------


def test_keys_are_built_only_from_safe_names() -> None:
    assert report_key_name("perfwatch-20261202T0800Z-GET-a.b_c-1.html") == \
        "perfwatch-20261202T0800Z-GET-a.b_c-1.html"
    for hostile in ("../../etc/passwd", "x/../../y.html", "перф.html", "a b?c#d.html",
                    "perfwatch-../x.html", ".perfwatch-tmp-1", ""):
        name = report_key_name(hostile)
        assert re.fullmatch(r"perfwatch-[A-Za-z0-9._-]+\.html", name), (hostile, name)
        assert "/" not in name
    store = S3ReportStore(S3Location("bucket-one", "a/b/"))
    assert store.key_for("../x.html") == "a/b/perfwatch-x.html"


def test_the_local_file_name_names_the_object(moto: MotoServer, bucket: str,
                                              tmp_path: Path) -> None:
    """A name taken locally (``-1`` suffix) is the object's name too."""
    report = a_report()
    (tmp_path / report.filename).write_text("someone else's", encoding="utf-8")
    path = report.write(tmp_path)
    assert path.name == report.filename.replace(".html", "-1.html")
    store = a_store(moto, bucket)
    try:
        url = store.upload(report)
    finally:
        store.close()
    assert objects(moto, bucket) == {PREFIX + path.name: report.html.encode()}
    assert download(url).data == report.html.encode()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_makes_its_own_client(moto: MotoServer, bucket: str) -> None:
    store = a_store(moto, bucket)
    try:
        store.upload(a_report("perfwatch-parent.html"))
        assert store._client is not None
        def child() -> dict[str, bool]:  # the parent's client is dropped, a new one works
            dropped = store._client is None
            url = store.upload(a_report("perfwatch-child.html"))
            return {"dropped": dropped, "uploaded": url.startswith(moto.url)}

        assert run_in_child(child) == {"dropped": True, "uploaded": True}
        assert set(objects(moto, bucket)) == {f"{PREFIX}perfwatch-parent.html",
                                              f"{PREFIX}perfwatch-child.html"}
        store.upload(a_report("perfwatch-parent-again.html"))  # the parent's still works
    finally:
        store.close()


def test_the_region_comes_from_boto3s_chain(moto: MotoServer, bucket: str,
                                            monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    fake_aws_environment(monkeypatch, tmp_path, region="eu-west-3")
    store = a_store(moto, bucket)
    try:
        url = store.upload(a_report())
    finally:
        store.close()
    assert store.region == "eu-west-3"
    assert "/eu-west-3/s3/aws4_request" in link_query(url)["X-Amz-Credential"]


# --- configuration -----------------------------------------------------------------------


def test_the_default_is_the_local_folder(make_app: MakeApp) -> None:
    assert Config().report_store == "file:"
    assert Config().report_link_ttl == 7 * DAY
    app, _ = make_app()
    assert monitor_of(app).pipeline.report_store is None


@pytest.mark.parametrize(("overrides", "key", "expected"), [
    ({"report_store": "gs://bucket/reports"}, "PERFWATCH_REPORT_STORE", "unknown scheme 'gs'"),
    ({"report_store": "s3://"}, "PERFWATCH_REPORT_STORE", "the bucket name is empty"),
    ({"report_store": "s3:///reports"}, "PERFWATCH_REPORT_STORE", "the bucket name is empty"),
    ({"report_store": "s3://AKIAIOSFODNN7EXAMPLE:hunter2@bucket/x"}, "PERFWATCH_REPORT_STORE",
     "credentials do not belong in the URL"),
    ({"report_store": "s3://bucket:9000/x"}, "PERFWATCH_REPORT_STORE",
     "an s3:// URL has no port: set PERFWATCH_S3_ENDPOINT_URL"),
    ({"report_store": "s3://bucket/a/../b"}, "PERFWATCH_REPORT_STORE",
     "the prefix may not hold empty, '.' or '..' segments"),
    ({"report_store": "s3://x/reports"}, "PERFWATCH_REPORT_STORE", "is not a bucket name"),
    ({"report_store": "file:///var/reports"}, "PERFWATCH_REPORT_STORE",
     "'file:' takes no path: the folder is PERFWATCH_REPORT_DIR"),
    ({"s3_endpoint_url": "ftp://minio:9000"}, "PERFWATCH_S3_ENDPOINT_URL",
     "the scheme must be http or https"),
    ({"s3_endpoint_url": "minio:9000"}, "PERFWATCH_S3_ENDPOINT_URL",
     "the scheme must be http or https"),
    ({"s3_endpoint_url": "http://user:hunter2@minio:9000"}, "PERFWATCH_S3_ENDPOINT_URL",
     "credentials do not belong in the URL"),
    ({"report_link_ttl": "8d"}, "PERFWATCH_REPORT_LINK_TTL",
     "longer than 7 days (604800 s): an S3 presigned link (SigV4) is valid for at most 7 days"),
    ({"report_link_ttl": "604801"}, "PERFWATCH_REPORT_LINK_TTL", "longer than 7 days"),
    ({"report_link_ttl": "0"}, "PERFWATCH_REPORT_LINK_TTL", "shorter than 1 second"),
    ({"report_link_ttl": "soon"}, "PERFWATCH_REPORT_LINK_TTL",
     "expected a duration from 1s to 7 days"),
])
def test_config_errors_at_init_app(make_app: MakeApp, overrides: dict[str, Any], key: str,
                                   expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        make_app(**overrides)
    assert raised.value.key == key
    assert str(raised.value).startswith(f"{key}=")
    assert expected in str(raised.value)
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(("given", "normalised"), [
    ("file:", "file:"), ("FILE", "file:"), ("file://", "file:"),
    ("s3://bucket-one", "s3://bucket-one/"), ("S3://bucket-one/", "s3://bucket-one/"),
    ("s3://bucket-one/a/b", "s3://bucket-one/a/b/"), ("s3://my.bucket/a/b/", "s3://my.bucket/a/b/"),
])
def test_store_urls_are_normalised(given: str, normalised: str) -> None:
    assert Config(report_store=given).report_store == normalised


def test_the_ttl_takes_seven_days_exactly() -> None:
    assert Config(report_link_ttl="7d").report_link_ttl == MAX_LINK_TTL
    assert Config(report_link_ttl="1s").report_link_ttl == 1


def test_without_boto3_an_s3_store_says_what_to_install(
        make_app: MakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 now raises ImportError
    with pytest.raises(ConfigError) as raised:
        make_app(report_store="s3://bucket-one/reports")
    assert str(raised.value) == ("the s3 report store needs the boto3 package: "
                                 "pip install 'flask-perfwatch[s3]'")
    assert raised.value.key == "PERFWATCH_REPORT_STORE"


# --- the CLI ------------------------------------------------------------------------------


def test_check_describes_the_store_and_reaches_the_bucket(
        s3_app: MakeApp, moto: MotoServer, bucket: str) -> None:
    app, _ = s3_app(report_link_ttl="2d")
    result = run(app, "check")
    assert result.exit_code == 0, result.output
    assert status_line(result, "s3") == (
        f"s3 OK bucket '{bucket}', prefix 'reports/', endpoint {moto.url}, links valid 2d; "
        "bucket reachable (region us-east-1, credentials from env); nothing written "
        "(test-alert uploads a report)")
    assert objects(moto, bucket) == {}


def test_check_fails_for_a_missing_bucket(s3_app: MakeApp) -> None:
    app, _ = s3_app(report_store="s3://perfwatch-no-such-bucket/")
    result = run(app, "check")
    assert result.exit_code == 1, result.output
    assert status_line(result, "s3") == (
        "s3 FAILED ReportStoreError: reaching bucket 'perfwatch-no-such-bucket': 404 (Not "
        "Found); the bucket does not exist: create it, or fix PERFWATCH_REPORT_STORE")


def test_check_of_the_local_folder_and_a_stray_s3_key(make_app: MakeApp,
                                                       report_dir: Path) -> None:
    app, _ = make_app(report_link_ttl="1d")
    result = run(app, "check")
    assert result.exit_code == 0, result.output
    assert status_line(result, "file").startswith(f"file OK reports stay in {report_dir}; "
                                                   "no links")
    assert ("warning: PERFWATCH_REPORT_LINK_TTL is set (from keyword argument) but "
            "PERFWATCH_REPORT_STORE is not an s3:// URL, so it has no effect.") in result.output


def test_test_alert_uploads_the_report(s3_app: MakeApp, moto: MotoServer, bucket: str,
                                       report_dir: Path) -> None:
    app, _ = s3_app(notifiers=["local"])
    result = run(app, "test-alert")
    assert result.exit_code == 0, result.output
    [local] = reports_in(report_dir)
    assert status_line(result, "s3") == (
        f"s3 OK report uploaded to s3://{bucket}/reports/{local.name} (its link is valid 7d)")
    assert objects(moto, bucket) == {f"reports/{local.name}": local.read_bytes()}
    assert "X-Amz-Signature" not in result.output  # the link is a secret: not printed
    assert "the test alert was delivered by every notifier and the report store." in \
        result.output


def test_test_alert_reports_a_failed_upload(s3_app: MakeApp, report_dir: Path) -> None:
    app, _ = s3_app(notifiers=["local"], report_store="s3://perfwatch-no-such-bucket/r")
    result = run(app, "test-alert")
    assert result.exit_code == 1, result.output
    assert status_line(result, "s3").startswith("s3 FAILED ReportStoreError: uploading r/")
    assert status_line(result, "local").startswith("local OK report written to ")
    assert "FAILED: 1 of 2 notifier(s) and report store did not deliver the test alert." \
        in result.output
