"""Small helpers shared by the extension and the middleware."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit


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


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
