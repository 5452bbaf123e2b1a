"""One delivery policy for every channel: classify each attempt, retry the
retryable ones with backoff and jitter, honour the server's ``Retry-After``,
and stay within a budget per alert.

A channel's attempt raises :class:`Retryable` (a timeout, a dropped
connection, 429, 5xx, Slack's ``ratelimited``...) or :class:`Permanent` (bad
credentials, an unknown channel, a payload the server rejects); anything
else it raises is a bug or an unknown failure and is not retried.
:func:`deliver` runs the attempts on `tenacity <https://tenacity.readthedocs.io>`_
and turns the final failure into a
:class:`~flask_perfwatch.exceptions.NotifierError` whose message names the
channel, the number of attempts and the last reason.

A retry must never post twice: each channel either uses the idempotency
means its API offers (Mattermost's ``pending_post_id``, PagerDuty's
``dedup_key``, a Standard Webhooks ``webhook-id``) or keeps, across attempts,
the steps that already succeeded (an uploaded file is not uploaded again).
The attempt function receives the attempt number and closes over that state.

Third-party notifiers may use it too::

    from flask_perfwatch.notifiers.delivery import Permanent, Retryable, RetryPolicy, deliver

    def send(self, metrics, report):
        def attempt(number):
            answer = post(...)
            if answer.status == 429:
                raise Retryable("rate limited", retry_after=answer.retry_after)
            ...
        deliver("carrier-pigeon", attempt, self.policy)
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import tenacity

from ..exceptions import NotifierError

if TYPE_CHECKING:
    from tenacity import RetryCallState

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The longest wait a server may ask for that is still honoured as asked; a
#: longer ``Retry-After`` is beyond any budget and ends the delivery.
MAX_RETRY_AFTER = 3600.0


class Retryable(Exception):
    """This attempt failed in a way another attempt may not: a timeout, a
    dropped connection, a rate limit, a server error. ``retry_after``: the
    wait the server asked for, in seconds (None: use the backoff).
    ``maybe_delivered``: False only when nothing can have reached the server
    (the connection was never opened); a channel without idempotency uses it
    to mark a retry as a possible repeat."""

    def __init__(self, reason: str, *, retry_after: float | None = None,
                 maybe_delivered: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.maybe_delivered = maybe_delivered


class Permanent(Exception):
    """This attempt failed in a way no retry can fix (credentials, an unknown
    target, a rejected payload). ``reason`` says what to change."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class RetryPolicy:
    """How one channel retries. ``retries``: attempts after the first failure
    (``PERFWATCH_<CHANNEL>_RETRIES``). Each wait is exponential (``base`` x
    2^n, at most ``cap``) with full jitter between half and all of it, or
    what the server asked for, whichever is longer. ``budget``: the seconds
    one alert may spend waiting in total; when the next wait would pass it,
    delivery stops (bounded by ``PERFWATCH_NOTIFIER_TIMEOUT`` as well, which
    gives up on the send from outside)."""

    retries: int = 3
    base: float = 1.0
    cap: float = 30.0
    budget: float = 60.0
    #: Waits between attempts; tests replace it to observe the delays.
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    random: random.Random = field(default_factory=random.Random, repr=False)

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based), jittered."""
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        return self.random.uniform(ceiling / 2, ceiling)

    def wait_for(self, attempt: int, failure: Retryable) -> float:
        """The server's ``Retry-After`` when it gave one (0: at once), else
        the backoff."""
        if failure.retry_after is None:
            return self.backoff(attempt)
        return min(max(failure.retry_after, 0.0), MAX_RETRY_AFTER)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds (integer or,
    as some APIs send, decimal) or an HTTP date. None if absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = datetime.now(UTC).timestamp() if now is None else now
        seconds = when.timestamp() - current
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class _OverBudget(Exception):
    pass


def deliver(channel: str, attempt: Callable[[int], T], policy: RetryPolicy, *,
            alert_id: str = "") -> T:
    """Run ``attempt(1)``, ``attempt(2)``... until one returns, raises
    :class:`Permanent` (or anything but :class:`Retryable`), the retries are
    used up, or the next wait would pass the budget. Returns what the
    successful attempt returned; raises :class:`NotifierError` (``retryable``
    tells whether another alert might get through) otherwise."""
    attempts = policy.retries + 1
    waited = [0.0]

    def wait(state: RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome is not None else None
        assert isinstance(failure, Retryable)
        delay = policy.wait_for(state.attempt_number, failure)
        if waited[0] + delay > policy.budget:
            raise _OverBudget(delay)
        return delay

    def before_sleep(state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome is not None else None
        delay = state.upcoming_sleep
        waited[0] += delay
        logger.warning("%s delivery of %s failed (attempt %d of %d): %s; retrying in %.1fs",
                       channel, alert_id[:8] or "an alert", state.attempt_number, attempts,
                       getattr(failure, "reason", failure), delay)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=wait,
        retry=tenacity.retry_if_exception_type(Retryable),
        before_sleep=before_sleep,
        sleep=policy.sleep,
        reraise=True,
    )
    last: list[Retryable] = []
    numbers = iter(range(1, attempts + 1))

    def run() -> T:
        try:
            return attempt(next(numbers))
        except Retryable as failure:
            last[:] = [failure]
            raise

    try:
        return retrying(run)
    except Permanent as failure:
        raise NotifierError(f"{channel}: {failure.reason}", retryable=False) from None
    except Retryable as failure:
        raise NotifierError(f"{channel}: gave up after {attempts} attempt(s); last error: "
                            f"{failure.reason}", retryable=True) from None
    except _OverBudget as over:
        reason = last[0].reason if last else "?"
        number = attempts - len(list(numbers))
        raise NotifierError(
            f"{channel}: gave up after {number} attempt(s): the next wait "
            f"({float(over.args[0]):.1f}s) would pass the {policy.budget:.0f}s this alert "
            f"may spend waiting; last error: {reason}", retryable=True) from None
