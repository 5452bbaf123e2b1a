"""flask_perfwatch.config: every key from every source, precedence, defaults,
and a clear ConfigError for each kind of bad value or bad file.

The per-key tests iterate over the key table (``config_fields()``), so a new
key is covered automatically -- and fails ``test_value_table_covers_every_key``
until it gets a row in ``VALID`` below.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import monitor_of
from flask import Flask

from flask_perfwatch import Config, ConfigError, PerfWatch
from flask_perfwatch._redact import Redactor
from flask_perfwatch.config import (
    CONFIG_FILE_KEY,
    DEFAULT_REDACT,
    config_fields,
    iter_keys,
    key_name,
)
from flask_perfwatch.middleware import RequestTimer
from flask_perfwatch.profiling import ENGINES
from flask_perfwatch.testing import SignalRecorder

FIELDS = [f.name for f in config_fields()]
PARSER_EXPECTED = {f.name: f.metadata["parser"].expected for f in config_fields()}
DEFAULTS = Config()

# --- the value table: one valid non-default value per key -------------------


@dataclasses.dataclass(frozen=True)
class Valid:
    env: str  #: as an environment variable (a string)
    native: Any  #: as a keyword / app.config / file value
    expected: Any  #: the parsed value; a callable is called at test time


def _home_reports() -> str:
    return os.path.expanduser("~/pw-reports")


VALID: dict[str, Valid] = {
    "enabled": Valid("off", False, False),
    "threshold": Valid("250ms", 0.25, 0.25),
    "profiler": Valid("off", "off", "off"),
    "profile_interval": Valid("5ms", 0.005, 0.005),
    "sampler_budget": Valid("2.5%", 0.025, 0.025),
    "hang_after": Valid("2m", 120, 120.0),
    "dedup_window": Valid("6h", 21600, 21600.0),
    "dedup_key": Valid("endpoint", "endpoint", "endpoint"),
    "store": Valid("memory://shared", "memory://shared", "memory://shared"),
    "store_prefix": Valid("shop", "shop", "shop"),
    "notifiers": Valid("local, notifiers_for_tests:RecordingNotifier",
                       ["local", "notifiers_for_tests:RecordingNotifier"],
                       ("local", "notifiers_for_tests:RecordingNotifier")),
    "report_dir": Valid("~/pw-reports", "~/pw-reports", _home_reports),
    "mattermost_url": Valid("https://chat.example.com/", "https://chat.example.com/",
                            "https://chat.example.com"),
    "mattermost_token": Valid("s3cr3t-token", "s3cr3t-token", "s3cr3t-token"),
    "mattermost_channel_id": Valid("abc123", "abc123", "abc123"),
    "mattermost_team": Valid("eng", "eng", "eng"),
    "mattermost_channel": Valid("alerts", "alerts", "alerts"),
    "mattermost_retries": Valid("5", 5, 5),
    "mattermost_timeout": Valid("1.5s", 1.5, 1.5),
    "mattermost_verify": Valid("no", False, False),
    "slack_token": Valid("xoxb-test-token", "xoxb-test-token", "xoxb-test-token"),
    "slack_channel": Valid("C0123456789", "C0123456789", "C0123456789"),
    "slack_api_url": Valid("https://slack.corp.example.com/api", "https://slack.corp.example.com/api",
                           "https://slack.corp.example.com/api/"),
    "slack_retries": Valid("1", 1, 1),
    "slack_timeout": Valid("3s", 3, 3.0),
    "teams_webhook_url": Valid("https://x.logic.azure.com/workflows/1?sig=s",
                               "https://x.logic.azure.com/workflows/1?sig=s",
                               "https://x.logic.azure.com/workflows/1?sig=s"),
    "teams_retries": Valid("0", 0, 0),
    "teams_timeout": Valid("4s", 4, 4.0),
    "discord_webhook_url": Valid("https://discord.com/api/webhooks/1/t",
                                 "https://discord.com/api/webhooks/1/t",
                                 "https://discord.com/api/webhooks/1/t"),
    "discord_retries": Valid("2", 2, 2),
    "discord_timeout": Valid("5s", 5, 5.0),
    "email_host": Valid("smtp.example.com", "smtp.example.com", "smtp.example.com"),
    "email_port": Valid("465", 465, 465),
    "email_security": Valid("ssl", "ssl", "ssl"),
    "email_username": Valid("perfwatch", "perfwatch", "perfwatch"),
    "email_password": Valid("hunter2", "hunter2", "hunter2"),
    "email_from": Valid("pw@example.com", "pw@example.com", "pw@example.com"),
    "email_to": Valid("a@example.com, b@example.com", ["a@example.com", "b@example.com"],
                      ("a@example.com", "b@example.com")),
    "email_retries": Valid("4", 4, 4),
    "email_timeout": Valid("6s", 6, 6.0),
    "webhook_url": Valid("https://hooks.example.com/in", "https://hooks.example.com/in",
                         "https://hooks.example.com/in"),
    "webhook_secret": Valid("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
    "webhook_headers": Valid('{"X-Team": "perf"}', {"X-Team": "perf"}, (("X-Team", "perf"),)),
    "webhook_retries": Valid("5", 5, 5),
    "webhook_timeout": Valid("7s", 7, 7.0),
    "pagerduty_routing_key": Valid("R0123456789abcdef0123456789abcdef",
                                   "R0123456789abcdef0123456789abcdef",
                                   "R0123456789abcdef0123456789abcdef"),
    "pagerduty_url": Valid("https://pd.example.com/v2/enqueue", "https://pd.example.com/v2/enqueue",
                           "https://pd.example.com/v2/enqueue"),
    "pagerduty_severity": Valid("critical", "critical", "critical"),
    "pagerduty_retries": Valid("6", 6, 6),
    "pagerduty_timeout": Valid("8s", 8, 8.0),
    "report_base_url": Valid("https://perf.example.com/reports",
                             "https://perf.example.com/reports",
                             "https://perf.example.com/reports/"),
    "report_store": Valid("s3://perf-reports/web", "s3://perf-reports/web",
                          "s3://perf-reports/web/"),
    "s3_endpoint_url": Valid("http://127.0.0.1:9000/", "http://127.0.0.1:9000/",
                             "http://127.0.0.1:9000"),
    "report_link_ttl": Valid("12h", 43200, 43200.0),
    "ignore": Valid("static, /health/*", ["static", "/health/*"], ("static", "/health/*")),
    # user names are added to the built-in ones, which always apply
    "redact": Valid("iban, ssn", ["iban", "ssn"], (*DEFAULT_REDACT, "iban", "ssn")),
    "redact_hook": Valid("posixpath:join", "posixpath:join", "posixpath:join"),
    "endpoint_alert_limit": Valid("3", 3, 3),
    "capture_sql": Valid("off", False, False),
    "regression_factor": Valid("3", 3, 3.0),
    "regression_min_requests": Valid("200", 200, 200),
    "notifier_timeout": Valid("30s", 30, 30.0),
    "report_retention": Valid("7d", 604800, 604800.0),
    "report_max_bytes": Valid("1GiB", 1073741824, 1073741824),
    "report_file_max_bytes": Valid("2MiB", 2097152, 2097152),
    "queue_size": Valid("7", 7, 7),
    "shutdown_timeout": Valid("30s", 30, 30.0),
}


def valid(name: str) -> Valid:
    if name not in VALID:
        pytest.fail(f"config key {name!r} has no row in VALID; add one valid non-default value")
    return VALID[name]


def expected(name: str) -> Any:
    value = valid(name).expected
    return value() if callable(value) else value


def assert_parsed(config: Config, name: str, want: Any) -> None:
    got = getattr(config, name)
    assert type(got) is type(want), f"{name}: {got!r} is not a {type(want).__name__}"
    if isinstance(want, float):
        assert got == pytest.approx(want), name
    else:
        assert got == want, name


def same(a: Any, b: Any) -> bool:
    return a is b or a == b or (isinstance(a, float) and isinstance(b, float)
                                and math.isnan(a) and math.isnan(b))


# --- writing config files ----------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) \
            + "}"
    raise TypeError(value)


def write_config(path: Path, data: dict[str, Any], *, section: bool = False) -> Path:
    """Write ``data`` as JSON/YAML/TOML (by ``path``'s suffix), at top level or
    under a ``perfwatch`` table."""
    suffix = path.suffix
    if suffix == ".toml":
        body = "".join(f"{k} = {_toml_value(v)}\n" for k, v in data.items())
        path.write_text(("[perfwatch]\n" if section else "") + body)
    else:
        tree = {"perfwatch": data} if section else data
        path.write_text(json.dumps(tree) if suffix == ".json" else yaml.safe_dump(tree))
    return path


FORMATS = [".json", ".yaml", ".yml", ".toml"]

# --- fixtures ---------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No PERFWATCH_* variable from the outside world; HOME is a tmp dir."""
    for name in list(os.environ):
        if name.startswith("PERFWATCH_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def apps() -> Iterator[list[Flask]]:
    """Apps the test set PerfWatch up on; their monitors are closed afterwards."""
    created: list[Flask] = []
    yield created
    for app in created:
        state = app.extensions.get("perfwatch")
        if state is not None:  # the test set PerfWatch up on it
            state.owner.close(app, timeout=5)


def new_app(apps: list[Flask], name: str = "cfgapp", **config: Any) -> Flask:
    app = Flask(name)
    app.config.update(config)
    apps.append(app)

    @app.get("/wait")
    def wait() -> str:
        time.sleep(0.05)  # the view is slow on purpose; thresholds are a few ms
        return "done"

    return app


def load(**kwargs: Any) -> Config:
    kwargs.setdefault("environ", {})
    return Config.load(**kwargs)


# --- the key table ------------------------------------------------------------

DESIGN_KEYS = [
    "PERFWATCH_ENABLED", "PERFWATCH_THRESHOLD", "PERFWATCH_PROFILER",
    "PERFWATCH_PROFILE_INTERVAL", "PERFWATCH_HANG_AFTER", "PERFWATCH_DEDUP_WINDOW",
    "PERFWATCH_DEDUP_KEY", "PERFWATCH_STORE", "PERFWATCH_NOTIFIERS", "PERFWATCH_REPORT_DIR",
    "PERFWATCH_MATTERMOST_URL", "PERFWATCH_MATTERMOST_TOKEN", "PERFWATCH_MATTERMOST_CHANNEL_ID",
    "PERFWATCH_MATTERMOST_TEAM", "PERFWATCH_MATTERMOST_CHANNEL", "PERFWATCH_MATTERMOST_RETRIES",
    "PERFWATCH_IGNORE", "PERFWATCH_REDACT",
]


def test_value_table_covers_every_key() -> None:
    assert set(VALID) == set(FIELDS), "VALID must have exactly one row per config key"


@pytest.mark.parametrize("name", FIELDS)
def test_value_table_rows_are_not_defaults(name: str) -> None:
    assert getattr(DEFAULTS, name) != expected(name), "a row must differ from the default"


def test_every_design_key_is_in_the_table() -> None:
    assert set(DESIGN_KEYS) <= {key for key, *_ in iter_keys()}


def test_iter_keys_lists_every_field_with_default_and_expectation() -> None:
    rows = list(iter_keys())
    assert [key for key, *_ in rows] == [key_name(name) for name in FIELDS]
    for (key, default, expect, doc), name in zip(rows, FIELDS, strict=True):
        assert key == "PERFWATCH_" + name.upper()
        assert default == getattr(DEFAULTS, name)
        assert expect == PARSER_EXPECTED[name]
        assert expect
        assert doc.strip()


def test_design_defaults() -> None:
    d = DEFAULTS
    assert d.enabled is True
    assert d.threshold == 1.0
    assert d.profiler in ENGINES
    assert d.profile_interval == 0.001
    assert d.dedup_window == 864000.0
    assert d.dedup_key == "endpoint+params"
    assert d.store == "memory://"
    assert d.notifiers == ("local",)
    assert d.report_dir is None
    # a private per-user folder under the system temp dir
    assert d.resolved_report_dir == Path(tempfile.gettempdir()) / f"flask-perfwatch-{os.getuid()}"
    assert d.endpoint_alert_limit == 10
    assert d.report_retention == 30 * 86400
    assert d.report_max_bytes == 512 * 1024**2
    assert d.mattermost_retries == 3
    assert (d.mattermost_url, d.mattermost_token, d.mattermost_channel_id) == (None,) * 3
    assert d.ignore == ("static",)
    redactor = Redactor(d.redact)
    for name in ("password", "token", "secret", "api_key", "authorization", "cookie",
                 "session"):
        assert redactor.is_secret(name), name


def test_no_source_gives_all_defaults() -> None:
    config = load()
    assert config == DEFAULTS
    assert dict(config.sources) == dict.fromkeys(FIELDS, "default")


# --- every key from every source ----------------------------------------------


@pytest.mark.parametrize("name", FIELDS)
def test_key_from_keyword(name: str) -> None:
    for key in (name, key_name(name)):
        config = load(overrides={key: valid(name).native})
        assert_parsed(config, name, expected(name))
        assert config.sources[name] == "keyword argument"


@pytest.mark.parametrize("name", FIELDS)
def test_key_from_app_config(name: str) -> None:
    for raw in (valid(name).native, valid(name).env):
        config = load(app_config={key_name(name): raw, "SECRET_KEY": "x"})
        assert_parsed(config, name, expected(name))
        assert config.sources[name] == "app.config"


@pytest.mark.parametrize("name", FIELDS)
def test_key_from_environment(name: str) -> None:
    environ = {key_name(name): valid(name).env, "PATH": "/bin"}
    for config in (load(environ=environ), Config.from_env(environ)):
        assert_parsed(config, name, expected(name))
        assert config.sources[name] == "environment"
        others = {k: v for k, v in config.sources.items() if k != name}
        assert set(others.values()) == {"default"}


@pytest.mark.parametrize("name", FIELDS)
def test_key_from_os_environ(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(key_name(name), valid(name).env)
    for config in (Config.load(), Config.from_env()):
        assert_parsed(config, name, expected(name))
        assert config.sources[name] == "environment"


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("name", FIELDS)
def test_key_from_file(name: str, suffix: str, tmp_path: Path) -> None:
    """Full and short names, top level and under ``perfwatch``, native and
    string values; read directly and through PERFWATCH_CONFIG_FILE."""
    for i, (key, section, raw) in enumerate(
        (key, section, raw)
        for key in (key_name(name), name)
        for section in (False, True)
        for raw in (valid(name).native, valid(name).env)
    ):
        path = write_config(tmp_path / f"conf{i}{suffix}", {key: raw}, section=section)
        for config in (Config.from_file(path), load(environ={CONFIG_FILE_KEY: str(path)})):
            assert_parsed(config, name, expected(name))
            assert config.sources[name] == f"file {path}"
            assert list(config.sources.values()).count("default") == len(FIELDS) - 1


@pytest.mark.parametrize("name", FIELDS)
def test_key_from_constructor_and_mapping(name: str) -> None:
    raw = valid(name).native
    direct = Config(**{name: raw})
    assert_parsed(direct, name, expected(name))
    assert direct.sources[name] == "Config(...)"
    for config, source in (
        (Config.from_mapping({key_name(name): raw}), "mapping"),
        (Config.from_mapping({name: valid(name).env}), "mapping"),
        (Config.from_mapping(**{name: raw}), "mapping"),
        (Config.from_mapping({name: raw}, source="settings.py"), "settings.py"),
    ):
        assert_parsed(config, name, expected(name))
        assert config.sources[name] == source
        assert config == direct


@pytest.mark.parametrize("name", FIELDS)
def test_missing_key_takes_its_default(name: str) -> None:
    """Every other key set, this one not: it is the default, from 'default'."""
    others = {key_name(n): valid(n).native for n in FIELDS if n != name}
    config = load(app_config=others)
    assert getattr(config, name) == getattr(DEFAULTS, name)
    assert config.sources[name] == "default"
    assert {config.sources[n] for n in FIELDS if n != name} == {"app.config"}


@pytest.mark.parametrize("name", FIELDS)
def test_key_through_perfwatch(name: str, apps: list[Flask], tmp_path: Path) -> None:
    """PerfWatch(app, key=...) and app.config both reach the app's Config."""
    base = {} if name == "report_dir" else {"report_dir": str(tmp_path / "reports")}
    app = new_app(apps)
    perfwatch = PerfWatch(app, **base, **{name: valid(name).native})
    assert_parsed(perfwatch.config(app), name, expected(name))
    assert perfwatch.config(app).sources[name] == "keyword argument"

    app2 = new_app(apps, "cfgapp2", **{key_name(name): valid(name).env})
    config = PerfWatch(app2, **base).config(app2)
    assert_parsed(config, name, expected(name))
    assert config.sources[name] == "app.config"


# --- precedence -------------------------------------------------------------

LAYERS = ["keyword", "app.config", "environment", "file"]
LAYER_VALUES = {"keyword": 0.1, "app.config": 0.2, "environment": 0.3, "file": 0.4}
LAYER_SUBSETS = [c for n in range(len(LAYERS) + 1) for c in combinations(LAYERS, n)]


@pytest.mark.parametrize("layers", LAYER_SUBSETS, ids=lambda c: "+".join(c) or "none")
def test_precedence(layers: tuple[str, ...], tmp_path: Path) -> None:
    path = write_config(tmp_path / "conf.toml", {"threshold": LAYER_VALUES["file"]})
    environ = {CONFIG_FILE_KEY: str(path)} if "file" in layers else {}
    if "environment" in layers:
        environ["PERFWATCH_THRESHOLD"] = str(LAYER_VALUES["environment"])
    config = Config.load(
        overrides={"threshold": LAYER_VALUES["keyword"]} if "keyword" in layers else {},
        app_config={"PERFWATCH_THRESHOLD": LAYER_VALUES["app.config"]}
        if "app.config" in layers else {},
        environ=environ,
    )
    if not layers:
        assert config.threshold == DEFAULTS.threshold
        assert config.sources["threshold"] == "default"
        return
    winner = layers[0]
    assert config.threshold == LAYER_VALUES[winner]
    source = {"keyword": "keyword argument", "file": f"file {path}"}.get(winner, winner)
    assert config.sources["threshold"] == source


def test_precedence_is_per_key(tmp_path: Path) -> None:
    path = write_config(tmp_path / "conf.yaml", {
        "threshold": 4, "enabled": False, "queue_size": 9, "store_prefix": "file",
    }, section=True)
    config = Config.load(
        overrides={"threshold": 1.5},
        app_config={"PERFWATCH_QUEUE_SIZE": 11},
        environ={CONFIG_FILE_KEY: str(path), "PERFWATCH_THRESHOLD": "3",
                 "PERFWATCH_QUEUE_SIZE": "12", "PERFWATCH_STORE_PREFIX": "env"},
    )
    assert (config.threshold, config.sources["threshold"]) == (1.5, "keyword argument")
    assert (config.queue_size, config.sources["queue_size"]) == (11, "app.config")
    assert (config.store_prefix, config.sources["store_prefix"]) == ("env", "environment")
    assert (config.enabled, config.sources["enabled"]) == (False, f"file {path}")
    assert (config.dedup_key, config.sources["dedup_key"]) == ("endpoint+params", "default")


CONFIG_FILE_FROM = {
    "keyword argument": lambda p: {"overrides": {"config_file": p}},
    "app.config": lambda p: {"app_config": {CONFIG_FILE_KEY: p}},
    "environment": lambda p: {"environ": {CONFIG_FILE_KEY: p}},
}


@pytest.mark.parametrize("source", CONFIG_FILE_FROM)
def test_config_file_named_by_each_source(source: str, tmp_path: Path) -> None:
    path = write_config(tmp_path / "conf.json", {"PERFWATCH_THRESHOLD": "4s"})
    config = load(**CONFIG_FILE_FROM[source](str(path)))
    assert config.threshold == 4.0
    assert config.sources["threshold"] == f"file {path}"

    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ConfigError) as info:
        load(**CONFIG_FILE_FROM[source](str(broken)))
    assert f"named by PERFWATCH_CONFIG_FILE from {source}" in str(info.value)
    assert (info.value.key, info.value.value, info.value.source) == (
        CONFIG_FILE_KEY, str(broken), source)


def test_highest_layer_naming_a_config_file_wins(tmp_path: Path) -> None:
    kw_file = write_config(tmp_path / "kw.toml", {"threshold": 1.5})
    app_file = write_config(tmp_path / "app.toml", {"threshold": 2.5})
    env_file = write_config(tmp_path / "env.toml", {"threshold": 3.5})
    environ = {CONFIG_FILE_KEY: str(env_file)}
    app_config = {CONFIG_FILE_KEY: str(app_file)}
    assert load(overrides={"config_file": kw_file}, app_config=app_config,
                environ=environ).threshold == 1.5
    assert load(app_config=app_config, environ=environ).threshold == 2.5
    assert load(environ=environ).threshold == 3.5


def test_config_file_path_expands_home(clean_environment: Path) -> None:
    write_config(clean_environment / "pw.toml", {"queue_size": 3})
    assert load(environ={CONFIG_FILE_KEY: "~/pw.toml"}).queue_size == 3


def test_from_env_and_from_mapping_honour_config_file(tmp_path: Path) -> None:
    path = write_config(tmp_path / "conf.toml", {"queue_size": 3, "threshold": 2})
    env_config = Config.from_env({CONFIG_FILE_KEY: str(path), "PERFWATCH_THRESHOLD": "5"})
    assert (env_config.queue_size, env_config.threshold) == (3, 5.0)
    map_config = Config.from_mapping({"config_file": str(path), "threshold": 6})
    assert (map_config.queue_size, map_config.threshold) == (3, 6.0)
    assert map_config.sources["queue_size"] == f"file {path}"


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_config_file_key_must_be_a_path(bad: Any) -> None:
    with pytest.raises(ConfigError) as info:
        load(app_config={CONFIG_FILE_KEY: bad})
    err = info.value
    assert (err.key, err.source) == (CONFIG_FILE_KEY, "app.config")
    assert same(err.value, bad)
    assert ".toml" in str(err)
    assert "app.config" in str(err)


# --- accepted forms -------------------------------------------------------------

DURATIONS = [
    ("500ms", 0.5), ("10d", 864000.0), ("6h", 21600.0), ("2m", 120.0), ("1.5s", 1.5),
    ("1w", 604800.0), ("10 min", 600.0), (" 2S ", 2.0), ("3sec", 3.0), ("0.25", 0.25),
    (".5", 0.5), ("0", 0.0), (3, 3.0), (0.75, 0.75), (0, 0.0),
]


@pytest.mark.parametrize(("raw", "seconds"), DURATIONS)
def test_human_durations(raw: Any, seconds: float) -> None:
    assert load(app_config={"PERFWATCH_DEDUP_WINDOW": raw}).dedup_window == pytest.approx(seconds)
    if isinstance(raw, str):
        config = Config.from_env({"PERFWATCH_HANG_AFTER": raw})
        assert config.hang_after == pytest.approx(seconds)
    if seconds > 0:
        assert Config(threshold=raw).threshold == pytest.approx(seconds)


BOOLEANS = [(w, True) for w in ("true", "1", "yes", "on")] + \
           [(w, False) for w in ("false", "0", "no", "off")]


@pytest.mark.parametrize(("word", "value"), BOOLEANS)
def test_booleans_case_insensitive(word: str, value: bool) -> None:
    for raw in (word, word.upper(), word.title(), f" {word} "):
        assert Config.from_env({"PERFWATCH_ENABLED": raw}).enabled is value
        assert load(app_config={"PERFWATCH_MATTERMOST_VERIFY": raw}).mattermost_verify is value


@pytest.mark.parametrize(("raw", "value"), [(True, True), (False, False), (1, True), (0, False)])
def test_native_booleans(raw: Any, value: bool) -> None:
    assert Config(enabled=raw).enabled is value


@pytest.mark.parametrize(("raw", "items"), [
    ("a,b", ("a", "b")),
    (" a , ,b ,, ", ("a", "b")),
    ("single", ("single",)),
    ("", ()),
    ([" a ", "b"], ("a", "b")),
    (("x",), ("x",)),
    ([], ()),
])
@pytest.mark.parametrize("name", ["notifiers", "ignore", "redact"])
def test_lists(name: str, raw: Any, items: tuple[str, ...]) -> None:
    if name == "redact":  # added to the built-in names, which always apply
        items = tuple(dict.fromkeys([*DEFAULT_REDACT, *items]))
    assert getattr(load(app_config={key_name(name): raw}), name) == items
    if isinstance(raw, str):
        assert getattr(Config.from_env({key_name(name): raw}), name) == items


def test_dedup_key_accepts_an_importable_callable() -> None:
    for path in ("os.path:basename", "os.path.basename", " os.path:basename "):
        assert Config(dedup_key=path).dedup_key == path.strip()


def test_store_url_scheme_is_case_insensitive() -> None:
    assert Config(store="MEMORY://").store == "MEMORY://"


def test_mattermost_url_forms() -> None:
    assert Config(mattermost_url="HTTP://chat.example.com:8065/").mattermost_url == \
        "HTTP://chat.example.com:8065"
    assert Config(mattermost_url="https://chat.example.com/mm/").mattermost_url == \
        "https://chat.example.com/mm"
    assert Config(mattermost_url="").mattermost_url is None


def test_optional_strings_are_stripped_and_empty_is_none() -> None:
    config = Config.from_env({"PERFWATCH_MATTERMOST_TEAM": "  eng ",
                              "PERFWATCH_MATTERMOST_TOKEN": "   "})
    assert config.mattermost_team == "eng"
    assert config.mattermost_token is None


def test_report_dir_expands_home_and_accepts_paths(clean_environment: Path,
                                                   tmp_path: Path) -> None:
    assert Config.from_env({"PERFWATCH_REPORT_DIR": "~/reports"}).report_dir == \
        str(clean_environment / "reports")
    config = Config(report_dir=tmp_path / "r")
    assert config.report_dir == str(tmp_path / "r")
    assert config.resolved_report_dir == tmp_path / "r"


def test_profile_interval_bounds() -> None:
    assert Config(profile_interval=1).profile_interval == 1.0
    assert Config(profile_interval=0.0001).profile_interval == 0.0001
    assert Config(profile_interval="1ms").profile_interval == pytest.approx(0.001)


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_profiler_accepts_every_engine(engine: str) -> None:
    assert Config.from_env({"PERFWATCH_PROFILER": f" {engine.upper()} "}).profiler == engine


# --- invalid values -------------------------------------------------------------

INVALID: list[tuple[str, Any, str]] = [
    # (key, raw value, extra text the message must contain)
    ("threshold", "fast", ""),
    ("threshold", -1, ""),
    ("threshold", 0, ""),
    ("threshold", "0", ""),
    ("threshold", "0ms", ""),
    ("threshold", float("nan"), ""),
    ("threshold", float("inf"), ""),
    ("threshold", float("-inf"), ""),
    ("threshold", "nan", ""),
    ("threshold", "inf", ""),
    ("threshold", "-0.5", ""),
    ("threshold", True, ""),
    ("threshold", None, ""),
    ("threshold", [1], ""),
    ("threshold", 10**400, ""),
    ("dedup_window", "10x", ""),
    ("dedup_window", "-1s", ""),
    ("dedup_window", "1 fortnight", ""),
    ("hang_after", "soon", ""),
    ("hang_after", -5, ""),
    ("shutdown_timeout", "", ""),
    ("mattermost_timeout", "0s", ""),
    ("enabled", "maybe", ""),
    ("enabled", "", ""),
    ("enabled", 2, ""),
    ("enabled", -1, ""),
    ("enabled", 1.0, ""),
    ("enabled", None, ""),
    ("mattermost_verify", "nope", ""),
    ("profiler", "cprofile", ""),
    ("profiler", "", ""),
    ("profiler", 1, ""),
    ("profile_interval", 0, ""),
    ("profile_interval", "2s", ""),
    ("profile_interval", 0.00001, ""),
    ("profile_interval", "-1ms", ""),
    ("sampler_budget", "5", ""),  # 5 % or 500 %? a bare number must be a fraction
    ("sampler_budget", "101%", ""),
    ("sampler_budget", -0.01, ""),
    ("sampler_budget", "nan", ""),
    ("sampler_budget", "lots", ""),
    ("sampler_budget", True, ""),
    ("dedup_key", "endpoint+query", ""),
    ("dedup_key", "justaword", "not a 'module:attribute' path"),
    ("dedup_key", 42, ""),
    ("dedup_key", "no_such_module_xyz:key", "cannot import module 'no_such_module_xyz'"),
    ("dedup_key", "os.path:no_such_attr", "has no attribute 'no_such_attr'"),
    ("dedup_key", "os:sep", "not callable"),
    ("store", "memory", ""),
    ("store", "memory:shared", ""),
    ("store", "localhost:6379", ""),
    ("store", "ftp://host/x", ""),
    ("store", "", ""),
    ("store", 5, ""),
    ("notifiers", [1], ""),
    ("notifiers", ["local", ""], ""),
    ("notifiers", {"local": True}, ""),
    ("notifiers", 5, ""),
    ("ignore", [None], ""),
    ("redact", 3, ""),
    ("report_dir", 5, ""),
    ("store_prefix", 5, ""),
    ("mattermost_token", ["tok"], ""),
    ("mattermost_url", "ftp://chat.example.com", ""),
    ("mattermost_url", "chat.example.com", ""),
    ("mattermost_url", "https://", ""),
    ("mattermost_url", "http://chat.example.com:99999", ""),
    ("mattermost_url", "http://chat.example.com:port", ""),
    ("mattermost_url", 3, ""),
    ("mattermost_retries", -1, ""),
    ("mattermost_retries", "-1", ""),
    ("mattermost_retries", "3.5", ""),
    ("mattermost_retries", 3.5, ""),
    ("mattermost_retries", True, ""),
    ("mattermost_retries", "three", ""),
    ("queue_size", 0, ""),
    ("queue_size", "0", ""),
    ("queue_size", -1, ""),
    ("endpoint_alert_limit", -1, ""),
    ("endpoint_alert_limit", "ten", ""),
    ("capture_sql", "sometimes", ""),
    ("regression_factor", 1, ""),  # at or under 1, noise is a "regression"
    ("regression_factor", "0.5", ""),
    ("regression_factor", -2, ""),
    ("regression_factor", "nan", ""),
    ("regression_factor", "inf", ""),
    ("regression_factor", True, ""),
    ("regression_factor", "double", ""),
    ("regression_min_requests", 0, ""),
    ("regression_min_requests", "many", ""),
    ("regression_min_requests", 1001, ""),
    ("notifier_timeout", 0, ""),
    ("report_retention", "forever", ""),
    ("report_max_bytes", "lots", ""),
    ("report_max_bytes", -5, ""),
    ("report_max_bytes", 1.5, ""),
    ("report_file_max_bytes", "5 parsecs", ""),
    ("redact_hook", "no_such_module_xyz:hook", "cannot import"),
    ("redact_hook", "posixpath:sep", "not callable"),
]


def assert_invalid(err: ConfigError, name: str, raw: Any, source: str, extra: str = "") -> None:
    key = key_name(name)
    assert err.key == key
    assert same(err.value, raw), (err.value, raw)
    assert err.source == source
    assert err.expected is not None
    assert err.expected.startswith(PARSER_EXPECTED[name])
    message = str(err)
    assert message.startswith(f"{key}={raw!r} (from {source}): expected "), message
    assert PARSER_EXPECTED[name] in message
    assert extra in message


@pytest.mark.parametrize(("name", "raw", "extra"), INVALID,
                         ids=[f"{n}={r!r}"[:40] for n, r, _ in INVALID])
def test_invalid_value_from_app_config(name: str, raw: Any, extra: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(app_config={key_name(name): raw})
    assert_invalid(info.value, name, raw, "app.config", extra)


STRING_INVALID = [(n, r, e) for n, r, e in INVALID if isinstance(r, str)]


@pytest.mark.parametrize(("name", "raw", "extra"), STRING_INVALID,
                         ids=[f"{n}={r!r}"[:40] for n, r, _ in STRING_INVALID])
def test_invalid_value_from_environment(name: str, raw: str, extra: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({key_name(name): raw})
    assert_invalid(info.value, name, raw, "environment", extra)


def test_invalid_value_names_each_source(tmp_path: Path) -> None:
    path = write_config(tmp_path / "conf.yaml", {"threshold": "fast"})
    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: load(overrides={"threshold": "fast"}), "keyword argument"),
        (lambda: load(app_config={"PERFWATCH_THRESHOLD": "fast"}), "app.config"),
        (lambda: load(environ={"PERFWATCH_THRESHOLD": "fast"}), "environment"),
        (lambda: load(environ={CONFIG_FILE_KEY: str(path)}), f"file {path}"),
        (lambda: Config.from_file(path), f"file {path}"),
        (lambda: Config(threshold="fast"), "Config(...)"),
        (lambda: Config.from_mapping(threshold="fast"), "mapping"),
        (lambda: DEFAULTS.replace(threshold="fast"), "keyword argument"),
    ]
    for build, source in cases:
        with pytest.raises(ConfigError) as info:
            build()
        assert_invalid(info.value, "threshold", "fast", source)


def test_invalid_value_in_a_lower_layer_still_raises() -> None:
    """A bad value is an error even when a higher layer sets the same key."""
    with pytest.raises(ConfigError) as info:
        load(overrides={"threshold": 2}, environ={"PERFWATCH_QUEUE_SIZE": "0"})
    assert info.value.source == "environment"


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="PERFWATCH_QUEUE_SIZE"):
        Config(queue_size=0)


# --- unknown keys ---------------------------------------------------------------


def test_unknown_app_config_key_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError, match="did you mean PERFWATCH_THRESHOLD") as info:
        load(app_config={"PERFWATCH_THRESHHOLD": 2})
    assert (info.value.key, info.value.source) == ("PERFWATCH_THRESHHOLD", "app.config")
    assert "PERFWATCH_THRESHHOLD" in str(info.value)


