"""Make a crashed pytest-xdist worker say why.

When a worker process dies (a segfault, an abort), xdist reports only
"worker 'gw1' crashed while running <test>". Python's fault handler does print
every thread's traceback, but on the worker's stderr, far above the summary
where a CI log is usually cut. So each worker writes its fault handler's output
to a file of its own in a directory the controller made, and the controller
prints every non-empty file at the end of the terminal summary: the crashing
thread's stack and every other thread's, next to the failure they explain.

Loaded from ``conftest.py`` (``pytest_plugins``); it does nothing without
xdist.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

import pytest

#: the directory the controller made, passed to the workers it starts
ENV = "PYTEST_PERFWATCH_CRASH_DIR"
#: frames shown per thread, innermost first
FRAMES = 12

_log: IO[str] | None = None


def _worker_id() -> str | None:
    return os.environ.get("PYTEST_XDIST_WORKER")


@pytest.hookimpl(trylast=True)  # after pytest's own faulthandler plugin enabled stderr
def pytest_configure(config: pytest.Config) -> None:
    global _log
    worker = _worker_id()
    if worker is None:
        if getattr(config.option, "numprocesses", None) and ENV not in os.environ:
            # set before xdist starts its workers (pytest_sessionstart), who inherit it
            os.environ[ENV] = tempfile.mkdtemp(prefix="perfwatch-crash-")
        return
    directory = os.environ.get(ENV)
    if directory is None:
        return
    # append: a replacement worker takes the crashed one's id, and must not
    # wipe what its predecessor wrote
    _log = open(Path(directory, f"{worker}.log"), "a", encoding="utf-8")  # noqa: SIM115
    _log.write(f"--- worker {worker}, pid {os.getpid()}\n")
    _log.flush()
    faulthandler.enable(file=_log, all_threads=True)


def pytest_runtest_logstart(nodeid: str) -> None:
    """Name the test the worker runs, so that a dump says which one it was."""
    if _log is not None:
        _log.write(f"running {nodeid}\n")
        _log.flush()


def _starts_a_dump(line: str) -> bool:
    return "Fatal Python error" in line or "most recent call first" in line


def _crash_reports(directory: Path) -> list[tuple[str, str]]:
    """(worker, text) of every worker whose log holds a fault handler's dump."""
    reports = []
    for path in sorted(directory.glob("*.log")):
        dump = _dump(path.read_text(encoding="utf-8", errors="replace"))
        if dump is not None:
            reports.append((path.stem, dump))
    return reports


def _dump(text: str) -> str | None:
    """The dump in a worker's log (None if none), each thread's stack cut to
    its :data:`FRAMES` innermost frames (the rest is pytest's and execnet's),
    after the test named just before it (a worker logs every test)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _starts_a_dump(line)), None)
    if start is None:
        return None
    kept = [line for line in lines[:start] if line.startswith("running ")][-1:]
    frames = 0
    for line in lines[start:]:
        if line.startswith("  File "):
            frames += 1
            if frames == FRAMES + 1:
                kept.append("  ...")
            if frames > FRAMES:
                continue
        else:
            frames = 0
        kept.append(line)
    return "\n".join(kept)


@pytest.hookimpl(trylast=True)  # last: where a cut CI log still shows it
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _worker_id() is not None:
        return
    directory = os.environ.get(ENV)
    if directory is None or not Path(directory).is_dir():
        return
    for worker, text in _crash_reports(Path(directory)):
        terminalreporter.section(f"crash report of worker {worker}", sep="=", red=True)
        terminalreporter.write_line(text)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _log
    if _worker_id() is not None:
        if _log is not None:
            faulthandler.disable()
            _log.close()
            _log = None
        return
    directory = os.environ.pop(ENV, None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
