"""Small public helpers kept by the issue 10 clean-up, each tested here rather
than removed: ``metrics.utcnow``, ``PerformanceMetrics.endpoint``,
``Profile.to_json``, ``config.key_name``; and the names of keys spelled in
messages and docs, checked against the one table of keys."""

from __future__ import annotations

import json
import re
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import burn, find_frame

from flask_perfwatch import Config
from flask_perfwatch.config import CONFIG_FILE_KEY, config_fields, key_name
from flask_perfwatch.exceptions import ConfigError
from flask_perfwatch.metrics import utcnow
from flask_perfwatch.notifiers import Notifier
from flask_perfwatch.profiling.base import Profile
from flask_perfwatch.stores.sqlite import SQLiteStore, parse_sqlite_url
from flask_perfwatch.testing import SignalRecorder

ROOT = Path(__file__).resolve().parent.parent


# --- metrics ----------------------------------------------------------------------


def test_utcnow_is_an_aware_utc_datetime_of_now() -> None:
    before = datetime.now(UTC)
    now = utcnow()
    after = datetime.now(UTC)
    assert now.tzinfo is UTC
    assert now.utcoffset() == timedelta(0)
    assert before <= now <= after


def test_endpoint_is_the_flask_endpoint_of_a_slow_request(
    make_app: Any, signals_recorder: SignalRecorder
) -> None:
    """The documented alias, read from metrics a real slow request produced."""
    app, perfwatch = make_app(profiler="off")
    app.add_url_rule("/export", endpoint="orders.export",
                     view_func=lambda: str(burn(0.8)))
    assert app.test_client().get("/export").status_code == 200
    metrics = signals_recorder.wait_for("slow_request")[0].kwargs["metrics"]
    assert perfwatch.flush(10, app)
    assert metrics.name == "orders.export"
    assert metrics.endpoint == "orders.export"


# --- profiles ---------------------------------------------------------------------


def test_profile_to_json_round_trips_through_pyinstrument() -> None:
    """``to_json()`` is pyinstrument's ``.pyisession`` format: written as JSON
    text and loaded by pyinstrument's own ``Session.from_json``, it gives the
    same session (records, counts, description) and the same rendering."""
    from pyinstrument import Profiler
    from pyinstrument.session import Session

    profiler = Profiler(interval=0.001)
    profiler.start(target_description="GET /export")
    burn(0.05)
    profile = Profile(profiler.stop())

    data = profile.to_json()
    loaded = Session.from_json(json.loads(json.dumps(data)))

    original = profile.session
    assert [(list(stack), t) for stack, t in loaded.frame_records] == \
        [(list(stack), t) for stack, t in original.frame_records]
    assert loaded.sample_count == original.sample_count > 0
    assert loaded.duration == original.duration
    assert loaded.start_time == original.start_time
    assert loaded.target_description == "GET /export"
    root = loaded.root_frame()
    assert root is not None
    assert find_frame(root, "burn") is not None
    assert Profile(loaded).text() == profile.text()


# --- key names --------------------------------------------------------------------


def test_key_name_names_declared_keys_only() -> None:
    assert key_name("store") == "PERFWATCH_STORE"
    assert key_name("mattermost_channel_id") == "PERFWATCH_MATTERMOST_CHANNEL_ID"
    for misspelt in ("stor", "STORE", "PERFWATCH_STORE", "sources", ""):
        with pytest.raises(ValueError, match="not a flask_perfwatch configuration key"):
            key_name(misspelt)


def test_store_errors_name_the_store_key(tmp_path: Path) -> None:
    """Errors raised by the stores themselves (not by config validation)."""
    with pytest.raises(ConfigError) as bad_url:
        parse_sqlite_url("sqlite://host/x.db", source="app.config")
    assert bad_url.value.key == key_name("store")
    assert str(bad_url.value).startswith(f"{key_name('store')}=")

    link = tmp_path / "link.db"
    link.symlink_to(tmp_path / "target.db")
    with pytest.raises(ConfigError) as symlink:
        SQLiteStore.from_url(f"sqlite:///{link}", prefix="p",
                             config=Config(store=f"sqlite:///{link}"))
    assert symlink.value.key == key_name("store")


