"""Configuration: one table of keys, several sources, validated once.

Every key is declared exactly once, as a field of :class:`Config` whose
metadata carries its default, parser and documentation: that table is the one
declaration. The environment reader, the file reader, ``app.config`` handling,
validation, the docs and the CLI all read it through :func:`config_fields`.
Code elsewhere should name a key in a message or an error through
:func:`key_name` (``key_name("store")``), which refuses a name the table does
not declare, so a misspelt or removed key fails loudly rather than printing a
name that does not exist. No other module spells a full ``PERFWATCH_*`` name
outside docstrings and comments; tests/test_key_names.py enforces it.

Precedence, highest first: keyword arguments, ``app.config``, environment
variables, the file named by ``PERFWATCH_CONFIG_FILE``, defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from ._redact import DEFAULT_NAMES, REDACTED, mask_text, redact_url, secret_url
from ._registry import ENGINES, STORES
from ._util import import_string, parse_duration, parse_size, safe_text
from .exceptions import ConfigError
from .reportstore import MAX_LINK_TTL, parse_report_store

PREFIX = "PERFWATCH_"
#: The one key that is not a :class:`Config` field: it names a file to read.
CONFIG_FILE_KEY = PREFIX + "CONFIG_FILE"
#: Keys of a config file may be nested under this table/section.
FILE_SECTION = "perfwatch"

DEFAULT_SOURCE = "default"
T = TypeVar("T")


class Parser(Generic[T]):
    """Turns a raw value (a string from the environment, or any value from
    ``app.config``/a file/keywords) into the typed value, or raises
    :class:`ValueError`. ``expected`` says in words what it accepts."""

    def __init__(self, func: Callable[[Any], T], expected: str) -> None:
        self.func = func
        self.expected = expected

    def __call__(self, value: Any) -> T:
        return self.func(value)


# --- parsers ---------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(value)


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(value)
    return seconds


def _interval(value: Any) -> float:
    seconds = _positive_duration(value)
    if not 0.0001 <= seconds <= 1.0:
        raise ValueError(value)
    return seconds


def _core_share(value: Any) -> float:
    """A share of one CPU core: ``"1%"``, ``"0.5 %"`` or a fraction ``0.01``
    (a bare number above 1 is refused: "5" could mean 5 % or 500 %)."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, str):
        text = value.strip()
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    elif isinstance(value, int | float):
        share = float(value)
    else:
        raise ValueError(value)
    if not 0.0 <= share <= 1.0 or share != share:  # NaN
        raise ValueError(value)
    return share


def _regression_factor(value: Any) -> float:
    """0 (off) or a factor above 1: at or under 1, ordinary noise would be a
    "regression"."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(value)
    factor = float(value.strip() if isinstance(value, str) else value)
    if factor != 0.0 and not 1.0 < factor < float("inf"):  # NaN fails both
        raise ValueError(value)
    return factor


def _int_in(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    """A parser of integers from ``minimum`` to ``maximum`` (None: no upper
    bound), given as ints or decimal strings; ValueError otherwise."""
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(value)
        if isinstance(value, str):
            value = value.strip()
            if not re.fullmatch(r"[+-]?\d+", value):
                raise ValueError(value)
            value = int(value)
        if not isinstance(value, int) or value < minimum \
                or (maximum is not None and value > maximum):
            raise ValueError(value)
        return value

    return parse


def _str_list(value: Any) -> tuple[str, ...]:
    """A list of non-empty strings; from the environment a comma-separated string."""
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
        return tuple(item for item in items if item)
    if isinstance(value, list | tuple):
        result = []
        for item in value:
            if not isinstance(item, str) or not item.strip():
                raise ValueError(value)
            result.append(item.strip())
        return tuple(result)
    raise ValueError(value)


def _optional_str(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(value)
    value = value.strip()
    return value or None


def _optional_path(value: Any) -> str | None:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    text = _optional_str(value)
    if text is None:
        return None
    return os.path.expanduser(os.path.expandvars(text))


def _redact_names(value: Any) -> tuple[str, ...]:
    """The built-in names plus the user's (never fewer than the built-ins)."""
    names = _str_list(value)
    return tuple(dict.fromkeys([*DEFAULT_REDACT, *names]))


