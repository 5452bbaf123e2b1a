"""A real S3 API server for tests: moto's server mode (``moto[server]``) on a
free port of 127.0.0.1, polled until it answers, killed at teardown. Test
modules wrap :func:`running_moto` in a fixture (``from s3_server import ...``
works because pytest puts ``tests/`` on ``sys.path``), and call
:func:`fake_aws_environment` so that boto3 finds fake credentials and nothing
else: no shared config or credentials file, no instance metadata, no proxy,
no endpoint from the environment. No request ever leaves 127.0.0.1.

Without moto's server the tests skip, except under CI (``CI`` set to a true
value), where that is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import urllib3
from redis_server import HOST, _in_ci, free_port

#: The fake credentials every test's boto3 finds (never real ones).
ACCESS_KEY_ID = "AKIAPERFWATCHTESTKEY"
SECRET_ACCESS_KEY = "perfwatch/fake+secret/key/0123456789abcdefghij"
REGION = "us-east-1"


def fake_aws_environment(monkeypatch: pytest.MonkeyPatch, directory: Path, *,
                         access_key: str = ACCESS_KEY_ID, secret_key: str = SECRET_ACCESS_KEY,
                         region: str | None = None) -> None:
    """Make boto3's chain find exactly these credentials (and ``region``, or
    none, so that the default applies): every ``AWS_*`` variable of the
    environment is removed first (a profile, a container or web-identity
    provider, ``AWS_ENDPOINT_URL``...), the config and credentials files point
    at paths that do not exist, the EC2 metadata service is disabled, and no
    proxy is used for 127.0.0.1."""
    for name in list(os.environ):
        if name.upper().startswith("AWS_") or name.lower() in ("http_proxy", "https_proxy",
                                                                "all_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(directory / "no-such-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(directory / "no-such-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", f"{HOST},localhost")
    if region is not None:
        monkeypatch.setenv("AWS_DEFAULT_REGION", region)


def moto_available() -> None:
    """Skip (fail under CI) when moto's server mode is not installed."""
    missing = [name for name in ("moto.server", "flask_cors", "boto3")
               if importlib.util.find_spec(name) is None]
    if missing:
        reason = (f"moto's server mode is not installed (missing {', '.join(missing)}: pip "
                  "install 'moto[server]' boto3); the S3 tests need a real S3 API server")
        if _in_ci():
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason)


class MotoServer:
    """One ``python -m moto.server`` process on 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.http = urllib3.PoolManager(retries=False, timeout=5.0)
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        log = (self.directory / "moto.log").open("wb")
        env = {name: value for name, value in os.environ.items()
               if not name.upper().startswith("AWS_")}
        env.update(AWS_EC2_METADATA_DISABLED="true", NO_PROXY=f"{HOST},localhost")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None:
                self.process = None
                raise RuntimeError(f"moto server exited at start-up:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"moto server did not answer on port {self.port}:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self) -> str:
        return (self.directory / "moto.log").read_text(errors="replace")[-2000:]

    def answers(self) -> bool:
        try:
            return self.http.request("GET", f"{self.url}/moto-api/").status == 200
        except urllib3.exceptions.HTTPError:
            return False

    def enforce_iam(self, on: bool) -> None:
        """Turn moto's IAM checks on (every request must be signed by a key
        that moto's IAM knows, and be allowed by that user's policies) or off."""
        answer = self.http.request("POST", f"{self.url}/moto-api/reset-auth",
                                   body=b"0" if on else b"inf")
        assert answer.status == 200, answer.data

    def client(self, service: str = "s3") -> Any:
        """A boto3 client of this server with the fake credentials (for the
        test's own setup and checks; the code under test builds its own)."""
        import boto3

        return boto3.session.Session().client(
            service, endpoint_url=self.url, region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY)

    def new_bucket(self) -> str:
        """A fresh, empty bucket."""
        name = f"perfwatch-{uuid.uuid4().hex[:12]}"
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name

    def restricted_user(self, *, allow: list[str], bucket: str) -> tuple[str, str]:
        """An IAM user allowed only ``allow`` (actions) on ``bucket``; its
        ``(access key id, secret key)`` (moto makes them up: fake)."""
        iam = self.client("iam")
        try:
            user = f"reporter-{uuid.uuid4().hex[:8]}"
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="reports", PolicyDocument=json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": allow,
                               "Resource": [f"arn:aws:s3:::{bucket}",
                                            f"arn:aws:s3:::{bucket}/*"]}]}))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            return key["AccessKeyId"], key["SecretAccessKey"]
        finally:
            iam.close()

    def kill(self) -> None:
        process, self.process = self.process, None
        self.http.clear()
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)


@contextmanager
def running_moto(directory: Path) -> Iterator[MotoServer]:
    """A started :class:`MotoServer`, killed on exit."""
    moto_available()
    server = MotoServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.kill()
