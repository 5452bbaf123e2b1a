"""``.. perfwatch-config::`` renders one ``.. data::`` entry per configuration
key, straight from :func:`flask_perfwatch.config.iter_keys`, so the docs and
the code cannot drift apart."""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

from flask_perfwatch.config import iter_keys


def _default(value: Any) -> str:
    if isinstance(value, tuple):
        return "``" + repr(list(value)) + "``"
    if value is None:
        return "unset"
    return f"``{value!r}``"


class PerfwatchConfig(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        lines: list[str] = []
        for key, default, expected, doc in iter_keys():
            lines += [
                f".. data:: {key}",
                "",
                f"   {doc}",
                "",
                f"   :Default: {_default(default)}",
                f"   :Accepts: {expected}",
                "",
            ]
        node = nodes.section()
        node.document = self.state.document
        self.state.nested_parse(StringList(lines, source="flask_perfwatch.config"),
                                self.content_offset, node)
        return node.children


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("perfwatch-config", PerfwatchConfig)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
