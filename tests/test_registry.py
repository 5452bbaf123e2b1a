"""The registries of pluggable parts (:mod:`flask_perfwatch._registry`): one
shape for engines, stores and notifiers; names checked in one place; a
notifier registered by another installed package through its entry point."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from flask import Flask

from flask_perfwatch import Config, ConfigError, PerfWatch
from flask_perfwatch._registry import ENGINES, NOTIFIERS, STORES, Registry
from flask_perfwatch.notifiers import resolve_notifier
from flask_perfwatch.profiling import Engine, create_engine
from flask_perfwatch.stores import Store, create_store


def test_every_builtin_name_loads_the_right_kind_of_part() -> None:
    from flask_perfwatch.notifiers import Notifier

    for registry, base in ((ENGINES, Engine), (STORES, Store), (NOTIFIERS, Notifier)):
        assert len(registry) >= 2
        for name in registry:
            cls = registry.load(name)
            assert issubclass(cls, base), (registry, name)


def test_config_and_the_parts_use_the_same_names() -> None:
    for name in ENGINES:
        assert type(create_engine(Config(profiler=name))) is ENGINES.load(name)
    store = create_store(Config(store="memory://"), prefix="p")
    assert type(store) is STORES.load("memory")
    store.close()


def test_an_unknown_profiler_names_the_known_ones() -> None:
    with pytest.raises(ConfigError) as error:
        Config(profiler="perf")
    assert "one of sampler, pyinstrument, off" in str(error.value)


def test_an_unknown_store_scheme_is_refused_by_config() -> None:
    with pytest.raises(ConfigError, match="PERFWATCH_STORE"):
        Config(store="postgres://db/x")


def test_unknown_names_and_paths() -> None:
    registry = Registry("widget", {"a": "flask_perfwatch.stores.memory:MemoryStore"})
    with pytest.raises(ValueError, match=r"unknown widget 'b'; known: a$"):
        registry.load("b")
    with pytest.raises(ValueError, match="unknown widget 'json:loads'"):
        registry.load("json:loads")  # paths are only accepted where said so
    with pytest.raises(ValueError, match="known: local, log, mattermost, slack, teams, "
                                         "discord, email, webhook, pagerduty, or a "
                                         "'module:Class' path"):
        NOTIFIERS.load("pigeon")
    with pytest.raises(ValueError, match=r"unknown notifier 'slak'; did you mean 'slack'\?"):
        NOTIFIERS.load("slak")
    assert NOTIFIERS.load("notifiers_for_tests:RecordingNotifier").__name__ == \
        "RecordingNotifier"


def _install(site: Path, entry_points: str, module: str | None = None) -> None:
    """A real installed distribution (``.dist-info`` on ``sys.path``) that
    registers entry points, as ``pip install`` would leave it."""
    info = site / "pigeon_post-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pigeon-post\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    if module is not None:
        (site / "pigeon_post.py").write_text(textwrap.dedent(module))


PIGEON = """\
    from flask_perfwatch.notifiers import Notifier

    class PigeonNotifier(Notifier):
        name = "pigeon"
        sent = []

        def send(self, metrics, report):
            self.sent.append(metrics.name)
"""


def test_a_notifier_of_another_package_is_found_by_its_entry_point(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, """\
        [flask_perfwatch.notifiers]
        pigeon = pigeon_post:PigeonNotifier
    """, PIGEON)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "pigeon" in NOTIFIERS.names()
    cls = resolve_notifier("pigeon")
    assert cls.__name__ == "PigeonNotifier"

    app = Flask("pigeons")

    @app.get("/slow")
    def slow() -> str:
        # slow by a wide margin, without sleeping: the threshold is tiny
        return "ok"

    perfwatch = PerfWatch(app, notifiers=["pigeon"], threshold=1e-9, dedup_window=0,
                          profiler="off")
    try:
        assert app.test_client().get("/slow").status_code == 200
        assert perfwatch.flush(10)
        assert cls.sent == ["slow"]  # type: ignore[attr-defined]
    finally:
        perfwatch.close(app, 5)


def test_a_broken_entry_point_is_a_config_error_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, """\
        [flask_perfwatch.notifiers]
        pigeon = pigeon_post_missing:PigeonNotifier
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as error:
        PerfWatch(Flask("pigeons"), notifiers=["pigeon"])
    message = str(error.value)
    assert "PERFWATCH_NOTIFIERS" in message
    assert "entry point 'pigeon'" in message
    assert "failed to load" in message
    assert "ModuleNotFoundError" in message
