"""``email``: one mail per alert through any SMTP server, with the standard
library only (:mod:`smtplib` and :class:`email.message.EmailMessage`).

The mail is a plain-text summary (the alert's one-line summary and
pyinstrument's console tree) with the HTML report attached as ``text/html``.
It is built once per alert and the very same bytes are sent on every
attempt: the same ``Message-ID`` (derived from the alert's id), the same
``Date``, the same MIME boundary.

Each attempt is one SMTP session: connect, ``EHLO``, ``STARTTLS`` (or TLS
from the start for ``ssl``), login if a user name is configured, ``MAIL`` /
``RCPT`` / ``DATA``, ``QUIT``. Attempts are classified for
:func:`~flask_perfwatch.notifiers.delivery.deliver`: 4xx replies, a dropped
connection, timeouts, refused or reset connections are retried; 5xx replies
(bad credentials, an unknown mailbox, rejected content), an untrusted
certificate and a server without the security asked for are not.

Delivery is at least once, as with any SMTP client: a connection lost after
the server took the message but before its ``250`` arrived looks like a
failure, and the retry delivers a second copy with the same ``Message-ID``
(mail clients and most servers can drop such duplicates). Once the ``250``
arrived, nothing can fail the alert any more: an error during ``QUIT`` is
ignored.

The notifier keeps no connection between alerts, so there is nothing to
renew after a fork.

(This module is named ``email`` inside :mod:`flask_perfwatch.notifiers`; its
``import email.utils`` and ``from email.message import ...`` still reach the
standard library, because Python 3 imports are absolute unless written with
a leading dot.)
"""

from __future__ import annotations

import base64
import email.policy
import email.utils
import ipaddress
import logging
import re
import smtplib
import socket
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING

from .._redact import mask_text
from .._util import printable, safe_text
from ..config import key_name
from ..exceptions import ConfigError, NotifierError
from ..reportdir import encode
from .base import Notifier
from .delivery import Permanent, Retryable, RetryPolicy, deliver

if TYPE_CHECKING:
    from ..config import Config
    from ..metrics import PerformanceMetrics
    from ..report import Report

logger = logging.getLogger(__name__)

#: The longest ``Subject``, in characters; longer ones end with "…".
MAX_SUBJECT_LENGTH = 200
#: The longest body, in characters; the attached report has everything.
MAX_BODY_LENGTH = 100_000
#: The longest server reply quoted in a message or log line.
MAX_REPLY_LENGTH = 200
#: Hosts a password may be sent to without encryption (``email_security='none'``).
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

