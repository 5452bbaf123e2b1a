"""Where reports are kept for their links: the local report folder (``file:``,
the default) or an S3 bucket (``PERFWATCH_REPORT_STORE=s3://bucket/prefix``).

With S3, the pipeline writes each alert's report to the local folder first
(the folder stays the source of truth and the fallback), then uploads it on
the delivery thread with boto3 (the ``s3`` extra) and gives it a presigned GET
link (``Report.url``) that any host can open for ``PERFWATCH_REPORT_LINK_TTL``,
before any notifier sees the alert. ``PERFWATCH_S3_ENDPOINT_URL`` points boto3
at any S3-compatible store (MinIO, Ceph, R2); credentials and the region come
from boto3's usual chain (environment, shared files, instance role), never from
our configuration.

Decisions:

* **Bounded.** The client has explicit connect and read timeouts and one retry
  at most (:data:`CONNECT_TIMEOUT`, :data:`READ_TIMEOUT`, :data:`MAX_ATTEMPTS`),
  so an upload costs the delivery thread at most about half a minute; after
  the endpoint was unreachable, uploads are skipped for :data:`UNREACHABLE_COOLDOWN`
  seconds, so an outage does not make every alert wait for timeouts. Nothing
  here runs on a request thread.
* **No connection kept between alerts.** Alerts are rare (dedupe), so each
  operation closes the client's connections when it ends: nothing to share
  with a forked child or leave open at exit. The client itself (its API
  model takes a while to load) is created lazily, once per process, and again
  in a forked child (:mod:`flask_perfwatch._fork`).
* **No secret in a message.** Errors are rebuilt from the error *code* and
  the server's short message, masked by value (the access key id, secret key
  and session token boto3 found, and anything that looks like a credential);
  a presigned link is a bearer secret and is never logged here.
* **Names we own.** An object's key is the prefix plus the report's file
  name, re-checked to be ``perfwatch-<safe characters>.html``; pruning
  (``PERFWATCH_REPORT_RETENTION``) only ever deletes keys of that form directly
  under the prefix.

This module imports nothing of ours at module level but leaf modules, so
:mod:`flask_perfwatch.config` can use :func:`parse_report_store` to validate
the key without an import cycle.
"""

from __future__ import annotations

import importlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from . import _fork
from ._redact import REDACTED, mask_text
from ._util import safe_text
from .exceptions import ConfigError, NotifierError
from .reportdir import REPORT_PREFIX, REPORT_SUFFIX, PruneResult, encode

if TYPE_CHECKING:
    from .config import Config
    from .report import Report

logger = logging.getLogger(__name__)

#: ``PERFWATCH_REPORT_STORE`` of the local report folder (the default).
FILE_STORE = "file:"
S3_SCHEME = "s3://"
#: An S3 SigV4 presigned link is valid for at most 7 days (seconds).
MAX_LINK_TTL = 7 * 86400
#: The region when boto3's chain names none (as the AWS CLI assumes).
DEFAULT_REGION = "us-east-1"
#: Seconds to open a connection to the endpoint, and to wait for an answer.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 15.0
#: Attempts per operation (botocore's ``standard`` retry mode): one retry.
MAX_ATTEMPTS = 2
#: After the endpoint was unreachable, uploads are skipped for this long (s).
UNREACHABLE_COOLDOWN = 30.0
#: The bucket is pruned at most this often (s): listing costs requests, every
#: host of a fleet prunes the same prefix, and retention counts in days.
PRUNE_INTERVAL = 3600.0
#: One prune looks at this many keys at most; keys sort by the UTC time in
#: their name, so the oldest come first and the rest wait for the next prune.
MAX_PRUNE_SCAN = 10_000
#: ``delete_objects`` takes at most this many keys per call.
DELETE_BATCH = 1000
#: The longest prefix accepted (an S3 key is at most 1024 bytes).
MAX_PREFIX_LENGTH = 512
#: The server's own message is cut to this many characters in our errors.
MAX_MESSAGE = 200

