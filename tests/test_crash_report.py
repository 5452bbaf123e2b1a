"""The crash report of a pytest-xdist worker that dies (``crash_report.py``):
a real pytest run with two workers, one of which segfaults in a test while
another thread of it sleeps. The summary must name the test, show the
crashing thread's stack and the other thread's, and leave no directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).parent

CRASHING_TESTS = '''
import faulthandler, resource, threading, time

def test_fine():
    pass

def sleeps_in_a_thread():
    time.sleep(30)

def test_segfaults():
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
    threading.Thread(target=sleeps_in_a_thread, name="bystander", daemon=True).start()
    time.sleep(0.2)  # the bystander is inside its sleep
    faulthandler._sigsegv()
'''


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="segfaults a worker process (POSIX)")
def test_a_crashed_worker_shows_its_stacks_in_the_summary(tmp_path: Path) -> None:
    (tmp_path / "test_crashing.py").write_text(CRASHING_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    private_tmp = tmp_path / "tmp"  # the inner run's temporary files, and nobody else's
    private_tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR), "TMPDIR": str(private_tmp)}
    env.pop("PYTEST_XDIST_WORKER", None)  # the inner run's controller is not a worker
    env.pop("PYTEST_PERFWATCH_CRASH_DIR", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-p", "crash_report", "-p",
         "no:cacheprovider", "-q", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env, check=False)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "1 failed, 1 passed" in out
    report = out[out.index("crash report of worker"):]
    assert "running test_crashing.py::test_segfaults" in report
    assert "Fatal Python error: Segmentation fault" in report
    assert 'test_crashing.py", line 14 in test_segfaults' in report  # the crashing thread
    assert 'test_crashing.py", line 8 in sleeps_in_a_thread' in report  # and the bystander
    # the report comes after the failure it explains, where a cut log keeps it
    assert out.index("crashed while running") < out.index("crash report of worker")
    assert list(private_tmp.glob("perfwatch-crash-*")) == []  # the controller removed its own
