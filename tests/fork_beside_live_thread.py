"""Run by tests/test_servers.py in a fresh interpreter: a parent with one
parked thread forks through libc's ``fork()`` (no Python fork hooks run, as
under uWSGI); the child starts a thread of its own, then lets flask_perfwatch
catch up. Prints the child's answer as JSON.

A fresh interpreter, not the pytest worker: there the child would also carry
every object and thread a hundred earlier tests left behind, and on CPython
3.13 starting a thread in such a child crashed now and then, whatever the
library did."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
import threading
from typing import Any

from flask_perfwatch import _fork


class Hooked:
    """A fork-aware object counting its ``_after_fork_in_child`` calls."""

    def __init__(self) -> None:
        self.calls = 0
        _fork.register(self)

    def _after_fork_in_child(self) -> None:
        self.calls += 1


def child(hooked: Hooked) -> dict[str, Any]:
    messages: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("flask_perfwatch").addHandler(handler)
    release = threading.Event()
    live = threading.Thread(target=release.wait, args=(10,), name="live")
    live.start()
    _fork.ensure_current()
    state = {"stale": _fork._leftovers(), "readable": _fork.stacks_readable()}
    release.set()
    live.join(5)
    return {"state": state, "calls": hooked.calls, "messages": messages}


def main() -> int:
    hooked = Hooked()
    release = threading.Event()
    parked = threading.Thread(target=release.wait, args=(60,), name="parked", daemon=True)
    parked.start()
    read_fd, write_fd = os.pipe()
    pid = ctypes.PyDLL(None).fork()  # PyDLL: the GIL stays held across the call
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            os.write(write_fd, json.dumps(child(hooked)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    release.set()
    sys.stdout.write(json.dumps({"exit": os.waitstatus_to_exitcode(status),
                                 "answer": json.loads(answer or b"null")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