_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_REPORT_NAME = re.compile(re.escape(REPORT_PREFIX) + r"[A-Za-z0-9._-]+" + re.escape(REPORT_SUFFIX))
#: Error codes of refused access (HeadBucket answers a bare 403).
_DENIED = frozenset({"AccessDenied", "403"})
_BAD_PREFIX_CHAR = re.compile(r"[\x00-\x1f\x7f\\?#]")

#: botocore exceptions that mean the endpoint could not be reached (by name:
#: botocore is imported only when the store is used).
_UNREACHABLE = frozenset({"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                          "ConnectionClosedError", "ProxyConnectionError", "SSLError",
                          "ConnectionError", "HTTPClientError"})
_OTHER_REGION = "the bucket is in another region: set AWS_DEFAULT_REGION to it"
#: What to do about an error code, in words (added to the message).
_HINTS = {
    "NoSuchBucket": "the bucket does not exist: create it, or fix {store}",
    "404": "the bucket does not exist: create it, or fix {store}",
    "AccessDenied": "the credentials boto3 found may not {action} here (see the IAM "
                    "permissions in the docs' report-store page)",
    "403": "the credentials boto3 found may not {action} here (see the IAM permissions in "
           "the docs' report-store page)",
    "InvalidAccessKeyId": "the store does not know the access key boto3 found",
    "SignatureDoesNotMatch": "the secret key boto3 found does not match its access key",
    "ExpiredToken": "the session token boto3 found has expired",
    "InvalidToken": "the session token boto3 found is not valid",
    "AuthorizationHeaderMalformed": _OTHER_REGION,
    "PermanentRedirect": _OTHER_REGION,
    "301": _OTHER_REGION,
    "NoCredentialsError": "boto3 found no credentials (environment, shared credentials "
                          "file, instance or task role)",
    "PartialCredentialsError": "boto3 found incomplete credentials",
}


def _key_name(field: str) -> str:
    from .config import key_name  # lazily: config imports this module

    return key_name(field)


# --- the URL --------------------------------------------------------------------


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix (empty, or ending with ``/``)."""

    bucket: str
    prefix: str

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}"


def parse_s3_url(text: str) -> S3Location:
    """``s3://bucket/some/prefix`` -> ``S3Location("bucket", "some/prefix/")``;
    :class:`ValueError` naming what is wrong.

    The bucket follows S3's naming rules loosely (3-255 letters, digits, dots,
    hyphens, underscores: older buckets and other S3-compatible stores allow
    more than today's AWS rules). Credentials, a port, a query or a fragment
    are refused rather than ignored. The prefix is taken literally (no
    percent-decoding, as the AWS CLI does) and may not hold empty, ``.`` or
    ``..`` segments, backslashes or control characters."""
    if text[:len(S3_SCHEME)].lower() != S3_SCHEME:
        raise ValueError("not an s3:// URL")
    rest = text[len(S3_SCHEME):]
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket:
        raise ValueError("credentials do not belong in the URL: boto3 reads them from its "
                         "usual chain (environment, shared files, instance role)")
    if not bucket:
        raise ValueError("the bucket name is empty")
    if ":" in bucket:
        raise ValueError(f"an s3:// URL has no port: set {_key_name('s3_endpoint_url')} "
                         "for another endpoint")
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"{safe_text(bucket)!r} is not a bucket name (3-255 letters, digits, "
                         "'.', '-' or '_', starting and ending with a letter or digit)")
    if _BAD_PREFIX_CHAR.search(prefix):
        raise ValueError("the prefix may not hold control characters, backslashes, '?' or '#'")
    if len(prefix) > MAX_PREFIX_LENGTH:
        raise ValueError(f"the prefix is longer than {MAX_PREFIX_LENGTH} characters")
    segments = prefix.removesuffix("/").split("/") if prefix else []
    if any(segment in ("", ".", "..") for segment in segments):
        raise ValueError("the prefix may not hold empty, '.' or '..' segments")
    return S3Location(bucket, "".join(f"{segment}/" for segment in segments))


def parse_report_store(value: str) -> str:
    """The normalised ``PERFWATCH_REPORT_STORE``: ``file:`` or
    ``s3://bucket/prefix/``; :class:`ValueError` naming what is wrong."""
    text = value.strip()
    if text.lower() in ("file", "file:", "file://"):
        return FILE_STORE
    if text.lower().startswith("file:"):
        raise ValueError(f"'file:' takes no path: the folder is {_key_name('report_dir')}")
    if "://" not in text:
        raise ValueError("not a URL")
    if not text.lower().startswith(S3_SCHEME):
        raise ValueError(f"unknown scheme {safe_text(text.partition(':')[0])!r}")
    return str(parse_s3_url(text))


