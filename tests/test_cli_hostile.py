"""``flask perfwatch`` against a hostile report folder and hostile data.

The report folder is by default the shared system temp dir, so a local user can
plant anything there (FIFOs, symlinks to devices, crafted or huge files, heaps
of junk); the fields inside a report come from HTTP requests. Each test plants
the real thing (a real FIFO, a real symlink to ``/dev/zero``, a real sparse
file) and runs the real command. Anything that could block runs in a
subprocess or a thread with a timeout, so a regression fails instead of hanging.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner, Result
from flask import Flask
from flask.cli import ScriptInfo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_perfwatch import PerfWatch
from flask_perfwatch import report as report_mod
from flask_perfwatch.cli import ReportInfo, ReportSkipped, list_reports, perfwatch, read_report
from flask_perfwatch.exceptions import NotifierError
from flask_perfwatch.notifiers import Notifier

MakeApp = Callable[..., tuple[Flask, PerfWatch]]
T = TypeVar("T")

#: What may never reach the terminal raw: C0 controls but the line feed that
#: ends each line, DEL, C1 controls, bidi overrides, Unicode line separators.
RAW_CONTROL = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
#: Generous bound for anything that must not block (a loaded 2-core machine).
TIMEOUT = 60.0
GOOD_NAME = "perfwatch-20260102T030405Z-GET-good-0123abcd.html"


# --- helpers ------------------------------------------------------------------------


def page(body: str) -> str:
    return f"<!DOCTYPE html><html><head></head><body>\n{body}\n<div id=app></div></body></html>"


def metadata_block(text: str) -> str:
    return f'<script type="application/json" id="perfwatch-metadata">{text}</script>'


def metadata(**fields: Any) -> str:
    """A metadata block as the writer makes it (``<`` escaped inside the JSON)."""
    data = {"format": 1, "kind": "request", "name": "shop.view", "method": "GET",
            "url": "http://h/view", "duration": 1.5, "threshold": 0.5, "status_code": 200,
            "hung": False, "started_at": "2026-01-02T03:04:05+00:00", **fields}
    return metadata_block(json.dumps(data).replace("<", "\\u003c"))


def header(**rows: str) -> str:
    cells = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows.items())
    return f'<header id="perfwatch-request"><h1>Slow</h1><table>{cells}</table></header>'


def plant_good(directory: Path) -> Path:
    """A well-formed report that must keep listing whatever else is planted."""
    path = directory / GOOD_NAME
    path.write_text(page(metadata(name="good.view")), encoding="utf-8")
    return path


def no_app() -> Flask:
    raise AssertionError("the app must not be loaded")


def reports(directory: Path, *args: str) -> Result:
    """``flask perfwatch reports --dir DIRECTORY ARGS`` in this process."""
    return CliRunner().invoke(perfwatch, ["reports", "--dir", str(directory), *args],
                              obj=ScriptInfo(create_app=no_app))


def run_app(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(perfwatch, list(args))


def in_thread(function: Callable[[], T], timeout: float = TIMEOUT) -> T:
    """``function()`` on a daemon thread; fails the test (instead of hanging it)
    if it has not returned within ``timeout``."""
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(("ok", function()))
        except BaseException as exc:  # handed to the test thread below
            outcome.append(("raised", exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"{function} did not return within {timeout}s: it blocks")
    kind, value = outcome[0]
    if kind == "raised":
        raise value
    return value  # type: ignore[no-any-return]


def flask_reports(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``flask perfwatch reports --dir`` in a subprocess, killed after
    TIMEOUT seconds (``TimeoutExpired`` fails the test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "PERFWATCH_"))}
    return subprocess.run(
        [sys.executable, "-m", "flask", "perfwatch", "reports", "--dir", str(directory), *args],
        cwd=directory.parent, env=env, capture_output=True, text=True, timeout=TIMEOUT,
        check=False)


def assert_no_raw_control(text: str) -> None:
    found = RAW_CONTROL.search(text)
    assert found is None, f"raw {found.group()!r} printed in {text!r}"


def table_rows(result: Result) -> dict[str, list[str]]:
    """FILE -> the other cells' words, for the rows of the ``reports`` table."""
    lines = result.stdout.splitlines()[2:]
    return {line.split()[-1]: line.split()[:-1] for line in lines}


