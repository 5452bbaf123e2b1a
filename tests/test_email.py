"""The ``email`` notifier, driven through a real Flask app and the real
``smtplib`` against a real SMTP server on 127.0.0.1 (aiosmtpd's
``Controller``), with a throwaway CA and certificate from ``trustme``.

The client trusts the throwaway CA the way any deployment trusts a private
CA: ``SSL_CERT_FILE`` names it (``monkeypatch.setenv``). The notifier's TLS
settings are not touched: the code under test is the production path, with
certificate and host-name verification on (one test shows that a server the
system does not trust is refused).

Faults and their expected outcome:

- ``451`` at DATA, every recipient ``450`` (greylisting), the connection
  dropped mid-DATA, ``454`` to STARTTLS, a server that does not answer, a
  connection refused: retried; one accepted mail per alert, the very same
  bytes (same Message-ID) on every attempt; given up after the retries
  (``alert_failed``, retryable);
- the connection dropped after the server accepted the mail: sent, no retry
  (no second copy);
- one recipient refused (``550``): the others get it, the alert counts as
  sent, a WARNING names the refused address;
- every recipient refused (``550``), login refused (``535``), a server that
  does not offer STARTTLS, an untrusted certificate: ``alert_failed`` at once
  (one attempt), nothing sent unencrypted, the password never sent to an
  unverified server;
- the password appears in no log line, error, ``check`` line or mail, even
  when the server echoes it;
- a request's CR/LF can never start a header of its own.
"""

from __future__ import annotations

import base64
import dataclasses
import email
import email.policy
import email.utils
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from channel_harness import Channel, channel_app
from click.testing import Result
from conftest import monitor_of, reports_in
from flask import Flask

from flask_perfwatch import Config, PerfWatch
from flask_perfwatch.cli import perfwatch as perfwatch_cli
from flask_perfwatch.exceptions import ConfigError, NotifierError
from flask_perfwatch.notifiers.email import OUTPUT_POLICY, EmailNotifier, build_subject
from flask_perfwatch.testing import Recorded, SignalRecorder

pytestmark = pytest.mark.slow

MakeApp = Callable[..., tuple[Flask, PerfWatch]]

USER = "alerts"
PASSWORD = "Tr0ub4dor&3-horse-battery"  # a shape value masking would not catch
SENDER = "perfwatch@example.com"
OPS, DEV = "ops@example.com", "dev@example.com"


# --- the SMTP server --------------------------------------------------------------


@dataclass
class Seen:
    """One DATA the server received (accepted or not)."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    login: str | None
    accepted: bool

    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class MailBox:
    """aiosmtpd handler: records every DATA and every login, and plays faults."""

    seen: list[Seen] = field(default_factory=list)
    logins: list[tuple[str, bytes]] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)  # address -> reply
    rcpt_replies: list[str] = field(default_factory=list)  # next RCPT replies
    data_replies: list[str] = field(default_factory=list)  # next DATA replies
    drops: int = 0  # DATAs to drop the connection on, before answering
    drop_after_accept: int = 0  # accepted DATAs after which the connection drops
    auth_reply: str | None = None  # a failing login's reply (None: 535 default)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.accepted]

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        with self.lock:
            if self.rcpt_replies:
                return self.rcpt_replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        with self.lock:
            drop = self.drops > 0
            self.drops -= drop
            reply = self.data_replies.pop(0) if self.data_replies and not drop else "250 OK"
            credentials = session.auth_data if session.authenticated else None
            login = credentials.login.decode() if isinstance(credentials, LoginPassword) else None
            self.seen.append(Seen(str(envelope.mail_from), list(envelope.rcpt_tos),
                                  envelope.content, session.ssl is not None, login,
                                  accepted=not drop and reply.startswith("250")))
            after = self.drop_after_accept > 0 and reply.startswith("250") and not drop
            self.drop_after_accept -= after
        assert server.transport is not None
        if drop:
            server.transport.close()  # the client sent the whole message; no answer comes
        elif after:
            server.loop.call_soon(server.transport.close)  # after the 250 went out
        return reply

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                     mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        with self.lock:
            self.logins.append((mechanism, auth_data.password))
        if auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode():
            return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False, message=self.auth_reply)


class RefusingSTARTTLS(SMTP):
    """Offers STARTTLS, then answers 454 to it (a temporary TLS problem)."""

    async def smtp_STARTTLS(self, arg: str) -> None:
        await self.push("454 4.7.0 TLS not available due to temporary reason")


class RefusingController(Controller):
    def factory(self) -> SMTP:
        return RefusingSTARTTLS(self.handler, **self.SMTP_kwargs)


@dataclass
class MailServer:
    port: int
    box: MailBox
    controller: Controller


@dataclass
class Certs:
    ca: trustme.CA
    ca_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        return context


def free_port() -> int:
    """aiosmtpd's Controller cannot bind port 0: take one the kernel gives out."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    ca = trustme.CA()
    ca_file = tmp_path / "throwaway-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Certs(ca, ca_file)


