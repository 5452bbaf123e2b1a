"""Checked by mypy (``./dev check``), never run: the decorators keep types."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, assert_type

from flask import Flask

from flask_perfwatch import PerfWatch

app = Flask(__name__)
perfwatch = PerfWatch(app)


@perfwatch.watch
def add(a: int, b: int = 1) -> int:
    return a + b


@perfwatch.watch(threshold="200ms", name="fetch")
async def fetch(url: str) -> bytes:
    return url.encode()


@app.get("/export")
@perfwatch.threshold(10)
def export() -> str:
    return "export"


@app.get("/health")
@perfwatch.ignore
def health() -> str:
    return "ok"


assert_type(add(1, b=2), int)
coroutine = fetch("x")
_ = assert_type(coroutine, Coroutine[Any, Any, bytes])
coroutine.close()
assert_type(export(), str)
assert_type(health(), str)
add("no")  # type: ignore[arg-type]
