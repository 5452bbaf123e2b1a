"""Redaction: the one choke point for secrets.

Everything flask_perfwatch lets out of the process (metrics, reports, file
names, log lines, signal payloads, notifier messages, config and store
descriptions, exception messages) passes through a :class:`Redactor` first.
It is a leaf module: it imports nothing of flask_perfwatch, only the standard
library, so config, stores and metrics can all use it without import cycles.

Two complementary rules apply.

**By name** (:meth:`Redactor.is_secret`). A parameter or header whose *name*
looks secret has its whole value replaced by ``[REDACTED]``. A name is
normalised by lower-casing it and dropping every character that is not a
letter or a digit, so ``X-Api-Key``, ``x_api_key`` and ``XApiKey`` are all
``xapikey``.

- A configured name of **five or more** normalised characters matches as a
  *substring*: ``password`` hits ``password2`` and ``new-password``, ``apikey``
  hits ``X-Api-Key``, ``accesskey`` hits ``AWSAccessKeyId``, ``token`` hits
  ``csrfmiddlewaretoken``. Long names are specific enough that a substring
  match costs nothing in false alarms and catches every prefix and suffix
  people invent.
- A configured name of **four or fewer** characters matches only as a *whole
  word*. Short abbreviations hide inside ordinary words as substrings (``key``
  in ``monkey``, ``pass`` in ``passenger`` and ``compass``, ``auth`` in
  ``author``, ``otp`` in ``footprint``, ``pin`` in ``spinner``, ``sig`` in
  ``signal`` and ``design``), and redacting those would blind the reports.
  A name is split into words at every non-alphanumeric character, at camelCase
  boundaries (``userPwd`` -> user, pwd; ``APIKey`` -> api, key;
  ``XMLHttpRequest`` -> xml, http, request) and between letters and digits
  (``pwd2`` -> pwd, 2). So ``pwd`` hits ``userPwd``, ``pass`` hits
  ``user_pass`` and ``passPhrase``, ``key`` hits ``X-Api-Key`` and
  ``sort_key``, ``auth`` hits ``X-Auth-Token``, ``otp`` hits ``otp_code``.
  A short name written with separators (``x-id``) must match as that run of
  words (``X-Id``), or as the whole normalised name (``XID``).

Over-redaction is the safe failure: ``primary_key`` or ``tokenizer`` lose
their values, which is a small price next to a leaked credential.

**By value** (:meth:`Redactor.mask`). Secrets also arrive under innocent
names: ``next=https://alice:PW@host/``, a ``Referer`` with credentials, a
custom ``X-Upstream: Bearer ...`` header, a database DSN in an exception
message. So every value that survives the name rule, and any free text, is
scanned for secrets by their shape, whatever the name:

- URL userinfo in any scheme (``https://alice:PW@host``,
  ``postgresql://app:PW@db/x``, ``redis://:PW@h:6379/0``): the password
  becomes ``[REDACTED]``, the user name stays (it helps to find the caller).
- HTTP credentials after an authorization scheme, case-insensitive, even
  glued to a preceding word: ``Bearer`` (any credential: the word is rare
  in prose, and its tokens come in every shape), ``Basic`` (base64
  of ``user:pass``), ``Digest`` (its parameters, to the end of the line) and
  ``Token``, ``Bot``, ``Negotiate``, ``NTLM``, ``ApiKey`` (when the credential
  looks random: ASCII, at least 8 characters with a digit, or 16 with many
  capitals and lower-case letters, as base64 has; so that prose like "Token
  expired" or "Token InvalidSignatureException" is left alone). The
  credential runs to whitespace or punctuation that no token contains
  (quotes, ``,;&<>()[]{}``).
- JWT-shaped strings: ``eyJ`` (base64 of ``{"``) starting a run of three or
  more dot-separated base64url segments (``monkeyJumping.over.it`` is not).
- Well-known token prefixes: GitHub (``ghp_``, ``gho_``, ``ghu_``, ``ghs_``,
  ``ghr_`` + 36, ``github_pat_``), Slack (``xoxb-``, ``xoxp-``, ``xoxa-``,
  ``xoxr-``, ``xoxs-``, ``xapp-``), Stripe (``sk_live_``, ``sk_test_``,
  ``rk_live_``, ``rk_test_`` + 20, ``whsec_``; ``pk_`` keys are public and
  kept),
  OpenAI/Anthropic style ``sk-`` (20+ characters with a digit), AWS access key
  ids (``AKIA``/``ASIA`` + 16), Google API keys (``AIza`` + 35), GitLab
  ``glpat-``, npm ``npm_``, PyPI ``pypi-AgE``, SendGrid ``SG.x.y``, Shopify
  ``shpat_``/``shpss_``/``shpca_``/``shppa_``, and PEM private key blocks.
  Each needs a word boundary before it and a realistic length, so ``sk-ate``,
  ``risk-free``, ``ask-me`` or a bare ``ghp_`` are never touched.
- ``name=value`` and ``name: value`` pairs inside the text whose name is
  secret by the name rule (``a=1&password=x``, a libpq DSN
  ``host=db password=PW dbname=x``, JSON ``"token": "abc"``, a log line
  ``api_key=abc``, Rails ``user[password]=x``). A quoted value is redacted
  to its closing quote (``password='a b'``); an unquoted ``=`` value up to
  whitespace or ``&`` (the separators of DSNs and query strings; stopping at
  quotes or ``;`` too would leak the tail of a password containing them); an
  unquoted ``:`` value (YAML, headers, log lines) to the end of the line,
  because passphrases contain spaces.
- The same, percent-encoded (``https%3A%2F%2Falice%3APW%40host`` in an
  undecoded query string, ``Bearer%20abc``, ``password%3Dx``): text holding
  ``%XX`` escapes is also scanned decoded (up to two levels, for double
  encoding), and what is found there is masked in the original text, which
  keeps its encoding: ``https%3A%2F%2Falice%3A[REDACTED]%40host``. Both forms
  are scanned in full, so neither loses the context of the other.
  ``Bearer+abc`` (a form-encoded space) is caught as it is.

A masked span always becomes ``[REDACTED]`` as a whole, and overlapping
spans merge, so a value is never shown half-masked.

What value masking cannot see: a secret with no recognisable shape under an
innocent name (``?q=hunter2``), or a token of unknown format used as a bare
URL user name. Add such names to ``PERFWATCH_REDACT`` or use the hook.

**The hook** (``PERFWATCH_REDACT_HOOK``) is the user's own rule: it gets
``(name, value)`` for every value that survived both built-in rules (so
already masked) and returns the value to keep. A hook that raises or returns
something other than a ``str`` redacts the value (fail closed: a broken rule
must not turn into a leak) and is reported through ``on_error``.

:func:`redact_url` applies the same rules to a URL given in configuration
(store, webhook): the userinfo password and secret-named query or fragment
parameters become ``[REDACTED]``; the rest is masked by value.

**Guarantees.** :meth:`Redactor.mask` and :func:`redact_url` never raise (on
an internal error they fail closed: ``[REDACTED]`` or ``"<unparsable URL>"``).
Every pattern runs in linear time, with no nested quantifiers that could
backtrack catastrophically, because the text comes from hostile clients and
is scanned inside their requests. Text without secrets comes back unchanged
(the very same object), and masking is idempotent. A value with none of the
trigger characters or prefixes costs one regex search (about a microsecond).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from urllib.parse import unquote_plus, urlsplit

logger = logging.getLogger(__name__)

REDACTED = "[REDACTED]"

#: Built-in secret names. ``PERFWATCH_REDACT`` adds to them; they always apply.
#: Names of 5+ characters match as substrings, shorter ones as whole words
#: (see the module docstring).
DEFAULT_NAMES: tuple[str, ...] = (
    # passwords
    "password", "passwd", "passphrase", "pass", "pwd",
    "passcode", "pw",  # added: PIN-like passcodes; the common ``?pw=`` / ``user_pw``
    # tokens, keys and signatures
    "secret", "token", "auth", "authorization", "credential", "bearer", "jwt",
    "signature", "sig", "private", "otp", "pin",
    "apikey", "accesskey", "refreshkey", "secretkey", "privatekey", "key",
    "creds",  # added: ``aws_creds``; ``credential`` does not hit it
    "totp",  # added: ``otp`` is a whole word, so it does not hit ``totp_code``
    "hmac",  # added: Shopify and webhook ``hmac=`` signatures
    # sessions and cookies
    "session", "sid", "cookie", "csrf", "xsrf",
    "sessid",  # added: PHP's ``PHPSESSID`` (``session`` does not hit it)
)

#: Names longer than this skip the per-instance cache (hostile, huge names
#: must not pin megabytes in it); they are rare, and checking one is linear.
_CACHE_NAME_LIMIT = 256
_CACHE_SIZE = 4096
#: How many nested levels of percent-encoding are decoded and scanned.
_DECODE_DEPTH = 2
#: A changed text is masked again until stable, at most this many rounds
#: (a safety net for idempotence; one extra round is the norm).
_MAX_ROUNDS = 4

# --- names --------------------------------------------------------------------

_NON_ALNUM = re.compile(r"[\W_]+")


def _normalise(name: str) -> str:
    """Lower-cased, every non-alphanumeric character dropped."""
    return _NON_ALNUM.sub("", name.lower())


def _words(name: str) -> list[str]:
    """The lower-cased words of ``name``: split at non-alphanumerics, camelCase
    boundaries (``userPwd``, ``APIKey``) and letter/digit changes (``pwd2``)."""
    words: list[str] = []
    for chunk in _NON_ALNUM.split(name):
        if not chunk:
            continue
        start = 0
        last = len(chunk) - 1
        for i in range(1, len(chunk)):
            prev, cur = chunk[i - 1], chunk[i]
            if (prev.isdigit() != cur.isdigit()
                    or (prev.islower() and cur.isupper())
                    or (prev.isupper() and cur.isupper() and i < last
                        and chunk[i + 1].islower())):
                words.append(chunk[start:i].lower())
                start = i
        words.append(chunk[start:].lower())
    return words


def _name_matcher(names: Iterable[str]) -> Callable[[str], bool]:
    """A function telling whether a name is secret under ``names``.

    It closes over plain data (not the :class:`Redactor`), so caching it
    creates no reference cycle."""
    long_names: list[str] = []
    short_words: set[str] = set()
    short_runs: list[tuple[str, ...]] = []
    short_norms: set[str] = set()
    for raw in names:
        norm = _normalise(raw)
        if not norm:
            continue
        if len(norm) >= 5:
            long_names.append(norm)
            continue
        short_norms.add(norm)
        run = tuple(_words(raw))
        if len(run) == 1:
            short_words.add(run[0])
        else:
            short_runs.append(run)
    longs = tuple(dict.fromkeys(long_names))

    def is_secret(name: str) -> bool:
        norm = _normalise(name)
        for fragment in longs:
            if fragment in norm:
                return True
        if not short_norms:
            return False
        if norm in short_norms:
            return True
        words = _words(name)
        if not short_words.isdisjoint(words):
            return True
        for run in short_runs:
            size = len(run)
            if any(tuple(words[i:i + size]) == run for i in range(len(words) - size + 1)):
                return True
        return False

    return is_secret


# --- value patterns -----------------------------------------------------------
# Every pattern is linear: a lookbehind pins each candidate to the start of its
# run of characters, and no quantified group can match the same text two ways.

#: The fast path. Every rule below needs one of these characters, or one of
#: the AWS/Google key prefixes, which have none (a JWT needs its dots).
_TRIGGER_CHARS = re.compile(r"[:=%_.\- \t+]")
#: The finer pre-check, run on the lower-cased text (so a superset of what the
#: rules match). Every alternative starts with a literal character, which lets
#: the regex engine skip positions that cannot start one.
_HINT = re.compile(
    r""":|=|%
    |b(?:earer[ \t+]|asic[ \t+]|ot[ \t+])
    |t(?:oken[ \t+])
    |d(?:igest[ \t+])
    |n(?:egotiate[ \t+]|tlm[ \t+]|pm_)
    |a(?:pikey[ \t+]|kia|sia|iza)
    |e(?:yj)
    |g(?:h[pousr]_|ithub_pat_|lpat-)
    |x(?:ox[abprs]-|app-)
    |r(?:k_(?:live|test)_)
    |s(?:k_(?:live|test)_|k-|g\.|hp(?:at|ss|ca|pa)_)
    |w(?:hsec_)
    |p(?:ypi-)
    |-(?:----begin)""",
    re.VERBOSE,
)


def _may_hold_secret(text: str) -> bool:
    """False when no rule of :meth:`Redactor.mask` can match ``text``."""
    if _TRIGGER_CHARS.search(text) is None:
        return "AKIA" in text or "ASIA" in text or "AIza" in text
    return _HINT.search(text.lower()) is not None


#: ``//user:password@`` (password up to the last ``@`` of the authority).
_USERINFO = re.compile(r"//[^\s/?#:]*:([^\s/?#]+)(?=@)")

_JWT = re.compile(
    r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{6,}={0,2}\.[A-Za-z0-9_-]{4,}={0,2}\.[A-Za-z0-9_=-]*"
    r"(?:\.[A-Za-z0-9_=-]+)*"
)

_TOKEN = re.compile(
    r"""(?<![A-Za-z0-9_-])(?:
        gh[pousr]_[A-Za-z0-9]{36}
      | github_pat_[A-Za-z0-9_]{20,}
      | xox[abprs]-[A-Za-z0-9-]{10,}
      | xapp-[A-Za-z0-9-]{10,}
      | [rs]k_(?:live|test)_[A-Za-z0-9]{20,}
      | whsec_[A-Za-z0-9+/=]{10,}
      | sk-(?=[A-Za-z_-]*[0-9])[A-Za-z0-9_-]{20,}
      | A(?:KIA|SIA)[A-Z0-9]{16}
      | AIza[A-Za-z0-9_-]{35}
      | glpat-[A-Za-z0-9_-]{20,}
      | npm_[A-Za-z0-9]{30,}
      | pypi-AgE[A-Za-z0-9_-]{20,}
      | SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}
      | shp(?:at|ss|ca|pa)_[A-Za-z0-9]{20,}
    )[A-Za-z0-9_-]*""",
    re.VERBOSE,
)

_TOKEN_GATE = re.compile(
    r"g(?:h[pousr]_|ithub_pat_|lpat-)|x(?:ox[abprs]-|app-)|r(?:k_)|s(?:k_|k-|hp)|w(?:hsec_)"
    r"|A(?:KIA|SIA|Iza)|n(?:pm_)|p(?:ypi-)|S(?:G\.)"
)

_PEM = re.compile(
    r"-----BEGIN[A-Z ]{0,40}PRIVATE KEY-----(?:(?!-----END)[\s\S])*"
    r"(?:-----END[A-Z ]{0,40}PRIVATE KEY-----)?"
)

#: An authorization scheme followed by blanks; the credential is read apart.
#: No word boundary before the scheme: ``xBearer abc`` is masked too (the
#: credential's shape, not the boundary, keeps prose such as "robot arm" safe).
_SCHEMES = ("bearer", "basic", "token", "digest", "bot", "negotiate", "ntlm", "apikey")
_AUTH = re.compile(rf"({'|'.join(_SCHEMES)})[ \t+]+", re.IGNORECASE | re.ASCII)
_LONGEST_SCHEME = max(map(len, _SCHEMES))
#: :data:`_AUTH`'s gate, on the lower-cased text.
_AUTH_GATE = re.compile(r"b(?:earer|asic|ot)[ \t+]|t(?:oken[ \t+])|d(?:igest[ \t+])"
                        r"|n(?:egotiate[ \t+]|tlm[ \t+])|a(?:pikey[ \t+])")
_CREDENTIAL = re.compile(r"[^\s\"'`<>,;&\\\[\](){}]+")
_DIGEST_PARAMS = re.compile(r"[A-Za-z][\w-]*=[^\r\n]*")

#: ``name=``, ``name:``, ``"name":``, ``name =>``, ``user[name]=``; the value is
#: read apart, so a non-secret name consumes nothing after its separator.
_PAIR = re.compile(r"(?<![\w.-])([\w.-]+)(?:\]|\\?[\"'`])?[ \t]*(=>|:=|[:=])[ \t]*")
_QUOTED = re.compile(
    r"""[bBrRuUfF]{0,2}(?:
        "((?:[^"\\\r\n]|\\.)*)"?
      | '((?:[^'\\\r\n]|\\.)*)'?
      | `([^`\r\n]*)`?
      | \\"((?:(?!\\")[^\r\n])*)(?:\\")?
      | \\'((?:(?!\\')[^\r\n])*)(?:\\')?
    )""",
    re.VERBOSE,
)
_BRACED = re.compile(r"\{([^}\r\n]*)\}?")
_EQ_VALUE = re.compile(r"[^\s&]+")
_LINE_VALUE = re.compile(r"[^\r\n]+")

_ESCAPED = re.compile(r"%[0-9A-Fa-f]{2}")

Span = tuple[int, int]


def _looks_random(credential: str) -> bool:
    """A credential after ``Token``/``Bot``/... (as opposed to a word of prose):
    ASCII and 8+ characters with a digit, or 16+ whose letters are both upper
    case (a third or more) and lower case (a quarter or more), as in random
    base64; CamelCase prose (``InvalidSignatureException``) has far fewer
    capitals."""
    if len(credential) < 8 or not credential.isascii():
        return False
    if any(c.isdigit() for c in credential):
        return True
    size = len(credential)
    upper = sum(c.isupper() for c in credential)
    lower = sum(c.islower() for c in credential)
    return size >= 16 and upper * 3 >= size and lower * 4 >= size


def _looks_basic(credential: str) -> bool:
    """Base64 of ``user:password``, as after ``Basic``."""
    stripped = credential.rstrip("=")
    try:
        decoded = base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError):
        return _looks_random(credential)
    return b":" in decoded or _looks_random(credential)


def _auth_spans(text: str) -> list[Span]:
    spans: list[Span] = []
    pos = 0
    while (match := _AUTH.search(text, pos)) is not None:
        scheme = match.group(1).lower()
        start = pos = match.end()
        if scheme == "digest":
            cred = _DIGEST_PARAMS.match(text, start)
        else:
            cred = _CREDENTIAL.match(text, start)
            if cred is not None:
                value = cred.group()
                if value.lower() in _SCHEMES:
                    # "Bearer Bearer abc": the second word is the scheme of abc
                    ok = False
                elif scheme == "basic":
                    ok = _looks_basic(value)
                else:
                    ok = scheme == "bearer" or _looks_random(value)
                if not ok:
                    cred = None
        if cred is not None:
            spans.append(cred.span())
            pos = cred.end()
            # "Bearer 0Bearer abc": a credential ending in a scheme word leaves
            # that scheme's own credential after it; scan on from the word.
            tail = cred.group()[-_LONGEST_SCHEME:].lower()
            for word in _SCHEMES:
                if tail.endswith(word):
                    pos -= len(word)
                    break
    return spans


def _merge(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for start, end in sorted(spans):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _replace(text: str, spans: list[Span]) -> str:
    """``text`` with every (merged) span replaced by ``[REDACTED]``."""
    if not spans:
        return text
    out: list[str] = []
    last = 0
    for start, end in _merge(spans):
        out.append(text[last:start])
        out.append(REDACTED)
        last = end
    out.append(text[last:])
    result = "".join(out)
    return text if result == text else result


# --- the redactor -------------------------------------------------------------


class Redactor:
    """Decides what may leave the process: by name (:meth:`is_secret`,
    :meth:`value`) and by value (:meth:`mask`).

    :param names: the secret names, exactly (configuration adds
        :data:`DEFAULT_NAMES` to the user's ``PERFWATCH_REDACT``; pass them
        yourself when building one by hand).
    :param hook: the user's own rule, called as ``hook(name, value)`` with a
        value that survived the built-in rules (already masked); it returns
        the value to keep. If it raises or returns a non-``str``, the value is
        ``[REDACTED]`` (fail closed) and ``on_error`` is told.
    :param on_error: called with the exception when the hook fails, or when
        masking hits an internal error (it then fails closed too). The
        exception may quote the (masked) value; it never sees a value whose
        name is secret.
    """

    def __init__(self, names: Iterable[str] = DEFAULT_NAMES,
                 hook: Callable[[str, str], str] | None = None,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self.names: tuple[str, ...] = tuple(names)
        self._hook = hook
        self._on_error = on_error
        self._check = _name_matcher(self.names)
        self._cached_check = lru_cache(maxsize=_CACHE_SIZE)(self._check)

    def __repr__(self) -> str:
        return f"<Redactor {len(self.names)} names, hook={self._hook is not None}>"

    def is_secret(self, name: str) -> bool:
        """Whether values under ``name`` must never leave the process (cached:
        the same header and parameter names recur on every request)."""
        if len(name) > _CACHE_NAME_LIMIT:
            return self._check(name)
        return self._cached_check(name)

    def value(self, name: str, value: str) -> str:
        """``value`` (of a parameter or header called ``name``) as it may leave
        the process: ``[REDACTED]`` for a secret name, else masked by value,
        then passed through the hook. Never raises."""
        try:
            secret = self.is_secret(name)
        except Exception as exc:  # not a str, say: fail closed
            self._report(exc)
            return REDACTED
        if secret:
            return REDACTED
        masked = self.mask(value)
        if self._hook is None:
            return masked
        try:
            result = self._hook(name, masked)
        except Exception as exc:  # the user's code: fail closed, report
            self._report(exc)
            return REDACTED
        if not isinstance(result, str):
            self._report(TypeError(
                f"the redaction hook returned {type(result).__name__}, not str"))
            return REDACTED
        return result

    def mask(self, text: str) -> str:
        """``text`` with every secret recognisable by its shape replaced by
        ``[REDACTED]`` (see the module docstring). Text without one comes
        back unchanged; never raises."""
        try:
            if not _may_hold_secret(text):
                return text
            return self._mask(text)
        except Exception as exc:  # a bug must not leak the text: fail closed
            self._report(exc)
            return REDACTED

    def _mask(self, text: str) -> str:
        """Mask until stable (a safety net: a second round rarely changes)."""
        for _ in range(_MAX_ROUNDS):
            masked = self._mask_round(text)
            if masked == text:
                return text
            text = masked
        return text

    def _mask_round(self, text: str) -> str:
        return _replace(text, self._spans(text, 0))

    def _spans(self, text: str, depth: int) -> list[Span]:
        """Where ``text`` holds secrets, found as it is and percent-decoded."""
        spans = self._plain_spans(text)
        if depth < _DECODE_DEPTH and _ESCAPED.search(text) is not None:
            decoded, starts, ends = _percent_decode(text)
            spans.extend((starts[a], ends[b - 1]) for a, b in self._spans(decoded, depth + 1))
        return spans

    def _plain_spans(self, text: str) -> list[Span]:
        # Each rule runs only if its cheap gate passes (a literal test or a
        # regex whose alternatives all start with a literal character).
        spans: list[Span] = []
        if "//" in text and "@" in text:
            spans.extend(m.span(1) for m in _USERINFO.finditer(text))
        if "eyJ" in text:
            spans.extend(m.span() for m in _JWT.finditer(text))
        if _TOKEN_GATE.search(text) is not None:
            spans.extend(m.span() for m in _TOKEN.finditer(text))
        if "-----BEGIN" in text:
            spans.extend(m.span() for m in _PEM.finditer(text))
        if _AUTH_GATE.search(text.lower()) is not None:
            spans.extend(_auth_spans(text))
        if "=" in text or ":" in text:
            spans.extend(self._pair_spans(text))
        return spans

    def _pair_spans(self, text: str) -> list[Span]:
        """Values of ``name=value`` / ``name: value`` pairs with a secret name."""
        spans: list[Span] = []
        pos = 0
        while (match := _PAIR.search(text, pos)) is not None:
            pos = match.end()
            if not self.is_secret(match.group(1)):
                continue
            name_start = match.start(1)
            if (match.group(2) == ":" and name_start >= 2
                    and _USERINFO.match(text, name_start - 2) is not None):
                continue  # ``//token:PW@host``: the userinfo rule masks PW, keeps the host
            span = _value_span(text, pos, match.group(2))
            if span is not None:
                spans.append(span)
                pos = _resume_at(text, *span)
        return spans

    def _report(self, exc: BaseException) -> None:
        if self._on_error is None:
            return
        try:
            self._on_error(exc)
        except Exception:  # the reporter itself failed; the value stays redacted
            logger.exception("the redaction on_error callback failed")


def _percent_decode(text: str) -> tuple[str, list[int], list[int]]:
    """``text`` with each ``%XX`` decoded to one character (byte ``XX`` as
    Latin-1: secrets' shapes are ASCII, and one character per escape keeps
    the mapping simple), and where each decoded character came from:
    ``text[starts[i]:ends[i]]``."""
    parts: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    last = 0
    for match in _ESCAPED.finditer(text):
        at = match.start()
        if at > last:
            parts.append(text[last:at])
            starts.extend(range(last, at))
            ends.extend(range(last + 1, at + 1))
        parts.append(chr(int(text[at + 1:at + 3], 16)))
        starts.append(at)
        ends.append(at + 3)
        last = at + 3
    if last < len(text):
        parts.append(text[last:])
        starts.extend(range(last, len(text)))
        ends.extend(range(last + 1, len(text) + 1))
    return "".join(parts), starts, ends


def _value_span(text: str, pos: int, separator: str) -> Span | None:
    """Where the value starting at ``pos`` lies (the inside of its quotes if
    quoted), or None if it is empty."""
    if pos >= len(text):
        return None
    quoted = _QUOTED.match(text, pos)
    if quoted is not None and quoted.lastindex is not None:
        start, end = quoted.span(quoted.lastindex)
        return (start, end) if end > start else None
    if separator != ":":
        braced = _BRACED.match(text, pos)
        if braced is not None:
            start, end = braced.span(1)
            return (start, end) if end > start else None
    value = (_LINE_VALUE if separator == ":" else _EQ_VALUE).match(text, pos)
    return value.span() if value is not None else None


def _resume_at(text: str, start: int, end: int) -> int:
    """Where to scan on after the redacted value ``text[start:end]``: its end,
    or the start of a name it ends with whose separator ends it too or follows
    it, as that name's own value lies beyond (``BEARER=userPwd: PW``,
    ``token=a=>apikey => PW``). Never rescanning the rest of a value keeps the
    scan linear (``password=password=...``)."""
    i = end
    while i > start and text[i - 1] in " \t":
        i -= 1
    if i - 2 >= start and text[i - 2:i] in ("=>", ":="):
        i -= 2
    elif i > start and text[i - 1] in ":=":
        i -= 1
    elif _SEPARATOR_AHEAD.match(text, end) is None:
        return end
    while i > start and text[i - 1] in " \t":
        i -= 1
    if i > start and text[i - 1] in "]\"'`":
        i -= 1
        if i > start and text[i - 1] == "\\":
            i -= 1
    name_end = i
    while i > start and (text[i - 1].isalnum() or text[i - 1] in "_.-"):
        i -= 1
    return i if i < name_end else end