_CHANNEL = "email"
_ADDRESS_RE = re.compile(r"^[^@\s<>()\[\],;:\"\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
_CUT_BODY = "\n\n(cut here; the attached report has everything)"
#: How the parts are encoded: CRLF line ends, and only 7-bit data (quoted-
#: printable or base64 for anything else, in lines of at most 76), so that no
#: server needs ``8BITMIME``.
CONTENT_POLICY = email.policy.SMTP.clone(cte_type="7bit")
#: How the message is written out: as above, but headers are folded only past
#: RFC 5322's hard limit of 998. The standard library's folding at 78 mangles
#: some subjects (a leading "[" moves the whole subject to a continuation line,
#: which readers show with a leading space; a word with a non-ASCII character
#: gains a space). A subject has at most :data:`MAX_SUBJECT_LENGTH`
#: characters, so it is never folded.
OUTPUT_POLICY = CONTENT_POLICY.clone(max_line_length=998)


class EmailNotifier(Notifier):
    """Mails each alert to :data:`PERFWATCH_EMAIL_TO` through the SMTP server
    :data:`PERFWATCH_EMAIL_HOST`, the report attached.

    Everything is checked at ``init_app`` (host, addresses, credentials and
    security); nothing is sent or connected before the first alert.
    :meth:`check` logs in and says ``NOOP`` without sending mail.
    """

    name = "email"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.host = _host(config)
        self.security = config.email_security
        #: 587 (submission) is the key's default; with ``ssl`` and no port set,
        #: SMTPS's own 465 is what anyone means
        self.port = 465 if self.security == "ssl" and \
            config.sources.get("email_port", "default") == "default" else config.email_port
        self.username, self._password = _credentials(config, self.host)
        self.sender, self.envelope_from = _sender(config)
        self.to_header, self.recipients = _recipients(config)
        self.timeout = config.email_timeout
        self._local_hostname: str | None = None
        self.policy = RetryPolicy(retries=config.email_retries,
                                  budget=min(60.0, config.notifier_timeout * 0.8))

    # -- Notifier interface ----------------------------------------------------

    def send(self, metrics: PerformanceMetrics, report: Report) -> None:
        data = self.build_message(metrics, report).as_bytes(policy=OUTPUT_POLICY)

        def attempt(number: int) -> dict[str, tuple[int, bytes]]:
            try:
                return self._transmit(data)
            except Exception as exc:
                raise self._classify(exc) from None

        refused = deliver(_CHANNEL, attempt, self.policy, alert_id=metrics.id)
        if refused:
            logger.warning("email: %d of %d recipient(s) refused alert %s: %s; the other "
                           "recipient(s) received it", len(refused), len(self.recipients),
                           metrics.id[:8], self._refusals(refused))

    def check(self) -> str:
        try:
            smtp = self._open()
            try:
                code, reply = smtp.noop()
                if code != 250:
                    raise smtplib.SMTPResponseException(code, reply)
            finally:
                _quit_quietly(smtp)
        except Exception as exc:
            failure = self._classify(exc)
            raise NotifierError(f"{_CHANNEL}: {failure.reason}",
                                retryable=isinstance(failure, Retryable)) from None
        login = f", logged in as {self.username}" if self.username else ""
        return (f"SMTP {self._where()} ({self._security_text()}{login}): ready to send from "
                f"{self.envelope_from} to {len(self.recipients)} recipient(s); no mail sent")

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self._where()} {self.security} -> "
                f"{len(self.recipients)} recipient(s)>")

    def tls_context(self) -> ssl.SSLContext:
        """The TLS settings of each connection: :func:`ssl.create_default_context`,
        which verifies the certificate and the host name against the system's
        CAs (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` point OpenSSL at others).
        Override it in a subclass to trust a private CA; keep verification on."""
        return ssl.create_default_context()

    # -- the message -----------------------------------------------------------

    def build_message(self, metrics: PerformanceMetrics, report: Report) -> EmailMessage:
        """The alert's mail: one-line subject, plain-text body, the report
        attached. Write it out with ``as_bytes(policy=OUTPUT_POLICY)``."""
        message = EmailMessage(policy=CONTENT_POLICY)
        message["Subject"] = build_subject(metrics)
        message["From"] = self.sender
        message["To"] = self.to_header
        message["Date"] = email.utils.format_datetime(datetime.now(UTC))
        message["Message-ID"] = message_id(metrics, self.envelope_from)
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
        message.set_content(build_body(metrics, report))
        message.add_attachment(encode(report.html), maintype="text", subtype="html",
                               filename=report.filename, params={"charset": "utf-8"})
        return message

    # -- one attempt -----------------------------------------------------------

    def _transmit(self, data: bytes) -> dict[str, tuple[int, bytes]]:
        smtp = self._open()
        try:
            refused = smtp.sendmail(self.envelope_from, list(self.recipients), data)
        except BaseException:
            smtp.close()
            raise
        # The server took the message: nothing may turn this into a failure
        # (and a retry into a second copy).
        _quit_quietly(smtp)
        return refused

    def _open(self) -> smtplib.SMTP:
        """A session ready for ``MAIL FROM``: connected, secured, logged in."""
        # Connected by the constructor: smtplib checks the certificate against
        # the host given there (and closes the socket if the greeting fails).
        smtp: smtplib.SMTP
        if self.security == "ssl":
            smtp = smtplib.SMTP_SSL(self.host, self.port, self._helo_name(),
                                    timeout=self.timeout, context=self.tls_context())
        else:
            smtp = smtplib.SMTP(self.host, self.port, self._helo_name(), timeout=self.timeout)
        try:
            smtp.ehlo_or_helo_if_needed()
            if self.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise Permanent(
                        f"{self._where()} does not offer STARTTLS, and mail is never sent "
                        f"unencrypted when {key_name('email_security')}='starttls' (use "
                        "'ssl' for a server that speaks TLS from the start, usually port 465)")
                try:
                    smtp.starttls(context=self.tls_context())
                except smtplib.SMTPResponseException as exc:
                    raise _Refused(exc.smtp_code, exc.smtp_error, "STARTTLS") from None
                smtp.ehlo_or_helo_if_needed()
            if self.username is not None:
                assert self._password is not None
                smtp.login(self.username, self._password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    # -- classification --------------------------------------------------------

    def _classify(self, exc: Exception) -> Retryable | Permanent:
        """Sort one failure into retryable or permanent, with a reason that
        says what happened (and what to change), with no secret in it."""
        if isinstance(exc, Retryable | Permanent):
            return exc
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            return self._all_refused(exc.recipients)
        if isinstance(exc, smtplib.SMTPResponseException):
            return self._reply_failure(exc)
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            if isinstance(exc.__context__, TimeoutError):  # smtplib wraps a read timeout
                return self._timed_out()
            return Retryable(f"{self._where()} closed the connection ({self._text(exc)})")
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            hint = ""
            if self.username is not None and self.security == "none":
                hint = (f"; the server may offer login only over TLS: set "
                        f"{key_name('email_security')}")
            return Permanent(f"{self._where()}: {self._text(exc)}{hint}")
        if isinstance(exc, ssl.SSLCertVerificationError):
            return Permanent(
                f"the TLS certificate of {self._where()} is not trusted "
                f"({self._text(exc.verify_message or exc)}); the server needs a certificate "
                "for this host name from a CA the system trusts")
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError):
            return Retryable(f"{self._where()} closed the TLS connection ({self._text(exc)})")
        if isinstance(exc, ssl.SSLError):
            return Permanent(
                f"TLS with {self._where()} failed ({self._text(exc.reason or exc)}); check "
                f"{key_name('email_security')} and {key_name('email_port')} ('ssl' speaks TLS "
                "from the start, usually port 465; 'starttls' upgrades, usually port 587)")
        if isinstance(exc, smtplib.SMTPException):  # e.g. no common AUTH mechanism
            return Permanent(f"{self._where()}: {self._text(exc)}")
        if isinstance(exc, socket.gaierror):
            reason = f"cannot resolve {self.host!r} ({self._text(exc)})"
            if exc.errno == socket.EAI_AGAIN:
                return Retryable(reason)
            return Permanent(f"{reason}; check {key_name('email_host')}")
        if isinstance(exc, TimeoutError):
            return self._timed_out()
        if isinstance(exc, ConnectionRefusedError):
            return Retryable(f"{self._where()} refused the connection")
        if isinstance(exc, OSError):
            return Retryable(f"network error with {self._where()} "
                             f"({type(exc).__name__}: {self._text(exc)})")
        raise exc  # a bug of ours: not retried, the pipeline logs its traceback

    def _reply_failure(self, exc: smtplib.SMTPResponseException) -> Retryable | Permanent:
        code, text = exc.smtp_code, self._text(exc.smtp_error)
        if isinstance(exc, _Refused):
            what = f"{exc.command} refused ({code} {text})"
        elif isinstance(exc, smtplib.SMTPAuthenticationError):
            what = f"login as {self.username!r} refused ({code} {text})"
            if not 400 <= code < 500:
                what += f"; check {key_name('email_username')} and {key_name('email_password')}"
        elif isinstance(exc, smtplib.SMTPSenderRefused):
            what = f"sender {self.envelope_from} refused ({code} {text})"
            if code == 552:
                what += "; the message with the report is larger than the server accepts"
            elif code >= 500:
                what += (f"; check {key_name('email_from')} (servers often accept only the "
                         "login's own address)")
        elif isinstance(exc, smtplib.SMTPDataError):
            what = f"message refused ({code} {text})"
        elif isinstance(exc, smtplib.SMTPConnectError):
            what = f"{self._where()} refused the session ({code} {text})"
        elif isinstance(exc, smtplib.SMTPHeloError):
            what = f"EHLO/HELO refused ({code} {text})"
        else:
            what = f"{self._where()} answered {code} {text}"
        if 500 <= code < 600:
            return Permanent(what)
        return Retryable(what)  # 4xx (421 closing, 451, 454...), or a reply that is no reply

    def _timed_out(self) -> Retryable:
        return Retryable(f"{self._where()} did not answer within {self.timeout:g}s")

    def _all_refused(self, refused: dict[str, tuple[int, bytes]]) -> Retryable | Permanent:
        reason = f"every recipient was refused: {self._refusals(refused)}"
        codes = [code for code, _ in refused.values()]
        if any(not 500 <= code < 600 for code in codes):
            return Retryable(reason)  # 421 (closing), 450/451/452 (greylisting, full)
        return Permanent(reason + f"; check {key_name('email_to')}")

    def _refusals(self, refused: dict[str, tuple[int, bytes]]) -> str:
        return "; ".join(f"{address} ({code} {self._text(reply)})"
                         for address, (code, reply) in refused.items())

    # -- text ------------------------------------------------------------------

    def _text(self, value: object) -> str:
        """A server's reply or an error as it may be shown: decoded, one line,
        secrets masked (the configured password by value, whatever its shape),
        cut to :data:`MAX_REPLY_LENGTH`."""
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        text = " ".join(str(value).split()) or "no details"
        if self._password:
            for secret in _password_forms(self.username, self._password):
                text = text.replace(secret, "[REDACTED]")
        text = safe_text(mask_text(text))
        return text if len(text) <= MAX_REPLY_LENGTH else text[:MAX_REPLY_LENGTH] + "…"

    def _helo_name(self) -> str:
        """The name given in ``EHLO``: this host's FQDN as smtplib finds it,
        looked up once (a reverse DNS lookup can be slow), not per connection."""
        if self._local_hostname is None:
            self._local_hostname = socket.getfqdn()
        return self._local_hostname

    def _where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def _security_text(self) -> str:
        return {"starttls": "STARTTLS, certificate verified",
                "ssl": "TLS, certificate verified"}.get(self.security, "unencrypted")