def notes(result: Result) -> list[str]:
    return result.stderr.splitlines()


# --- escaping ---------------------------------------------------------------------------


def test_reports_escapes_control_characters_in_every_printed_field(tmp_path: Path) -> None:
    (tmp_path / "perfwatch-20260102T030405Z-GET-evil-0123abcd.html").write_text(page(
        metadata(name="evil\x1b[2J\x1b]0;owned\x07", method="GE\u202eT", duration=2.0)),
        encoding="utf-8")
    (tmp_path / "perfwatch-20260102T030406Z-GET-a\nb\rc\x1b[31m-0123abcd.html").write_text(
        "no header here", encoding="utf-8")
    (tmp_path / "perfwatch-20260102T030407Z-x-0123abcd.html").write_text(page(header(
        Request="G\x9bET http://h/\x7f", Endpoint="hdr\x1b[1A", Duration="1.000 s",
        Status="200")), encoding="utf-8")

    result = reports(tmp_path)

    assert result.exit_code == 0, result.output
    assert_no_raw_control(result.output)
    rows = table_rows(result)
    assert rows["perfwatch-20260102T030405Z-GET-evil-0123abcd.html"][3:] == \
        ["200", "GE\\u202eT", "evil\\x1b[2J\\x1b]0;owned\\x07"]
    assert rows["perfwatch-20260102T030406Z-GET-a\\nb\\rc\\x1b[31m-0123abcd.html"][3:] == \
        ["-", "GET", "a\\nb\\rc\\x1b[31m"]
    assert rows["perfwatch-20260102T030407Z-x-0123abcd.html"][3:] == \
        ["200", "G\\x9bET", "hdr\\x1b[1A"]
    assert result.stderr == ""


def test_reports_escapes_the_directory_name(tmp_path: Path) -> None:
    directory = tmp_path / "dir\x1b[2J\nFORGED"
    directory.mkdir()
    assert reports(directory).stdout == f"No reports in {tmp_path}/dir\\x1b[2J\\nFORGED.\n"
    plant_good(directory)
    first = reports(directory).stdout.splitlines()[0]
    assert first == f"1 of 1 report(s) in {tmp_path}/dir\\x1b[2J\\nFORGED, newest first:"
    assert reports(tmp_path / "gone\x1b[2J").stdout == \
        f"No reports: {tmp_path}/gone\\x1b[2J does not exist (no report written yet).\n"


def test_reports_json_escapes_everything_and_keeps_the_values(tmp_path: Path) -> None:
    name = "perfwatch-20260102T030405Z-GET-e\x1b\u202e\x85-0123abcd.html"
    (tmp_path / name).write_text(page(metadata(name="evil\x1b[2J\u2028", url="http://h/\x00")),
                                 encoding="utf-8")
    undecodable = os.fsdecode(b"perfwatch-\xff\xfe.html")
    (tmp_path / undecodable).write_text("not a report", encoding="utf-8")

    result = reports(tmp_path, "--json")

    assert result.exit_code == 0, result.output
    assert result.stdout.isascii()
    assert_no_raw_control(result.stdout)
    by_path = {Path(entry["path"]).name: entry for entry in json.loads(result.stdout)}
    assert by_path[name]["endpoint"] == "evil\x1b[2J\u2028"
    assert by_path[name]["url"] == "http://h/\x00"
    assert undecodable in by_path


def test_reports_table_prints_an_undecodable_file_name_escaped(tmp_path: Path) -> None:
    os.close(os.open(os.fsencode(tmp_path) + b"/perfwatch-\xff\x1b.html",
                     os.O_WRONLY | os.O_CREAT, 0o600))
    result = reports(tmp_path)
    assert result.exit_code == 0, result.output
    assert "perfwatch-\\udcff\\x1b.html" in table_rows(result)


