"""The Flask app posting to the Mattermost stand-in, shared by the tests that
need one (the ``mm_app`` fixture in conftest.py builds it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from channel_harness import Channel, channel_app
from flask import Flask
from mattermost_server import MattermostStandIn

from flask_perfwatch import PerfWatch
from flask_perfwatch.notifiers.mattermost import MattermostNotifier

#: A Flask app whose only (or second) notifier posts to the stand-in.
Harness = Channel[MattermostNotifier]


def build_harness(standin: MattermostStandIn, make_app: Callable[..., tuple[Flask, PerfWatch]],
                  *, notifiers: tuple[str, ...] = ("mattermost",), **overrides: Any) -> Harness:
    """The test app posting to ``standin``. Backoff sleeps are recorded in
    ``harness.delays`` instead of slept; the reports the notifier was given are
    kept in ``harness.reports``."""
    overrides.setdefault("mattermost_url", standin.url)
    overrides.setdefault("mattermost_token", standin.token)
    if "mattermost_channel_id" not in overrides:
        overrides.setdefault("mattermost_team", standin.team_name)
        overrides.setdefault("mattermost_channel", "perf-alerts")
    overrides.setdefault("mattermost_timeout", 3.0)
    return channel_app(make_app, MattermostNotifier, notifiers=notifiers, **overrides)
