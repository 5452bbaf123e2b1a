"""flask_perfwatch._redact: the one choke point for secrets.

Names (whole words for short names, substrings for long ones), masking by
value (URL userinfo, authorization credentials, JWTs, token prefixes, secret
``name=value`` pairs, percent-encoded forms), the user's hook failing closed,
``redact_url``, linear time on hostile input, and property tests: masking
never raises, never lets a planted secret through, leaves ordinary text
alone and is idempotent.
"""

from __future__ import annotations

import logging
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from flask_perfwatch._redact import (
    DEFAULT_NAMES,
    REDACTED,
    Redactor,
    _may_hold_secret,
    _words,
    mask_text,
    redact_url,
)

PROPERTY = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

#: A planted secret: no rule may let it through, whatever surrounds it.
SECRET = "SECRETxyz123"

# --- names --------------------------------------------------------------------

#: The words of the default names written as one word.
COMPOUND = {
    "apikey": ("api", "key"), "accesskey": ("access", "key"),
    "refreshkey": ("refresh", "key"), "secretkey": ("secret", "key"),
    "privatekey": ("private", "key"), "passphrase": ("pass", "phrase"),
    "passcode": ("pass", "code"), "sessid": ("sess", "id"),
}


def name_forms(name: str) -> list[str]:
    """``name`` in snake, kebab, camel and UPPER form, bare and as the last
    word of a longer name."""
    words = COMPOUND.get(name, (name,))
    snake = "_".join(words)
    kebab = "-".join(words)
    camel = words[0] + "".join(w.capitalize() for w in words[1:])
    upper = snake.upper()
    return [snake, kebab, camel, upper, f"user_{snake}", f"X-{kebab.title()}",
            "my" + "".join(w.capitalize() for w in words), f"APP_{upper}"]


@pytest.mark.parametrize("name", DEFAULT_NAMES)
def test_every_default_name_hits_itself_in_every_form(name: str) -> None:
    redactor = Redactor()
    for form in name_forms(name):
        assert redactor.is_secret(form), form


def test_default_names_are_exactly_the_documented_list() -> None:
    assert DEFAULT_NAMES == (
        "password", "passwd", "passphrase", "pass", "pwd", "passcode", "pw",
        "secret", "token", "auth", "authorization", "credential", "bearer", "jwt",
        "signature", "sig", "private", "otp", "pin",
        "apikey", "accesskey", "refreshkey", "secretkey", "privatekey", "key",
        "creds", "totp", "hmac",
        "session", "sid", "cookie", "csrf", "xsrf", "sessid",
    )


@pytest.mark.parametrize(("configured", "name"), [
    ("password", "password2"),
    ("password", "new-password"),
    ("password", "NEW_PASSWORD_CONFIRM"),
    ("apikey", "X-Api-Key"),
    ("api_key", "xApiKeyHeader"),
    ("accesskey", "AWSAccessKeyId"),
    ("token", "csrfmiddlewaretoken"),
    ("session", "JSESSIONID"),
    ("sessid", "PHPSESSID"),
    ("signature", "X-Hub-Signature-256"),
])
def test_long_names_match_as_substrings(configured: str, name: str) -> None:
    assert Redactor([configured]).is_secret(name)
    assert Redactor().is_secret(name)


@pytest.mark.parametrize(("configured", "name"), [
    ("pwd", "userPwd"),
    ("pwd", "pwd2"),
    ("pwd", "PWD"),
    ("pass", "user_pass"),
    ("pass", "passPhrase"),
    ("key", "X-Api-Key"),
    ("key", "sort_key"),
    ("key", "APIKey"),
    ("auth", "X-Auth-Token"),
    ("otp", "otp_code"),
    ("pin", "PIN"),
    ("sid", "connect.sid"),
    ("sig", "sig"),
    ("pw", "user_pw"),
])
def test_short_names_match_whole_words(configured: str, name: str) -> None:
    assert Redactor([configured]).is_secret(name)