def test_reports_cuts_a_huge_cell_so_it_cannot_widen_the_table(tmp_path: Path) -> None:
    (tmp_path / "perfwatch-huge.html").write_text(
        page(metadata(name="x" * 100_000, status_code=int("9" * 4000))), encoding="utf-8")
    plant_good(tmp_path)
    result = reports(tmp_path)
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) < 500


# --- crafted files: skipped with a note, never a crash ----------------------------------


NESTED = "[" * 100_000 + "]" * 100_000
CRAFTED = {
    # JSON nested so deep that the decoder gives up
    "deep": (page(metadata_block(NESTED)), "RecursionError"),
    "deep-object": (page(metadata_block('{"a":' * 50_000 + "1" + "}" * 50_000)),
                    "RecursionError"),
    # an integer duration beyond any float
    "huge-duration": (page(metadata_block('{"name": "x", "duration": 1' + "0" * 400 + "}")),
                      "OverflowError"),
    # valid ISO times that overflow once moved to UTC
    "year-1": (page(metadata(started_at="0001-01-01T00:00:00+05:00")), "OverflowError"),
    "year-9999": (page(metadata(started_at="9999-12-31T23:59:59-05:00")), "OverflowError"),
    # "²".isdigit() is true, int("²") fails
    "superscript-status": (page(header(Endpoint="e", Status="\u00b2")), "ValueError"),
    # more digits than int() converts
    "long-status": (page(header(Endpoint="e", Status="9" * 5000)), "ValueError"),
}


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
@pytest.mark.parametrize("label", sorted(CRAFTED))
def test_a_crafted_report_is_skipped_with_a_note(tmp_path: Path, label: str,
                                                 as_json: bool) -> None:
    content, error = CRAFTED[label]
    name = f"perfwatch-{label}\x1b[2J.html"
    (tmp_path / name).write_text(content, encoding="utf-8")
    plant_good(tmp_path)

    result = reports(tmp_path, *(["--json"] if as_json else []))

    assert result.exit_code == 0, result.output
    assert result.exception is None
    assert notes(result) == [f"note: skipped perfwatch-{label}\\x1b[2J.html: {error}"]
    if as_json:
        assert [Path(e["path"]).name for e in json.loads(result.stdout)] == [GOOD_NAME]
    else:
        assert result.stdout.splitlines()[0].startswith("1 of 1 report(s)")
        assert list(table_rows(result)) == [GOOD_NAME]
    with pytest.raises(ReportSkipped) as skipped:
        read_report(tmp_path / name)
    assert skipped.value.reason == error


def test_an_impossible_file_name_date_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "perfwatch-20261399T250000Z-GET-x-0123abcd.html").write_text("x")
    plant_good(tmp_path)
    result = reports(tmp_path)
    assert result.exit_code == 0, result.output
    assert notes(result) == \
        ["note: skipped perfwatch-20261399T250000Z-GET-x-0123abcd.html: ValueError"]


@pytest.fixture
def tmpfs_dir() -> Iterator[Path]:
    """A directory on tmpfs (``/dev/shm``), which, unlike ext4, keeps any 64-bit
    timestamp; many systems have ``/tmp`` on tmpfs."""
    if not os.access("/dev/shm", os.W_OK):
        pytest.skip("needs a writable /dev/shm (tmpfs)")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        yield Path(tmp)


@pytest.mark.parametrize("mtime_ns", [10**27, -(10**27)], ids=["future", "past"])
def test_a_modification_time_beyond_any_date_is_skipped(tmpfs_dir: Path,
                                                        mtime_ns: int) -> None:
    path = tmpfs_dir / "perfwatch-odd-time.html"
    path.write_text(page(metadata()), encoding="utf-8")
    os.utime(path, ns=(0, mtime_ns))  # anyone can set the times of their own file
    if path.stat().st_mtime_ns != mtime_ns:
        pytest.skip("this filesystem clamps timestamps")
    plant_good(tmpfs_dir)
    result = reports(tmpfs_dir)
    assert result.exit_code == 0, result.output
    [note] = notes(result)
    assert re.fullmatch(r"note: skipped perfwatch-odd-time\.html: (OSError|ValueError|"
                        r"OverflowError)", note), note
    assert list(table_rows(result)) == [GOOD_NAME]


