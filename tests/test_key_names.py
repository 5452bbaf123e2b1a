"""Configuration key names are spelled in one place: ``flask_perfwatch/config.py``.

Everywhere else, code builds a key's name with :func:`flask_perfwatch.config.key_name`
(or from ``PREFIX``), so a message can never name a key that does not exist.
Docstrings (module, class, function) may name keys literally: they are
documentation, checked against the table by ``test_cleanup.py``. Comments are
not in the syntax tree, so they are free too. Every other string constant is
checked, including the literal parts of f-strings (``ast.JoinedStr`` holds them
as ``ast.Constant`` nodes).
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "flask_perfwatch"
#: The one module allowed to spell key names in code.
DECLARING_MODULE = PACKAGE / "config.py"
#: A full key name, not the bare prefix (``PERFWATCH_*`` or ``PREFIX + name`` are fine).
KEY_RE = re.compile(r"PERFWATCH_[A-Z]")

_HAS_DOCSTRING = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(tree: ast.AST) -> set[int]:
    """``id()`` of the constant nodes that are docstrings: the first statement
    of a module, class or function, when it is a plain string (an f-string is
    never a docstring, so its parts stay checked)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, _HAS_DOCSTRING) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                found.add(id(first.value))
    return found


def key_literals(source: str, filename: str) -> list[str]:
    """``filename:line: 'text'`` for every non-docstring string constant of
    ``source`` that contains a full key name."""
    tree = ast.parse(source, filename)
    docstrings = _docstrings(tree)
    return [f"{filename}:{node.lineno}: {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings and KEY_RE.search(node.value)]


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_but_config_spells_a_key_name_in_code() -> None:
    root = PACKAGE.parent
    offenders = [line
                 for path in _modules() if path != DECLARING_MODULE
                 for line in key_literals(path.read_text(encoding="utf-8"),
                                          str(path.relative_to(root)))]
    assert offenders == [], (
        "spell key names with flask_perfwatch.config.key_name(...), not as literals:\n"
        + "\n".join(sorted(offenders, key=_by_file_and_line)))


def _by_file_and_line(line: str) -> tuple[str, int]:
    where, number, _text = line.split(":", 2)
    return where, int(number)


def test_the_scan_covers_the_package() -> None:
    """The main test reads the files it is meant to read; config.py, which
    does spell keys in code, is seen by the scan and skipped only by name."""
    names = {path.relative_to(PACKAGE).as_posix() for path in _modules()}
    assert {"cli.py", "config.py", "notifiers/mattermost.py", "stores/redis.py"} <= names
    assert key_literals(DECLARING_MODULE.read_text(encoding="utf-8"), "config.py") != []


SAMPLE = textwrap.dedent('''\
    """Module docstring: PERFWATCH_STORE is documentation."""
    import logging

    logger = logging.getLogger(__name__)
    "a bare string that is not the first statement: PERFWATCH_STORE_PREFIX"


    class Thing:
        """Class docstring: PERFWATCH_THRESHOLD."""

        def method(self, value: float) -> str:
            """Method docstring: PERFWATCH_ENABLED."""
            # a comment: PERFWATCH_NOTIFIERS
            return f"{value:g}s (PERFWATCH_NOTIFIER_TIMEOUT)"


    async def run() -> None:
        """Coroutine docstring: PERFWATCH_HANG_AFTER."""
        logger.warning("over %s", "PERFWATCH_DEDUP_KEY")


    def described(width: int) -> str:
        f"""an f-string first statement is not a docstring: PERFWATCH_IGNORE {width}"""
        return f"{width:>{width}}" f" PERFWATCH_REDACT"


    def prefixes() -> tuple[str, str]:
        return "PERFWATCH_", "PERFWATCH_*"
    ''')


def test_the_scan_flags_code_strings_and_f_string_parts_but_not_docstrings() -> None:
    """The check can fail, and fails on the right lines: plain strings, log
    arguments and f-string parts are flagged; docstrings, comments and the bare
    prefix are not."""
    found = sorted(key_literals(SAMPLE, "sample.py"), key=_by_file_and_line)
    assert found == [
        "sample.py:5: 'a bare string that is not the first statement: PERFWATCH_STORE_PREFIX'",
        "sample.py:14: 's (PERFWATCH_NOTIFIER_TIMEOUT)'",
        "sample.py:19: 'PERFWATCH_DEDUP_KEY'",
        "sample.py:23: 'an f-string first statement is not a docstring: PERFWATCH_IGNORE '",
        "sample.py:24: ' PERFWATCH_REDACT'",
    ]