@pytest.mark.parametrize(("configured", "name"), [
    ("key", "monkey"),
    ("key", "keyword"),
    ("pass", "passenger"),
    ("pass", "compass"),
    ("auth", "author"),
    ("otp", "footprint"),
    ("pin", "spinner"),
    ("sig", "signal"),
    ("sig", "design"),
    ("pwd", "pwdx"),
])
def test_short_names_never_match_inside_a_word(configured: str, name: str) -> None:
    assert not Redactor([configured]).is_secret(name)


ORDINARY_NAMES = ["monkey", "keyword", "passenger", "compass", "author", "footprint",
                  "spinner", "signal", "design", "category", "q", "page", "sort", "id",
                  "user", "email", "next", "redirect", "format", "Accept", "User-Agent",
                  "Content-Type", "X-Requested-With", "utm_source", "limit", "offset"]


@pytest.mark.parametrize("name", ORDINARY_NAMES)
def test_ordinary_names_are_not_secret(name: str) -> None:
    assert not Redactor().is_secret(name)


@pytest.mark.parametrize(("name", "words"), [
    ("userPwd", ["user", "pwd"]),
    ("APIKey", ["api", "key"]),
    ("XMLHttpRequest", ["xml", "http", "request"]),
    ("pwd2", ["pwd", "2"]),
    ("AWSAccessKeyId", ["aws", "access", "key", "id"]),
    ("X-Auth-Token", ["x", "auth", "token"]),
    ("user_pass", ["user", "pass"]),
    ("__", []),
])
def test_words(name: str, words: list[str]) -> None:
    assert _words(name) == words


def test_a_short_name_written_with_separators_matches_that_run_of_words() -> None:
    redactor = Redactor(["x-id"])
    assert redactor.is_secret("X-Id")
    assert redactor.is_secret("my_x_id")
    assert redactor.is_secret("XID")
    assert not redactor.is_secret("x_idle")
    assert not redactor.is_secret("id")


def test_the_names_given_are_the_whole_list() -> None:
    """Configuration adds the defaults; a Redactor uses exactly its names."""
    redactor = Redactor(["ssn"])
    assert redactor.is_secret("customer_ssn")
    assert not redactor.is_secret("password")
    assert not Redactor([]).is_secret("password")
    assert not Redactor(["", "--"]).is_secret("anything")


def test_is_secret_is_cached_but_not_for_huge_names() -> None:
    redactor = Redactor()
    info = redactor._cached_check.cache_info
    redactor.is_secret("X-Forwarded-For")
    redactor.is_secret("X-Forwarded-For")
    assert (info().hits, info().misses) == (1, 1)
    assert info().maxsize == 4096
    huge = "x" * 10_000 + "_password"
    assert redactor.is_secret(huge)
    assert redactor.is_secret(huge)
    assert info().currsize == 1


# --- value() and the hook ---------------------------------------------------


def test_value_redacts_secret_names_and_masks_the_rest() -> None:
    redactor = Redactor()
    assert redactor.value("userPwd", "hunter2") == REDACTED
    assert redactor.value("next", "https://alice:PW@host/") == "https://alice:[REDACTED]@host/"
    assert redactor.value("X-Upstream", "Bearer abc") == "Bearer [REDACTED]"
    assert redactor.value("q", "shoes") == "shoes"


def test_the_hook_sees_the_masked_value_and_decides() -> None:
    seen: list[tuple[str, str]] = []

    def hook(name: str, value: str) -> str:
        seen.append((name, value))
        return "[HIDDEN]" if name == "ssn" else value

    redactor = Redactor(hook=hook)
    assert redactor.value("ssn", "123-45-6789") == "[HIDDEN]"
    assert redactor.value("fwd", "Bearer abc") == "Bearer [REDACTED]"
    assert redactor.value("password", "x") == REDACTED  # the hook never sees it
    assert seen == [("ssn", "123-45-6789"), ("fwd", "Bearer [REDACTED]")]


