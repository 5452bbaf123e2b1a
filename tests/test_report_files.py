"""Report files on disk: private modes, atomic no-follow writes, the default
folder under the shared temp dir, pruning, and the report size cap."""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import types
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import find_frame, reports_in

from flask_perfwatch import PerformanceMetrics, reportdir
from flask_perfwatch.profiling.base import Profile
from flask_perfwatch.report import render_report
from flask_perfwatch.reportdir import (
    ReportFolder,
    default_report_dir,
    encode,
    ensure_dir,
    prune,
    write_atomic,
)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
OTHER_UID = 65534  # nobody
DAY = 86400.0


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def make_metrics(**changes: object) -> PerformanceMetrics:
    values: dict[str, object] = {
        "kind": "request", "name": "orders.export", "duration": 2.5, "threshold": 1.0,
        "started_at": datetime(2026, 11, 28, 9, 52, 10, tzinfo=UTC), "method": "GET",
        "url": "https://shop.example/export", "path": "/export", "status_code": 200,
    }
    values.update(changes)
    return PerformanceMetrics(**values)  # type: ignore[arg-type]


@pytest.fixture(params=[0, 0o277], ids=["umask 000", "umask 277"])
def loose_umask(request: pytest.FixtureRequest) -> Iterator[None]:
    """A umask that would make files 0666 and directories 0777, and one that
    would make them read-only (0400, 0500): modes must be exact either way."""
    old = os.umask(request.param)
    try:
        yield
    finally:
        os.umask(old)


# -- modes -------------------------------------------------------------------

def test_ensure_dir_creates_every_level_0700(tmp_path: Path, loose_umask: None) -> None:
    os.chmod(tmp_path, 0o755)
    target = tmp_path / "a" / "b" / "c"
    assert ensure_dir(target) == target
    for level in (tmp_path / "a", tmp_path / "a" / "b", target):
        assert mode(level) == 0o700, level
    assert mode(tmp_path) == 0o755  # existing: the user's, used as it is
    ensure_dir(target)  # idempotent
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        ensure_dir(tmp_path / "file")
    with pytest.raises(NotADirectoryError):
        ensure_dir(tmp_path / "file" / "below")


def test_ensure_dir_takes_a_level_another_process_makes_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two uWSGI workers writing their statistics at exit both make the
    folder: the one that finds it missing, then existing, must use it. (It
    raised NotADirectoryError when the other made it between the two looks.)"""
    target = tmp_path / "reports" / ".endpoints"
    real_lexists = os.path.lexists
    made: list[str] = []

    def lexists(path: Any) -> bool:
        if Path(path) == target and not made:  # the other process wins the race here
            os.makedirs(target)
            made.append(str(path))
        return real_lexists(path)

    monkeypatch.setattr(os.path, "lexists", lexists)
    assert ensure_dir(target) == target
    assert made == [str(target)]
    assert target.is_dir()


def test_written_files_are_0600_whatever_the_umask(tmp_path: Path, loose_umask: None) -> None:
    path = write_atomic(tmp_path, "perfwatch-x.html", "<html>é</html>")
    assert path == tmp_path / "perfwatch-x.html"
    assert mode(path) == 0o600
    assert path.read_text(encoding="utf-8") == "<html>é</html>"
    report = render_report(make_metrics())
    written = report.write(tmp_path / "new")
    assert report.path == written
    assert mode(written) == 0o600
    assert mode(tmp_path / "new") == 0o700
    assert report.write(tmp_path / "new") == written  # once per directory
    assert sorted(os.listdir(tmp_path)) == ["new", "perfwatch-x.html"]


def test_local_notifier_creates_a_private_folder(make_app: Any, tmp_path: Path,
                                                 loose_umask: None) -> None:
    folder = tmp_path / "deep" / "reports"
    app, perfwatch = make_app(report_dir=str(folder), profiler="off", threshold=1e-9,
                              dedup_window=0)
    assert mode(tmp_path / "deep") == 0o700
    assert mode(folder) == 0o700
    app.test_client().get("/fast")
    assert perfwatch.flush(10, app)
    [path] = reports_in(folder)
    assert mode(path) == 0o600
    assert [p.name for p in folder.iterdir()] == [path.name]  # no temp file left


# -- no following, no overwriting ---------------------------------------------

@pytest.fixture(params=["hard links", "no hard links"])
def link_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on this filesystem, and as on one without hard links (vfat,
    some network filesystems), where the fallback publishes with O_EXCL."""
    if request.param == "no hard links":
        def no_link(*args: Any, **kwargs: Any) -> None:
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    return str(request.param)


