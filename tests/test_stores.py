"""The dedupe stores against a real sqlite file and a real redis-server:
one claim contract for all of them, atomicity across connections and
processes, purging, bad URLs, outages and recovery."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import monitor_of, reports_in, run_in_child, wait_until
from redis_server import RedisServer, free_port, running_redis

from flask_perfwatch import Config
from flask_perfwatch._redact import redact_url
from flask_perfwatch.exceptions import ConfigError
from flask_perfwatch.stores import STORES, MemoryStore, Store, create_store
from flask_perfwatch.stores.redis import RedisStore
from flask_perfwatch.stores.sqlite import SQLiteStore, parse_sqlite_url

WINDOW = 100.0


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def closing() -> Iterator[Callable[[Store], Store]]:
    """Register a store to be closed at teardown."""
    stores: list[Store] = []

    def register(store: Store) -> Store:
        stores.append(store)
        return store

    yield register
    for store in stores:
        store.close()


def redis_store(url: str, *, prefix: str = "app", **kwargs: Any) -> RedisStore:
    return RedisStore.from_url(url, prefix=prefix, config=Config(store=url), **kwargs)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock,
                  closing: Callable[[Store], Store]) -> Callable[..., Store]:
    """``make(prefix="app")``: a store of each kind on the fake clock; stores
    made by one factory share their backend (file, server)."""
    kind = request.param
    if kind == "memory":
        shared = MemoryStore(clock=clock, purge_every=1e9)
        return lambda prefix="app": shared
    if kind == "sqlite":
        path = tmp_path / "dedupe.db"
        return lambda prefix="app": closing(SQLiteStore(path, prefix=prefix, clock=clock))
    server: RedisServer = request.getfixturevalue("redis_server")

    def make_redis(prefix: str = "app") -> Store:
        store = closing(redis_store(server.url, prefix=prefix))
        assert isinstance(store, RedisStore)
        store.clock = clock
        return store

    return make_redis


# -- the contract, for every store -------------------------------------------


def test_claim_contract(store_factory: Callable[..., Store], clock: FakeClock) -> None:
    store = store_factory()
    t0 = clock.now
    first = store.claim("k", WINDOW)
    assert first.granted
    assert first.suppressed == 0
    assert first.previous_at is None
    for n in (1, 2, 3):
        clock.advance(10)
        refused = store.claim("k", WINDOW)
        assert not refused.granted
        assert refused.suppressed == n
        assert refused.previous_at == pytest.approx(t0)
    assert store.claim("other", WINDOW).granted  # keys are independent

    clock.advance(WINDOW)  # t0 + 130: the first window is over
    t1 = clock.now
    again = store.claim("k", WINDOW)
    assert again.granted
    assert again.suppressed == 3  # "3 similar since t0"
    assert again.previous_at == pytest.approx(t0)
    clock.advance(1)
    refused = store.claim("k", WINDOW)
    assert (refused.granted, refused.suppressed) == (False, 1)
    assert refused.previous_at == pytest.approx(t1)
    clock.advance(WINDOW)
    quiet = store.claim("k", WINDOW)
    assert (quiet.granted, quiet.suppressed) == (True, 1)
    assert quiet.previous_at == pytest.approx(t1)


def test_window_boundary(store_factory: Callable[..., Store], clock: FakeClock) -> None:
    store = store_factory()
    assert store.claim("k", 10).granted
    clock.advance(9.9)
    assert not store.claim("k", 10).granted
    clock.advance(0.1)
    assert store.claim("k", 10).granted


@pytest.mark.parametrize("store_factory", ["sqlite", "redis"], indirect=True)
def test_prefixes_are_namespaces(store_factory: Callable[..., Store]) -> None:
    app_a, app_b, app_a_again = store_factory("a"), store_factory("b"), store_factory("a")
    assert app_a.claim("k", WINDOW).granted
    assert app_b.claim("k", WINDOW).granted
    assert not app_a_again.claim("k", WINDOW).granted


def test_registry_and_create_store(tmp_path: Path) -> None:
    assert set(STORES) >= {"memory", "sqlite", "redis", "rediss"}
    store = create_store(Config(store=f"sqlite:///{tmp_path}/x.db"), prefix="p")
    try:
        assert isinstance(store, SQLiteStore)
        assert store.prefix == "p"
    finally:
        store.close()
    # no connection is made at start-up, so a dead address is fine here
    store = create_store(Config(store=f"redis://127.0.0.1:{free_port()}/3"), prefix="p")
    try:
        assert isinstance(store, RedisStore)
    finally:
        store.close()


# -- sqlite ------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("sqlite:////abs/dir/perf.db", "/abs/dir/perf.db"),
    ("sqlite:///rel/perf.db", "{cwd}/rel/perf.db"),
    ("sqlite:///perf%20watch.db", "{cwd}/perf watch.db"),
    ("SQLITE:///perf.db", "{cwd}/perf.db"),
])
def test_sqlite_url_paths(url: str, expected: str) -> None:
    path, options = parse_sqlite_url(url)
    assert str(path) == expected.format(cwd=Path.cwd())
    assert options == {}


def test_sqlite_url_options() -> None:
    _, options = parse_sqlite_url("sqlite:////tmp/x.db?timeout=250ms&retain=2d")
    assert options == {"timeout": 0.25, "retain": 172800.0}


@pytest.mark.parametrize(("url", "message"), [
    ("sqlite://", "file path"),
    ("sqlite:///", "file path"),
    ("sqlite://host/x.db", "not a host"),
    ("sqlite:///:memory:", "memory://"),
    ("sqlite:////tmp/x.db?journal=wal", "only the options"),
    ("sqlite:////tmp/x.db?timeout=soon", "duration"),
    ("sqlite:////tmp/x.db?timeout=0", "positive"),
])
def test_sqlite_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match="PERFWATCH_STORE") as info:
        create_store(Config(store=url), prefix="p")
    assert message in str(info.value)


def test_sqlite_creates_parent_dir_at_init(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "dedupe.db"
    store = SQLiteStore.from_url(f"sqlite:///{path}", prefix="p")
    try:
        assert path.parent.is_dir()
        assert path.is_file()
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
    finally:
        store.close()


@pytest.mark.parametrize("problem", ["parent is a file", "path is a dir", "not a database"])
def test_sqlite_unusable_path_is_config_error(tmp_path: Path, problem: str) -> None:
    if problem == "parent is a file":
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "dedupe.db"
    elif problem == "path is a dir":
        path = tmp_path / "adir"
        path.mkdir()
    else:
        path = tmp_path / "garbage.db"
        path.write_bytes(b"this is not a sqlite database, not at all" * 100)
    with pytest.raises(ConfigError, match="PERFWATCH_STORE"):
        create_store(Config(store=f"sqlite:///{path}"), prefix="p")


def _claim_many(path: str, n: int) -> list[tuple[bool, int]]:
    store = SQLiteStore(path, prefix="p")
    try:
        return [(c.granted, c.suppressed) for c in (store.claim("k", WINDOW) for _ in range(n))]
    finally:
        store.close()


def test_sqlite_claims_are_atomic_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "dedupe.db")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_claim_many, [(path, 25)] * 4)
    claims = [c for result in results for c in result]
    assert sum(granted for granted, _ in claims) == 1
    assert sorted(n for granted, n in claims if not granted) == list(range(1, 100))


def test_sqlite_waits_for_a_locked_database(tmp_path: Path) -> None:
    """Another process holding the write lock briefly: the claim waits its turn."""
    path = tmp_path / "dedupe.db"
    store = SQLiteStore(path, prefix="p", timeout=5)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        store.claim("warm-up", WINDOW)
        blocker.execute("BEGIN IMMEDIATE")
        timer = threading.Timer(0.3, blocker.execute, ("COMMIT",))
        timer.start()
        started = time.monotonic()
        assert store.claim("k", WINDOW).granted
        assert time.monotonic() - started >= 0.2
        timer.join()
    finally:
        blocker.close()
        store.close()


def test_sqlite_lock_timeout_raises_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "dedupe.db"
    store = SQLiteStore(path, prefix="p", timeout=0.1)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        assert store.claim("k", WINDOW).granted
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store.claim("k", WINDOW)
        blocker.execute("COMMIT")
        refused = store.claim("k", WINDOW)  # a fresh connection, the same state
        assert (refused.granted, refused.suppressed) == (False, 1)
    finally:
        blocker.close()
        store.close()


def _create_in_rounds(paths: list[str], barrier: Any, results: Any) -> None:
    """A worker process of a pre-forking server, started again and again:
    each round, every worker sets the store up on a new file at once."""
    for path in paths:
        barrier.wait(30)
        try:
            store = SQLiteStore.from_url(f"sqlite:///{path}", prefix="p")
            store.claim("k", WINDOW)
            store.close()
        except Exception as exc:
            results.put(f"{type(exc).__name__}: {exc}")
        else:
            results.put("ok")


def test_sqlite_many_processes_creating_the_database_at_once(tmp_path: Path) -> None:
    """uWSGI --lazy-apps / several gevent workers: every worker creates the
    database at the same moment. Switching it to WAL answers "database is
    locked" at once, without the busy timeout; each must still set up.
    (Without the retry, this loses workers in a few of the 60 rounds.)"""
    # forkserver: not forked from pytest's threads; the server imports the store once
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["flask_perfwatch.stores.sqlite"])
    paths = [str(tmp_path / f"dedupe-{n}.db") for n in range(60)]
    workers_count = 12
    barrier, results = ctx.Barrier(workers_count), ctx.Queue()
    workers = [ctx.Process(target=_create_in_rounds, args=(paths, barrier, results))
               for _ in range(workers_count)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=60) for _ in range(len(paths) * workers_count)]
    for worker in workers:
        worker.join(30)
    assert [o for o in outcomes if o != "ok"] == []


def test_sqlite_set_up_retries_while_the_database_is_locked(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "dedupe.db", prefix="p", timeout=5)
    answers = iter([sqlite3.OperationalError("database is locked"),
                    sqlite3.OperationalError("database is busy"), "wal"])

    def step() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    try:
        assert store._when_free(step) == "wal"
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            store._when_free(lambda: (_ for _ in ()).throw(
                sqlite3.OperationalError("no such table: x")))  # not a lock: at once
        quick = SQLiteStore(tmp_path / "other.db", prefix="p", timeout=0.05)
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            quick._when_free(lambda: (_ for _ in ()).throw(
                sqlite3.OperationalError("database is locked")))
        assert time.monotonic() - started < 5  # bounded by the timeout
        quick.close()
    finally:
        store.close()


def test_sqlite_survives_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "dedupe.db"
    first = SQLiteStore(path, prefix="p", clock=clock)
    assert first.claim("k", WINDOW).granted
    assert not first.claim("k", WINDOW).granted
    first.close()
    second = SQLiteStore(path, prefix="p", clock=clock)
    try:
        refused = second.claim("k", WINDOW)
        assert (refused.granted, refused.suppressed) == (False, 2)
    finally:
        second.close()


def test_sqlite_purge_keeps_counts_for_retain_then_drops(tmp_path: Path,
                                                         clock: FakeClock) -> None:
    store = SQLiteStore(tmp_path / "d.db", prefix="p", clock=clock, retain=50,
                        purge_every=1e9)
    try:
        for i in range(30):
            store.claim(f"k{i}", 10)
        store.claim("k0", 10)
        clock.advance(30)  # expired, but within retain
        assert store.purge() == 0
        assert len(store) == 30
        clock.advance(40)  # 70 > 10 + 50
        assert store.claim("fresh", 10).granted
        assert store.purge() == 30
        assert len(store) == 1
    finally:
        store.close()


def test_sqlite_scheduled_purge_is_bounded(tmp_path: Path, clock: FakeClock) -> None:
    store = SQLiteStore(tmp_path / "d.db", prefix="p", clock=clock, retain=0,
                        purge_every=60, purge_batch=10, purge_batches=2)
    try:
        for i in range(50):
            store.claim(f"k{i}", 10)
        clock.advance(30)
        store.claim("a", 10)  # not yet time to purge
        assert len(store) == 51
        clock.advance(31)
        store.claim("b", 10)  # scheduled purge: 2 batches of 10
        assert len(store) == 52 - 20
        store.claim("c", 10)  # next schedule is 60 s away
        assert len(store) == 33
        assert store.purge() == 31  # an explicit purge takes every expired one
    finally:
        store.close()


def test_sqlite_size_is_capped(tmp_path: Path, clock: FakeClock,
                               caplog: pytest.LogCaptureFixture) -> None:
    store = SQLiteStore(tmp_path / "d.db", prefix="p", clock=clock, max_entries=20,
                        purge_every=1e9)
    try:
        for i in range(25):
            clock.advance(1)
            store.claim(f"k{i}", 1000)
        # a purge ran after every max_entries // 10 new rows of this process
        assert len(store) == 21
        with caplog.at_level(logging.WARNING, "flask_perfwatch"):
            store.purge()
        assert len(store) == 20
        assert caplog.text.count("evicted") == 1  # once per purge interval
        assert "more than 20 dedupe entries" in caplog.text
        assert store.claim("k0", 1000).granted  # evicted: may alert again early
        assert not store.claim("k24", 1000).granted
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_sqlite_reconnects_in_a_forked_child(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "d.db", prefix="p")
    try:
        assert store.claim("parent", WINDOW).granted
        def child() -> dict[str, Any]:  # its own connection; the parent's is not closed
            claims = (store.claim("parent", WINDOW).granted, store.claim("child", WINDOW).granted)
            return {"claims": claims, "connections": len(store._connections)}

        # claims right; only the child's own connection
        assert run_in_child(child) == {"claims": [False, True], "connections": 1}
        # the parent's connection still works after the child exited
        assert not store.claim("child", WINDOW).granted
    finally:
        store.close()


# -- redis -------------------------------------------------------------------


def test_redis_missing_driver_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'flask-perfwatch\[redis\]'") as info:
        create_store(Config(store="redis://:hunter2@127.0.0.1:6379/0"), prefix="p")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("url", [
    "redis://:hunter2@127.0.0.1:notaport/0",
    "redis://:hunter2@/0",
    "redis://:hunter2@127.0.0.1:6379/zero",
    "redis://:hunter2@127.0.0.1:6379/0?retain=soon",
    "redis://:hunter2@127.0.0.1:6379/0?no_such_option=1",
])
def test_redis_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="PERFWATCH_STORE") as info:
        create_store(Config(store=url), prefix="p")
    assert "hunter2" not in str(info.value)
    assert repr(redact_url(url)) in str(info.value)  # the URL is named, redacted


@pytest.mark.parametrize(("url", "kept"), [
    ("redis://:pw@h:1/0", ("redis://", "@h:1/0")),
    ("rediss://user:pw@h:1/0", ("rediss://user:", "@h:1/0")),
])
def test_store_urls_are_redacted(url: str, kept: tuple[str, str]) -> None:
    redacted = redact_url(url)
    assert ":pw@" not in redacted
    assert redacted.startswith(kept[0])
    assert redacted.endswith(kept[1])
    assert redact_url("redis://h:1/0") == "redis://h:1/0"


def test_redis_does_not_connect_at_init_and_supports_tls_urls() -> None:
    port = free_port()  # nothing listens there
    for url in (f"redis://127.0.0.1:{port}/0", f"rediss://:pw@127.0.0.1:{port}/1"):
        store = redis_store(url)
        try:
            assert "pw" not in repr(store)
        finally:
            store.close()


def test_redis_keys_are_namespaced_hashes_with_ttl(redis_server: RedisServer,
                                                   closing: Callable[[Store], Store]) -> None:
    store = closing(redis_store(redis_server.url + "?retain=1m", prefix="shop"))
    assert isinstance(store, RedisStore)
    store.claim("abc", 10)
    store.claim("abc", 10)
    client = store.client
    assert sorted(client.keys("*")) == [b"perfwatch:{shop}:index", b"perfwatch:{shop}:k:abc"]
    entry = client.hgetall("perfwatch:{shop}:k:abc")
    assert entry[b"count"] == b"1"
    assert 69_000 < client.pttl("perfwatch:{shop}:k:abc") <= 70_000  # window + retain
    assert 69_000 < client.pttl("perfwatch:{shop}:index") <= 70_000  # outlives its entries
    assert len(store) == 1


def test_redis_server_clock_window_expiry(redis_server: RedisServer,
                                          closing: Callable[[Store], Store]) -> None:
    store = closing(redis_store(redis_server.url))
    before = time.time()
    assert store.claim("k", 0.3).granted
    assert not store.claim("k", 0.3).granted
    wait_until(lambda: store.claim("k", 0.3).granted, timeout=5, interval=0.05,
               message="the window to pass")
    again_at = time.time()
    assert not store.claim("k", 0.3).granted
    assert time.time() - before < 5
    assert again_at - before >= 0.25


def test_claims_are_atomic_across_clients(store_factory: Callable[..., Store]) -> None:
    stores = [store_factory() for _ in range(4)]  # 4 "processes" on one backend
    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(lambda i: stores[i % 4].claim("k", WINDOW), range(80)))
    assert sum(c.granted for c in claims) == 1
    assert sorted(c.suppressed for c in claims if not c.granted) == list(range(1, 80))


def test_redis_outage_fails_fast_and_recovers(tmp_path: Path) -> None:
    with running_redis(tmp_path / "r", password="s3cret") as server:
        store = redis_store(server.url)
        try:
            assert store.claim("k", WINDOW).granted
            server.kill()
            started = time.monotonic()
            with pytest.raises(Exception, match="onnect") as info:
                store.claim("k", WINDOW)
            assert time.monotonic() - started < 3
            assert "s3cret" not in str(info.value)
            server.start()  # same port, empty (no persistence), script cache empty
            assert store.claim("k", WINDOW).granted
            assert not store.claim("k", WINDOW).granted
        finally:
            store.close()


# -- through the extension ---------------------------------------------------


def test_two_apps_sharing_a_store_alert_once(make_app: Callable[..., Any], shared_store: str,
                                             report_dir: Path) -> None:
    """Two monitors (as two worker processes would have) share one store."""
    from conftest import build_app

    apps = [make_app(app=build_app("shop"), store=shared_store)[0] for _ in range(2)]
    for app in apps:
        assert app.test_client().get("/slow?x=1").status_code == 201
    for app in apps:
        assert monitor_of(app).flush(10)
    assert len(reports_in(report_dir)) == 1
    stats = [monitor_of(app).snapshot() for app in apps]
    assert sum(s["alerts_sent"] for s in stats) == 1
    assert sum(s["alerts_suppressed"] for s in stats) == 1


def test_store_outage_fails_open_and_logs_once(make_app: Callable[..., Any], tmp_path: Path,
                                              report_dir: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with running_redis(tmp_path / "r") as server:
        app, _ = make_app(store=server.url)
        server.kill()
        client = app.test_client()
        monitor = monitor_of(app)
        with caplog.at_level(logging.ERROR, "flask_perfwatch"):
            for _ in range(2):
                assert client.get("/slow").status_code == 201
            assert monitor.flush(15)
        assert len(reports_in(report_dir)) == 2  # fail open: both alerted
        outage = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(outage) == 1  # once per interval, not per alert


def test_store_outage_log_hides_the_password(make_app: Callable[..., Any], tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    with running_redis(tmp_path / "r", password="s3cret") as server:
        app, _ = make_app(store=server.url)
        server.kill()
        with caplog.at_level(logging.ERROR, "flask_perfwatch"):
            assert app.test_client().get("/slow").status_code == 201
            assert monitor_of(app).flush(15)
        assert "unavailable" in caplog.text
        assert "s3cret" not in caplog.text


def test_memory_purge_keeps_counts_for_retain_then_drops(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, purge_every=60, retain=3600)
    assert store.claim("k", 10).granted
    assert not store.claim("k", 10).granted
    clock.advance(600)  # window over, purge interval passed, retain not yet
    assert store.purge() == 0
    claim = store.claim("k", 10)
    assert (claim.granted, claim.suppressed) == (True, 1)
    clock.advance(10 + 3600)
    assert store.purge() == 1
    assert len(store) == 0


def test_memory_store_stays_bounded(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore(clock=clock, max_entries=100)
    for i in range(1000):
        store.claim(f"k{i}", 3600)
    assert len(store) <= 100
    assert "evicted" in caplog.text
    assert caplog.text.count("evicted") == 1  # once per purge interval, not per key