def test_unknown_key_without_a_close_match_has_no_hint() -> None:
    with pytest.raises(ConfigError, match="unknown configuration key") as info:
        load(app_config={"PERFWATCH_ZZZZZZZZ": 2})
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize("build", [
    lambda: load(overrides={"threshhold": 2}),
    lambda: Config.from_mapping({"threshhold": 2}),
    lambda: PerfWatch(Flask("typo"), threshhold=2),
], ids=["keyword", "mapping", "perfwatch"])
def test_unknown_short_name_suggests_the_right_one(build: Callable[[], Any]) -> None:
    with pytest.raises(ConfigError, match="did you mean PERFWATCH_THRESHOLD") as info:
        build()
    assert info.value.key == "threshhold"


@pytest.mark.parametrize("suffix", FORMATS)
def test_unknown_key_in_file(suffix: str, tmp_path: Path) -> None:
    path = write_config(tmp_path / f"conf{suffix}", {"threshhold": 2}, section=True)
    with pytest.raises(ConfigError, match="did you mean PERFWATCH_THRESHOLD") as info:
        Config.from_file(path)
    assert (info.value.key, info.value.source) == ("threshhold", f"file {path}")


def test_non_string_key_in_file(tmp_path: Path) -> None:
    path = tmp_path / "conf.yaml"
    path.write_text("1: x\n")
    with pytest.raises(ConfigError, match="is not a string"):
        Config.from_file(path)