def test_a_planted_symlink_is_neither_followed_nor_overwritten(tmp_path: Path,
                                                               link_mode: str) -> None:
    folder = ensure_dir(tmp_path / "reports")
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    report = render_report(make_metrics())
    planted = folder / report.filename
    planted.symlink_to(outside)
    # and a dangling one at the next name: following it would create the target
    stem = report.filename.removesuffix(".html")
    (folder / f"{stem}-1.html").symlink_to(tmp_path / "created-by-us.txt")

    path = report.write(folder)

    assert path == folder / f"{stem}-2.html"
    assert path.read_text() == report.html
    assert not path.is_symlink()
    assert outside.read_text() == "precious"
    assert os.readlink(planted) == str(outside)
    assert not (tmp_path / "created-by-us.txt").exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [report.filename, f"{stem}-1.html", f"{stem}-2.html"])


def test_write_rejects_names_that_leave_the_folder(tmp_path: Path) -> None:
    for name in ("../x.html", "a/b.html", "", ".perfwatch-tmp-x", "..", "x\0.html"):
        with pytest.raises(ValueError):
            write_atomic(tmp_path, name, "data")
    assert list(tmp_path.iterdir()) == []


# -- a failed write leaves nothing -------------------------------------------

_FSIZE_SCRIPT = """
import errno, resource, signal, sys
from pathlib import Path
from flask_perfwatch.reportdir import write_atomic
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    write_atomic(Path(sys.argv[1]), "perfwatch-big.html", "x" * 100_000)
except OSError as exc:
    print(errno.errorcode[exc.errno])
else:
    print("written")
"""


def test_a_write_over_the_file_size_limit_leaves_no_file(tmp_path: Path) -> None:
    """A real EFBIG from the kernel (RLIMIT_FSIZE), as a full disk would fail."""
    folder = ensure_dir(tmp_path / "reports")
    result = subprocess.run([sys.executable, "-c", _FSIZE_SCRIPT, str(folder)],
                            capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "EFBIG"
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("failing_call", [1, 2])
def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       link_mode: str, failing_call: int) -> None:
    """ENOSPC injected at the first or second fsync (the temp file's; in the
    no-hard-link fallback, also the final file's)."""
    calls = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == failing_call:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    report = render_report(make_metrics())
    if failing_call == 2 and link_mode == "hard links":
        report.write(tmp_path)  # one fsync only: published
        assert [p.name for p in tmp_path.iterdir()] == [report.filename]
        return
    with pytest.raises(OSError) as raised:
        report.write(tmp_path)
    assert raised.value.errno == errno.ENOSPC
    assert report.path is None
    assert list(tmp_path.iterdir()) == []


# -- the default folder under the shared temp dir ---------------------------

