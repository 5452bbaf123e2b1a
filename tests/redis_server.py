"""A real ``redis-server`` for tests: a free port on 127.0.0.1, a temp dir,
no persistence, killed at teardown. Test modules wrap :func:`running_redis`
in a fixture (``from redis_server import ...`` works because pytest puts
``tests/`` on ``sys.path``).

Without a ``redis-server`` binary the tests skip, except under CI
(``CI`` set to a true value), where a missing server is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def redis_server_binary() -> str:
    """The path of ``redis-server``; skip (fail under CI) when there is none."""
    path = shutil.which("redis-server")
    if path is None:
        reason = ("redis-server is not installed (apt-get install -y redis-server); "
                  "the redis store tests need a real server")
        if _in_ci():
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason)
    return path


class RedisServer:
    """One ``redis-server`` process; :meth:`kill` and :meth:`start` again keep the port."""

    def __init__(self, directory: Path, *, password: str | None = None) -> None:
        self.binary = redis_server_binary()
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", HOST, "--save", "",
                "--appendonly", "no", "--dir", str(self.directory), "--daemonize", "no",
                "--logfile", str(self.directory / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                self.process = None
                raise RuntimeError(f"redis-server exited at start-up:\n{log}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)

    def ping(self) -> bool:
        """True if the server answers PING (a raw socket: no client state)."""
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                if self.password:
                    sock.sendall(f"AUTH {self.password}\r\n".encode())
                    if not sock.recv(64).startswith(b"+OK"):
                        return False
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: the server vanishes as in a crash, with no clean shutdown."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@contextmanager
def running_redis(directory: Path, *, password: str | None = None) -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, killed on exit."""
    server = RedisServer(directory, password=password)
    server.start()
    try:
        yield server
    finally:
        server.kill()
