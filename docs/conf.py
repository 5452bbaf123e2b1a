"""Sphinx configuration for flask_perfwatch."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

import flask_perfwatch

project = "flask_perfwatch"
copyright = "2026, flask_perfwatch developers"
release = flask_perfwatch.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "perfwatch_config",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
# no intersphinx: builds must not touch the network
nitpicky = False
html_theme = "furo"
html_title = f"flask_perfwatch {release}"
html_static_path = ["_static"]
exclude_patterns = ["_build"]