def test_a_raising_hook_fails_closed_and_is_reported() -> None:
    errors: list[BaseException] = []
    failure = RuntimeError("hook bug")

    def hook(name: str, value: str) -> str:
        raise failure

    redactor = Redactor(hook=hook, on_error=errors.append)
    assert redactor.value("q", "shoes") == REDACTED
    assert errors == [failure]
    # without on_error: still closed, and nothing raised
    assert Redactor(hook=hook).value("q", "shoes") == REDACTED


def test_a_hook_returning_a_non_str_fails_closed_with_a_type_error() -> None:
    errors: list[BaseException] = []

    def hook(name: str, value: str) -> str:
        return None  # type: ignore[return-value]

    assert Redactor(hook=hook, on_error=errors.append).value("q", "shoes") == REDACTED
    assert len(errors) == 1
    assert isinstance(errors[0], TypeError)
    assert "NoneType" in str(errors[0])
    assert "shoes" not in str(errors[0])


def test_a_failing_on_error_is_logged_and_the_value_stays_redacted(
        caplog: pytest.LogCaptureFixture) -> None:
    def hook(name: str, value: str) -> str:
        raise ValueError("hook bug")

    def on_error(exc: BaseException) -> None:
        raise OSError("reporter bug")

    caplog.set_level(logging.ERROR, logger="flask_perfwatch._redact")
    assert Redactor(hook=hook, on_error=on_error).value("q", "shoes") == REDACTED
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [OSError]


def test_mask_and_value_fail_closed_on_an_internal_error() -> None:
    errors: list[BaseException] = []
    redactor = Redactor(on_error=errors.append)
    assert redactor.mask(b"password=x") == REDACTED  # type: ignore[arg-type]
    assert redactor.value(None, "x") == REDACTED  # type: ignore[arg-type]
    assert [type(e) for e in errors] == [TypeError, TypeError]


# --- mask(): by value ----------------------------------------------------------

