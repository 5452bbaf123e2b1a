"""The sampler under gevent (gunicorn ``-k gevent`` monkey-patches the same
way): requests are greenlets on one OS thread, so the sampler must run on a
real OS thread and read each request's greenlet, not ``sys._current_frames()``
alone. A real Flask app under gevent's WSGI server, in a subprocess (patching
this process would change every other test)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from conftest import reports_in, wait_until

pytest.importorskip("gevent")

APP = Path(__file__).with_name("gevent_app.py")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def gevent_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    reports = tmp_path / "reports"
    log = (tmp_path / "server.log").open("w+")
    proc = subprocess.Popen([sys.executable, str(APP), str(port), str(reports)],
                            stdout=subprocess.PIPE, stderr=log, text=True,
                            cwd=Path(__file__).parent)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"server did not start: {line!r}\n" + \
            (tmp_path / "server.log").read_text()
        yield f"http://127.0.0.1:{port}", reports
    finally:
        proc.kill()
        proc.wait(30)
        assert proc.stdout is not None
        proc.stdout.close()
        log.seek(0)
        output = log.read()
        log.close()
    assert "Traceback" not in output, output


def report_for(reports: Path, endpoint: str) -> list[str]:
    return [p.read_text() for p in reports_in(reports) if f"-{endpoint}-" in p.name]


@pytest.mark.slow
def test_greenlets_are_profiled_while_burning_cpu_and_while_suspended(
        gevent_server: tuple[str, Path]) -> None:
    url, reports = gevent_server
    # both at once: while /cpu holds the only OS thread, /nap is a suspended greenlet
    with ThreadPoolExecutor(3) as pool:
        futures = {path: pool.submit(requests.get, url + path, timeout=60)
                   for path in ("/cpu", "/nap", "/fast")}
        answers = {path: (f.result().status_code, f.result().text) for path, f in futures.items()}
    assert answers == {"/cpu": (200, "cpu"), "/nap": (200, "nap"), "/fast": (200, "fast")}

    wait_until(lambda: report_for(reports, "cpu_view") and report_for(reports, "nap_view"),
               timeout=30, message="the two reports")
    (cpu,) = report_for(reports, "cpu_view")
    (nap,) = report_for(reports, "nap_view")
    # the view's own frames, sampled from a real OS thread while the greenlet ran ...
    assert "burn_in_greenlet" in cpu
    assert "No profile was captured" not in cpu
    # ... and from its gr_frame while it was suspended in the hub
    assert "nap_in_greenlet" in nap
    assert "No profile was captured" not in nap
    assert not report_for(reports, "fast_view")


@pytest.mark.slow
def test_a_hung_greenlet_alerts_once_from_its_hub(gevent_server: tuple[str, Path]) -> None:
    url, reports = gevent_server
    response = requests.get(url + "/hang", timeout=60)
    assert (response.status_code, response.text) == (200, "hang")
    # one request_hung alert (fired by the sampler's OS thread, delivered in the
    # hub) and one slow_request alert, each with the greenlet's frames
    found = wait_until(lambda: len(report_for(reports, "hang_view")) >= 2 and
                       report_for(reports, "hang_view"), timeout=30,
                       message="the hung and the slow report")
    assert len(found) == 2
    assert all("nap_in_greenlet" in html for html in found)