def test_broken_json_still_falls_back_to_the_header(tmp_path: Path) -> None:
    """Not every odd file is skipped: JSON that does not parse (as before) means
    the header table is read instead."""
    path = tmp_path / "perfwatch-x.html"
    path.write_text(page(metadata_block("{not json") + header(Endpoint="e", Status="504")))
    info = read_report(path)
    assert (info.source, info.endpoint, info.status_code) == ("header", "e", 504)


# --- what is opened, and how: never blocking ---------------------------------------------


def plant_specials(directory: Path) -> dict[str, str]:
    """Every kind of non-regular entry named like a report; name -> its note."""
    fifo = directory / "perfwatch-fifo.html"
    os.mkfifo(fifo)
    (directory / "perfwatch-to-fifo.html").symlink_to(fifo)
    (directory / "perfwatch-zero.html").symlink_to("/dev/zero")
    (directory / "perfwatch-kmsg.html").symlink_to("/proc/kmsg")
    (directory / "perfwatch-to-good.html").symlink_to(directory / GOOD_NAME)
    (directory / "perfwatch-dir.html").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(directory / "perfwatch-sock.html"))
    sock.close()
    link = "not a regular file (a symbolic link, not followed)"
    return {
        "perfwatch-fifo.html": "not a regular file (a FIFO)",
        "perfwatch-to-fifo.html": link,
        "perfwatch-zero.html": link,
        "perfwatch-kmsg.html": link,
        "perfwatch-to-good.html": link,
        "perfwatch-dir.html": "not a regular file (a directory)",
        "perfwatch-sock.html": "not a regular file (a socket)",
    }


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_the_flask_command_never_blocks_on_fifos_devices_or_symlinks(tmp_path: Path,
                                                                     as_json: bool) -> None:
    directory = tmp_path / "reports"
    directory.mkdir()
    plant_good(directory)
    expected = plant_specials(directory)

    done = flask_reports(directory, *(["--json"] if as_json else []))

    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(done.stderr.splitlines()) == \
        sorted(f"note: skipped {name}: {why}" for name, why in expected.items())
    if as_json:
        assert [Path(e["path"]).name for e in json.loads(done.stdout)] == [GOOD_NAME]
    else:
        lines = done.stdout.splitlines()
        assert lines[0] == f"1 of 1 report(s) in {directory}, newest first:"
        assert lines[2].split()[-1] == GOOD_NAME


def test_read_report_refuses_special_files_without_blocking(tmp_path: Path) -> None:
    plant_good(tmp_path)
    for name, why in plant_specials(tmp_path).items():
        with pytest.raises(ReportSkipped) as skipped:
            in_thread(lambda name=name: read_report(tmp_path / name))  # type: ignore[misc]
        assert skipped.value.reason == why
        assert skipped.value.path == tmp_path / name


def test_the_open_itself_refuses_a_fifo_or_symlink_swapped_in_after_the_check(
        tmp_path: Path) -> None:
    """The lstat check comes first; the open is the second line of defence, for an
    entry swapped between the check and the open: ``O_NONBLOCK`` + fstat refuse a
    FIFO without waiting for a writer, ``O_NOFOLLOW`` refuses a symlink."""
    fifo = tmp_path / "perfwatch-fifo.html"
    os.mkfifo(fifo)
    with pytest.raises(ReportSkipped) as skipped:
        in_thread(lambda: report_mod._open_regular(fifo, None))
    assert skipped.value.reason == "not a regular file (a FIFO)"
    link = tmp_path / "perfwatch-link.html"
    link.symlink_to(plant_good(tmp_path))
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        report_mod._open_regular(link, None)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ReportSkipped):
            in_thread(lambda: report_mod._open_regular(fifo, dir_fd))
        with pytest.raises(OSError, match="Too many levels of symbolic links"):
            report_mod._open_regular(link, dir_fd)
    finally:
        os.close(dir_fd)