MASKED = [
    # URL userinfo, any scheme; the user name stays
    ("https://alice:PW@host/", "https://alice:[REDACTED]@host/"),
    ("postgresql://app:PW@db/x", "postgresql://app:[REDACTED]@db/x"),
    ("redis://:PW@h:6379/0", "redis://:[REDACTED]@h:6379/0"),
    ("amqp://u:p@h", "amqp://u:[REDACTED]@h"),
    ("see https://u:p@ss@host/x then", "see https://u:[REDACTED]@host/x then"),
    ("https://a@b:pw@host", "https://a@b:[REDACTED]@host"),
    ("https://token:PW@host/x", "https://token:[REDACTED]@host/x"),
    ("https://u:p%40ss@h", "https://u:[REDACTED]@h"),
    # percent-encoded (an undecoded query string, a double-encoded one)
    ("next=https%3A%2F%2Falice%3APW%40host&q=1",
     "next=https%3A%2F%2Falice%3A[REDACTED]%40host&q=1"),
    ("/login?next=https%253A%252F%252Fbob%253APW%2540h",
     "/login?next=https%253A%252F%252Fbob%253A[REDACTED]%2540h"),
    ("password%3Dhunter2%26x%3D1", "password%3D[REDACTED]%26x%3D1"),
    ("forward=Bearer%20abc", "forward=Bearer%20[REDACTED]"),
    ("xoxa-00000token%3Dhunter2", "[REDACTED]%3D[REDACTED]"),
    ("BEARER%20userPwd: hunter2", "BEARER%20[REDACTED] [REDACTED]"),
    ("token%3Dab+cd", "token%3D[REDACTED]"),  # "+" is not a space in the credential
    # authorization credentials
    ("forward=Bearer abc.def", "forward=Bearer [REDACTED]"),
    ("X-Upstream: Bearer abc", "X-Upstream: Bearer [REDACTED]"),
    ("BEARER abc", "BEARER [REDACTED]"),
    ("xBearer abc", "xBearer [REDACTED]"),
    ("forward=Bearer+abc", "forward=Bearer+[REDACTED]"),
    ("Bearer Bearer abc", "Bearer Bearer [REDACTED]"),
    ("BEARER 0Bearer abc", "BEARER [REDACTED] [REDACTED]"),
    ("Basic dXNlcjpwYXNz", "Basic [REDACTED]"),
    ("basic dXNlcjpwYXNz, then", "basic [REDACTED], then"),
    ("Token 9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b", "Token [REDACTED]"),
    ("Bot MTk4NjIyNDgzNDcxOTI1MjQ4.Cl2FMQ.ZnCjm1XVW7vRze4b7Cq4se7kKWs", "Bot [REDACTED]"),
    ('Digest username="bob", realm="x", response="6629fae49393a05397450978507c4ef1"',
     "Digest [REDACTED]"),
    ("Negotiate YIIGhgYGKwYBBQUCoIIGejCCBnag", "Negotiate [REDACTED]"),
    ("ApiKey " + "AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh", "ApiKey [REDACTED]"),
    # JWT
    ("t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "t=[REDACTED]"),
    ("id eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0. ok", "id [REDACTED] ok"),
    # well-known token prefixes
    ("ghp_" + "a1B2" * 9, REDACTED),
    ("gho_" + "a1B2" * 9, REDACTED),
    ("ghs_" + "a1B2" * 9, REDACTED),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", REDACTED),
    ("xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", REDACTED),
    ("xoxp-123456789012-123456789012-123456789012-abcdef", REDACTED),
    ("xapp-1-A0123456789-1234567890123-abcdef0123456789", REDACTED),
    ("sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", REDACTED),
    ("sk_test_" + "4eC39HqLyjWDarjtT1zdp7dc", REDACTED),
    ("rk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", REDACTED),
    ("whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", REDACTED),
    ("key sk-proj-abc123def456ghi789jkl012", "key [REDACTED]"),
    ("sk-ant-api03-" + "Ab1" * 30, REDACTED),
    ("aws AKIAIOSFODNN7EXAMPLE ok", "aws [REDACTED] ok"),
    ("ASIAY34FZKBOKMUTVV7A", REDACTED),
    ("AIzaSyA-1234567890abcdefghijklmnopqrstu", REDACTED),
    ("glpat-" + "xYz12" * 4, REDACTED),
    ("npm_" + "a1B2c3" * 6, REDACTED),
    ("pypi-AgEIcHlwaS5vcmcCJGE0ZjE2", REDACTED),
    ("SG." + "a1" * 11 + "." + "b2" * 21, REDACTED),
    ("shpat_" + "0123456789abcdef" * 2, REDACTED),
    ("shpss_" + "0123456789abcdef" * 2, REDACTED),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\nok",
     "[REDACTED]\nok"),
    # name=value and name: value with a secret name
    ("a=1&password=x&b=2", "a=1&password=[REDACTED]&b=2"),
    ("host=db user=app password=PW dbname=x", "host=db user=app password=[REDACTED] dbname=x"),
    ("host=db password='a b c' dbname=x", "host=db password='[REDACTED]' dbname=x"),
    ('{"token": "abc", "page": 2}', '{"token": "[REDACTED]", "page": 2}'),
    ("{'api_key': 'abc'}", "{'api_key': '[REDACTED]'}"),
    ('{\\"token\\":\\"abc\\"}', '{\\"token\\":\\"[REDACTED]\\"}'),
    ("login ok api_key=abc user=bob", "login ok api_key=[REDACTED] user=bob"),
    ("user[password]=x&user[name]=bob", "user[password]=[REDACTED]&user[name]=bob"),
    ("password: correct horse battery staple\nnext: 1", "password: [REDACTED]\nnext: 1"),
    ("userPwd=abc", "userPwd=[REDACTED]"),
    ("--password=abc --verbose", "--password=[REDACTED] --verbose"),
    ("password=b'abc'", "password=b'[REDACTED]'"),
    ("Server=x;Pwd={a;b c};Database=y", "Server=x;Pwd={[REDACTED]};Database=y"),
    ("password=P'a;ss<w>rd next", "password=[REDACTED] next"),
    ("x-api-key => abc", "x-api-key => [REDACTED]"),
    ("Authorization: Bearer abc def", "Authorization: [REDACTED]"),
    # a value ending in a secret name=/name: whose own value lies beyond it
    ("BEARER=userPwd: hunter2 ok", "BEARER=[REDACTED] [REDACTED]"),
    ("token=a=>apikey => abc", "token=[REDACTED] => [REDACTED]"),
    ("Bearer+abc.def", "Bearer+[REDACTED]"),
]