class _Refused(smtplib.SMTPResponseException):
    """A refused command that smtplib reports without naming it (``STARTTLS``)."""

    def __init__(self, code: int, reply: bytes | str, command: str) -> None:
        super().__init__(code, reply)
        self.command = command


def _quit_quietly(smtp: smtplib.SMTP) -> None:
    """``QUIT`` if the server still listens; close the socket in any case."""
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def _password_forms(username: str | None, password: str) -> list[str]:
    """The password as it could come back in a careless server's reply:
    itself, base64 of it (``AUTH LOGIN``) and of the ``AUTH PLAIN`` blob."""
    forms = [password, base64.b64encode(password.encode()).decode()]
    if username is not None:
        forms.append(base64.b64encode(f"\0{username}\0{password}".encode()).decode())
    return [form for form in forms if len(form) >= 3]


# --- the message -----------------------------------------------------------------


def build_subject(metrics: PerformanceMetrics) -> str:
    """One line of at most :data:`MAX_SUBJECT_LENGTH` characters that names
    the endpoint and the duration first (so no long URL can cut them off),
    then the request. Every control character is escaped and whitespace
    collapsed: a CR/LF from a request can never start a header of its own."""
    m = metrics
    if m.kind == "regression":  # its summary names the endpoint and the p95 first
        return _one_line(f"[perfwatch] {m.summary()}".replace("=?", "=%3F"),
                         MAX_SUBJECT_LENGTH)
    name = _one_line(m.name if m.kind != "function" else f"{m.name}()", 100)
    verb = "still running after" if m.hung else "took"
    subject = (f"[perfwatch] {'Hung' if m.hung else 'Slow'} {m.kind} {name} {verb} "
               f"{m.duration:.3f}s (threshold {m.threshold:.3f}s)")
    if m.method:
        subject += f": {m.method} {m.path or m.url}"
    # "=?" starts an RFC 2047 encoded word, which readers decode: a URL holding
    # "=?utf-8?b?DQpCY2M6...?=" would show a line break in the subject.
    return _one_line(subject.replace("=?", "=%3F"), MAX_SUBJECT_LENGTH)


