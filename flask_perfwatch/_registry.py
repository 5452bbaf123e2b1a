"""The names of pluggable parts, in one shape: profiling engines
(``PERFWATCH_PROFILER``), dedupe stores (the scheme of ``PERFWATCH_STORE``)
and notifiers (``PERFWATCH_NOTIFIERS``).

Each :class:`Registry` maps a name to a ``module:Class`` path, imported only
when the part is built, so that an optional dependency (``redis``,
``mattermostdriver``) is needed only by whoever picks it. This module is a
leaf (it imports nothing of ours but :mod:`._util`): :mod:`.config`
validates names against it without importing any part, and the packages
build parts through :meth:`Registry.load`. A name is therefore checked in one
place, by one rule, whichever side asks.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any

from ._util import import_string


class Registry(Mapping[str, str]):
    """Built-in names of one kind of part -> their ``module:Class`` paths.

    :param kind: what the names name, for messages (``"notifier"``).
    :param entry_point_group: also accept names that installed packages
        register under this entry point group.
    :param paths: also accept a ``module:Class`` path as a name.
    """

    def __init__(self, kind: str, builtin: Mapping[str, str], *,
                 entry_point_group: str | None = None, paths: bool = False) -> None:
        self.kind = kind
        self._builtin = dict(builtin)
        self.entry_point_group = entry_point_group
        self.paths = paths

    def __getitem__(self, name: str) -> str:
        return self._builtin[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._builtin)

    def __len__(self) -> int:
        return len(self._builtin)

    def __repr__(self) -> str:
        return f"<Registry of {self.kind}s: {', '.join(self.names())}>"

    def _entry_points(self) -> list[Any]:
        if self.entry_point_group is None:
            return []
        return list(entry_points(group=self.entry_point_group))

    def names(self) -> list[str]:
        """Every name known without importing anything: built-ins first, then
        entry points."""
        return list(dict.fromkeys([*self._builtin, *(ep.name for ep in self._entry_points())]))

    def unknown(self, name: str) -> ValueError:
        """The error for a name that is none of :meth:`names` (with the
        closest one, for a typo)."""
        names = self.names()
        alternatives = ", ".join(names)
        if self.paths:
            alternatives += ", or a 'module:Class' path"
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return ValueError(f"unknown {self.kind} {name!r}{hint}; known: {alternatives}")

    def load(self, name: str) -> Any:
        """The class a name stands for: a built-in name, else an entry point,
        else (if :attr:`paths`) a ``module:Class`` path. :class:`ValueError`
        saying why not."""
        if name in self._builtin:
            return import_string(self._builtin[name])
        for ep in self._entry_points():
            if ep.name == name:
                try:
                    return ep.load()
                except Exception as exc:
                    raise ValueError(f"entry point {name!r} of group {self.entry_point_group!r} "
                                     f"failed to load: {exc!r}") from exc
        if self.paths and (":" in name or "." in name):
            return import_string(name)
        raise self.unknown(name)


#: ``PERFWATCH_PROFILER`` values.
ENGINES = Registry("profiler", {
    "sampler": "flask_perfwatch.profiling.sampler:SamplerEngine",
    "pyinstrument": "flask_perfwatch.profiling.pyinstrument_engine:PyinstrumentEngine",
    "off": "flask_perfwatch.profiling.base:OffEngine",
})

#: ``PERFWATCH_STORE`` URL schemes.
STORES = Registry("store scheme", {
    "memory": "flask_perfwatch.stores.memory:MemoryStore",
    "sqlite": "flask_perfwatch.stores.sqlite:SQLiteStore",
    "redis": "flask_perfwatch.stores.redis:RedisStore",
    "rediss": "flask_perfwatch.stores.redis:RedisStore",
})

#: ``PERFWATCH_NOTIFIERS`` names: built-ins, entry points of this group, or
#: ``module:Class`` paths.
NOTIFIERS = Registry("notifier", {
    "local": "flask_perfwatch.notifiers.local:LocalFileNotifier",
    "log": "flask_perfwatch.notifiers.log:LogNotifier",
    "mattermost": "flask_perfwatch.notifiers.mattermost:MattermostNotifier",
    "slack": "flask_perfwatch.notifiers.slack:SlackNotifier",
    "teams": "flask_perfwatch.notifiers.teams:TeamsNotifier",
    "discord": "flask_perfwatch.notifiers.discord:DiscordNotifier",
    "email": "flask_perfwatch.notifiers.email:EmailNotifier",
    "webhook": "flask_perfwatch.notifiers.webhook:WebhookNotifier",
    "pagerduty": "flask_perfwatch.notifiers.pagerduty:PagerDutyNotifier",
}, entry_point_group="flask_perfwatch.notifiers", paths=True)
