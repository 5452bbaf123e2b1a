"""The endpoint alert limit (``claim(..., group=, limit=)``), the caps that
bound every store, the files of the sqlite store, fork safety and secrets in
descriptions: against the real stores (memory, a sqlite file, a real
redis-server), on a fake clock."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sized
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis_server import RedisServer, free_port
from test_stores import (  # the shared store fixtures of the claim contract
    WINDOW,
    FakeClock,
    clock,
    closing,
    redis_store,
    store_factory,
)

from flask_perfwatch import Config
from flask_perfwatch.exceptions import ConfigError
from flask_perfwatch.stores import DUPLICATE, LIMIT, MemoryStore, Store, create_store
from flask_perfwatch.stores.redis import EVICT_BATCH, RedisStore
from flask_perfwatch.stores.sqlite import GROUPS, TABLE, SQLiteStore

__all__ = ["clock", "closing", "store_factory"]  # fixtures used here (redis_server: conftest)

#: How long a forked child may take before it counts as hung.
CHILD_DEADLINE = 20.0


def size(store: Store) -> int:
    """``len(store)``: entries of its prefix, keys and groups together."""
    assert isinstance(store, Sized)
    return len(store)


def key_entries(store: Store) -> int:
    """Key entries in the backend, groups not counted."""
    if isinstance(store, MemoryStore):
        return len(store._entries)
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as conn:
            (count,) = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        conn.close()
        return int(count)
    assert isinstance(store, RedisStore)
    return len(list(store.client.scan_iter(store.key("*"))))


# -- the limit, for every store ----------------------------------------------


def test_limit_caps_distinct_keys_of_one_group(store_factory: Callable[..., Store],
                                               clock: FakeClock) -> None:
    store = store_factory()
    t0 = clock.now
    claims = [store.claim(f"junk{i}", WINDOW, group="GET /search", limit=3) for i in range(10)]
    assert [c.granted for c in claims] == [True] * 3 + [False] * 7
    assert all(c.reason is None and c.group_suppressed == 0 for c in claims[:3])
    assert [c.reason for c in claims[3:]] == [LIMIT] * 7
    assert [c.suppressed for c in claims[3:]] == list(range(1, 8))
    assert all(c.previous_at is None for c in claims[3:])
    assert key_entries(store) == 3  # a refused key leaves nothing behind
    assert size(store) == 4  # 3 keys and their group

    # a granted key within its window is a duplicate, even with the group full
    clock.advance(10)
    duplicate = store.claim("junk0", WINDOW, group="GET /search", limit=3)
    assert (duplicate.granted, duplicate.reason, duplicate.suppressed) == (False, DUPLICATE, 1)
    assert duplicate.previous_at == pytest.approx(t0)

    clock.advance(WINDOW)  # the group's window (and the keys') is over
    first = store.claim("junk9", WINDOW, group="GET /search", limit=3)
    assert (first.granted, first.group_suppressed, first.suppressed) == (True, 7, 0)
    again = store.claim("junk0", WINDOW, group="GET /search", limit=3)
    assert (again.granted, again.group_suppressed, again.suppressed) == (True, 0, 1)
    assert again.previous_at == pytest.approx(t0)
    assert store.claim("junk5", WINDOW, group="GET /search", limit=3).granted
    fourth = store.claim("junk6", WINDOW, group="GET /search", limit=3)
    assert (fourth.granted, fourth.reason, fourth.suppressed) == (False, LIMIT, 1)


def test_groups_do_not_affect_each_other(store_factory: Callable[..., Store]) -> None:
    store = store_factory()
    for i in range(2):
        assert store.claim(f"a{i}", WINDOW, group="a", limit=2).granted
    assert store.claim("a2", WINDOW, group="a", limit=2).reason == LIMIT
    assert [store.claim(f"b{i}", WINDOW, group="b", limit=2).granted
            for i in range(3)] == [True, True, False]
    # no group, or no limit: plain dedupe, whatever group "a" did
    assert store.claim("a3", WINDOW).granted
    assert store.claim("a4", WINDOW, group="a", limit=0).granted
    assert store.claim("a5", WINDOW, group=None, limit=2).granted
    refused = store.claim("a6", WINDOW, group="a", limit=2)
    assert (refused.reason, refused.suppressed) == (LIMIT, 2)


def test_group_window_starts_at_its_first_grant(store_factory: Callable[..., Store],
                                                clock: FakeClock) -> None:
    store = store_factory()
    assert store.claim("k1", WINDOW, group="g", limit=2).granted
    clock.advance(90)
    assert store.claim("k2", WINDOW, group="g", limit=2).granted  # same window
    clock.advance(5)
    assert store.claim("k3", WINDOW, group="g", limit=2).reason == LIMIT
    clock.advance(5)  # 100 s after the first grant: not after the last one
    granted = store.claim("k3", WINDOW, group="g", limit=2)
    assert (granted.granted, granted.group_suppressed) == (True, 1)


def test_without_a_limit_nothing_is_counted_per_group(store_factory: Callable[..., Store]
                                                      ) -> None:
    store = store_factory()
    assert all(store.claim(f"k{i}", WINDOW, group="g", limit=0).granted for i in range(10))
    assert key_entries(store) == 10
    assert size(store) == 10  # no group entry


def test_memory_limit_holds_under_threads(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(lambda i: store.claim(f"k{i}", WINDOW, group="g", limit=5),
                               range(200)))
    assert sum(c.granted for c in claims) == 5
    assert sorted(c.suppressed for c in claims if not c.granted) == list(range(1, 196))


def _claim_group(url: str, start: Any, worker: int, n: int) -> list[tuple[bool, str | None]]:
    """In a spawned process: wait for the others, then claim ``n`` distinct keys."""
    store = create_store(Config(store=url), prefix="p")
    try:
        start.wait(timeout=60)
        return [(c.granted, c.reason)
                for c in (store.claim(f"w{worker}-{i}", WINDOW, group="g", limit=5)
                          for i in range(n))]
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_limit_is_atomic_across_processes(backend: str, tmp_path: Path,
                                          request: pytest.FixtureRequest) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/dedupe.db"
    else:
        url = request.getfixturevalue("redis_server").url
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Barrier(4)
        with ctx.Pool(4) as pool:
            results = pool.starmap_async(_claim_group, [(url, start, w, 25) for w in range(4)])
            claims = [c for result in results.get(timeout=120) for c in result]
    assert len(claims) == 100
    assert sum(granted for granted, _ in claims) == 5
    assert {reason for granted, reason in claims if not granted} == {LIMIT}


# -- caps --------------------------------------------------------------------


def test_memory_cap_counts_groups_too(clock: FakeClock,
                                      caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore(clock=clock, max_entries=20, purge_every=1e9)
    sizes = []
    for i in range(200):  # a new key and a new group each time
        clock.advance(1)
        assert store.claim(f"k{i}", 3600, group=f"g{i}", limit=1).granted
        sizes.append(len(store._entries) + len(store._groups))
    assert max(sizes) == 20
    assert len(store) == 20
    assert caplog.text.count("evicted") == 1  # once per purge interval, not per key
    # the newest survive, the ones closest to expiry went first
    assert not store.claim("k199", 3600, group="g199", limit=1).granted
    assert store.claim("k0", 3600, group="g0", limit=1).granted


def test_memory_evicts_expired_entries_first(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, max_entries=10, retain=1e9, purge_every=1e9)
    for i in range(5):
        store.claim(f"old{i}", 10)
    clock.advance(20)  # the old ones are expired (but retained for their counts)
    for i in range(5):
        store.claim(f"live{i}", 3600)
    store.claim("one-more", 3600)
    assert len(store) <= 10
    assert all(f"live{i}" in store._entries for i in range(5))
    assert "one-more" in store._entries


def test_sqlite_cap_holds_between_scheduled_purges(tmp_path: Path, clock: FakeClock,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    store = SQLiteStore(tmp_path / "d.db", prefix="p", clock=clock, max_entries=20,
                        purge_every=1e9)
    try:
        sizes = []
        for i in range(200):
            clock.advance(1)
            store.claim(f"k{i}", 3600, group=f"g{i}", limit=1)
            sizes.append(len(store))
        # purged early after max_entries // 10 new rows of this process
        # purged right after max_entries // 10 new rows of this process (here each claim)
        assert max(sizes) == 20
        assert caplog.text.count("evicted") == 1
        with sqlite3.connect(store.path) as conn:
            (groups,) = conn.execute(f"SELECT count(*) FROM {GROUPS}").fetchone()
        conn.close()
        assert groups == 10  # a key and its group expire together: evicted together
    finally:
        store.close()


def test_redis_cap(redis_server: RedisServer, clock: FakeClock,
                   closing: Callable[[Store], Store],
                   caplog: pytest.LogCaptureFixture) -> None:
    store = closing(redis_store(redis_server.url + "?max_entries=20", prefix="shop"))
    assert isinstance(store, RedisStore)
    store.clock = clock
    sizes = []
    for i in range(200):
        clock.advance(1)
        assert store.claim(f"k{i}", 3600, group=f"g{i % 7}", limit=100).granted
        sizes.append(len(store))
    assert max(sizes) == 20
    assert store.client.dbsize() == 21  # the 20 indexed hashes and the index
    assert caplog.text.count("evicted") == 1  # at most once a minute
    assert not store.claim("k199", 3600).granted  # the newest are kept
    assert store.claim("k0", 3600).granted  # evicted: may alert again early


def test_redis_drops_entries_expired_beyond_retain(redis_server: RedisServer, clock: FakeClock,
                                                   closing: Callable[[Store], Store]) -> None:
    store = closing(redis_store(redis_server.url + "?retain=60", prefix="shop"))
    assert isinstance(store, RedisStore)
    store.clock = clock
    for i in range(EVICT_BATCH + 20):
        store.claim(f"k{i}", 10, group="g", limit=1000)
    assert len(store) == EVICT_BATCH + 21
    clock.advance(10 + 30)  # expired, within retain: counts kept
    store.claim("fresh", 10)
    assert len(store) == EVICT_BATCH + 22
    clock.advance(40)  # 80 > 10 + 60
    store.claim("fresher", 10)
    assert len(store) == EVICT_BATCH + 23 - EVICT_BATCH  # one batch per claim
    store.claim("freshest", 10)
    assert len(store) == 3  # fresh, fresher, freshest (the group went in the first batch)
    assert store.client.dbsize() == 4  # their hashes and the index: no orphans


@pytest.mark.parametrize("value", ["0", "1", "-5", "many", "1e3", ""])
def test_redis_max_entries_option_is_validated(value: str) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0?max_entries={value}"
    with pytest.raises(ConfigError, match="max_entries as an integer >= 2") as info:
        create_store(Config(store=url), prefix="p")
    assert "hunter2" not in str(info.value)


def test_redis_options_reach_the_store() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?max_entries=50&retain=2h&socket_timeout=3"
    store = redis_store(url)
    try:
        assert (store.max_entries, store.retain) == (50, 7200.0)
        assert store.client.connection_pool.connection_kwargs["socket_timeout"] == 3.0
    finally:
        store.close()


def test_redis_key_layout_is_one_cluster_slot_per_prefix(redis_server: RedisServer,
                                                         closing: Callable[[Store], Store]
                                                         ) -> None:
    from redis.crc import key_slot

    store = closing(redis_store(redis_server.url, prefix="shop"))
    assert isinstance(store, RedisStore)
    store.claim("abc", WINDOW, group="GET /x", limit=3)
    names = sorted(store.client.keys("*"))
    assert names == [b"perfwatch:{shop}:g:GET /x", b"perfwatch:{shop}:index",
                     b"perfwatch:{shop}:k:abc"]
    assert len({key_slot(name.encode() if isinstance(name, str) else name)
                for name in names}) == 1
    assert set(store.client.zrange(store.index_key, 0, -1)) == {b"perfwatch:{shop}:k:abc",
                                                                b"perfwatch:{shop}:g:GET /x"}
    # braces in a prefix cannot end the tag early nor join another prefix's slot
    odd = closing(redis_store(redis_server.url, prefix="a}b{c"))
    assert isinstance(odd, RedisStore)
    assert odd.key("k") == "perfwatch:{a%7Db%7Bc}:k:k"
    assert key_slot(odd.key("k").encode()) == key_slot(odd.index_key.encode())
    with pytest.raises(ValueError, match="non-empty prefix"):
        redis_store(redis_server.url, prefix="")


# -- sqlite files ------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, so that a missing mode would show as 0644 / 0755."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.usefixtures("umask_022")
def test_sqlite_files_and_created_dirs_are_private(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "dedupe.db"
    store = SQLiteStore.from_url(f"sqlite:///{path}", prefix="p")
    try:
        assert store.claim("k", WINDOW).granted
        db, wal, shm = path, Path(f"{path}-wal"), Path(f"{path}-shm")
        assert wal.exists()  # WAL mode, a connection open
        assert shm.exists()
        assert {p.name: oct(mode(p)) for p in (db, wal, shm)} == {
            p.name: "0o600" for p in (db, wal, shm)}
        assert (oct(mode(tmp_path / "a")), oct(mode(tmp_path / "a" / "b"))) == ("0o700",
                                                                                "0o700")
    finally:
        store.close()


@pytest.mark.usefixtures("umask_022")
def test_sqlite_existing_dirs_are_left_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    store = SQLiteStore.from_url(f"sqlite:///{shared}/dedupe.db", prefix="p")
    store.close()
    assert oct(mode(shared)) == "0o755"
    assert oct(mode(shared / "dedupe.db")) == "0o600"


def test_sqlite_refuses_a_symlinked_database(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"")
    link = tmp_path / "dedupe.db"
    link.symlink_to(victim)
    with pytest.raises(ConfigError, match="not a symbolic link"):
        SQLiteStore(link, prefix="p")
    with pytest.raises(ConfigError, match="not a symbolic link"):
        create_store(Config(store=f"sqlite:///{link}"), prefix="p")
    dangling = tmp_path / "dangling.db"
    dangling.symlink_to(tmp_path / "nowhere.db")
    with pytest.raises(ConfigError, match="not a symbolic link"):
        SQLiteStore.from_url(f"sqlite:///{dangling}", prefix="p")
    assert victim.read_bytes() == b""
    assert not (tmp_path / "nowhere.db").exists()


def test_sqlite_refuses_a_symlink_planted_later(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"")
    path = tmp_path / "dedupe.db"
    store = SQLiteStore(path, prefix="p")  # nothing there yet: fine
    try:
        path.symlink_to(victim)
        with pytest.raises(ConfigError, match="not a symbolic link"):
            store.claim("k", WINDOW)
        assert victim.read_bytes() == b""
    finally:
        store.close()


# -- fork --------------------------------------------------------------------


def run_in_fork(child: Callable[[], bool], *, held: Any) -> int:
    """Fork while another thread holds the lock ``held``; in the child run
    ``child()`` (exit 0 if it returns True, 1 if False, 2 if it raised). The
    parent waits at most CHILD_DEADLINE, then kills the child and returns -9."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with held:
            holding.set()
            release.wait(CHILD_DEADLINE + 10)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert holding.wait(10)
    try:
        with warnings.catch_warnings():  # Python >= 3.12 warns about fork with threads
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            code = 2
            try:
                code = 0 if child() else 1
            finally:
                os._exit(code)
    finally:
        release.set()
        holder.join(10)
    deadline = time.monotonic() + CHILD_DEADLINE
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -9


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_memory_store_claims_in_a_child_forked_while_its_lock_was_held(
        clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    assert store.claim("parent", WINDOW).granted

    def child() -> bool:
        return (not store.claim("parent", WINDOW).granted
                and store.claim("child", WINDOW).granted)

    assert run_in_fork(child, held=store._lock) == 0
    assert store.claim("child", WINDOW).granted  # the child's claims stayed there


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_sqlite_store_claims_in_a_child_forked_while_its_lock_was_held(
        tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "d.db", prefix="p")
    try:
        assert store.claim("parent", WINDOW).granted

        def child() -> bool:
            hooks_ran = store._pid == os.getpid()  # _fork's hook, before any claim
            ok = (not store.claim("parent", WINDOW).granted
                  and store.claim("child", WINDOW).granted)
            return hooks_ran and ok and len(store._connections) == 1  # its own only

        assert run_in_fork(child, held=store._lock) == 0
        # the parent's connection survived the child (never closed there)
        assert not store.claim("child", WINDOW).granted
    finally:
        store.close()


_RAW_FORK_CHILD = """
import ctypes, os, sys
from flask_perfwatch.stores.sqlite import SQLiteStore
store = SQLiteStore(sys.argv[1], prefix="p")
assert store.claim("parent", 100).granted
parent_conn = store._local.conn
pid = ctypes.CDLL(None).fork()  # fork(2) itself: Python's fork hooks do not run
if pid == 0:
    code = 3
    try:
        hooks_ran = store._pid == os.getpid()
        refused = not store.claim("parent", 100).granted
        own = store._local.conn is not parent_conn
        code = 0 if (not hooks_ran and refused and own) else 1
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, os.waitstatus_to_exitcode(status)
assert not store.claim("parent", 100).granted
print("ok")
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_sqlite_pid_check_covers_a_fork_without_python_hooks(tmp_path: Path) -> None:
    """uWSGI forks in C and runs Python's fork hooks only with
    py-call-osafterfork: the store's pid check is what protects it then. A fresh
    single-threaded interpreter calls fork(2) through ctypes."""
    assert ctypes.CDLL(None).fork  # libc is reachable
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(_RAW_FORK_CHILD),
                             str(tmp_path / "d.db")], capture_output=True, text=True,
                            timeout=60, check=False)
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_redis_store_claims_in_a_child_forked_while_its_pool_lock_was_held(
        redis_server: RedisServer, closing: Callable[[Store], Store]) -> None:
    store = closing(redis_store(redis_server.url))
    assert isinstance(store, RedisStore)
    assert store.claim("parent", WINDOW).granted
    parent_id = store.client.client_id()

    def child() -> bool:
        ok = (not store.claim("parent", WINDOW).granted
              and store.claim("child", WINDOW).granted)
        return ok and store.client.client_id() != parent_id

    assert run_in_fork(child, held=store.client.connection_pool._lock) == 0
    # the parent's connection was not closed by the child
    assert store.client.client_id() == parent_id
    assert not store.claim("child", WINDOW).granted


# -- secrets -----------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "redis://:hunter2@127.0.0.1:{port}/0",
    "redis://user:hunter2@127.0.0.1:{port}/0",
    "redis://127.0.0.1:{port}/0?password=hunter2",
    "rediss://127.0.0.1:{port}/0?username=u&password=hunter2&max_entries=9",
])
def test_redis_descriptions_hide_the_password(url: str) -> None:
    """Needs the redact_url that masks secret query options too."""
    from flask_perfwatch.cli import check_store

    url = url.format(port=free_port())  # nothing listens: no connection is made
    store = redis_store(url)
    try:
        assert "hunter2" not in repr(store)
        assert "hunter2" not in store.url
        with pytest.raises(RedisConnectionError) as info:
            check_store(store)
        assert "hunter2" not in str(info.value)
    finally:
        store.close()


@pytest.mark.parametrize(("url", "secret"), [
    ("redis://:hunter2@127.0.0.1:6379/0?retain=soon", "hunter2"),
    ("redis://127.0.0.1:6379/0?password=hunter2&retain=soon", "hunter2"),
    ("redis://127.0.0.1:6379/0?password=hunter2&max_entries=x", "hunter2"),
    ("redis://127.0.0.1:6379/0?password=hunter2&no_such_option=1", "hunter2"),
    ("redis://127.0.0.1:notaport/0?password=hunter2", "hunter2"),
    # an unencoded "/" or "#" splits the password into a "port" and a "path"
    ("redis://:hunt/er2@127.0.0.1:6379/0", "hunt"),
    ("redis://:hunt/er2@127.0.0.1:6379/0", "er2"),
    ("redis://u:hunt#er2@127.0.0.1:6379/0", "hunt"),
    ("redis://u:hunt#er2@127.0.0.1:6379/0", "er2"),
])
def test_redis_config_errors_hide_the_password(url: str, secret: str) -> None:
    """Needs the redact_url that masks secret query options too."""
    with pytest.raises(ConfigError, match="PERFWATCH_STORE") as info:
        create_store(Config(store=url), prefix="p")
    assert secret not in str(info.value)
    assert secret not in repr(info.value.value)


def test_redis_eviction_log_hides_the_password(tmp_path: Path, clock: FakeClock,
                                               caplog: pytest.LogCaptureFixture) -> None:
    from redis_server import running_redis

    with running_redis(tmp_path / "r", password="s3cret") as server:
        store = redis_store(server.url + "?max_entries=2")
        store.clock = clock
        try:
            with caplog.at_level(logging.WARNING, "flask_perfwatch"):
                for i in range(5):
                    store.claim(f"k{i}", WINDOW)
        finally:
            store.close()
    assert "evicted" in caplog.text
    assert "s3cret" not in caplog.text