@pytest.fixture
def fresh_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A system temp dir of the test's own, and no cached default folder."""
    base = tmp_path / "systmp"
    base.mkdir()
    os.chmod(base, 0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    monkeypatch.setattr(reportdir, "_default_dirs", {})
    return base


def test_default_report_dir_is_private_per_user(fresh_tempdir: Path,
                                                loose_umask: None) -> None:
    path = default_report_dir()
    assert path == fresh_tempdir / f"flask-perfwatch-{os.getuid()}"
    assert mode(path) == 0o700
    assert default_report_dir() is path  # cached


def test_default_report_dir_of_ours_is_tightened(fresh_tempdir: Path) -> None:
    mine = fresh_tempdir / f"flask-perfwatch-{os.getuid()}"
    mine.mkdir()
    os.chmod(mine, 0o777)
    assert default_report_dir() == mine
    assert mode(mine) == 0o700


def _assert_fallback(path: Path, planted: Path, base: Path, caplog: pytest.LogCaptureFixture,
                     problem: str) -> None:
    assert path != planted
    assert path.parent == base
    assert path.name.startswith("flask-perfwatch-")
    st = os.lstat(path)
    assert stat.S_ISDIR(st.st_mode)
    assert st.st_uid == os.getuid()
    assert stat.S_IMODE(st.st_mode) == 0o700
    [record] = [r for r in caplog.records if r.name == "flask_perfwatch.reportdir"]
    assert record.levelno == logging.WARNING
    assert problem in record.getMessage()
    assert str(planted) in record.getMessage()
    assert default_report_dir() is path  # one fallback per process


@pytest.mark.skipif(not IS_ROOT, reason="needs root to create another user's directory")
def test_default_report_dir_owned_by_another_user_is_not_used(
        fresh_tempdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    planted = fresh_tempdir / f"flask-perfwatch-{os.getuid()}"
    planted.mkdir(mode=0o777)
    os.chown(planted, OTHER_UID, OTHER_UID)
    with caplog.at_level(logging.WARNING, logger="flask_perfwatch.reportdir"):
        path = default_report_dir()
    _assert_fallback(path, planted, fresh_tempdir, caplog, f"another user (uid {OTHER_UID})")
    assert os.lstat(planted).st_uid == OTHER_UID  # not touched


def test_default_report_dir_planted_symlink_is_not_followed(
        fresh_tempdir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    attacker = tmp_path / "attacker-dir"
    attacker.mkdir()
    os.chmod(attacker, 0o777)
    planted = fresh_tempdir / f"flask-perfwatch-{os.getuid()}"
    planted.symlink_to(attacker)
    with caplog.at_level(logging.WARNING, logger="flask_perfwatch.reportdir"):
        path = default_report_dir()
    _assert_fallback(path, planted, fresh_tempdir, caplog, "is a symlink")
    assert mode(attacker) == 0o777
    assert list(attacker.iterdir()) == []


# -- pruning -------------------------------------------------------------------

NOW = 1_900_000_000.0


def plant(folder: Path, name: str, age: float, size: int = 100) -> Path:
    path = folder / name
    path.write_bytes(b"x" * size)
    os.utime(path, (NOW - age, NOW - age))
    return path


@pytest.fixture
def untouchables(tmp_path: Path) -> Callable[[Path], dict[str, Path]]:
    """Old things in the folder that pruning must never remove or follow."""

    def make(folder: Path) -> dict[str, Path]:
        outside = tmp_path / "outside.html"
        outside.write_bytes(b"y" * 100)
        os.utime(outside, (NOW - 99 * DAY, NOW - 99 * DAY))
        things = {"outside": outside}
        link = folder / "perfwatch-link.html"
        link.symlink_to(outside)
        os.utime(link, (NOW - 99 * DAY, NOW - 99 * DAY), follow_symlinks=False)
        things["symlink"] = link
        directory = folder / "perfwatch-dir.html"
        directory.mkdir()
        os.utime(directory, (NOW - 99 * DAY, NOW - 99 * DAY))
        things["directory"] = directory
        for name in ("notes.html", "perfwatch-x.txt", "report.html", ".perfwatch-check-x"):
            things[name] = plant(folder, name, 99 * DAY)
        if IS_ROOT:
            other = plant(folder, "perfwatch-other-user.html", 99 * DAY, size=10_000)
            os.chown(other, OTHER_UID, OTHER_UID)
            things["other user"] = other
        return things

    return make


def assert_untouched(things: dict[str, Path]) -> None:
    for label, path in things.items():
        assert os.path.lexists(path), label
    assert things["outside"].read_bytes() == b"y" * 100
    assert things["symlink"].is_symlink()


def test_prune_by_age(tmp_path: Path, untouchables: Callable[[Path], dict[str, Path]]) -> None:
    folder = ensure_dir(tmp_path / "reports")
    old = plant(folder, "perfwatch-old.html", 31 * DAY)
    older = plant(folder, "perfwatch-older.html", 40 * DAY, size=50)
    recent = plant(folder, "perfwatch-recent.html", 1 * DAY)
    stale_tmp = plant(folder, ".perfwatch-tmp-dead", 2 * 3600.0, size=7)
    live_tmp = plant(folder, ".perfwatch-tmp-live", 60.0)
    things = untouchables(folder)

    result = prune(folder, retention=30 * DAY, max_bytes=0, now=NOW)

    assert not old.exists()
    assert not older.exists()
    assert not stale_tmp.exists()
    assert recent.exists()
    assert live_tmp.exists()
    assert_untouched(things)
    assert result == reportdir.PruneResult(removed=3, freed=157, kept=1, kept_bytes=100,
                                           errors=0)


def test_prune_by_total_bytes_removes_oldest_first(
        tmp_path: Path, untouchables: Callable[[Path], dict[str, Path]]) -> None:
    folder = ensure_dir(tmp_path / "reports")
    # names, creation order and age all differ: only the mtime decides
    ages = {"c": 1, "a": 9, "e": 5, "b": 7, "d": 3}
    files = {name: plant(folder, f"perfwatch-{name}.html", age=minutes * 60.0)
             for name, minutes in ages.items()}
    things = untouchables(folder)

    result = prune(folder, retention=0, max_bytes=250, now=NOW)

    assert sorted(name for name, f in files.items() if f.exists()) == ["c", "d"]
    assert_untouched(things)
    assert result == reportdir.PruneResult(removed=3, freed=300, kept=2, kept_bytes=200,
                                           errors=0)
    assert prune(folder, retention=0, max_bytes=0, now=NOW) == reportdir.PruneResult(
        kept=2, kept_bytes=200)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to create another user's file")
def test_prune_ignores_other_users_files_in_the_total(tmp_path: Path) -> None:
    folder = ensure_dir(tmp_path / "reports")
    other = plant(folder, "perfwatch-other.html", 99 * DAY, size=10_000)
    os.chown(other, OTHER_UID, OTHER_UID)
    mine = plant(folder, "perfwatch-mine.html", 1.0)
    result = prune(folder, retention=DAY, max_bytes=150, now=NOW)
    assert other.exists()
    assert mine.exists()
    assert result == reportdir.PruneResult(kept=1, kept_bytes=100)


def test_prune_errors_are_counted_and_logged_once(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    folder = ensure_dir(tmp_path / "reports")
    for i in range(3):
        plant(folder, f"perfwatch-{i}.html", 99 * DAY)
    real_unlink = os.unlink

    def unlink(path: Any, *, dir_fd: int | None = None) -> None:
        if path != "perfwatch-2.html":
            raise PermissionError(errno.EACCES, "Permission denied")
        real_unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", unlink)
    with caplog.at_level(logging.WARNING, logger="flask_perfwatch.reportdir"):
        result = prune(folder, retention=DAY, max_bytes=0, now=NOW)
    assert result == reportdir.PruneResult(removed=1, freed=100, kept=2, kept_bytes=200,
                                           errors=2)
    [record] = caplog.records
    assert "2 error(s) (PermissionError)" in record.getMessage()


def test_prune_of_a_missing_folder_does_nothing(tmp_path: Path) -> None:
    assert prune(tmp_path / "nope", retention=1, max_bytes=1) == reportdir.PruneResult()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_prune_if_due_runs_at_most_once_per_interval(tmp_path: Path) -> None:
    clock = FakeClock()
    folder = ReportFolder(tmp_path / "reports", retention=0, max_bytes=1000, interval=60.0,
                          clock=clock)
    assert folder.prune_if_due() == reportdir.PruneResult()  # first call: scans
    first = folder.write("perfwatch-1.html", "a" * 400)
    assert folder.prune_if_due() is None
    clock.now += 59.0
    folder.write("perfwatch-2.html", "b" * 400)
    assert folder.prune_if_due() is None  # 800 of 1000 bytes, not due yet
    clock.now += 1.0
    assert folder.prune_if_due() == reportdir.PruneResult(kept=2, kept_bytes=800)
    assert folder.prune_if_due() is None
    clock.now += 10.0
    os.utime(first, (time.time() - 60, time.time() - 60))  # make it the oldest
    folder.write("perfwatch-3.html", "c" * 400)  # the known total goes over: prune now
    assert folder.prune_if_due() == reportdir.PruneResult(removed=1, freed=400, kept=2,
                                                          kept_bytes=800)
    assert not first.exists()
    assert folder.prune_if_due() is None


def test_a_folder_it_cannot_shrink_is_not_rescanned_on_every_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    folder = ReportFolder(tmp_path / "reports", retention=0, max_bytes=500, interval=60.0,
                          clock=clock)
    folder.write("perfwatch-1.html", "a" * 400)
    folder.write("perfwatch-2.html", "b" * 400)

    def unlink(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "unlink", unlink)
    result = folder.prune_if_due()
    assert result is not None
    assert result.errors == 2  # both tried, oldest first
    folder.write("perfwatch-3.html", "c" * 400)
    assert folder.prune_if_due() is None
    clock.now += 60.0
    assert folder.prune_if_due() is not None


def test_from_config_shares_one_folder_per_directory_and_limits(tmp_path: Path) -> None:
    class Conf:
        resolved_report_dir = tmp_path
        report_retention = 10.0
        report_max_bytes = 100

    a = ReportFolder.from_config(Conf())
    assert ReportFolder.from_config(Conf()) is a
    Conf.report_max_bytes = 200
    assert ReportFolder.from_config(Conf()) is not a


# -- the report size cap -----------------------------------------------------

LEAVES = 3000


def heavy_work(clock: Callable[[], float]) -> None:
    deadline = clock() + 0.2
    while clock() < deadline:
        pass


@pytest.fixture(scope="module")
def big_profile() -> Profile:
    """A real pyinstrument profile of thousands of distinct tiny functions,
    each in its own file, plus one heavy one."""
    from pyinstrument import Profiler

    leaves = []
    for i in range(LEAVES):
        source = textwrap.dedent(f"""\
            def tiny_leaf_{i}(clock):
                deadline = clock() + 0.00015
                while clock() < deadline:
                    pass
            """)
        namespace: dict[str, Any] = {}
        exec(compile(source, f"/srv/app/generated/module_number_{i}.py", "exec"), namespace)
        leaves.append(namespace[f"tiny_leaf_{i}"])
        assert isinstance(leaves[-1], types.FunctionType)

    def run() -> None:
        clock = time.perf_counter
        heavy_work(clock)
        for leaf in leaves:
            leaf(clock)

    profiler = Profiler(interval=0.0001)
    profiler.start()
    run()
    return Profile(profiler.stop())


def leaf_times(frame: Any, into: dict[str, float] | None = None) -> dict[str, float]:
    """Total time per ``tiny_leaf_*`` function in a pyinstrument frame tree."""
    into = {} if into is None else into
    if frame.function.startswith("tiny_leaf_"):
        into[frame.function] = into.get(frame.function, 0.0) + frame.time
    for child in frame.children:
        leaf_times(child, into)
    return into


def test_thinned_keeps_the_heavy_frames_and_the_totals(big_profile: Profile) -> None:
    full_root = big_profile.session.root_frame()
    assert full_root is not None
    full_leaves = leaf_times(full_root)
    assert len(full_leaves) > LEAVES // 2
    fraction = 0.001
    expected = {name for name, t in full_leaves.items() if t >= fraction * full_root.time}

    thin = big_profile.thinned(fraction)

    assert thin.sample_count == big_profile.sample_count
    assert thin.duration == big_profile.duration
    assert thin.note == big_profile.note
    thin_root = thin.session.root_frame()
    assert thin_root is not None
    assert thin_root.time == pytest.approx(full_root.time)
    assert set(leaf_times(thin_root)) == expected  # the light ones went, only they
    assert thin.merged_frames >= len(full_leaves) - len(expected)
    heavy = find_frame(thin_root, "heavy_work")
    assert heavy is not None
    assert heavy.time == pytest.approx(find_frame(full_root, "heavy_work").time)
    assert heavy.parent.time == pytest.approx(find_frame(full_root, "run").time)
    # repeated calls are merged into one node per call path
    assert len(thin.session.frame_records) < len(big_profile.session.frame_records) // 10
    whole = big_profile.thinned(0)
    assert whole.merged_frames == 0
    whole_root = whole.session.root_frame()
    assert whole_root is not None
    assert leaf_times(whole_root) == pytest.approx(full_leaves)


def test_a_big_report_is_thinned_under_the_cap(big_profile: Profile) -> None:
    metrics = make_metrics(profile=big_profile)
    full = render_report(metrics)
    full_size = len(encode(full.html))
    cap = full_size // 4
    report = render_report(metrics, max_bytes=cap)
    size = len(encode(report.html))
    print(f"\nfull report {full_size} bytes; cap {cap}; thinned report {size} bytes")
    assert size <= cap
    assert 'id="perfwatch-request"' in report.html  # the header
    assert "pyinstrumentHTMLRenderer" in report.html  # the profile
    assert "heavy_work" in report.html
    [fraction] = re.findall(r"\d+ frames under ([\d.]+)% of the time were merged into their "
                            r"callers to keep the report under \d+(?:\.\d)? KiB", report.html)
    assert fraction == "0.1"  # the first step fits
    root = big_profile.session.root_frame()
    assert root is not None
    heavy_leaves = {name for name, t in leaf_times(root).items() if t >= 0.001 * root.time}
    assert set(re.findall(r"tiny_leaf_\d+", report.html)) == heavy_leaves
    assert len(set(re.findall(r"tiny_leaf_\d+", full.html))) > LEAVES // 2
    assert "were merged into their callers" in report.text
    assert "was too large" not in report.html
    assert (full.profile_state, report.profile_state) == ("full", "thinned")
    assert render_report(metrics, max_bytes=full_size).html == full.html  # fits: as it is
    assert render_report(make_metrics()).profile_state == "none"


def test_a_report_that_cannot_fit_drops_the_profile(big_profile: Profile) -> None:
    cap = 30_000  # pyinstrument's page alone is bigger
    report = render_report(make_metrics(profile=big_profile), max_bytes=cap)
    assert len(encode(report.html)) <= cap
    assert report.html.startswith("<!DOCTYPE html>")
    assert 'id="perfwatch-request"' in report.html
    assert "pyinstrumentHTMLRenderer" not in report.html
    assert f"The profile ({big_profile.sample_count} samples) was too large for a report " \
        "under 29.3 KiB" in report.html
    assert "No profile was captured" not in report.html
    assert "was dropped" in report.text
    assert report.profile_state == "dropped"