@pytest.fixture
def trust_ca(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> Certs:
    """The process trusts the throwaway CA (and only it), as a deployment with
    a private CA would, through OpenSSL's own ``SSL_CERT_FILE``."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca_file))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return certs


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., MailServer]]:
    """``smtp_server(**controller_options)``: a real SMTP server on 127.0.0.1."""
    started: list[Controller] = []

    def start(controller_class: type[Controller] = Controller, **options: Any) -> MailServer:
        box = MailBox()
        if options.pop("auth", False):
            options.setdefault("authenticator", box.authenticate)
        port = free_port()
        controller = controller_class(box, hostname="127.0.0.1", port=port,
                                      server_hostname="mail.test", ready_timeout=10, **options)
        controller.start()
        started.append(controller)
        return MailServer(port, box, controller)

    yield start
    for controller in started:
        controller.stop()


#: An app mailing alerts through the ``email`` notifier.
Sent = Channel[EmailNotifier]


def mailing_app(make_app: MakeApp, server: MailServer | int, **overrides: Any) -> Sent:
    overrides.setdefault("email_host", "127.0.0.1")
    overrides.setdefault("email_port", server if isinstance(server, int) else server.port)
    overrides.setdefault("email_security", "none")
    overrides.setdefault("email_from", f"PerfWatch <{SENDER}>")
    overrides.setdefault("email_to", [OPS, f"Dev Team <{DEV}>"])
    overrides.setdefault("email_timeout", 5.0)
    return channel_app(make_app, EmailNotifier, notifiers=overrides.pop("notifiers", ["email"]),
                       **overrides)


def one_alert(sent: Sent, signals_recorder: SignalRecorder, path: str) -> Recorded:
    """Request ``path``; its one ``alert_sent``, once the mail is out."""
    sent.get(path)
    [event] = signals_recorder.wait_for("alert_sent")
    sent.flush()
    return event


def attachment(message: EmailMessage) -> EmailMessage:
    [part] = list(message.iter_attachments())
    assert isinstance(part, EmailMessage)
    return part


def body_text(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def run_cli(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(perfwatch_cli, list(args))


def status_line(result: Result, label: str) -> str:
    found = [" ".join(row.split()) for row in result.output.splitlines()
             if row.split()[:1] == [label] and len(row.split()) > 1
             and row.split()[1] in ("OK", "FAILED")]
    assert len(found) == 1, result.output
    return found[0]


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="flask_perfwatch")
    return caplog


def assert_no_password(*texts: str | bytes) -> None:
    for text in texts:
        raw = text if isinstance(text, bytes) else text.encode("utf-8", "backslashreplace")
        assert PASSWORD.encode() not in raw
        assert base64.b64encode(PASSWORD.encode()) not in raw


# --- delivery -----------------------------------------------------------------------


def test_one_slow_request_is_one_mail_with_the_report_attached(
        make_app: MakeApp, smtp_server: Callable[..., MailServer],
        signals_recorder: SignalRecorder) -> None:
    server = smtp_server()
    sent = mailing_app(make_app, server)
    assert server.box.seen == []  # nothing is sent (or connected) at init
    assert sent.get("/fast").status_code == 200
    response = sent.get("/slow?user=42&token=s3cr3t-value")
    assert response.status_code == 201
    signals_recorder.wait_for("alert_sent")
    sent.flush()

    [mail] = server.box.seen
    assert mail.accepted
    assert mail.mail_from == SENDER
    assert mail.rcpt_tos == [OPS, DEV]
    [report] = sent.reports
    [event] = signals_recorder.of("alert_sent")
    metrics = event.kwargs["metrics"]
    message = mail.message()
    subject = message["Subject"]
    assert subject.startswith("[perfwatch] Slow request slow took ")
    assert f"{metrics.duration:.3f}s (threshold 0.300s): GET /slow" in subject
    assert "\n" not in subject
    assert "\r" not in subject
    assert subject == build_subject(metrics)
    assert mail.content.isascii()  # 7-bit: no server needs 8BITMIME
    assert max(len(line) for line in mail.content.split(b"\r\n")) <= 998
    assert message["From"] == f"PerfWatch <{SENDER}>"
    assert message["To"] == f"{OPS}, Dev Team <{DEV}>"
    assert message["Message-ID"] == f"<perfwatch.{metrics.id}@example.com>"
    date = email.utils.parsedate_to_datetime(message["Date"])
    assert abs((date - metrics.started_at).total_seconds()) < 60
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "multipart/mixed"
    text = body_text(message)
    assert text.startswith(metrics.summary() + "\n")
    assert "token=[REDACTED]" in text
    assert f"The full report is attached; open it in a browser:\n  {report.filename}\n" in text
    assert f"alert {metrics.id}" in text
    part = attachment(message)
    assert part.get_content_type() == "text/html"
    assert part.get_filename() == report.filename
    assert part.get_payload(decode=True) == report.html.encode()
    assert "pyinstrument" in report.html
    assert b"s3cr3t" not in mail.content
    assert sent.delays == []
    assert signals_recorder.count("alert_failed") == 0


def test_a_report_link_is_in_the_body(make_app: MakeApp, smtp_server: Callable[..., MailServer],
                                      signals_recorder: SignalRecorder) -> None:
    server = smtp_server()
    sent = mailing_app(make_app, server, report_base_url="https://perf.example.com/r/")
    sent.get("/slow")
    signals_recorder.wait_for("alert_sent")
    sent.flush()
    [mail] = server.box.seen
    [report] = sent.reports
    assert f"It is also at:\n  https://perf.example.com/r/{report.filename}\n" in \
        body_text(mail.message())
    assert attachment(mail.message()).get_payload(decode=True) == report.html.encode()


def test_starttls_and_login(make_app: MakeApp, smtp_server: Callable[..., MailServer],
                            trust_ca: Certs, signals_recorder: SignalRecorder,
                            all_logs: pytest.LogCaptureFixture) -> None:
    server = smtp_server(tls_context=trust_ca.server_context(), require_starttls=True,
                         auth=True, auth_require_tls=True)
    sent = mailing_app(make_app, server, email_security="starttls", email_username=USER,
                       email_password=PASSWORD)
    sent.get("/slow")
    signals_recorder.wait_for("alert_sent")
    sent.flush()
    [mail] = server.box.seen
    assert mail.accepted
    assert mail.tls
    assert mail.login == USER
    assert [password for _, password in server.box.logins] == [PASSWORD.encode()]
    assert_no_password(mail.content, repr(sent.notifier), *all_logs.messages)

    result = run_cli(sent.app, "check")
    line = status_line(result, "email")
    assert line == (f"email OK SMTP 127.0.0.1:{server.port} (STARTTLS, certificate verified, "
                    f"logged in as {USER}): ready to send from {SENDER} to 2 recipient(s); "
                    "no mail sent")
    assert_no_password(result.output)
    assert len(server.box.seen) == 1  # check sent nothing


def test_tls_from_the_start(make_app: MakeApp, smtp_server: Callable[..., MailServer],
                            trust_ca: Certs, signals_recorder: SignalRecorder) -> None:
    # TLS from the first byte (aiosmtpd's auth_require_tls only knows STARTTLS)
    server = smtp_server(ssl_context=trust_ca.server_context(), auth=True,
                         auth_require_tls=False)
    sent = mailing_app(make_app, server, email_security="ssl", email_username=USER,
                       email_password=PASSWORD)
    sent.get("/slow")
    signals_recorder.wait_for("alert_sent")
    sent.flush()
    [mail] = server.box.seen
    assert mail.accepted
    assert mail.login == USER


def test_test_alert_goes_out_by_mail(make_app: MakeApp,
                                     smtp_server: Callable[..., MailServer]) -> None:
    server = smtp_server()
    sent = mailing_app(make_app, server)
    result = run_cli(sent.app, "test-alert")
    assert result.exit_code == 0, result.output
    assert status_line(result, "email").startswith("email OK")
    [mail] = server.box.accepted()
    assert "perfwatch.test_alert" in mail.message()["Subject"]


# --- recipients -----------------------------------------------------------------------


def test_a_refused_recipient_is_reported_and_the_others_get_it(
        make_app: MakeApp, smtp_server: Callable[..., MailServer],
        signals_recorder: SignalRecorder, all_logs: pytest.LogCaptureFixture) -> None:
    server = smtp_server()
    server.box.refuse[DEV] = "550 5.1.1 no such user"
    sent = mailing_app(make_app, server)
    sent.get("/slow")
    signals_recorder.wait_for("alert_sent")
    sent.flush()
    [mail] = server.box.seen
    assert mail.accepted
    assert mail.rcpt_tos == [OPS]
    assert signals_recorder.count("alert_failed") == 0
    assert sent.delays == []
    [warning] = [r for r in all_logs.records if r.levelno == logging.WARNING
                 and r.name == "flask_perfwatch.notifiers.email"]
    assert f"{DEV} (550 5.1.1 no such user)" in warning.getMessage()
    assert "1 of 2 recipient(s) refused" in warning.getMessage()
    assert OPS not in warning.getMessage()


def test_every_recipient_refused_fails_the_alert_at_once(
        make_app: MakeApp, smtp_server: Callable[..., MailServer],
        signals_recorder: SignalRecorder) -> None:
    server = smtp_server()
    server.box.refuse.update({OPS: "550 5.1.1 no such user", DEV: "550 5.1.1 no such user"})
    sent = mailing_app(make_app, server)
    sent.get("/slow")
    [failed] = signals_recorder.wait_for("alert_failed")
    sent.flush()
    error = failed.kwargs["error"]
    assert isinstance(error, NotifierError)
    assert not error.retryable
    assert str(error).startswith("email: every recipient was refused: ")
    assert f"{OPS} (550 5.1.1 no such user)" in str(error)
    assert "PERFWATCH_EMAIL_TO" in str(error)
    assert server.box.seen == []
    assert sent.delays == []


# --- transient faults: retried, one mail, the same bytes --------------------------------

TRANSIENT: dict[str, Callable[[MailBox], None]] = {
    "451 at DATA": lambda box: box.data_replies.append("451 4.3.0 try again"),
    "connection dropped mid-DATA": lambda box: setattr(box, "drops", 1),
    "every recipient 450 (greylisting)": lambda box: box.rcpt_replies.extend(
        ["450 4.2.0 greylisted, come back later"] * 2),
}


@pytest.mark.parametrize("fault", TRANSIENT.keys())
def test_a_transient_fault_is_retried_and_mails_once(
        fault: str, make_app: MakeApp, smtp_server: Callable[..., MailServer],
        signals_recorder: SignalRecorder) -> None:
    server = smtp_server()
    TRANSIENT[fault](server.box)
    sent = mailing_app(make_app, server)
    sent.get("/slow")
    signals_recorder.wait_for("alert_sent")
    sent.flush()
    [mail] = server.box.accepted()
    assert mail.rcpt_tos == [OPS, DEV]
    assert len(sent.delays) == 1
    assert 0.5 <= sent.delays[0] <= 1.0  # the first backoff: 1 s with jitter
    assert signals_recorder.count("alert_failed") == 0
    if fault != "every recipient 450 (greylisting)":
        # the server saw the message twice: the very same bytes, same Message-ID
        first, second = server.box.seen
        assert not first.accepted
        assert first.content == second.content
        assert first.message()["Message-ID"] == second.message()["Message-ID"]


def test_a_connection_lost_after_the_server_accepted_is_no_failure(
        make_app: MakeApp, smtp_server: Callable[..., MailServer],
        signals_recorder: SignalRecorder) -> None:
    server = smtp_server()
    server.box.drop_after_accept = 1
    sent = mailing_app(make_app, server)
    sent.get("/slow")
    signals_recorder.wait_for("alert_sent")
    sent.flush()
    assert len(server.box.seen) == 1  # no retry, so no second copy
    assert sent.delays == []


def test_retries_used_up_fail_the_alert_and_keep_the_report(
        make_app: MakeApp, smtp_server: Callable[..., MailServer],
        signals_recorder: SignalRecorder, report_dir: Path) -> None:
    server = smtp_server()
    server.box.data_replies.extend(["451 4.3.0 try again"] * 3)
    sent = mailing_app(make_app, server, email_retries=2)
    sent.get("/slow")
    [failed] = signals_recorder.wait_for("alert_failed")
    sent.flush()
    error = failed.kwargs["error"]
    assert error.retryable
    assert str(error) == ("email: gave up after 3 attempt(s); last error: message refused "
                          "(451 4.3.0 try again)")
    assert len(sent.delays) == 2
    assert server.box.accepted() == []
    assert len(server.box.seen) == 3
    assert len({s.content for s in server.box.seen}) == 1
    assert len(reports_in(report_dir)) == 1


def test_a_server_that_is_down_is_retried(make_app: MakeApp,
                                          signals_recorder: SignalRecorder) -> None:
    sent = mailing_app(make_app, free_port(), email_retries=2)
    sent.get("/slow")
    [failed] = signals_recorder.wait_for("alert_failed")
    sent.flush()
    assert failed.kwargs["error"].retryable
    assert "refused the connection" in str(failed.kwargs["error"])
    assert len(sent.delays) == 2


def test_a_server_that_never_answers_times_out_and_is_retried(
        make_app: MakeApp, signals_recorder: SignalRecorder) -> None:
    with socket.socket() as listener:  # accepts connections (backlog), never speaks
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        sent = mailing_app(make_app, listener.getsockname()[1], email_retries=1,
                           email_timeout=0.3)
        sent.get("/slow")
        [failed] = signals_recorder.wait_for("alert_failed", timeout=20)
        sent.flush()
    error = failed.kwargs["error"]
    assert error.retryable
    assert "did not answer within 0.3s" in str(error)
    assert len(sent.delays) == 1


# --- permanent faults: at once, never anything unprotected ----------------------------------


def test_a_refused_login_fails_at_once_and_never_shows_the_password(
        make_app: MakeApp, smtp_server: Callable[..., MailServer], trust_ca: Certs,
        signals_recorder: SignalRecorder, all_logs: pytest.LogCaptureFixture) -> None:
    server = smtp_server(tls_context=trust_ca.server_context(), require_starttls=True,
                         auth=True)
    # a careless server that quotes what it got, in clear and as AUTH LOGIN/PLAIN sent it
    echoed = base64.b64encode(b"wrong-" + PASSWORD.encode()).decode()
    plain = base64.b64encode(f"\0{USER}\0wrong-{PASSWORD}".encode()).decode()
    server.box.auth_reply = f"535 5.7.8 bad credentials wrong-{PASSWORD} / {echoed} / {plain}"
    sent = mailing_app(make_app, server, email_security="starttls", email_username=USER,
                       email_password="wrong-" + PASSWORD)
    sent.get("/slow")
    [failed] = signals_recorder.wait_for("alert_failed")
    sent.flush()
    error = failed.kwargs["error"]
    assert not error.retryable
    assert str(error).startswith(f"email: login as '{USER}' refused (535 5.7.8 bad credentials ")
    assert "check PERFWATCH_EMAIL_USERNAME and PERFWATCH_EMAIL_PASSWORD" in str(error)
    assert sent.delays == []  # one attempt
    assert server.box.seen == []
    result = run_cli(sent.app, "check")
    line = status_line(result, "email")
    assert line.startswith("email FAILED")
    assert "535 5.7.8" in line
    for text in (str(error), repr(sent.notifier), result.output, *all_logs.messages):
        assert "wrong-" + PASSWORD not in text
        assert echoed not in text
        assert plain not in text


def test_an_untrusted_certificate_is_refused_before_the_password_is_sent(
        make_app: MakeApp, smtp_server: Callable[..., MailServer], certs: Certs,
        monkeypatch: pytest.MonkeyPatch, signals_recorder: SignalRecorder) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # the system's CAs only
    server = smtp_server(tls_context=certs.server_context(), require_starttls=True, auth=True)
    sent = mailing_app(make_app, server, email_security="starttls", email_username=USER,
                       email_password=PASSWORD)
    sent.get("/slow")
    [failed] = signals_recorder.wait_for("alert_failed")
    sent.flush()
    error = failed.kwargs["error"]
    assert not error.retryable
    assert f"the TLS certificate of 127.0.0.1:{server.port} is not trusted" in str(error)
    assert server.box.logins == []
    assert server.box.seen == []
    assert sent.delays == []


def test_a_server_without_starttls_gets_nothing_unencrypted(
        make_app: MakeApp, smtp_server: Callable[..., MailServer],
        signals_recorder: SignalRecorder) -> None:
    server = smtp_server()  # no TLS at all
    sent = mailing_app(make_app, server, email_security="starttls")
    sent.get("/slow")
    [failed] = signals_recorder.wait_for("alert_failed")
    sent.flush()
    assert not failed.kwargs["error"].retryable
    assert "does not offer STARTTLS" in str(failed.kwargs["error"])
    assert server.box.seen == []


def test_tls_from_the_start_against_a_plain_server_says_what_to_change(
        make_app: MakeApp, smtp_server: Callable[..., MailServer],
        signals_recorder: SignalRecorder) -> None:
    server = smtp_server()  # speaks plain SMTP, as on port 587
    sent = mailing_app(make_app, server, email_security="ssl")
    sent.get("/slow")
    [failed] = signals_recorder.wait_for("alert_failed")
    sent.flush()
    error = failed.kwargs["error"]
    assert not error.retryable
    assert f"TLS with 127.0.0.1:{server.port} failed (" in str(error)
    assert "check PERFWATCH_EMAIL_SECURITY and PERFWATCH_EMAIL_PORT" in str(error)
    assert sent.delays == []
    assert server.box.seen == []


def test_a_refused_starttls_is_retried_and_nothing_goes_out_unencrypted(
        make_app: MakeApp, smtp_server: Callable[..., MailServer], certs: Certs,
        signals_recorder: SignalRecorder) -> None:
    # the server offers STARTTLS, answers it with 454, and would take plain mail
    server = smtp_server(RefusingController, tls_context=certs.server_context())
    sent = mailing_app(make_app, server, email_security="starttls", email_retries=1)
    sent.get("/slow")
    [failed] = signals_recorder.wait_for("alert_failed")
    sent.flush()
    error = failed.kwargs["error"]
    assert error.retryable
    assert "STARTTLS refused (454 4.7.0 TLS not available" in str(error)
    assert len(sent.delays) == 1
    assert server.box.seen == []


# --- hostile input ---------------------------------------------------------------------

HOSTILE = "\r\nBcc: evil@example.org\r\nSubject: pwned\r\n\r\nhello"


def assert_headers_intact(message_bytes: bytes) -> None:
    head = message_bytes.split(b"\r\n\r\n", 1)[0]
    names = [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n")
             if line and not line[:1].isspace()]
    assert names.count(b"subject") == 1
    assert b"bcc" not in names
    parsed = email.message_from_bytes(message_bytes, policy=email.policy.default)
    assert "Bcc" not in parsed
    assert "\n" not in parsed["Subject"]
    assert "\r" not in parsed["Subject"]


#: "\r\nBcc: evil@example.org" as an RFC 2047 encoded word, which readers decode
ENCODED_WORD = "=?utf-8?b?" + base64.b64encode(b"\r\nBcc: evil@example.org").decode() + "?="


def test_a_hostile_url_cannot_add_headers_or_recipients(
        make_app: MakeApp, smtp_server: Callable[..., MailServer],
        signals_recorder: SignalRecorder) -> None:
    server = smtp_server()
    sent = mailing_app(make_app, server)
    injection = "%0d%0aBcc:%20evil@example.org%0d%0aSubject:%20pwned%0d%0a%0d%0ahello"
    # (werkzeug's router answers 404 to a line break in the path: those go in the query)
    sent.get(f"/named/{quote(ENCODED_WORD, safe='')}?sleep=0.8&q={injection}")
    signals_recorder.wait_for("alert_sent")
    sent.flush()
    [mail] = server.box.seen
    assert mail.rcpt_tos == [OPS, DEV]
    assert_headers_intact(mail.content)
    message = mail.message()
    subject = message["Subject"]
    assert subject.startswith("[perfwatch] Slow request named took ")
    # the path is shown as text, its encoded word not decoded by readers
    assert subject.endswith(": GET /named/=%3Futf-8?b?DQpCY2M6IGV2aWxAZXhhbXBsZS5vcmc=%3F=")
    # the query's line breaks are escaped text in the body
    assert "&q=%5Cr%5CnBcc:+evil%40example.org%5Cr%5CnSubject:+pwned" in body_text(message)
    assert "\r" not in subject
    assert "\n" not in subject


def test_raw_line_breaks_in_any_field_stay_in_one_subject_line(
        make_app: MakeApp, smtp_server: Callable[..., MailServer],
        signals_recorder: SignalRecorder) -> None:
    # the pipeline escapes request data already; the message must not rely on it
    server = smtp_server()
    sent = mailing_app(make_app, server)
    event = one_alert(sent, signals_recorder, "/slow")
    metrics = dataclasses.replace(event.kwargs["metrics"], name="slow" + HOSTILE,
                                  path="/slow" + HOSTILE, url="http://x/slow" + HOSTILE,
                                  method="GET" + HOSTILE)
    report = dataclasses.replace(sent.reports[0], text=metrics.summary() + HOSTILE)
    data = sent.notifier.build_message(metrics, report).as_bytes(policy=OUTPUT_POLICY)
    assert_headers_intact(data)
    subject = email.message_from_bytes(data, policy=email.policy.default)["Subject"]
    assert subject.startswith("[perfwatch] Slow request slow\\r\\nBcc: evil@example.org")
    assert len(subject) <= 200


def test_a_long_url_never_cuts_the_endpoint_or_duration_from_the_subject(
        make_app: MakeApp, smtp_server: Callable[..., MailServer],
        signals_recorder: SignalRecorder) -> None:
    server = smtp_server()
    sent = mailing_app(make_app, server)
    event = one_alert(sent, signals_recorder, "/named/" + "x" * 3000 + "?sleep=0.8")
    subject = server.box.seen[0].message()["Subject"]
    assert len(subject) == 200
    assert subject.endswith("…")
    assert f"took {event.kwargs['metrics'].duration:.3f}s" in subject


def test_a_subject_with_non_ascii_arrives_as_it_was_written(
        make_app: MakeApp, smtp_server: Callable[..., MailServer],
        signals_recorder: SignalRecorder) -> None:
    server = smtp_server()
    sent = mailing_app(make_app, server)
    event = one_alert(sent, signals_recorder,
                      "/named/caf%C3%A9-cr%C3%A8me-br%C3%BBl%C3%A9e/%E2%9C%93?sleep=0.8")
    [mail] = server.box.seen
    subject = mail.message()["Subject"]
    assert subject == build_subject(event.kwargs["metrics"])
    assert subject.endswith("GET /named/café-crème-brûlée/✓")
    assert mail.content.isascii()
    # short non-ASCII lines (a console tree) are encoded too: never 8-bit data
    report = dataclasses.replace(sent.reports[0], text="0.8 slow\n└─ 0.8 sleep\n")
    data = sent.notifier.build_message(event.kwargs["metrics"], report).as_bytes(
        policy=OUTPUT_POLICY)
    assert data.isascii()
    body = email.message_from_bytes(data, policy=email.policy.default).get_body(("plain",))
    assert body is not None
    assert body.get_content().startswith("0.8 slow\r\n└─ 0.8 sleep\r\n")


def test_the_module_named_email_uses_the_standard_librarys_email() -> None:
    import flask_perfwatch.notifiers.email as module

    assert vars(module)["email"] is email  # absolute imports: not the module itself
    assert vars(module)["EmailMessage"] is EmailMessage


# --- configuration ---------------------------------------------------------------------

GOOD = {"email_host": "smtp.example.com", "email_from": SENDER, "email_to": [OPS]}


@pytest.mark.parametrize(("overrides", "key", "shown"), [
    ({"email_host": None}, "PERFWATCH_EMAIL_HOST", "None"),
    ({"email_host": "smtp://smtp.example.com"}, "PERFWATCH_EMAIL_HOST", "smtp://"),
    ({"email_host": "smtp.example.com:587"}, "PERFWATCH_EMAIL_HOST", ":587"),
    ({"email_from": None}, "PERFWATCH_EMAIL_FROM", "None"),
    ({"email_from": "not an address"}, "PERFWATCH_EMAIL_FROM", "not an address"),
    ({"email_to": []}, "PERFWATCH_EMAIL_TO", "[]"),
    ({"email_to": [OPS, "ops@"]}, "PERFWATCH_EMAIL_TO", "'ops@'"),
    ({"email_to": ["a@example.com b@example.com"]}, "PERFWATCH_EMAIL_TO", "b@example.com"),
    ({"email_to": ["ops@example.com\r\nBcc: x@example.org"]}, "PERFWATCH_EMAIL_TO", "Bcc"),
    ({"email_username": USER}, "PERFWATCH_EMAIL_PASSWORD", "None"),
    ({"email_password": PASSWORD}, "PERFWATCH_EMAIL_USERNAME", "None"),
    ({"email_username": USER, "email_password": PASSWORD, "email_security": "none"},
     "PERFWATCH_EMAIL_SECURITY", "'none'"),
])
def test_init_app_refuses_a_bad_setting_naming_the_key(
        overrides: dict[str, Any], key: str, shown: str, make_app: MakeApp) -> None:
    with pytest.raises(ConfigError) as info:
        make_app(notifiers=["email"], **{**GOOD, **overrides})
    message = str(info.value)
    assert message.startswith(f"{key}=")
    assert shown in message
    assert_no_password(message)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1"])
def test_a_password_may_go_unencrypted_to_a_local_relay_only(host: str,
                                                               make_app: MakeApp) -> None:
    app, _ = make_app(notifiers=["email"], **{**GOOD, "email_host": host},
                      email_username=USER, email_password=PASSWORD, email_security="none")
    [notifier] = monitor_of(app).notifiers
    assert isinstance(notifier, EmailNotifier)
    assert_no_password(repr(notifier))
    assert re.fullmatch(r"<EmailNotifier \S+ none -> 1 recipient\(s\)>", repr(notifier))


def test_ssl_without_a_port_uses_smtps_465() -> None:
    base = {"email_host": "smtp.example.com", "email_from": SENDER, "email_to": [OPS]}
    assert EmailNotifier(Config(**base)).port == 587
    assert EmailNotifier(Config(**base, email_security="ssl")).port == 465
    assert EmailNotifier(Config(**base, email_security="ssl", email_port=2465)).port == 2465
    chosen = Config.load(app_config={"PERFWATCH_EMAIL_PORT": 587}, overrides={
        **base, "email_security": "ssl"})
    assert EmailNotifier(chosen).port == 587  # set on purpose: kept