def test_redis_store_accepts_exactly_its_own_schemes() -> None:
    pytest.importorskip("redis")
    from flask_perfwatch.stores.redis import SCHEMES, RedisStore

    assert SCHEMES == ("redis", "rediss")
    for scheme in ("redis", "REDISS"):
        RedisStore.from_url(f"{scheme}://127.0.0.1:1/0", prefix="p").close()
    with pytest.raises(ConfigError) as error:
        RedisStore.from_url("sqlite://127.0.0.1:1/0", prefix="p")
    assert error.value.key == key_name("store")


_KEY_RE = re.compile(r"PERFWATCH_[A-Z0-9_]+")
#: docs/troubleshooting.rst shows the warning for a misspelt key on purpose
_SHOWN_TYPO = "unknown configuration key '"


def _spelled_keys() -> list[tuple[str, str]]:
    """``(file, name)`` of every ``PERFWATCH_*`` name in the package and the docs."""
    files = [*sorted((ROOT / "flask_perfwatch").rglob("*.py")),
             *sorted((ROOT / "docs").glob("*.rst")), ROOT / "README.rst"]
    found = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        for match in _KEY_RE.finditer(text):
            if text[:match.start()].endswith(_SHOWN_TYPO):
                continue
            found.append((str(path.relative_to(ROOT)), match.group(0)))
    return found


def test_every_key_spelled_in_the_package_and_docs_is_declared() -> None:
    """Messages and docs that still spell a key as a literal must spell a real
    one: a declared key, ``PERFWATCH_CONFIG_FILE``, or the prefix of declared
    keys (``PERFWATCH_MATTERMOST_``)."""
    known = {key_name(f.name) for f in config_fields()} | {CONFIG_FILE_KEY}
    spelled = _spelled_keys()
    assert len(spelled) > 30  # the scan sees the literals it is meant to check
    wrong = [(where, name) for where, name in spelled
             if name not in known
             and not (name.endswith("_") and any(k.startswith(name) for k in known))]
    assert wrong == []


# --- docs examples ----------------------------------------------------------------


def _code_block(rst: Path, marker: str) -> str:
    """The ``.. code-block:: python`` of ``rst`` that contains ``marker``."""
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)",
                        rst.read_text(encoding="utf-8"))
    matching = [textwrap.dedent(block) for block in blocks if marker in block]
    assert len(matching) == 1, f"one python example with {marker!r} in {rst.name}"
    return matching[0]


def test_notifiers_doc_webhook_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The "Writing your own" example, executed as a user would paste it, and
    delivering through the shared policy to a real server: a 429 with
    ``Retry-After`` is waited for and retried, a 404 is permanent."""
    import re

    from http_standin import StandIn, json_answer

    from flask_perfwatch.exceptions import NotifierError
    from flask_perfwatch.metrics import PerformanceMetrics

    source = _code_block(ROOT / "docs" / "notifiers.rst", "class MyWebhookNotifier")
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    exec(compile(source, "docs/notifiers.rst", "exec"), namespace)
    webhook = namespace["MyWebhookNotifier"]
    assert issubclass(webhook, Notifier)

    monkeypatch.delenv("SLOW_WEBHOOK_URL", raising=False)
    with pytest.raises(ConfigError, match="SLOW_WEBHOOK_URL is required"):
        webhook(Config())

    server = StandIn()
    server.routes["hook"] = ("POST", re.compile("^/hook$"), lambda hit, m: json_answer(200, {}))
    with server:
        monkeypatch.setenv("SLOW_WEBHOOK_URL", f"{server.base_url}/hook")
        notifier = webhook(Config())
        delays: list[float] = []
        notifier.policy.sleep = delays.append
        metrics = PerformanceMetrics(kind="request", name="orders", duration=2.0,
                                     threshold=1.0, started_at=datetime.now(UTC))
        server.fail("hook", 429, headers={"Retry-After": "3"})
        notifier.send(metrics, None)
        assert delays == [3.0]
        assert [hit.json()["name"] for hit in server.requests] == ["orders", "orders"]
        server.fail("hook", 404)
        with pytest.raises(NotifierError, match="my webhook: HTTP 404"):
            notifier.send(metrics, None)
