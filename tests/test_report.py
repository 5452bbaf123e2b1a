"""PerformanceMetrics and the rendered report, including hostile input."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import reports_in

from flask_perfwatch import PerformanceMetrics
from flask_perfwatch._redact import Redactor
from flask_perfwatch.metrics import redact_params, redacted_url
from flask_perfwatch.report import render_report, report_filename
from flask_perfwatch.testing import SignalRecorder


def make_metrics(**changes: object) -> PerformanceMetrics:
    values: dict[str, object] = {
        "kind": "request", "name": "orders.export", "duration": 2.5, "threshold": 1.0,
        "started_at": datetime(2026, 11, 28, 9, 52, 10, 123456, tzinfo=UTC), "method": "GET",
        "url": "https://shop.example/export?fmt=csv", "path": "/export",
        "params": {"fmt": "csv", "tag": ["a", "b"]}, "status_code": 200,
    }
    values.update(changes)
    return PerformanceMetrics(**values)  # type: ignore[arg-type]


def test_to_dict_and_to_json_round_trip() -> None:
    metrics = make_metrics(extra={"tenant": "acme"})
    data = metrics.to_dict()
    assert json.loads(metrics.to_json()) == data
    assert data["started_at"] == "2026-11-28T09:52:10.123456+00:00"
    assert data["params"] == {"fmt": "csv", "tag": ["a", "b"]}
    assert data["has_profile"] is False
    assert data["extra"] == {"tenant": "acme"}
    assert {"kind", "name", "method", "url", "path", "params", "status_code", "duration",
            "threshold", "started_at", "host", "pid", "id"} <= set(data)


def test_summary_lines() -> None:
    assert make_metrics().summary() == (
        "Slow request GET https://shop.example/export?fmt=csv [orders.export] took 2.500s "
        "(threshold 1.000s) -> 200")
    function = make_metrics(kind="function", name="jobs.nightly", method=None, url=None,
                            path=None, status_code=None, error="ValueError")
    assert function.summary() == ("Slow function jobs.nightly() took 2.500s (threshold "
                                  "1.000s) (ValueError)")
    hung = make_metrics(hung=True, status_code=None)
    assert hung.summary().startswith("Hung request GET")
    assert "still running after 2.500s" in hung.summary()


def test_params_are_redacted_and_the_url_rebuilt_from_them() -> None:
    redactor = Redactor(["password", "api_key"])
    assert redactor.is_secret("Password2")
    assert redactor.is_secret("X-API-KEY")
    assert redactor.is_secret("my_api-key")
    assert not redactor.is_secret("user")
    params = redact_params(redactor, [("user", "ann"), ("password", "x"), ("user", "bob")])
    assert params == {"user": ["ann", "bob"], "password": "[REDACTED]"}
    assert redacted_url("http://h/p", params) == \
        "http://h/p?user=ann&user=bob&password=[REDACTED]"


def test_report_filename_is_safe_and_unique() -> None:
    hostile = make_metrics(name="../../etc/passwd\x00<b>", method="GET")
    name = report_filename(hostile)
    assert re.fullmatch(r"perfwatch-20261128T095210Z-[A-Za-z0-9._-]+-[0-9a-f]{8}\.html", name)
    assert "/" not in name
    assert ".." not in name
    assert report_filename(make_metrics()) != report_filename(make_metrics())


def test_report_write_never_overwrites(tmp_path: Path) -> None:
    first = render_report(make_metrics(id="same-id-0000"))
    second = render_report(make_metrics(id="same-id-0000"))
    assert first.filename == second.filename
    a, b = first.write(tmp_path), second.write(tmp_path)
    assert a != b
    assert a.read_text() == first.html
    assert b.name.endswith("-1.html")


def test_metadata_only_report_is_a_page_with_the_request() -> None:
    metrics = make_metrics(headers={"User-Agent": "curl/8"})
    report = render_report(metrics)
    assert report.html.startswith("<!DOCTYPE html>")
    assert "GET https://shop.example/export?fmt=csv" in report.html
    assert "curl/8" in report.html
    assert "No profile was captured" in report.html
    assert report.text == metrics.summary()  # no profile, no repeats: the summary alone


def test_hostile_request_cannot_inject_markup_into_the_report(
    make_app, report_dir: Path, signals_recorder: SignalRecorder
) -> None:
    app, perfwatch = make_app(threshold=1e-9, dedup_window=0)
    client = app.test_client()
    payload = "</script><script>window.pwned=1</script><img src=x onerror=alert(1)>"
    client.get("/echo", query_string={"q": payload, payload: "v"},
               headers={"X-Evil": payload})
    client.get("/missing" + payload)
    client.get("/named/" + payload)  # profiled: the path reaches pyinstrument's page
    assert perfwatch.flush(10, app)
    files = reports_in(report_dir)
    assert len(files) == 3
    assert sum("pyinstrumentHTMLRenderer" in path.read_text() for path in files) >= 1
    for path in files:
        page = path.read_text()
        assert "<script>window.pwned" not in page
        assert "<img src=x" not in page
        # pyinstrument's own page still has exactly its scripts, a metadata page none
        assert page.count("<script>") == (2 if "pyinstrumentHTMLRenderer" in page else 0)


@pytest.mark.parametrize("profiler", ["pyinstrument", "off"])
def test_report_text_carries_the_tree_when_profiled(make_app, profiler: str,
                                                    signals_recorder: SignalRecorder) -> None:
    from notifiers_for_tests import RecordingNotifier

    app, _ = make_app(profiler=profiler, notifiers=["notifiers_for_tests:RecordingNotifier"])
    app.test_client().get("/cpu")
    signals_recorder.wait_for("alert_sent")
    [(metrics, report)] = RecordingNotifier.received
    assert report.text.startswith(metrics.summary())
    assert ("burn" in report.text) is (profiler == "pyinstrument")