_SEPARATOR_AHEAD = re.compile(r"(?:\]|\\?[\"'`])?[ \t]*(?:=>|:=|[:=])")


@lru_cache(maxsize=1)
def _default_redactor() -> Redactor:
    return Redactor()


def mask_text(text: str) -> str:
    """:meth:`Redactor.mask` with the built-in names (for log lines and
    messages written where no configured redactor is at hand)."""
    return _default_redactor().mask(text)


def secret_url(url: str) -> str:
    """A URL that is itself a credential (a Teams or Discord webhook: the
    path or ``sig=`` is the secret): only its scheme and host are shown,
    ``https://hooks.example.com/[REDACTED]``. Never raises."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    if not parts.scheme or not host:
        return REDACTED
    return f"{parts.scheme}://{host}{port}/{REDACTED}"


def redact_url(url: str, redactor: Redactor | None = None) -> str:
    """``url`` fit for a description, log line or error message: the password
    of its userinfo and the values of query (and fragment) parameters with a
    secret name become ``[REDACTED]``, and the rest is masked by value. An
    unparsable URL gives ``"<unparsable URL>"``; never raises."""
    try:
        red = redactor if redactor is not None else _default_redactor()
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            user, colon, _password = userinfo.partition(":")
            user = red.mask(user)
            netloc = f"{user}:{REDACTED}@{host}" if colon else f"{user}@{host}"
        path = red.mask(parts.path)
        query = _redact_query(parts.query, red)
        fragment = _redact_query(parts.fragment, red)
        if (netloc, path, query, fragment) == parts[1:]:
            return url
        # Not urlunsplit: it drops the empty authority of ``unix:///tmp/r.sock``.
        out = [f"{parts.scheme}:" if parts.scheme else ""]
        if netloc or _EMPTY_AUTHORITY.match(url):
            out.append(f"//{netloc}")
        out.append(path)
        out.append(f"?{query}" if query else "")
        out.append(f"#{fragment}" if fragment else "")
        return "".join(out)
    except Exception:  # e.g. ValueError("Invalid IPv6 URL")
        return "<unparsable URL>"


_EMPTY_AUTHORITY = re.compile(r"[\x00-\x20]*(?:[A-Za-z][A-Za-z0-9+.-]*:)?//")


def _redact_query(query: str, redactor: Redactor) -> str:
    pieces = query.split("&")
    for i, piece in enumerate(pieces):
        name, eq, _value = piece.partition("=")
        if eq and redactor.is_secret(unquote_plus(name)):
            pieces[i] = f"{name}={REDACTED}"
        else:
            pieces[i] = redactor.mask(piece)
    return "&".join(pieces)
