"""Property tests: any request describes to a sane, redacted, escaped alert, and
parsing any configuration value raises nothing but ConfigError."""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_perfwatch import Config, ConfigError
from flask_perfwatch._redact import Redactor
from flask_perfwatch.config import config_fields, key_name
from flask_perfwatch.metrics import (
    MAX_ITEMS,
    MAX_METHOD,
    MAX_URL,
    MAX_VALUE,
    PerformanceMetrics,
    request_details,
    utcnow,
)
from flask_perfwatch.report import render_report

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
PLANTED = "Zq7xK2mW9pL4vN8r"  # a secret no generated text contains by chance
RAW_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

# WSGI environ strings are bytes carried as latin-1 (PEP 3333): any byte may appear
wsgi_str = st.binary(max_size=300).map(lambda b: b.decode("latin-1"))
header_name = st.from_regex(r"HTTP_[A-Z0-9_]{1,20}", fullmatch=True)


@st.composite
def environs(draw: st.DrawFn) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": draw(st.one_of(st.sampled_from(["GET", "POST", "PROPFIND"]),
                                         wsgi_str)),
        "PATH_INFO": draw(wsgi_str),
        "QUERY_STRING": draw(st.one_of(
            wsgi_str,
            st.lists(st.tuples(wsgi_str, wsgi_str), max_size=150).map(
                lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)))),
        "SCRIPT_NAME": draw(st.one_of(st.just(""), wsgi_str)),
        "SERVER_NAME": "localhost",
        "SERVER_PORT": draw(st.sampled_from(["80", "443", "8080", ""])),
        "wsgi.url_scheme": draw(st.sampled_from(["http", "https"])),
    }
    if draw(st.booleans()):
        environ["HTTP_HOST"] = draw(wsgi_str)
    for name, value in draw(st.dictionaries(header_name, wsgi_str, max_size=20)).items():
        environ[name] = value
    return environ


def texts_of(metrics: PerformanceMetrics) -> list[str]:
    params = [item for k, v in metrics.params.items()
              for item in ([k, *v] if isinstance(v, list) else [k, v])]
    return [metrics.method or "", metrics.url or "", metrics.path or "", metrics.name,
            metrics.summary(), *params, *metrics.headers, *metrics.headers.values()]


@SETTINGS
@given(environs())
def test_any_request_describes_to_a_sane_alert(environ: dict[str, Any]) -> None:
    details = request_details(Redactor(), environ)
    metrics = PerformanceMetrics(kind="request", name=details["path"], duration=1.5,
                                 threshold=1.0, started_at=utcnow(), status_code=200,
                                 **details)
    assert len(metrics.params) <= MAX_ITEMS
    assert len(metrics.headers) <= MAX_ITEMS
    assert len(metrics.method or "") <= MAX_METHOD + 1
    assert len(metrics.url or "") <= MAX_URL + 1
    assert all(len(v) <= MAX_VALUE + 1 for v in metrics.headers.values())
    for text in texts_of(metrics):
        assert RAW_CONTROL.search(text) is None, text
    metrics.to_json()  # serialisable
    report = render_report(metrics)  # the whole report renders
    assert report.filename.startswith("perfwatch-")
    assert "/" not in report.filename
    assert RAW_CONTROL.search(report.text) is None


@SETTINGS
@given(environs(), st.sampled_from([
    "password={s}", "userPwd={s}", "next=https://u:{s}@h/", "x=Bearer%20{s}",
    "db=postgresql://app:{s}@db/x"]))
def test_a_planted_secret_never_survives(environ: dict[str, Any], template: str) -> None:
    planted = template.format(s=PLANTED)
    environ["QUERY_STRING"] = f"{environ['QUERY_STRING'][:50]}&{planted}"
    environ["HTTP_X_FORWARD"] = f"Bearer {PLANTED}"
    details = request_details(Redactor(), environ)
    metrics = PerformanceMetrics(kind="request", name="p", duration=2.0, threshold=1.0,
                                 started_at=utcnow(), **details)
    if len(metrics.params) >= MAX_ITEMS:  # the planted pair may be past the cap: then dropped
        return
    assert PLANTED not in metrics.to_json()
    assert PLANTED not in render_report(metrics).html


# -- configuration ------------------------------------------------------------------------

any_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
              st.text(max_size=40), st.binary(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=8), children, max_size=3)),
    max_leaves=8)
FIELD_NAMES = [f.name for f in config_fields()]


def _parse(build: Callable[[], Config]) -> tuple[Config | None, ConfigError | None]:
    """The config, or the ConfigError; any other exception fails the test."""
    try:
        return build(), None
    except ConfigError as exc:
        return None, exc


@SETTINGS
@given(st.sampled_from(FIELD_NAMES), any_value)
def test_any_config_value_parses_or_raises_config_error(name: str, value: Any) -> None:
    config, error = _parse(lambda: Config(**{name: value}))
    if error is not None:
        assert error.key == key_name(name)
    elif isinstance(getattr(config, name), float):
        assert math.isfinite(getattr(config, name))


@SETTINGS
@given(st.sampled_from(FIELD_NAMES), st.text(max_size=60))
def test_any_environment_string_parses_or_raises_config_error(name: str, value: str) -> None:
    _parse(lambda: Config.from_env({key_name(name): value}))


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".toml"])
@SETTINGS
@given(content=st.binary(max_size=400))
def test_any_config_file_parses_or_raises_config_error(suffix: str, content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"perfwatch{suffix}"
        path.write_bytes(content)
        _, error = _parse(lambda: Config.from_file(path))
    if error is not None:
        assert RAW_CONTROL.search(str(error).replace("\n", " ")) is None
