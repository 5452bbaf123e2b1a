"""Small general helpers (a leaf module: it imports nothing of ours, so config,
stores, notifiers and the pipeline can all use it without import cycles)."""

from __future__ import annotations

import fnmatch
import importlib
import math
import re
from collections.abc import Callable
from typing import Any


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


# --- parsing helpers shared by config, stores, notifiers and the pipeline -------

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|sec|m|min|h|d|w)?\s*$", re.I)
_UNIT_SECONDS = {
    None: 1.0,
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a human form: ``1.5``, ``"500ms"``, ``"6h"``, ``"10d"``."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            raise ValueError(value) from None
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match is None:
            raise ValueError(value)
        unit = match.group(2).lower() if match.group(2) else None
        seconds = float(match.group(1)) * _UNIT_SECONDS[unit]
    else:
        raise ValueError(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(value)
    return seconds


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: Any) -> int:
    """Bytes from an int or a human form: ``1048576``, ``"512MiB"``, ``"10M"``, ``"2GB"``
    (units are binary: K = 1024)."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match is None:
            raise ValueError(value)
        unit = (match.group(2) or "").lower()[:1]
        size = int(match.group(1)) * _SIZE_UNITS[unit]
    else:
        raise ValueError(value)
    if size < 0:
        raise ValueError(value)
    return size


def import_string(path: str) -> Any:
    """Import ``"pkg.module:attr"`` or ``"pkg.module.attr"``.

    Raises :class:`ValueError` with a readable reason when it cannot.
    """
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{path!r} is not a 'module:attribute' path")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def printable(value: object) -> str:
    """``value`` as text that is safe to print: control characters escaped
    (:func:`safe_text`), and the lone surrogates that stand for undecodable bytes
    of a file name as ``\\udcxx``, so that printing can never fail on them.

    Every piece of data the CLI prints (config values, error messages, report
    fields, file names) goes through this; only the CLI's own words do not."""
    text = safe_text(str(value))
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