def bytes_read_by_this_process() -> int:
    with open("/proc/self/io", encoding="ascii") as fh:
        return int(next(line for line in fh if line.startswith("rchar:")).split()[1])


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_a_huge_report_is_read_only_up_to_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "perfwatch-20260102T030405Z-GET-big-0123abcd.html"
    with path.open("wb") as fh:
        fh.write(b"<html><body>no header, only zeros")
        fh.truncate(1024 * 1024 * 1024)  # sparse: 1 GiB on paper, nothing on disk
    before = bytes_read_by_this_process()
    info = in_thread(lambda: read_report(path))
    read = bytes_read_by_this_process() - before
    assert report_mod._MAX_SCAN <= read < report_mod._MAX_SCAN + 4 * 1024 * 1024
    assert (info.source, info.endpoint, info.size) == ("filename", "big", 1024 ** 3)

    before = bytes_read_by_this_process()
    listing = in_thread(lambda: list_reports(tmp_path))
    assert bytes_read_by_this_process() - before < report_mod._MAX_SCAN + 4 * 1024 * 1024
    assert listing.total == 1


def test_a_report_is_read_only_as_far_as_its_header(tmp_path: Path) -> None:
    path = tmp_path / "perfwatch-x.html"
    path.write_text(page(metadata() + header(Endpoint="e") + "x" * (3 * 1024 * 1024)))
    before = bytes_read_by_this_process()
    assert read_report(path).source == "metadata"
    assert bytes_read_by_this_process() - before < 1024 * 1024


def test_after_the_listing_budget_files_are_read_less_deep(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted multi-MiB files cannot make one listing read gigabytes: past the
    budget each file is read only ``_SCAN_AFTER_BUDGET`` deep."""
    monkeypatch.setattr(report_mod, "_LISTING_BUDGET", 1)
    padding = "x" * (2 * report_mod._SCAN_AFTER_BUDGET)  # header beyond the reduced depth
    for age, label in enumerate(["newest", "older"]):
        path = tmp_path / f"perfwatch-{label}.html"
        path.write_text(page(padding + metadata(name=label)))
        os.utime(path, (2_000_000_000 - age, 2_000_000_000 - age))
    by_name = {i.path.name: i for i in list_reports(tmp_path).reports}
    assert by_name["perfwatch-newest.html"].source == "metadata"  # read within the budget
    assert by_name["perfwatch-older.html"].source == "filename"


# --- bounds on the folder: how many entries are looked at and read ---------------------


def test_total_counts_only_what_the_same_rules_accept(tmp_path: Path) -> None:
    plant_good(tmp_path)
    (tmp_path / "perfwatch-20260102T030406Z-GET-second-0123abcd.html").write_text(
        page(metadata(name="second")))
    plant_specials(tmp_path)
    (tmp_path / "other.html").write_text("not named like a report")

    result = reports(tmp_path, "-n", "1")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"1 of 2 report(s) in {tmp_path}, newest first:"
    listing = list_reports(tmp_path)
    assert (listing.total, listing.skipped_count) == (2, 7)
    assert all(isinstance(info, ReportInfo) for info in listing.reports)


def test_only_the_newest_files_are_examined(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_mod, "_MAX_EXAMINED", 3)
    for n in range(5):
        path = tmp_path / f"perfwatch-n{n}.html"
        path.write_text(page(metadata(name=f"n{n}", started_at=None)))
        os.utime(path, (1_800_000_000 + n, 1_800_000_000 + n))

    result = reports(tmp_path)

    assert result.exit_code == 0, result.output
    assert list(table_rows(result)) == ["perfwatch-n4.html", "perfwatch-n3.html",
                                        "perfwatch-n2.html"]
    assert result.stdout.splitlines()[0].startswith("3 of 3 report(s)")
    assert notes(result) == ["note: 2 older report file(s) not examined: only the 3 newest "
                             "are read"]


def test_junk_entries_do_not_take_the_places_of_reports(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only regular files compete for the ``_MAX_EXAMINED`` places (by lstat),
    so newer planted FIFOs and directories cannot push a report out."""
    monkeypatch.setattr(report_mod, "_MAX_EXAMINED", 2)
    os.utime(plant_good(tmp_path), (1_000_000_000, 1_000_000_000))
    for n in range(3):
        os.mkfifo(tmp_path / f"perfwatch-fifo{n}.html")
        (tmp_path / f"perfwatch-dir{n}.html").mkdir()
    listing = list_reports(tmp_path)
    assert [i.path.name for i in listing.reports] == [GOOD_NAME]
    assert (listing.skipped_count, listing.not_examined) == (6, 0)


def test_a_folder_with_too_many_entries_is_not_read_to_the_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_mod, "_MAX_DIR_ENTRIES", 50)
    for n in range(200):
        (tmp_path / f"junk-{n}").touch()
    result = reports(tmp_path)
    assert result.exit_code == 0, result.output
    assert notes(result) == [f"note: stopped after 50 directory entries; the rest of "
                             f"{tmp_path} was not looked at"]
    assert list_reports(tmp_path).scan_stopped