def test_unknown_environment_variable_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_perfwatch"):
        config = load(environ={"PERFWATCH_THRESHHOLD": "2", "PERFWATCH_QUEUE_SIZE": "4"})
    assert config.threshold == DEFAULTS.threshold
    assert config.queue_size == 4
    [record] = [r for r in caplog.records if "PERFWATCH_THRESHHOLD" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.name.startswith("flask_perfwatch")
    assert "did you mean PERFWATCH_THRESHOLD" in record.getMessage()


def test_non_perfwatch_app_config_keys_are_ignored() -> None:
    config = load(app_config={"SECRET_KEY": "x", "THRESHOLD": "bad", "DEBUG": True,
                              "perfwatch_threshold": "bad", "PERFWATCH_QUEUE_SIZE": 5})
    assert config.queue_size == 5
    assert config.threshold == DEFAULTS.threshold


def test_non_perfwatch_environment_variables_are_ignored(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_perfwatch"):
        config = load(environ={"THRESHOLD": "bad", "PERFWATCH": "x", "HOME": "/"})
    assert config == DEFAULTS
    assert not caplog.records


# --- config files ---------------------------------------------------------------

BAD_FILES = [
    ("conf.ini", b"[perfwatch]\n", "unsupported extension '.ini'"),
    ("conf", b"threshold = 1\n", "unsupported extension ''"),
    ("bad.json", b"{threshold: 1", "not valid JSON"),
    ("empty.json", b"", "not valid JSON"),
    ("bad.yaml", b"threshold: [1, 2\n", "not valid YAML"),
    ("bad.yml", b"a: b: c\n", "not valid YAML"),
    ("bad.toml", b"threshold = \n", "not valid TOML"),
    ("latin1.toml", 'perfwatch_team = "\xe9"\n'.encode("latin-1"), "not UTF-8"),
    ("list.json", b"[1, 2]", "the top level must be a mapping, not list"),
    ("scalar.yaml", b"just words\n", "the top level must be a mapping, not str"),
    ("section.toml", b"perfwatch = 3\n", "'perfwatch' must be a table/section, not int"),
    ("section.json", b'{"perfwatch": ["threshold"]}', "'perfwatch' must be a table/section"),
    ("nested.toml", b'config_file = "other.toml"\n', "cannot be set in a config file"),
]


@pytest.mark.parametrize(("filename", "content", "problem"), BAD_FILES,
                         ids=[f for f, _, _ in BAD_FILES])
def test_bad_config_file(filename: str, content: bytes, problem: str, tmp_path: Path) -> None:
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        Config.from_file(path)
    assert problem in str(info.value)
    assert str(path) in str(info.value)
    assert (info.value.key, info.value.value) == (CONFIG_FILE_KEY, str(path))

    with pytest.raises(ConfigError) as info:
        load(environ={CONFIG_FILE_KEY: str(path)})
    assert problem in str(info.value)
    assert "named by PERFWATCH_CONFIG_FILE from environment" in str(info.value)
    assert info.value.source == "environment"


@pytest.mark.parametrize(("filename", "reason"), [
    ("missing.toml", "No such file or directory"),
    ("a-directory.yaml", "Is a directory"),
])
def test_unreadable_config_file(filename: str, reason: str, tmp_path: Path) -> None:
    path = tmp_path / filename
    if filename.startswith("a-directory"):
        path.mkdir()
    with pytest.raises(ConfigError) as info:
        load(app_config={CONFIG_FILE_KEY: str(path)})
    message = str(info.value)
    assert f"config file {path} (named by PERFWATCH_CONFIG_FILE from app.config)" in message
    assert "cannot be read" in message
    assert reason in message
    assert (info.value.key, info.value.source) == (CONFIG_FILE_KEY, "app.config")


@pytest.mark.parametrize(("filename", "content"), [
    ("empty.yaml", ""),
    ("comments.yaml", "# nothing here\n"),
    ("null.yml", "null\n"),
    ("empty-section.yaml", "perfwatch:\n"),
    ("empty.toml", ""),
    ("empty-section.toml", "[perfwatch]\n"),
    ("empty.json", "{}"),
    ("empty-section.json", '{"perfwatch": {}}'),
])
def test_empty_config_file_gives_defaults(filename: str, content: str, tmp_path: Path) -> None:
    path = tmp_path / filename
    path.write_text(content)
    for config in (Config.from_file(path), load(environ={CONFIG_FILE_KEY: str(path)})):
        assert config == DEFAULTS
        assert set(config.sources.values()) == {"default"}


def test_section_ignores_other_top_level_tables(tmp_path: Path) -> None:
    path = tmp_path / "shared.toml"
    path.write_text('[perfwatch]\nthreshold = "2s"\n\n[otherapp]\nthreshold = "x"\n')
    assert Config.from_file(path).threshold == 2.0


def test_from_file_accepts_pathlike_and_string(tmp_path: Path) -> None:
    path = write_config(tmp_path / "conf.yml", {"PERFWATCH_QUEUE_SIZE": 2})
    assert Config.from_file(path).queue_size == Config.from_file(str(path)).queue_size == 2


def test_full_file_sets_every_key(tmp_path: Path) -> None:
    path = write_config(tmp_path / "all.toml",
                        {key_name(n): valid(n).native for n in FIELDS}, section=True)
    config = Config.from_file(path)
    for name in FIELDS:
        assert_parsed(config, name, expected(name))
    assert set(config.sources.values()) == {f"file {path}"}


# --- PerfWatch / init_app -----------------------------------------------------------


def test_config_error_is_raised_at_init_app(apps: list[Flask]) -> None:
    perfwatch = PerfWatch(threshold="fast")  # no app yet: nothing to validate against
    app = new_app(apps)
    with pytest.raises(ConfigError) as info:
        perfwatch.init_app(app)
    assert_invalid(info.value, "threshold", "fast", "keyword argument")
    assert "perfwatch" not in app.extensions
    assert not app.before_request_funcs.get(None)
    assert not isinstance(app.wsgi_app, RequestTimer)
    # the app is usable, and a fixed configuration can still be installed
    perfwatch.init_app(app, threshold="2s")
    assert perfwatch.config(app).threshold == 2.0


def test_bad_app_config_raises_at_init_app(apps: list[Flask]) -> None:
    app = new_app(apps, PERFWATCH_MATTERMOST_RETRIES="3.5")
    with pytest.raises(ConfigError) as info:
        PerfWatch(app)
    assert_invalid(info.value, "mattermost_retries", "3.5", "app.config")


def test_bad_environment_raises_at_init_app(apps: list[Flask],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERFWATCH_DEDUP_WINDOW", "10x")
    with pytest.raises(ConfigError) as info:
        PerfWatch(new_app(apps))
    assert_invalid(info.value, "dedup_window", "10x", "environment")


def test_init_app_reads_every_source(apps: list[Flask], monkeypatch: pytest.MonkeyPatch,
                                     tmp_path: Path) -> None:
    path = write_config(tmp_path / "conf.yaml", {"queue_size": 9, "store_prefix": "file"})
    monkeypatch.setenv(CONFIG_FILE_KEY, str(path))
    monkeypatch.setenv("PERFWATCH_STORE_PREFIX", "env")
    monkeypatch.setenv("PERFWATCH_THRESHOLD", "3")
    app = new_app(apps, PERFWATCH_THRESHOLD="2", PERFWATCH_REPORT_DIR=str(tmp_path))
    perfwatch = PerfWatch(dedup_key="endpoint")
    perfwatch.init_app(app)
    config = perfwatch.config(app)
    assert config is monitor_of(app).config
    assert (config.dedup_key, config.sources["dedup_key"]) == ("endpoint", "keyword argument")
    assert (config.threshold, config.sources["threshold"]) == (2.0, "app.config")
    assert (config.store_prefix, config.sources["store_prefix"]) == ("env", "environment")
    assert (config.queue_size, config.sources["queue_size"]) == (9, f"file {path}")


def test_init_app_keywords_override_constructor_keywords(apps: list[Flask],
                                                         tmp_path: Path) -> None:
    perfwatch = PerfWatch(threshold=5, queue_size=4, report_dir=str(tmp_path))
    app = new_app(apps, PERFWATCH_THRESHOLD=7)
    perfwatch.init_app(app, threshold="250ms")
    config = perfwatch.config(app)
    assert (config.threshold, config.queue_size) == (0.25, 4)
    assert config.sources["threshold"] == config.sources["queue_size"] == "keyword argument"


def test_second_init_app_on_the_same_app_raises(apps: list[Flask], tmp_path: Path) -> None:
    app = new_app(apps)
    perfwatch = PerfWatch(app, report_dir=str(tmp_path))
    state = app.extensions["perfwatch"]
    with pytest.raises(RuntimeError, match="already"):
        perfwatch.init_app(app)
    with pytest.raises(RuntimeError, match="already"):
        PerfWatch(app, report_dir=str(tmp_path))
    assert app.extensions["perfwatch"] is state
    assert app.wsgi_app is state.timer  # wrapped once, not twice
    assert not isinstance(state.timer.wsgi_app, RequestTimer)


def test_one_perfwatch_serves_two_apps(apps: list[Flask], tmp_path: Path) -> None:
    perfwatch = PerfWatch(report_dir=str(tmp_path), queue_size=5)
    first = new_app(apps, "first", PERFWATCH_THRESHOLD="500ms")
    second = new_app(apps, "second", PERFWATCH_THRESHOLD="2s", PERFWATCH_ENABLED="no")
    perfwatch.init_app(first)
    perfwatch.init_app(second, queue_size=6)
    one, two = perfwatch.config(first), perfwatch.config(second)
    assert (one.threshold, one.enabled, one.queue_size) == (0.5, True, 5)
    assert (two.threshold, two.enabled, two.queue_size) == (2.0, False, 6)
    assert first.extensions["perfwatch"] is not second.extensions["perfwatch"]
    assert first.extensions["perfwatch"].owner is second.extensions["perfwatch"].owner
    with first.app_context():
        assert perfwatch.config() is one
    with second.app_context():
        assert perfwatch.config() is two


def slow_signals(recorder: SignalRecorder, app: Flask) -> list[Any]:
    return [e for e in recorder.of("slow_request") if e.sender is app]


@pytest.mark.parametrize("source", ["app.config", "keyword"])
def test_disabled_installs_no_hooks(source: str, apps: list[Flask], tmp_path: Path,
                                    signals_recorder: SignalRecorder) -> None:
    settings = {"threshold": "5ms", "report_dir": str(tmp_path)}
    if source == "keyword":
        off_app = new_app(apps, "off")
        perfwatch = PerfWatch(off_app, enabled=False, **settings)
    else:
        off_app = new_app(apps, "off", PERFWATCH_ENABLED="false")
        perfwatch = PerfWatch(off_app, **settings)
    on_app = new_app(apps, "on")  # the control: same view, same threshold, enabled
    PerfWatch(on_app, **settings)

    assert perfwatch.config(off_app).enabled is False
    assert not off_app.before_request_funcs.get(None)
    assert not off_app.after_request_funcs.get(None)
    assert not off_app.teardown_request_funcs.get(None)
    assert not isinstance(off_app.wsgi_app, RequestTimer)
    assert isinstance(on_app.wsgi_app, RequestTimer)

    assert off_app.test_client().get("/wait").data == b"done"
    assert on_app.test_client().get("/wait").data == b"done"
    assert len(slow_signals(signals_recorder, on_app)) == 1  # sent on the request thread
    assert slow_signals(signals_recorder, off_app) == []
    assert perfwatch.stats(off_app)["requests"] == 0


# --- the Config object ------------------------------------------------------------


def test_config_is_frozen() -> None:
    config = Config(threshold=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.threshold = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.enabled = False  # type: ignore[misc]
    assert config.threshold == 2.0


def test_equality_ignores_sources_and_is_hashable() -> None:
    a = Config(threshold=2, notifiers=["local"])
    b = Config.from_env({"PERFWATCH_THRESHOLD": "2s", "PERFWATCH_NOTIFIERS": "local"})
    assert a == b
    assert hash(a) == hash(b)
    assert a != Config(threshold=3)


def test_replace_validates_and_tracks_sources() -> None:
    config = load(app_config={"PERFWATCH_QUEUE_SIZE": 5})
    changed = config.replace(threshold="500ms", ignore="static, /health")
    assert (changed.threshold, changed.ignore) == (0.5, ("static", "/health"))
    assert changed.sources["threshold"] == changed.sources["ignore"] == "keyword argument"
    assert changed.sources["queue_size"] == "app.config"
    assert changed.queue_size == 5
    assert config.threshold == 1.0
    assert config.sources["threshold"] == "default"
    with pytest.raises(ConfigError) as info:
        config.replace(queue_size=0)
    assert_invalid(info.value, "queue_size", 0, "keyword argument")


def test_describe_lists_every_key_and_masks_the_token() -> None:
    config = load(app_config={"PERFWATCH_MATTERMOST_TOKEN": "s3cr3t-token",
                              "PERFWATCH_THRESHOLD": 2})
    rows = config.describe()
    assert [key for key, _, _ in rows] == [key_name(n) for n in FIELDS]
    by_key = {key: (value, source) for key, value, source in rows}
    assert by_key["PERFWATCH_MATTERMOST_TOKEN"] == ("[REDACTED]", "app.config")
    assert by_key["PERFWATCH_THRESHOLD"] == (2.0, "app.config")
    assert by_key["PERFWATCH_QUEUE_SIZE"] == (100, "default")
    assert "s3cr3t" not in repr(rows)
    assert dict((k, v) for k, v, _ in DEFAULTS.describe())["PERFWATCH_MATTERMOST_TOKEN"] is None


def test_config_constructor_sources() -> None:
    config = Config(threshold=2, queue_size=100)  # queue_size equals its default
    assert config.sources["threshold"] == "Config(...)"
    assert config.sources["queue_size"] == "default"
    assert set(config.sources) == set(FIELDS)


def test_config_can_be_copied_serialised_and_pickled() -> None:
    """Issue 10, bug 3: users pass configs to subprocesses and log them."""
    import copy
    import pickle

    config = load(app_config={"PERFWATCH_THRESHOLD": "250ms", "PERFWATCH_REDACT": ["ssn"]})
    assert dataclasses.asdict(config)["threshold"] == 0.25
    assert dataclasses.asdict(config)["sources"]["threshold"] == "app.config"
    for clone in (copy.copy(config), copy.deepcopy(config), pickle.loads(pickle.dumps(config))):
        assert clone == config
        assert dict(clone.sources) == dict(config.sources)
        assert clone.redact[-1] == "ssn"
    with pytest.raises(TypeError, match="read-only"):
        config.sources["threshold"] = "forged"  # type: ignore[index]
