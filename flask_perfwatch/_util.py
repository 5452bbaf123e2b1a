"""Small helpers shared by the extension and the middleware."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable


def glob_matcher(patterns: list[str]) -> Callable[[str], bool]:
    """One compiled matcher for several shell-style globs."""
    if not patterns:
        return lambda _: False
    regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
    return lambda value: regex.match(value) is not None


def error_name(exc: BaseException | None) -> str | None:
    """``ValueError`` or ``package.module.MyError``: the type, never the message
    (messages may carry secrets)."""
    if exc is None:
        return None
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


# C0 and C1 control characters, DEL, and the Unicode bidirectional overrides
# ("Trojan Source"): none may reach a log line or a terminal as they are.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_control(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: str) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\x1b``,
    ``\\u202e``): safe for one log line or a terminal, whatever it came from."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(_escape_control, text)