def test_skip_notes_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_mod, "_MAX_NOTES", 2)
    for n in range(5):
        (tmp_path / f"perfwatch-d{n}.html").mkdir()
    result = reports(tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"No reports in {tmp_path}.\n"
    lines = notes(result)
    assert len(lines) == 3
    assert lines[2] == "note: ... and 3 more file(s) skipped"


def test_a_fifo_given_as_the_directory_does_not_block(tmp_path: Path) -> None:
    fifo_dir = tmp_path / "not-a-dir"
    os.mkfifo(fifo_dir)
    with pytest.raises(NotADirectoryError):
        in_thread(lambda: list_reports(fifo_dir))
    result = in_thread(lambda: reports(fifo_dir))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"No reports: {fifo_dir} is not a directory.\n"


# --- check and test-alert print config values and errors escaped ------------------------


class EvilNotifier(Notifier):
    """Errors that carry control characters, as a notifier's error text could."""

    name = "evil"
    message = "down\x1b[2J\r\nOK: forged line \u202e"

    def check(self) -> str:
        raise NotifierError(self.message)

    def send(self, metrics: Any, report: Any) -> None:
        raise NotifierError(self.message)


ESCAPED_MESSAGE = "down\\x1b[2J\\r\\nOK: forged line \\u202e"


class OddlyNamedNotifier(Notifier):
    """A plug-in whose name carries an escape sequence (a name is data too)."""

    name = "odd\x1b[7m"

    def check(self) -> str:
        return "fine"

    def send(self, metrics: Any, report: Any) -> None:
        pass


def words(result: Result) -> list[str]:
    """The output's lines with runs of spaces made one (column widths aside)."""
    return [" ".join(line.split()) for line in result.output.splitlines()]


def test_check_escapes_config_values_sources_and_errors(
        make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file = tmp_path / "conf\x1b[2J.toml"
    config_file.write_text('[perfwatch]\nstore_prefix = "shop\\u001b[31m"\n')
    monkeypatch.setenv("PERFWATCH_CONFIG_FILE", str(config_file))
    report_dir = tmp_path / "rep\x1b]0;t\x07"
    app, _ = make_app(notifiers=["local", "test_cli_hostile:EvilNotifier",
                                 "test_cli_hostile:OddlyNamedNotifier"],
                      report_dir=str(report_dir),
                      store=f"sqlite:///{tmp_path}/db\x1b[5m.sqlite")

    result = run_app(app, "check")

    assert result.exit_code == 1, result.output
    assert_no_raw_control(result.output)
    rows = {line.split()[0]: line for line in result.output.splitlines()
            if line.startswith("  PERFWATCH_")}
    assert rows["PERFWATCH_STORE_PREFIX"].endswith("shop\\x1b[31m")
    assert f"file {tmp_path}/conf\\x1b[2J.toml" in rows["PERFWATCH_STORE_PREFIX"]
    assert rows["PERFWATCH_REPORT_DIR"].endswith(f"{tmp_path}/rep\\x1b]0;t\\x07")
    lines = words(result)
    assert f"evil FAILED NotifierError: {ESCAPED_MESSAGE}" in lines
    assert f"local OK writes reports to {tmp_path}/rep\\x1b]0;t\\x07" in lines
    assert "odd\\x1b[7m OK fine" in lines
    [store] = [line for line in lines if line.startswith("sqlite ")]
    assert store.startswith(f"sqlite OK sqlite:///{tmp_path}/db\\x1b[5m.sqlite "), store


def test_a_config_error_is_printed_escaped(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERFWATCH_CONFIG_FILE", str(tmp_path / "conf\x1b[2J\nX.txt"))

    def create_app() -> Flask:
        app = Flask("hostile")
        PerfWatch(app, report_dir=str(tmp_path))
        return app

    result = CliRunner().invoke(perfwatch, ["check"], obj=ScriptInfo(create_app=create_app))
    assert result.exit_code == 1, result.output
    assert_no_raw_control(result.output)
    assert f"{tmp_path}/conf\\x1b[2J\\nX.txt" in result.output


def test_test_alert_escapes_notifier_errors_and_paths(make_app: MakeApp,
                                                      tmp_path: Path) -> None:
    report_dir = tmp_path / "rep\x1b[2J"
    app, _ = make_app(notifiers=["test_cli_hostile:EvilNotifier", "local"],
                      report_dir=str(report_dir))

    result = run_app(app, "test-alert")

    assert result.exit_code == 1, result.output
    assert_no_raw_control(result.output)
    assert f"  evil   FAILED  NotifierError: {ESCAPED_MESSAGE}\n" in result.output
    shown = {str(p).replace("\x1b", "\\x1b") for p in report_dir.glob("perfwatch-*.html")}
    [written] = [line.split("report written to ")[1] for line in result.output.splitlines()
                 if line.startswith("  local  OK      report written to ")]
    [kept] = [line.removeprefix("The report was kept at ")
              for line in result.output.splitlines() if line.startswith("The report was kept")]
    assert {written, kept} <= shown
    assert f"{tmp_path}/rep\\x1b[2J/perfwatch-" in written


# --- properties: any bytes, any JSON, any file name ---------------------------------------


def read_or_skip(path: Path) -> ReportInfo | ReportSkipped:
    try:
        return read_report(path)
    except ReportSkipped as skipped:
        return skipped


def check_folder(directory: Path) -> None:
    """The properties every folder must have: each file reads or is skipped
    (never anything else raised), and both outputs are clean.

    (Whether JSON nested ~1000 deep reads or is skipped depends on the stack
    depth of the caller, so the counts are compared between CLI runs only.)"""
    for path in directory.iterdir():
        outcome = read_or_skip(path)
        assert outcome.path == path
    listing = list_reports(directory)
    assert listing.total + listing.skipped_count == len(list(directory.iterdir()))
    table = reports(directory)
    assert table.exit_code == 0, table.output
    assert table.exception is None
    assert_no_raw_control(table.output)
    as_json = reports(directory, "--json")
    assert as_json.exit_code == 0, as_json.output
    assert_no_raw_control(as_json.output)
    shown = len(json.loads(as_json.stdout))
    first = table.stdout.splitlines()[0]
    if shown:
        assert first.startswith(f"{shown} of {shown} report(s) in "), first
    else:
        assert first.startswith("No reports in "), first
    assert len(as_json.stderr.splitlines()) == len(table.stderr.splitlines())


MARKERS = [b"<header id=\"perfwatch-request\">", b"</header>", b"<details>", b"</details>",
           b"<script type=\"application/json\" id=\"perfwatch-metadata\">", b"</script>",
           b"<tr><th>Endpoint</th><td>", b"<tr><th>Status</th><td>", b"</td></tr>",
           b"<th>Started</th><td>", b"<th>Duration</th><td>", b"&#x1b;", b"\x1b[2J",
           b"\xff", b"\xc2\x9b", b"[[[[", b"{\"name\":"]
hostile_bytes = st.lists(st.one_of(st.binary(max_size=64), st.sampled_from(MARKERS)),
                         max_size=24).map(b"".join)
name_parts = st.binary(min_size=0, max_size=60).map(
    lambda b: os.fsdecode(b.replace(b"/", b"_").replace(b"\x00", b"_")))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contents=st.lists(st.tuples(name_parts, hostile_bytes), min_size=1, max_size=4))
def test_any_bytes_in_any_file_name_never_crash_or_leak_controls(
        contents: list[tuple[str, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for n, (name, data) in enumerate(contents):
            (directory / f"perfwatch-{n}{name}.html").write_bytes(data)
        check_folder(directory)


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-10**4000,
                                                         max_value=10**4000),
    st.floats(allow_nan=True, allow_infinity=True), st.text(),
    st.builds(lambda d, tz: d.replace(tzinfo=tz).isoformat(), st.datetimes(),
              st.one_of(st.none(), st.timedeltas(min_value=-timedelta(hours=23, minutes=59),
                                                 max_value=timedelta(hours=23, minutes=59))
                        .map(timezone))))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
metadata_objects = st.fixed_dictionaries({}, optional={
    key: json_values for key in ("kind", "name", "method", "url", "path", "duration",
                                 "threshold", "status_code", "hung", "started_at")})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objects=st.lists(st.one_of(metadata_objects, json_values), min_size=1, max_size=3),
       rows=st.dictionaries(st.sampled_from(["Request", "Endpoint", "Function", "Duration",
                                             "Threshold", "Status", "Started"]),
                            st.text(max_size=30), max_size=7),
       nesting=st.integers(min_value=0, max_value=3000))
def test_any_json_metadata_never_crashes_or_leaks_controls(
        objects: list[Any], rows: dict[str, str], nesting: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        table = header(**{k: v.replace("&", "&amp;").replace("<", "&lt;")
                          for k, v in rows.items()})
        for n, obj in enumerate(objects):
            text = json.dumps(obj).replace("<", "\\u003c")
            (directory / f"perfwatch-{n}.html").write_text(
                page(metadata_block(text) + table), encoding="utf-8")
        (directory / "perfwatch-nested.html").write_text(
            page(metadata_block("[" * nesting + "]" * nesting) + table), encoding="utf-8")
        check_folder(directory)


def test_to_dict_is_json_safe_for_any_report_read(tmp_path: Path) -> None:
    """The JSON output path (to_dict + json.dumps) handles the extremes the
    reader lets through: 9999 and 1 as years, huge durations, long statuses."""
    for label, started in (("late", "9999-12-31T23:59:59+00:00"),
                           ("early", "0001-01-01T00:00:00+00:00")):
        (tmp_path / f"perfwatch-{label}.html").write_text(
            page(metadata(started_at=started, duration=1e308, status_code=int("9" * 4000))))
    now = datetime.now(UTC)
    for info in list_reports(tmp_path).reports:
        json.dumps(info.to_dict(now))
    result = reports(tmp_path)
    assert result.exit_code == 0, result.output
    rows = table_rows(result)
    assert rows["perfwatch-late.html"][:2] == ["0s", "ago"]  # in the future: no negative age
    assert rows["perfwatch-early.html"][0].endswith("d")
    assert rows["perfwatch-early.html"][2].endswith("...")  # 1e308 seconds, cut