def build_body(metrics: PerformanceMetrics, report: Report) -> str:
    """The plain-text body: the report's text (summary and console tree),
    where the report is, and who sent the mail."""
    lines = [printable(line) for line in report.text.splitlines()]
    text = "\n".join(lines)
    if len(text) > MAX_BODY_LENGTH:
        text = text[:MAX_BODY_LENGTH] + _CUT_BODY
    tail = ["", "The full report is attached; open it in a browser:", f"  {report.filename}"]
    link = report.link()
    if link:
        tail += ["It is also at:", f"  {printable(link)}"]
    tail += ["", "-- ",
             f"flask-perfwatch on {printable(metrics.host)} (pid {metrics.pid}), "
             f"alert {metrics.id}"]
    return text + "\n" + "\n".join(tail) + "\n"


def message_id(metrics: PerformanceMetrics, sender: str) -> str:
    """``<perfwatch.<alert id>@<sender's domain>>``: the same for every attempt
    (and every rebuild) of one alert, so duplicates can be recognised.
    :func:`email.utils.make_msgid` is not used: its random part would differ
    between builds, and without a domain it asks DNS for the host's name."""
    domain = sender.rpartition("@")[2]
    if not _HOST_RE.match(domain):
        domain = "perfwatch.invalid"
    alert = re.sub(r"[^A-Za-z0-9]", "", metrics.id) or "alert"
    return f"<perfwatch.{alert}@{domain}>"


