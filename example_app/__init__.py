"""A small shop app that shows flask_perfwatch at work.

Run it with ``./dev demo`` (or ``flask --app example_app run``) and open
http://127.0.0.1:5000/ : every endpoint slower than half a second leaves a
pyinstrument report in ``perfwatch-reports/`` and logs its path.
"""

from .app import create_app, perfwatch

__all__ = ["create_app", "perfwatch"]