@pytest.mark.parametrize(("text", "expected"), MASKED)
def test_mask(text: str, expected: str) -> None:
    redactor = Redactor()
    assert redactor.mask(text) == expected
    assert redactor.mask(expected) == expected


ORDINARY_TEXTS = [
    "", "hello world", "electronics_category", "2024-01-01T10:30:00+02:00",
    "/inventory/items/42", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
    "café crème brûlée", "日本語のテキスト", "emoji 🎉 party", "ﬁ ß İ Σ",
    "risk-free offer", "ask-me-anything", "sk-ate park", "ghp_", "ghp_short", "AKIA",
    "the monkey ate a keyword", "passenger, compass, author", "Token expired",
    "Basic usage", "Bot detected", "Bearer", "robot arm 3", "Token InvalidSignatureException",
    "bot 2024", "Token naïve-café-crème-brûlée-2024",
    "pk_live_4eC39HqLyjWDarjtT1zdp7dc", "xoxo-hugs", "SG.x.y", "eyJ", "-----BEGIN",
    "https://example.com/path?q=1&page=2#top", "user@example.com", "mailto:bob@example.com",
    "http://localhost:5000/users/bob@example.com", "sort=asc&page=2", "a+b=c",
    "100% sure", "50%off", "%zz", "C++ and C#", "x: 1, y: 2", "key-value store",
    "next=https%3A%2F%2Fexample.com%2Fa%3Fb%3D1", "=" * 10, "::", "a=&b=",
    "sk-learn-is-a-python-library", "monkeyJumpingAround.over.the.fence",
]


@pytest.mark.parametrize("text", ORDINARY_TEXTS)
def test_text_without_secrets_comes_back_unchanged(text: str) -> None:
    assert Redactor().mask(text) is text


def test_mask_is_idempotent_even_when_a_name_hits_the_marker_itself() -> None:
    """A round of masking can create new context (``[REDACTED]:`` is a pair
    whose name contains ``acted``); masking repeats until stable."""
    redactor = Redactor(["acted"])
    masked = redactor.mask("ghp_" + "a1B2" * 9 + ": tail")
    assert masked == "[REDACTED]: [REDACTED]"
    assert redactor.mask(masked) == masked


def test_mask_text_uses_the_default_names() -> None:
    assert mask_text("userPwd=abc&q=1") == "userPwd=[REDACTED]&q=1"
    text = "q=shoes"
    assert mask_text(text) is text


def test_mask_uses_the_configured_names_for_pairs() -> None:
    assert Redactor(["ssn"]).mask("ssn=123&password=x") == "ssn=[REDACTED]&password=x"


# --- redact_url ----------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://user:PW@host:6379/0?password=PW2&socket_timeout=2",
     "redis://user:[REDACTED]@host:6379/0?password=[REDACTED]&socket_timeout=2"),
    ("redis://:pw@h:1/0", "redis://:[REDACTED]@h:1/0"),
    ("rediss://user:pw@h:1/0", "rediss://user:[REDACTED]@h:1/0"),
    ("redis://user:@h", "redis://user:[REDACTED]@h"),
    ("unix:///tmp/redis.sock?db=0&pass%77ord=x", "unix:///tmp/redis.sock?db=0&pass%77ord=[REDACTED]"),
    ("https://hooks.example/x#access_token=abc&state=1",
     "https://hooks.example/x#access_token=[REDACTED]&state=1"),
    ("https://ghp_" + "a1B2" * 9 + "@github.com/o/r", "https://[REDACTED]@github.com/o/r"),
    ("https://mm.example/hooks?next=https%3A%2F%2Fu%3Apw%40h",
     "https://mm.example/hooks?next=https%3A%2F%2Fu%3A[REDACTED]%40h"),
    ("http://[::1", "<unparsable URL>"),
    ("http://exa\uff03mple:pw@h", "<unparsable URL>"),
])
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_keeps_a_clean_url_as_it_is() -> None:
    url = "redis://h:1/0?socket_timeout=2"
    assert redact_url(url) is url