def _optional_callable(value: Any) -> str | None:
    text = _optional_str(value)
    if text is None:
        return None
    if not callable(import_string(text)):
        raise ValueError(f"{text!r} is not callable")
    return text


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return str(value.strip().lower())
        raise ValueError(value)

    return parse


def _profiler(value: Any) -> str:
    return _choice(*ENGINES)(value)


def _dedup_key(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(value)
    value = value.strip()
    if value in ("endpoint+params", "endpoint"):
        return str(value)
    if not callable(import_string(value)):  # import fails with ValueError naming the problem
        raise ValueError(f"{value!r} is not callable")
    return str(value)


def _store_url(value: Any) -> str:
    """The one check of a store URL's form and scheme (the store checks the rest)."""
    if not isinstance(value, str):
        raise ValueError(value)
    value = value.strip()
    scheme = urlsplit(value).scheme.lower()
    if scheme not in STORES or "://" not in value:
        raise ValueError(value)
    return str(value)


def _url(value: Any) -> str | None:
    text = _optional_str(value)
    if text is None:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError(value) from None
    return text.rstrip("/")


def _required_url(value: Any) -> str:
    text = _url(value)
    if text is None:
        raise ValueError(value)
    return text


def _base_url(value: Any) -> str | None:
    """An http(s) URL that things are appended to: always one trailing slash."""
    text = _url(value)
    return None if text is None else text + "/"


def _required_base_url(value: Any) -> str:
    text = _base_url(value)
    if text is None:
        raise ValueError(value)
    return text


def _report_store(value: Any) -> str:
    """``file:`` or ``s3://bucket/prefix/`` (normalised; see
    :func:`~flask_perfwatch.reportstore.parse_report_store`)."""
    if not isinstance(value, str):
        raise ValueError(value)
    return parse_report_store(value)


def _endpoint_url(value: Any) -> str | None:
    """An http(s) endpoint of an S3-compatible store, with no credentials,
    query or fragment in it (boto3 takes credentials from its own chain)."""
    if isinstance(value, str) and value.strip() \
            and urlsplit(value.strip()).scheme.lower() not in ("http", "https"):
        raise ValueError("the scheme must be http or https")
    text = _url(value)
    if text is None:
        return None
    parts = urlsplit(text)
    if "@" in parts.netloc:
        raise ValueError("credentials do not belong in the URL: boto3 reads them from its "
                         "usual chain (environment, shared files, instance role)")
    if parts.query or parts.fragment:
        raise ValueError("a query or fragment has no meaning here")
    return text


def _link_ttl(value: Any) -> float:
    """A presigned link's lifetime: 1 s to 7 days (S3 SigV4's limit)."""
    seconds = parse_duration(value)
    if seconds < 1:
        raise ValueError("shorter than 1 second")
    if seconds > MAX_LINK_TTL:
        raise ValueError(f"longer than 7 days ({MAX_LINK_TTL} s): an S3 presigned link "
                         "(SigV4) is valid for at most 7 days")
    return seconds


def _port(value: Any) -> int:
    port = _int_in(1)(value)
    if port > 65535:
        raise ValueError(value)
    return port


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    """Extra HTTP headers: a mapping of names to values (from the environment
    a JSON object), kept as ``(name, value)`` pairs so that :class:`Config`
    stays hashable and picklable. Names must be HTTP tokens and values one
    line (no header injection)."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return ()
        try:
            value = json.loads(text)
        except ValueError:
            raise ValueError("not a JSON object") from None
    if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        value = dict(value)  # already parsed (Config.replace, a copy)
    if not isinstance(value, Mapping):
        raise ValueError(value)
    headers = []
    for name, item in value.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise ValueError(f"header name {name!r}")
        if not isinstance(item, str) or any(c in item for c in "\r\n\0"):
            raise ValueError(f"header {name!r}: a one-line string")
        headers.append((name, item))
    return tuple(headers)


def _mask_headers(value: Any) -> Any:
    """Header values are shown as ``[REDACTED]`` (names stay, to be found)."""
    if isinstance(value, Mapping):
        return {name: REDACTED for name in value}
    if isinstance(value, tuple):
        return tuple((pair[0], REDACTED) if isinstance(pair, tuple) and pair else REDACTED
                     for pair in value)
    return REDACTED


def _mask_webhook_url(value: str) -> str:
    """A webhook URL carries its own credential (path token, ``sig=``): show
    only where it points."""
    return secret_url(value)


class Sources(dict[str, str]):
    """``Config.sources``: where each value came from. Read-only, yet (unlike
    a ``MappingProxyType``) it can be copied, deep-copied and pickled, so a
    :class:`Config` can go through ``dataclasses.asdict``, ``copy.deepcopy``
    and ``pickle`` (to a subprocess, into a log)."""

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("Config.sources is read-only")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self),))

    def __copy__(self) -> Sources:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Sources:
        return self


# --- the table -------------------------------------------------------------

#: Built-in secret names; ``PERFWATCH_REDACT`` adds to them (they always apply).
DEFAULT_REDACT = DEFAULT_NAMES


def _redacted(value: Any) -> str:
    return "[REDACTED]"


def _key(default: Any, parser: Callable[[Any], Any], expected: str, doc: str,
         *, mask: Callable[[Any], Any] | None = None) -> Any:
    """Declare one configuration key (a :class:`Config` field). ``mask`` hides
    a secret value (or part of it) wherever the value is shown."""
    meta = {"parser": Parser(parser, expected), "doc": doc, "mask": mask}
    if isinstance(default, list):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


def shown(f: dataclasses.Field[Any], value: Any) -> Any:
    """``value`` of key ``f`` as it may be shown in messages, logs and the CLI."""
    mask = f.metadata.get("mask")
    if mask is None:
        return value
    if isinstance(value, str) or (mask is _mask_headers and isinstance(value, Mapping | tuple)):
        return mask(value)
    return value  # any other type is invalid anyway, and shown so it can be found


def _retries_key() -> Any:
    """``PERFWATCH_<CHANNEL>_RETRIES``: the same for every channel."""
    return _key(3, _int_in(0), "an integer >= 0",
                "Attempts after the first failure, with backoff.")


def _timeout_key(doc: str) -> Any:
    """``PERFWATCH_<CHANNEL>_TIMEOUT`` (10 s): ``doc`` says what it bounds."""
    return _key(10.0, _positive_duration, _POSITIVE_DURATION, doc)


_DURATION = "a duration in seconds such as 1.5, '500ms', '2s', '6h' or '10d'"
_POSITIVE_DURATION = "a positive duration in seconds such as 1.5, '500ms', '2s', '6h' or '10d'"


@dataclass(frozen=True, repr=False)
class Config:
    """Validated flask_perfwatch settings.

    Build it directly with the short lower-case names
    (``Config(threshold=0.5)``), or from a source with :meth:`from_env`,
    :meth:`from_file` or :meth:`from_mapping`. A Flask app's ``app.config`` is
    read through :meth:`load` by :meth:`PerfWatch.init_app
    <flask_perfwatch.PerfWatch.init_app>`. Every value is validated on
    construction; a bad one raises :class:`~flask_perfwatch.exceptions.ConfigError`.
    """

    enabled: bool = _key(True, _bool, "a boolean (true/false/1/0/yes/no/on/off)",
                         "Master switch. When false nothing is timed or profiled.")
    threshold: float = _key(1.0, _positive_duration, _POSITIVE_DURATION,
                            "Requests and watched functions slower than this are slow.")
    profiler: str = _key("sampler", _profiler, f"one of {', '.join(ENGINES)}",
                         "Profiling engine: ``sampler`` (samples in-flight requests from a "
                         "thread; for production), ``pyinstrument`` (a pyinstrument.Profiler "
                         "per request; full fidelity, slower views) or ``off`` (timing only; "
                         "reports carry the metadata).")
    profile_interval: float = _key(0.001, _interval, "between 0.0001 and 1 second",
                                   "Seconds between two stack samples (the shortest; "
                                   "see ``PERFWATCH_SAMPLER_BUDGET``).")
    sampler_budget: float = _key(0.01, _core_share,
                                 "a share of one CPU core from 0 to 100%, such as '1%' or 0.01",
                                 "The most CPU the ``sampler`` engine's thread may use, as a "
                                 "share of one core (default 1%): when its samples get "
                                 "expensive (many requests in flight, deep stacks) it samples "
                                 "less often. 0: no budget, a sample every "
                                 "``PERFWATCH_PROFILE_INTERVAL``.")
    hang_after: float = _key(15.0, parse_duration, _DURATION,
                             "Requests still running after this long raise ``request_hung`` "
                             "once (engines that can observe in-flight requests); 0 disables.")
    dedup_window: float = _key(864000.0, parse_duration, _DURATION,
                               "The same dedupe key alerts at most once per window "
                               "(default 10 days); 0 disables dedupe.")
    dedup_key: str = _key("endpoint+params", _dedup_key,
                          "'endpoint+params', 'endpoint' or an importable 'module:callable'",
                          "What makes two slow requests 'the same': method + endpoint + sorted "
                          "query params, method + endpoint, or a callable taking the metrics "
                          "and returning a string.")
    store: str = _key("memory://", _store_url,
                      "a store URL: 'memory://', 'sqlite:///path/to/file.db' or "
                      "'redis://host:port/db'",
                      "Where dedupe state lives: per process (``memory://``), per host "
                      "(``sqlite:///path``) or shared (``redis://`` / ``rediss://``).",
                      mask=redact_url)
    store_prefix: str | None = _key(None, _optional_str, "a string",
                                    "Namespace of dedupe keys in a shared store; "
                                    "defaults to the app's name.")
    notifiers: tuple[str, ...] = _key(["local"], _str_list, "a list of notifier names",
                                      "Notifier names (``local``, ``mattermost``, an entry "
                                      "point of group ``flask_perfwatch.notifiers``) or "
                                      "``module:Class`` paths.")
    report_dir: str | None = _key(None, _optional_path, "a directory path",
                                  "Where reports are written; if unset, a private "
                                  "``flask-perfwatch-<uid>`` folder under the system temp dir.")
    mattermost_url: str | None = _key(None, _url, "an http(s) URL such as "
                                      "'https://chat.example.com'",
                                      "Base URL of the Mattermost server.", mask=redact_url)
    mattermost_token: str | None = _key(None, _optional_str, "a string",
                                        "Personal access token or bot token.", mask=_redacted)
    mattermost_channel_id: str | None = _key(None, _optional_str, "a string",
                                             "Channel to post to, by id.")
    mattermost_team: str | None = _key(None, _optional_str, "a string",
                                       "Team name; with ``MATTERMOST_CHANNEL`` instead of an id.")
    mattermost_channel: str | None = _key(None, _optional_str, "a string",
                                          "Channel name within ``MATTERMOST_TEAM``.")
    mattermost_retries: int = _retries_key()
    mattermost_timeout: float = _timeout_key("Timeout of each HTTP request to Mattermost.")
    mattermost_verify: bool = _key(True, _bool, "a boolean",
                                   "Verify the server's TLS certificate.")
    slack_token: str | None = _key(None, _optional_str, "a string",
                                   "Slack bot token (``xoxb-...``) with the ``chat:write``, "
                                   "``files:write`` and ``files:read`` scopes (see "
                                   ":doc:`slack`).", mask=_redacted)
    slack_channel: str | None = _key(None, _optional_str, "a string",
                                     "Slack channel ID (``C0123456789``) the bot is a member of.")
    slack_api_url: str = _key("https://slack.com/api/", _required_base_url,
                              "an http(s) URL such as 'https://slack.com/api/'",
                              "Slack Web API base URL (an Enterprise proxy; tests).",
                              mask=redact_url)
    slack_retries: int = _retries_key()
    slack_timeout: float = _timeout_key("Timeout of each HTTP request to Slack.")
    teams_webhook_url: str | None = _key(None, _url, "an http(s) URL",
                                         "A Teams Workflows webhook URL (it holds its own "
                                         "credential: treated as a secret).",
                                         mask=_mask_webhook_url)
    teams_retries: int = _retries_key()
    teams_timeout: float = _timeout_key("Timeout of each HTTP request to Teams.")
    discord_webhook_url: str | None = _key(None, _url, "an http(s) URL",
                                           "A Discord webhook URL (treated as a secret).",
                                           mask=_mask_webhook_url)
    discord_retries: int = _retries_key()
    discord_timeout: float = _timeout_key("Timeout of each HTTP request to Discord.")
    email_host: str | None = _key(None, _optional_str, "a host name",
                                  "SMTP server host.")
    email_port: int = _key(587, _port, "a port number (1-65535)", "SMTP server port.")
    email_security: str = _key("starttls", _choice("starttls", "ssl", "none"),
                               "'starttls', 'ssl' or 'none'",
                               "``starttls`` (upgrade the connection), ``ssl`` (TLS from the "
                               "start, usually port 465) or ``none`` (a local relay only).")
    email_username: str | None = _key(None, _optional_str, "a string",
                                      "SMTP login user name (no login if unset).")
    email_password: str | None = _key(None, _optional_str, "a string",
                                      "SMTP login password.", mask=_redacted)
    email_from: str | None = _key(None, _optional_str, "an e-mail address",
                                  "Sender address (``From``).")
    email_to: tuple[str, ...] = _key([], _str_list, "a list of e-mail addresses",
                                     "Recipients; a refused one is reported and the others "
                                     "still receive the alert.")
    email_retries: int = _retries_key()
    email_timeout: float = _timeout_key("Timeout of each SMTP connection and command.")
    webhook_url: str | None = _key(None, _url, "an http(s) URL",
                                   "Where the JSON alert is POSTed.", mask=redact_url)
    webhook_secret: str | None = _key(None, _optional_str, "a 'whsec'-prefixed base64 secret",
                                      "Standard Webhooks signing secret (``whsec_`` + base64); "
                                      "unset: unsigned.", mask=_redacted)
    webhook_headers: tuple[tuple[str, str], ...] = _key([], _headers,
                                           "a mapping of header names to values (a JSON "
                                           "object in the environment)",
                                           "Extra HTTP headers sent with each webhook "
                                           "(their values are treated as secrets).",
                                           mask=_mask_headers)
    webhook_retries: int = _retries_key()
    webhook_timeout: float = _timeout_key("Timeout of each webhook request.")
    pagerduty_routing_key: str | None = _key(None, _optional_str, "a string",
                                             "Events API v2 integration (routing) key.",
                                             mask=_redacted)
    pagerduty_url: str = _key("https://events.pagerduty.com/v2/enqueue", _required_url,
                              "an http(s) URL", "Events API v2 endpoint.", mask=redact_url)
    pagerduty_severity: str = _key("warning", _choice("critical", "error", "warning", "info"),
                                   "'critical', 'error', 'warning' or 'info'",
                                   "Severity of the PagerDuty event.")
    pagerduty_retries: int = _retries_key()
    pagerduty_timeout: float = _timeout_key("Timeout of each request to PagerDuty.")
    report_base_url: str | None = _key(None, _base_url, "an http(s) URL",
                                       "Where you serve the report folder: a report's link "
                                       "(``Report.url``) is this URL + its file name. Channels "
                                       "that cannot attach a file link to it.",
                                       mask=redact_url)
    report_store: str = _key("file:", _report_store, "'file:' or an S3 URL 's3://bucket/prefix'",
                             "Where reports are kept for their links: ``file:`` (the report "
                             "folder only) or ``s3://bucket/prefix``: each report is also "
                             "uploaded with boto3 (extra ``s3``) and its link "
                             "(``Report.url``) is a presigned GET URL any host can open for "
                             "``PERFWATCH_REPORT_LINK_TTL``. Credentials and region come from "
                             "boto3's usual chain. See :doc:`report-store`.", mask=redact_url)
    s3_endpoint_url: str | None = _key(None, _endpoint_url,
                                       "an http(s) URL such as 'http://127.0.0.1:9000'",
                                       "The endpoint of an S3-compatible store (MinIO, Ceph, "
                                       "Cloudflare R2) for an ``s3://`` report store; unset: "
                                       "AWS S3.", mask=redact_url)
    report_link_ttl: float = _key(float(MAX_LINK_TTL), _link_ttl,
                                  "a duration from 1s to 7 days, such as '12h' or '7d'",
                                  "How long a presigned report link stays valid (S3 allows "
                                  "at most 7 days). It also ends when the credentials that "
                                  "signed it expire (an instance or task role's session).")
    ignore: tuple[str, ...] = _key(["static"], _str_list, "a list of endpoints or path globs",
                                   "Endpoints (glob patterns such as ``admin.*``) or URL path "
                                   "globs starting with ``/`` that are never profiled.")
    redact: tuple[str, ...] = _key(list(DEFAULT_REDACT), _redact_names, "a list of names",
                                   "Param and header names whose values never leave the "
                                   "process, added to the built-in list (which always applies; "
                                   "see :doc:`security`). Names are compared lower-case with "
                                   "every character but letters and digits dropped; names of "
                                   "five characters or more match anywhere, shorter ones only "
                                   "as a whole word (``pwd`` hits ``userPwd``, ``pass`` does "
                                   "not hit ``passenger``).")
    redact_hook: str | None = _key(None, _optional_callable,
                                   "an importable 'module:callable'",
                                   "Your own redaction rule: called as ``hook(name, value)`` "
                                   "for every param and header that survived the built-in "
                                   "rules; returns the value to keep (or a masked one). If it "
                                   "raises, the value is redacted and the error logged.")
    endpoint_alert_limit: int = _key(10, _int_in(0), "an integer >= 0",
                                     "At most this many alerts per endpoint per dedupe window, "
                                     "whatever its params; the rest are suppressed and counted "
                                     "in the next alert. 0: no limit.")
    capture_sql: bool = _key(True, _bool, "a boolean (true/false/1/0/yes/no/on/off)",
                             "Record the SQL statements SQLAlchemy runs during each request "
                             "and watched call (never their parameter values) and show them "
                             "in slow requests' reports. Needs SQLAlchemy; costs nothing "
                             "without it.")
    regression_factor: float = _key(2.0, _regression_factor, "0 or a number above 1",
                                    "An endpoint whose recent p95 latency exceeds this many "
                                    "times its baseline p95 sends ``endpoint_regressed`` and "
                                    "alerts (see :doc:`reading-a-report`). 0: no regression "
                                    "alerts.")
    regression_min_requests: int = _key(50, _int_in(1, 1000), "an integer from 1 to 1000",
                                        "Requests an endpoint needs in its baseline, and in "
                                        "its recent window, before it can regress (the recent "
                                        "window is its last 100 requests, or this many if "
                                        "more; at most 1,000, since an endpoint keeps its last "
                                        "2,400 requests or so for both windows).")
    notifier_timeout: float = _key(120.0, _positive_duration, _POSITIVE_DURATION,
                                   "How long one notifier may take over one alert (retries "
                                   "included) before the alert counts as failed for it; a stuck "
                                   "notifier never holds up the others.")
    report_retention: float = _key(30 * 86400.0, parse_duration, _DURATION,
                                   "Reports older than this are deleted from the report "
                                   "folder (off the request thread); 0 keeps them forever.")
    report_max_bytes: int = _key(512 * 1024**2, parse_size,
                                 "a size in bytes such as 536870912, '512MiB' or '2G'",
                                 "The report folder is kept under this total size, oldest "
                                 "reports deleted first; 0: no limit.")
    report_file_max_bytes: int = _key(5 * 1024**2, parse_size,
                                      "a size in bytes such as 5242880 or '5MiB'",
                                      "Largest single report; a bigger profile is thinned "
                                      "(its smallest frames merged into their callers) until it "
                                      "fits. 0: no limit.")
    queue_size: int = _key(100, _int_in(1), "an integer >= 1",
                           "Alerts waiting for the delivery thread; more are dropped and counted.")
    shutdown_timeout: float = _key(5.0, parse_duration, _DURATION,
                                   "How long the process waits at exit for queued alerts.")

    #: Where each value came from (``key -> source``); not part of equality.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        sources = dict(self.sources)
        for f in config_fields():
            value = getattr(self, f.name)
            source = sources.get(f.name, "Config(...)")
            parsed = _parse_one(f, value, source)
            object.__setattr__(self, f.name, parsed)
            if f.name not in sources:  # built directly: a non-default value was passed
                sources[f.name] = DEFAULT_SOURCE if parsed == _default(f) else source
        object.__setattr__(self, "sources", Sources(sources))

    # --- constructors -------------------------------------------------------

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None = None, /,
                     *, source: str = "mapping", **kwargs: Any) -> Config:
        """Build from a mapping whose keys are full ``PERFWATCH_*`` names or
        short names (``threshold``); unknown keys raise :class:`ConfigError`."""
        raw = dict(mapping or {})
        raw.update(kwargs)
        return cls._build(_with_named_file([(_normalise_keys(raw, source), source)]))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Build from ``PERFWATCH_*`` environment variables over the defaults."""
        return cls._build(_with_named_file(
            [(_env_layer(os.environ if environ is None else environ), "environment")]))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Config:
        """Build from a JSON, YAML or TOML file over the defaults.

        Keys may be full ``PERFWATCH_*`` names or short names, at top level or
        under a ``perfwatch`` table/section.
        """
        layer, source = _file_layer(path)
        return cls._build([(layer, source)])

    @classmethod
    def load(
        cls,
        *,
        overrides: Mapping[str, Any] | None = None,
        app_config: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Config:
        """Resolve every source by precedence: ``overrides`` (keyword arguments),
        ``app_config`` (only its ``PERFWATCH_*`` keys), ``environ`` (default
        ``os.environ``), the file named by ``PERFWATCH_CONFIG_FILE`` in any of
        those, then the defaults."""
        env = os.environ if environ is None else environ
        kw_layer = _normalise_keys(dict(overrides or {}), "keyword argument")
        app_layer = _normalise_keys(
            {k: v for k, v in (app_config or {}).items() if k.startswith(PREFIX)},
            "app.config",
        )
        env_layer = _env_layer(env)
        return cls._build(_with_named_file([
            (kw_layer, "keyword argument"),
            (app_layer, "app.config"),
            (env_layer, "environment"),
        ]))

    @classmethod
    def _build(cls, layers: list[tuple[dict[str, Any], str]]) -> Config:
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for f in config_fields():
            env_name = key_name(f.name)
            for layer, source in layers:
                if env_name in layer:
                    values[f.name] = layer[env_name]  # parsed once, in __post_init__
                    sources[f.name] = source
                    break
            else:
                sources[f.name] = DEFAULT_SOURCE
        return cls(**values, sources=sources)

    def replace(self, **changes: Any) -> Config:
        """A copy with some values changed (validated like the constructor)."""
        sources = dict(self.sources)
        sources.update(dict.fromkeys(changes, "keyword argument"))
        return dataclasses.replace(self, sources=sources, **changes)

    def describe(self) -> list[tuple[str, Any, str]]:
        """``(KEY, value, source)`` for every key, secrets masked."""
        return [(key_name(f.name), shown(f, getattr(self, f.name)),
                 self.sources.get(f.name, DEFAULT_SOURCE)) for f in config_fields()]

    def __repr__(self) -> str:
        values = ", ".join(f"{f.name}={shown(f, getattr(self, f.name))!r}"
                           for f in config_fields())
        return f"Config({values})"

    @property
    def resolved_report_dir(self) -> Path:
        """:attr:`report_dir`, or, when unset, a private per-user folder under
        the system temp dir (:func:`~flask_perfwatch.reportdir.default_report_dir`)."""
        if self.report_dir:
            return Path(self.report_dir)
        from .reportdir import default_report_dir

        return default_report_dir()


# --- helpers over the table ------------------------------------------------


def config_fields() -> tuple[dataclasses.Field[Any], ...]:
    """The configuration keys, in declaration order."""
    return _FIELDS


def key_name(field_name: str) -> str:
    """``threshold`` -> ``PERFWATCH_THRESHOLD``: the full name of a declared key.

    Raises :class:`ValueError` for a name that is not a :class:`Config` key,
    so a message naming a key cannot name one that does not exist.
    """
    if field_name not in _FIELD_NAMES:
        raise ValueError(f"{field_name!r} is not a flask_perfwatch configuration key")
    return PREFIX + field_name.upper()


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _with_named_file(layers: list[tuple[dict[str, Any], str]]
                     ) -> list[tuple[dict[str, Any], str]]:
    """``layers`` plus, below them, the file named by the highest layer that
    sets ``PERFWATCH_CONFIG_FILE`` (if any)."""
    for layer, source in layers:
        if CONFIG_FILE_KEY in layer:
            file_value = layer[CONFIG_FILE_KEY]
            path = _optional_path(file_value) if isinstance(file_value, str | os.PathLike) \
                else None
            if path is None:
                raise ConfigError.invalid(CONFIG_FILE_KEY, file_value, source,
                                          "a path to a .json, .yaml/.yml or .toml file")
            return [*layers, _file_layer(path, named_by=source)]
    return layers


def _parse_one(f: dataclasses.Field[Any], value: Any, source: str) -> Any:
    parser: Parser[Any] = f.metadata["parser"]
    try:
        return parser(value)
    except ValueError as exc:
        expected = parser.expected
        reason = str(exc)
        if reason and reason != str(value) and reason != repr(value):
            expected = f"{expected} ({reason})"
        raise ConfigError.invalid(key_name(f.name), shown(f, value), source, expected
                                  ) from None


def _known_names() -> set[str]:
    return {key_name(f.name) for f in config_fields()} | {CONFIG_FILE_KEY}


def _unknown_key(key: str, source: str) -> ConfigError:
    # compare without the prefix: every known name shares it
    short = key.upper().removeprefix(PREFIX)
    known = sorted(name.removeprefix(PREFIX) for name in _known_names())
    close = difflib.get_close_matches(short, known, n=1)
    hint = f"; did you mean {PREFIX}{close[0]}?" if close else ""
    return ConfigError(f"unknown configuration key {key!r} (from {source}){hint}",
                       key=key, source=source, expected="a known PERFWATCH_* key")


def _normalise_keys(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Map full or short key names to full names; an unknown key raises
    :class:`ConfigError` (only the environment, read by :func:`_env_layer`,
    tolerates foreign ``PERFWATCH_*`` names, with a warning)."""
    known = _known_names()
    result: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"configuration key {key!r} (from {source}) is not a string",
                              key=str(key), source=source)
        full = key.upper() if key.upper().startswith(PREFIX) else PREFIX + key.upper()
        if full not in known:
            raise _unknown_key(key, source)
        result[full] = value
    return result


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    import logging

    known = _known_names()
    layer = {}
    for key, value in environ.items():
        if not key.startswith(PREFIX):
            continue
        if key in known:
            layer[key] = value
        else:
            logging.getLogger(__name__).warning("%s", _unknown_key(key, "environment"))
    return layer


def _file_layer(path: str | os.PathLike[str], named_by: str | None = None
                ) -> tuple[dict[str, Any], str]:
    file_path = Path(path)
    source = f"file {file_path}"
    where = f" (named by PERFWATCH_CONFIG_FILE from {named_by})" if named_by else ""

    def error(problem: str) -> ConfigError:
        problem = safe_text(mask_text(problem))
        return ConfigError(f"config file {file_path}{where}{problem}",
                           key=CONFIG_FILE_KEY, value=str(file_path), source=named_by)

    suffix = file_path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml", ".toml"):
        raise error(f": unsupported extension {suffix!r}; expected .json, .yaml, .yml or .toml")
    try:
        text = file_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f" cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise error(f" is not UTF-8 text: {exc}") from None
    try:
        data = _parse_file(text, suffix, file_path)
    except ConfigError as exc:
        raise error(f": {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error(f": the top level must be a mapping, not {type(data).__name__}")
    sections = [k for k in data if str(k).lower() == FILE_SECTION]
    if sections:
        section = data[sections[0]]
        if section is None:  # an empty YAML section
            section = {}
        if not isinstance(section, dict):
            raise error(f": '{FILE_SECTION}' must be a table/section, "
                        f"not {type(section).__name__}")
        data = section
    layer = _normalise_keys(data, source)
    if CONFIG_FILE_KEY in layer:
        raise error(f": {CONFIG_FILE_KEY} cannot be set in a config file")
    return layer, source


def _parse_file(text: str, suffix: str, file_path: Path) -> Any:
    try:
        if suffix == ".json":
            return json.loads(text)
        if suffix == ".toml":
            return tomllib.loads(text)
        try:
            import yaml
        except ImportError:
            raise ConfigError("YAML needs PyYAML: pip install 'flask-perfwatch[yaml]'"
                              ) from None
        return yaml.safe_load(text)
    except ConfigError:
        raise
    except Exception as exc:  # each parser has its own error type
        kind = {".json": "JSON", ".toml": "TOML"}.get(suffix, "YAML")
        raise ConfigError(f"not valid {kind}: {_syntax_error(exc)}") from None


def _syntax_error(exc: Exception) -> str:
    """What is wrong and where (line, column), never the offending text: a
    parser's message may quote the line, and the line may hold a token."""
    mark = getattr(exc, "problem_mark", None)  # PyYAML
    if mark is not None:
        problem = getattr(exc, "problem", None) or type(exc).__name__
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    # tomllib's messages name the problem and its position only
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


_FIELDS = tuple(f for f in dataclasses.fields(Config) if "parser" in f.metadata)
_FIELD_NAMES = frozenset(f.name for f in _FIELDS)


def iter_keys() -> Iterable[tuple[str, Any, str, str]]:
    """``(KEY, default, expected, doc)`` for every key: what the docs print."""
    defaults = Config()
    for f in config_fields():
        yield (key_name(f.name), getattr(defaults, f.name), f.metadata["parser"].expected,
               f.metadata["doc"])