def report_key_name(filename: str) -> str:
    """The object name of a report file: ``filename`` itself when it is one of
    ours (``perfwatch-<letters, digits, . _ ->.html``), else made one (unsafe
    characters replaced by ``_``), so no key is ever built from an unchecked
    path component."""
    if _REPORT_NAME.fullmatch(filename):
        return filename
    name = _UNSAFE_NAME.sub("_", filename).strip("._") or "report"
    name = name.removeprefix(REPORT_PREFIX.rstrip("-")).strip("._-") or "report"
    return f"{REPORT_PREFIX}{name.removesuffix(REPORT_SUFFIX)}{REPORT_SUFFIX}"


# --- errors ---------------------------------------------------------------------


class ReportStoreError(NotifierError):
    """The report store could not take (or link, list, delete) a report.

    ``code`` is the store's error code (``NoSuchBucket``, ``AccessDenied``...)
    or botocore's exception name (``EndpointConnectionError``); the message
    says what was attempted, the code, the server's short explanation and what
    to do, never a credential or a presigned link."""

    def __init__(self, message: str, *, code: str, retryable: bool = False) -> None:
        super().__init__(message, retryable=retryable)
        self.code = code


def _error_code(exc: BaseException) -> tuple[str, str, int | None]:
    """``(code, the server's message, HTTP status)`` of a botocore error."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        meta = response.get("ResponseMetadata") or {}
        status = meta.get("HTTPStatusCode")
        code = str(error.get("Code") or status or type(exc).__name__)
        return code, str(error.get("Message") or ""), status if isinstance(status, int) else None
    return type(exc).__name__, str(exc), None


def _unreachable(exc: BaseException) -> bool:
    return any(cls.__name__ in _UNREACHABLE for cls in type(exc).__mro__
               if cls.__module__.startswith("botocore") or cls.__module__.startswith("urllib3"))


# --- the store --------------------------------------------------------------------


class S3ReportStore:
    """Uploads reports to ``s3://bucket/prefix/`` and links to them with
    presigned GET URLs (see the module docstring for the decisions).

    Build it with :meth:`from_config` (at ``init_app``: raises
    :class:`~flask_perfwatch.exceptions.ConfigError` when boto3 is missing).
    :meth:`upload` runs on the delivery thread; :meth:`check` for
    ``flask perfwatch check``. Thread-safe; fork-safe."""

    #: Its name in ``alert_failed`` / ``alert_sent`` and in ``stats()``.
    name: ClassVar[str] = "s3"

    def __init__(self, location: S3Location, *, endpoint_url: str | None = None,
                 link_ttl: float = MAX_LINK_TTL, retention: float = 0.0,
                 interval: float = PRUNE_INTERVAL,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.location = location
        self.bucket = location.bucket
        self.prefix = location.prefix
        self.endpoint_url = endpoint_url
        #: seconds a link is valid (a whole number: what S3 signs)
        self.link_ttl = max(1, min(int(link_ttl), MAX_LINK_TTL))
        self.retention = retention
        self.interval = interval
        self._clock = clock
        self._wall_clock = wall_clock
        self._client: Any = None
        self._credentials: Any = None
        self.region: str | None = None
        self._lock = threading.Lock()        # one operation at a time; guards the client
        self._prune_lock = threading.Lock()  # one prune at a time; others skip
        self._last_prune: float | None = None
        #: pruning was refused (no s3:ListBucket / s3:DeleteObject): not tried again
        self.prune_denied = False
        self._unreachable_at: float | None = None
        _fork.register(self)

    @classmethod
    def from_config(cls, config: Config) -> S3ReportStore:
        """The store of ``config.report_store`` (an ``s3://`` URL)."""
        require_boto3()
        return cls(parse_s3_url(config.report_store), endpoint_url=config.s3_endpoint_url,
                   link_ttl=config.report_link_ttl, retention=config.report_retention)

    # -- the client ---------------------------------------------------------------

    def _client_locked(self) -> Any:
        """The boto3 client (created on first use; call with ``_lock`` held)."""
        if self._client is None:
            boto3 = require_boto3()
            botocore_config = importlib.import_module("botocore.config")
            session = boto3.session.Session()
            self.region = session.region_name or DEFAULT_REGION
            # Virtual-hosted URLs on AWS (regional, the recommended style), but
            # path-style for another endpoint (MinIO's default, and what any
            # S3-compatible store accepts) and for dotted bucket names (their
            # virtual host would not match the TLS certificate).
            path_style = self.endpoint_url is not None or "." in self.bucket
            config = botocore_config.Config(
                connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                signature_version="s3v4",  # presigned links with X-Amz-Expires
                s3={"addressing_style": "path" if path_style else "virtual"},
                user_agent_extra="flask-perfwatch")
            self._client = session.client("s3", region_name=self.region,
                                          endpoint_url=self.endpoint_url, config=config)
            self._credentials = session.get_credentials()
        return self._client

    def _release_locked(self) -> None:
        """Close the client's connections (it opens new ones when used again)."""
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # closing idle sockets; nothing to do about a failure
                logger.debug("closing the S3 client's connections failed", exc_info=True)

    def close(self) -> None:
        """Release the client (a later use creates it again)."""
        with self._lock:
            self._release_locked()
            self._client = None

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._prune_lock = threading.Lock()
        self._client = None  # the parent's pool and sockets are not ours
        self._credentials = None

    # -- errors, without secrets ---------------------------------------------------

    def _mask(self, text: str) -> str:
        """``text`` with the credentials boto3 found, and anything that looks
        like a credential, masked; control characters escaped."""
        creds = self._credentials
        if creds is not None:
            for attr in ("access_key", "secret_key", "token"):
                try:
                    value = getattr(creds, attr, None)
                except Exception:  # a refreshable credential that fails to refresh
                    value = None
                if isinstance(value, str) and len(value) >= 4:
                    text = text.replace(value, REDACTED)
        return safe_text(mask_text(text))

    def _error(self, what: str, action: str, exc: BaseException) -> ReportStoreError:
        code, message, status = _error_code(exc)
        unreachable = _unreachable(exc)
        if unreachable:
            where = self.endpoint_url or f"AWS S3 ({self.region or DEFAULT_REGION})"
            detail = f"the endpoint {where} could not be reached"
        else:
            detail = message[:MAX_MESSAGE] + ("…" if len(message) > MAX_MESSAGE else "")
        hint = _HINTS.get(code, "")
        text = f"{what}: {code}"
        if detail:
            text += f" ({detail})"
        if status is not None and not code.isdigit():
            text += f", HTTP {status}"
        if hint:
            text += "; " + hint.format(store=_key_name("report_store"), action=action)
        retryable = unreachable or (status is not None and (status >= 500 or status == 429))
        return ReportStoreError(self._mask(text), code=code, retryable=retryable)

    # -- upload and link -----------------------------------------------------------

    def key_for(self, filename: str) -> str:
        """The object key of a report file name: prefix + :func:`report_key_name`."""
        return self.prefix + report_key_name(filename)

    def upload(self, report: Report) -> str:
        """Upload ``report`` (its local file's name when it has one, so the
        copies match) and return its presigned GET link; raise
        :class:`ReportStoreError` (never a credential in it) on failure."""
        name = report.path.name if report.path is not None else report.filename
        key = self.key_for(name)
        where = f"uploading {key} to bucket {self.bucket!r}"
        ago = self._unreachable_ago()
        if ago is not None:
            raise ReportStoreError(
                f"{where}: skipped, the endpoint was unreachable {ago:.0f}s ago (tried "
                f"again {UNREACHABLE_COOLDOWN:.0f}s after that)", code="Skipped",
                retryable=True)
        body = encode(report.html)
        with self._lock:
            try:
                client = self._client_locked()
                client.put_object(Bucket=self.bucket, Key=key, Body=body,
                                  ContentType="text/html; charset=utf-8")
                url: str = client.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": key},
                    ExpiresIn=self.link_ttl)
            except Exception as exc:
                error = self._error(where, "s3:PutObject", exc)
                unreachable = _unreachable(exc)
            else:
                self._unreachable_at = None
                return url
            finally:
                self._release_locked()
        if unreachable:
            self._unreachable_at = self._clock()
        raise error

    def _unreachable_ago(self) -> float | None:
        """Seconds since the endpoint was found unreachable, within the
        cooldown; else None."""
        failed_at = self._unreachable_at
        if failed_at is None:
            return None
        ago = self._clock() - failed_at
        return ago if ago < UNREACHABLE_COOLDOWN else None

    # -- check ----------------------------------------------------------------------

    def describe(self) -> str:
        """Bucket, prefix, endpoint and link lifetime, in one line."""
        endpoint = self.endpoint_url or "AWS"
        return (f"bucket {self.bucket!r}, prefix {self.prefix!r}, endpoint {endpoint}, "
                f"links valid {format_ttl(self.link_ttl)}")

    def check(self) -> str:
        """Reach the bucket without writing (``HeadBucket``: needs
        ``s3:ListBucket``) and say what the store is; raise
        :class:`ReportStoreError` saying why it cannot be used. A bucket in
        another region than boto3's is an error too: its links would not
        open."""
        with self._lock:
            try:
                client = self._client_locked()
                answer = client.head_bucket(Bucket=self.bucket)
            except Exception as exc:
                raise self._error(f"reaching bucket {self.bucket!r}", "s3:ListBucket", exc
                                  ) from None
            finally:
                self._release_locked()
            region = self.region
            method = getattr(self._credentials, "method", None)
        headers = (answer.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
        bucket_region = headers.get("x-amz-bucket-region")
        if self.endpoint_url is None and bucket_region and bucket_region != region:
            raise ReportStoreError(
                f"bucket {self.bucket!r} is in region {safe_text(bucket_region)} but boto3's "
                f"region is {region}: set AWS_DEFAULT_REGION={safe_text(bucket_region)} (links are "
                "signed for one region)", code="WrongRegion")
        creds = f"credentials from {method}" if method else "credentials found"
        return (f"{self.describe()}; bucket reachable (region {region}, {creds}); nothing "
                "written (test-alert uploads a report)")

    # -- retention -----------------------------------------------------------------

    def prune_if_due(self) -> PruneResult | None:
        """:meth:`prune` if :attr:`interval` has passed since the last one (or
        there was none yet); else, while another thread prunes, or while the
        endpoint is known to be unreachable (it is tried at the next alert
        after the cooldown), or once the credentials were refused the listing
        or deletion (a lifecycle rule may do the pruning), None."""
        if self.retention <= 0 or self.prune_denied or self._unreachable_ago() is not None:
            return None
        now = self._clock()
        if self._last_prune is not None and now - self._last_prune < self.interval:
            return None
        if not self._prune_lock.acquire(blocking=False):
            return None
        try:
            self._last_prune = now
            return self.prune()
        finally:
            self._prune_lock.release()

    def prune(self, now: float | None = None) -> PruneResult:
        """Delete the reports under the prefix last modified more than
        ``retention`` seconds before ``now`` (default: the time now); never
        raises for the store's errors (they are logged with their code).

        Only keys of our report name pattern directly under the prefix are
        looked at (a ``/`` delimiter keeps other "folders" out of the listing,
        even with an empty prefix), at most :data:`MAX_PRUNE_SCAN` per call,
        oldest names first."""
        if self.retention <= 0:
            return PruneResult()
        cutoff = (self._wall_clock() if now is None else now) - self.retention
        removed = freed = kept = kept_bytes = 0
        errors: list[str] = []
        denied = False
        with self._lock:
            try:
                client = self._client_locked()
                old: list[tuple[str, int]] = []
                for key, modified, size in self._listing(client):
                    if modified < cutoff:
                        old.append((key, size))
                    else:
                        kept += 1
                        kept_bytes += size
                sizes = dict(old)
                for batch in _batches([key for key, _ in old], DELETE_BATCH):
                    answer = client.delete_objects(Bucket=self.bucket, Delete={
                        "Objects": [{"Key": key} for key in batch], "Quiet": True})
                    failed = {str(e.get("Key")): str(e.get("Code") or "error")
                              for e in answer.get("Errors") or []}
                    errors += failed.values()
                    denied = denied or "AccessDenied" in failed.values()
                    for key in batch:
                        if key not in failed:
                            removed += 1
                            freed += sizes[key]
            except Exception as exc:
                errors.append(self._error(f"pruning {self.location}", "s3:ListBucket and "
                                          "s3:DeleteObject", exc).args[0])
                if _unreachable(exc):
                    self._unreachable_at = self._clock()
                denied = _error_code(exc)[0] in _DENIED
            finally:
                self._release_locked()
        if denied:
            self.prune_denied = True
            logger.warning("pruning the report store %s was refused (%s): this process stops "
                           "pruning the bucket; give the credentials s3:ListBucket and "
                           "s3:DeleteObject on the prefix, or let a lifecycle rule expire the "
                           "reports (see the report-store docs)", self.location,
                           "; ".join(sorted(set(errors))[:5]))
        elif errors:
            logger.warning("pruning the report store %s: %d error(s) (%s); will retry in %ds",
                           self.location, len(errors), "; ".join(sorted(set(errors))[:5]),
                           self.interval)
        elif removed:
            logger.info("pruned %d report(s) older than %s from %s", removed,
                        format_ttl(self.retention), self.location)
        return PruneResult(removed=removed, freed=freed, kept=kept, kept_bytes=kept_bytes,
                           errors=len(errors))

    def _listing(self, client: Any) -> Iterator[tuple[str, float, int]]:
        """``(key, last modified (epoch seconds), size)`` of our reports under the prefix."""
        paginator = client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/",
                                   PaginationConfig={"MaxItems": MAX_PRUNE_SCAN,
                                                     "PageSize": DELETE_BATCH})
        for page in pages:
            for item in page.get("Contents") or []:
                key = str(item.get("Key", ""))
                if not _REPORT_NAME.fullmatch(key[len(self.prefix):]):
                    continue
                yield key, item["LastModified"].timestamp(), int(item.get("Size") or 0)

    def __repr__(self) -> str:
        return f"<S3ReportStore {self.location}>"


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def format_ttl(seconds: float) -> str:
    """``604800`` -> ``7d``, ``5400`` -> ``1.5h``, ``90`` -> ``90s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def require_boto3() -> ModuleType:
    """Import boto3, or raise the :class:`~flask_perfwatch.exceptions.ConfigError`
    that names the extra to install (at ``init_app``)."""
    try:
        return importlib.import_module("boto3")
    except ImportError:
        raise ConfigError("the s3 report store needs the boto3 package: "
                          "pip install 'flask-perfwatch[s3]'", key=_key_name("report_store"),
                          expected="boto3 installed") from None


def create_report_store(config: Config) -> S3ReportStore | None:
    """The report store of ``config``: None for ``file:`` (the report folder,
    which the pipeline always writes, is the whole store), else an
    :class:`S3ReportStore`."""
    if config.report_store == FILE_STORE:
        return None
    return S3ReportStore.from_config(config)
