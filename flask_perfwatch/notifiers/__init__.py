"""Notifiers: where alerts go. Names are resolved in one place, here:
built-in names, then entry points of group ``flask_perfwatch.notifiers``,
then ``module:Class`` paths."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from .._util import import_string
from ..exceptions import ConfigError
from .base import Notifier
from .local import LocalFileNotifier

if TYPE_CHECKING:
    from ..config import Config
    from .mattermost import MattermostNotifier

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "flask_perfwatch.notifiers"

#: Built-in notifier names -> ``module:Class`` (imported when used).
BUILTIN: dict[str, str] = {
    "local": "flask_perfwatch.notifiers.local:LocalFileNotifier",
    "mattermost": "flask_perfwatch.notifiers.mattermost:MattermostNotifier",
}


def resolve_notifier(name: str) -> type[Notifier]:
    """The notifier class for a name; :class:`ValueError` saying why not."""
    if name in BUILTIN:
        cls = import_string(BUILTIN[name])
    else:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if found:
            try:
                cls = found[0].load()
            except Exception as exc:
                raise ValueError(f"entry point {name!r} failed to load: {exc!r}") from exc
        elif ":" in name or "." in name:
            cls = import_string(name)
        else:
            known = sorted({*BUILTIN, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
            raise ValueError(f"unknown notifier {name!r}; known: {', '.join(known)}, "
                             "or a 'module:Class' path")
    if not (isinstance(cls, type) and issubclass(cls, Notifier)):
        raise ValueError(f"{name!r} is {cls!r}, not a flask_perfwatch.notifiers.Notifier "
                         "subclass")
    return cls


def create_notifiers(config: Config) -> list[Notifier]:
    """Instantiate every notifier ``config.notifiers`` names (at ``init_app``)."""
    source = config.sources.get("notifiers", "default")
    notifiers = []
    for name in dict.fromkeys(config.notifiers):  # a name given twice is one notifier
        try:
            cls = resolve_notifier(name)
        except ValueError as exc:
            raise ConfigError.invalid("PERFWATCH_NOTIFIERS", list(config.notifiers), source,
                                      f"known notifier names ({exc})") from None
        notifiers.append(cls.from_config(config))
    return notifiers


def __getattr__(name: str) -> Any:
    # MattermostNotifier lives in its own module so that mattermostdriver is
    # only imported by those who use it.
    if name == "MattermostNotifier":
        from .mattermost import MattermostNotifier

        return MattermostNotifier
    raise AttributeError(name)


__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "LocalFileNotifier",
    "MattermostNotifier",
    "Notifier",
    "create_notifiers",
    "resolve_notifier",
]