def test_redact_url_uses_the_given_redactor() -> None:
    url = "https://h/x?ssn=1&password=2"
    assert redact_url(url, Redactor(["ssn"])) == "https://h/x?ssn=[REDACTED]&password=2"
    assert redact_url(url) == "https://h/x?ssn=1&password=[REDACTED]"


# --- hostile input ---------------------------------------------------------------

HOSTILE = {
    "colons": "a:" * 50_000,
    "schemes": "https://" * 20_000,
    "bearers": "Bearer " * 20_000,
    "bearers-plus": "Bearer+" * 14_000,
    "bearer-tails": "Bearer 0" * 14_000,
    "equals": "=" * 100_000,
    "passwords": "password=" * 20_000,
    "password-lines": "password: \n" * 10_000,
    "authority": "//:" + "a" * 100_000,
    "at-signs": "//" + "@" * 100_000,
    "percent": "%41" * 33_000,
    "double-percent": "%2541" * 20_000,
    "plus": "+" * 100_000,
    "jwt-ish": "eyJ" * 100_000,  # 300 KB: without its lookbehind the JWT rule is quadratic
    "jwt-dots": "eyJaaaaaaa." * 9_000,
    "sk": "sk-" * 33_000,
    "akia": "AKIA" * 25_000,
    "basic": "Basic A " * 12_000,
    "digest": "Digest a=" * 11_000,
    "pem": "-----BEGIN RSA PRIVATE KEY-----" * 3_000,
    "quotes": '"token":"' * 9_000,
    "escaped-quotes": 'token=\\"' * 12_000,
    "pairs": "a=b&" * 25_000,
    "long-name": "a" * 100_000 + "=x",
    "words": "x " * 50_000,
    "camel": "aB" * 50_000 + "=x",
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_is_masked_in_linear_time(text: str) -> None:
    """Guards against catastrophic backtracking (which takes minutes, not
    seconds): the bound is generous for a loaded 2-core machine."""
    errors: list[BaseException] = []
    redactor = Redactor(on_error=errors.append)
    started = time.perf_counter()
    masked = redactor.mask(text)
    redactor.value(text[:50_000], text)
    redact_url(text, redactor)
    assert time.perf_counter() - started < 2.0
    assert errors == []
    assert redactor.mask(masked) == masked


# --- properties --------------------------------------------------------------------

#: Fragments that trigger (or nearly trigger) every rule, in several cases.
FRAGMENTS = st.sampled_from([
    "Bearer", "bearer", "BASIC", "Token", "Digest", "bot", "NTLM", " ", "\t", "+", "\n",
    "://", "//", ":", "@", "/", "?", "#", "=", "&", ";", "%", "%3A", "%2F", "%40", "%20",
    "%25", "\"", "'", "\\", "[", "]", "{", "}", "eyJ", "eyJhbGciOi", ".", "ghp_", "sk-",
    "sk_live_", "AKIA", "AIza", "xoxb-", "SG.", "-----BEGIN PRIVATE KEY-----", "-----END",
    "password", "pwd", "token", "key", "user", "x", "A1b2C3d4", "0123456789", REDACTED,
    "dXNlcjpwYXNz", "é", "İ", "Σ", "🎉",
])
COMPOSED = st.lists(FRAGMENTS | st.text(max_size=4), max_size=30).map("".join)
ANY_TEXT = st.text() | COMPOSED


@PROPERTY
@given(ANY_TEXT)
def test_mask_never_raises_and_is_idempotent(text: str) -> None:
    errors: list[BaseException] = []
    redactor = Redactor(on_error=errors.append)
    masked = redactor.mask(text)
    assert isinstance(masked, str)
    assert redactor.mask(masked) == masked
    assert errors == []  # no internal error hidden by failing closed


@PROPERTY
@given(ANY_TEXT)
def test_the_fast_path_skips_only_text_no_rule_would_change(text: str) -> None:
    if not _may_hold_secret(text):
        assert Redactor()._mask(text) == text


ORDINARY_WORDS = st.sampled_from(
    ["shoes", "red", "monkey", "keyword", "passenger", "compass", "author", "robot", "risk",
     "free", "ask", "me", "sk", "ate", "ghp", "token", "basic", "bot", "Token", "Red",
     "InvalidSignatureException"])
#: Lower-case and caseless words: mixed-case ASCII runs may look like tokens.
UNICODE_WORDS = st.text(st.characters(categories=["Ll", "Lo", "M", "So"]), min_size=1,
                        max_size=8)


@st.composite
def ordinary_texts(draw: st.DrawFn) -> str:
    """Words joined by ordinary separators (no ``:``, ``=`` or ``%``)."""
    words = draw(st.lists(ORDINARY_WORDS | UNICODE_WORDS, max_size=12))
    separators = st.sampled_from([" ", "-", "_", ".", ",", "/", "&", "?"])
    text = "".join(word + draw(separators) for word in words)
    assume("bearer" not in text.lower())  # "Bearer <anything>" is a credential
    return text


ORDINARY = ordinary_texts()


@PROPERTY
@given(ORDINARY)
def test_ordinary_text_comes_back_unchanged(text: str) -> None:
    assert Redactor().mask(text) is text


PLANTED = st.sampled_from([
    f"https://u:{SECRET}@h/", f"postgresql://app:{SECRET}@db/x", f"redis://:{SECRET}@h:1/0",
    f"Bearer {SECRET}", f"bearer\t{SECRET}", f"password={SECRET}", f"userPwd: {SECRET}",
    f'"api_key": "{SECRET}"', f"token%3D{SECRET}", f"https%3A%2F%2Fu%3A{SECRET}%40h",
])


@PROPERTY
@given(name=st.text(), prefix=ANY_TEXT, planted=PLANTED, suffix=ANY_TEXT)
def test_a_planted_secret_never_gets_through(name: str, prefix: str, planted: str,
                                              suffix: str) -> None:
    errors: list[BaseException] = []
    redactor = Redactor(on_error=errors.append)
    value = redactor.value(name, prefix + planted + suffix)
    assert SECRET not in value
    assert SECRET not in redactor.mask(prefix + planted + suffix)
    assert errors == []


LONG_DEFAULTS = st.sampled_from([n for n in DEFAULT_NAMES if len(n) >= 5])
SEPARATORS = st.text(st.sampled_from("-_. /[]"), max_size=2)


@PROPERTY
@given(prefix=st.text(), name=LONG_DEFAULTS, suffix=st.text(), case=st.sampled_from(
    [str.lower, str.upper, str.title]), seps=st.lists(SEPARATORS, min_size=13, max_size=13))
def test_any_name_containing_a_long_default_name_is_secret(
        prefix: str, name: str, suffix: str, case: object, seps: list[str]) -> None:
    assert callable(case)
    spelled = "".join(c + s for c, s in zip(case(name), seps[:len(name)], strict=True))
    assert Redactor().value(prefix + spelled + suffix, "anything") == REDACTED


URLISH_PART = st.text(st.characters(blacklist_characters="/?#", codec="utf-8"), max_size=12)


@PROPERTY
@given(st.text() | COMPOSED)
def test_redact_url_never_raises(url: str) -> None:
    assert isinstance(redact_url(url), str)


@PROPERTY
@given(scheme=st.sampled_from(["redis", "rediss", "https", "postgresql", "amqp", "x-y+z"]),
       user=URLISH_PART, host=URLISH_PART, path=st.text(max_size=12), query=COMPOSED)
def test_redact_url_never_shows_the_password(scheme: str, user: str, host: str, path: str,
                                              query: str) -> None:
    url = f"{scheme}://{user}:{SECRET}@{host}/{path}?password={SECRET}&{query}"
    assert SECRET not in redact_url(url)