def _one_line(text: str, limit: int) -> str:
    text = " ".join(safe_text(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


# --- configuration ---------------------------------------------------------------


def _invalid(config: Config, field_name: str, value: object, expected: str) -> ConfigError:
    return ConfigError.invalid(key_name(field_name), value,
                               config.sources.get(field_name, "default"), expected)


def _host(config: Config) -> str:
    host = config.email_host
    expected = ("the SMTP server's host name or IP address, e.g. 'smtp.example.com' (no "
                f"scheme or port: the port goes in {key_name('email_port')})")
    if host is None:
        raise _invalid(config, "email_host", None, expected + " (needed by the email notifier)")
    host = host.strip()
    if _HOST_RE.match(host):
        return host
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise _invalid(config, "email_host", host, expected) from None


def _credentials(config: Config, host: str) -> tuple[str | None, str | None]:
    username, password = config.email_username, config.email_password
    if username is not None and not password:
        raise _invalid(config, "email_password", None,
                       f"the password of {key_name('email_username')}={username!r}")
    if password and username is None:
        raise _invalid(config, "email_username", None,
                       f"the login name that goes with {key_name('email_password')}")
    if username is not None and config.email_security == "none" and host not in LOCAL_HOSTS:
        raise _invalid(config, "email_security", "none",
                       f"'starttls' or 'ssl' when {key_name('email_password')} is set: a "
                       f"password is sent unencrypted only to a relay on this host "
                       f"({', '.join(sorted(LOCAL_HOSTS))})")
    return username, password


def _parse_address(value: str) -> tuple[str, str] | None:
    """``(display name, address)`` of one ASCII address, or None."""
    if not value.isascii() or safe_text(value) != value:
        return None
    parsed = email.utils.getaddresses([value])
    if len(parsed) != 1:
        return None
    name, address = parsed[0]
    if not _ADDRESS_RE.match(address):
        return None
    return name, address


def _sender(config: Config) -> tuple[str, str]:
    expected = "one e-mail address, e.g. 'perfwatch@example.com' or 'PerfWatch <pw@example.com>'"
    value = config.email_from
    if value is None:
        raise _invalid(config, "email_from", None, expected + " (needed by the email notifier)")
    parsed = _parse_address(value)
    if parsed is None:
        raise _invalid(config, "email_from", value, expected)
    return email.utils.formataddr(parsed), parsed[1]


def _recipients(config: Config) -> tuple[str, tuple[str, ...]]:
    expected = ("a list of e-mail addresses (ASCII), e.g. ['ops@example.com', "
                "'Dev Team <dev@example.com>']")
    values = config.email_to
    if not values:
        raise _invalid(config, "email_to", list(values),
                       expected + " (needed by the email notifier)")
    shown: list[str] = []
    addresses: list[str] = []
    for value in values:
        parsed = _parse_address(value)
        if parsed is None:
            raise _invalid(config, "email_to", value, expected)
        if parsed[1].lower() not in (a.lower() for a in addresses):
            shown.append(email.utils.formataddr(parsed))
            addresses.append(parsed[1])
    return ", ".join(shown), tuple(addresses)
