"""Notifiers: where alerts go. A name in ``PERFWATCH_NOTIFIERS`` is a
built-in name, else an entry point of group ``flask_perfwatch.notifiers``,
else a ``module:Class`` path (:data:`NOTIFIERS`)."""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from .._registry import NOTIFIERS
from ..config import key_name
from ..exceptions import ConfigError
from .base import Notifier
from .local import LocalFileNotifier

if TYPE_CHECKING:
    from ..config import Config
    from .discord import DiscordNotifier
    from .email import EmailNotifier
    from .log import LogNotifier
    from .mattermost import MattermostNotifier
    from .pagerduty import PagerDutyNotifier
    from .slack import SlackNotifier
    from .teams import TeamsNotifier
    from .webhook import WebhookNotifier

logger = logging.getLogger(__name__)

#: The entry point group other packages register notifier names under.
ENTRY_POINT_GROUP = NOTIFIERS.entry_point_group


def resolve_notifier(name: str) -> type[Notifier]:
    """The notifier class for a name (see :data:`NOTIFIERS`); :class:`ValueError`
    saying why not."""
    cls = NOTIFIERS.load(name)
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
            raise ConfigError.invalid(key_name("notifiers"), list(config.notifiers), source,
                                      f"known notifier names ({exc})") from None
        notifiers.append(cls.from_config(config))
    return notifiers


#: Channel classes imported on first use, so that an optional client library
#: (mattermostdriver, slack_sdk) is only imported by those who use it.
_LAZY = {
    "MattermostNotifier": "mattermost",
    "SlackNotifier": "slack",
    "TeamsNotifier": "teams",
    "DiscordNotifier": "discord",
    "EmailNotifier": "email",
    "WebhookNotifier": "webhook",
    "PagerDutyNotifier": "pagerduty",
    "LogNotifier": "log",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "ENTRY_POINT_GROUP",
    "NOTIFIERS",
    "DiscordNotifier",
    "EmailNotifier",
    "LocalFileNotifier",
    "LogNotifier",
    "MattermostNotifier",
    "Notifier",
    "PagerDutyNotifier",
    "SlackNotifier",
    "TeamsNotifier",
    "WebhookNotifier",
    "create_notifiers",
    "resolve_notifier",
]
