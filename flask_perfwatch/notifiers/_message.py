"""What a chat alert says, whatever the channel: its headline and its facts,
in order. The chat notifiers (``mattermost``, ``slack``, ``discord``,
``teams``) only render these in their own markup and within their own limits.

Why it is split this way: the facts an alert shows, their labels, their order
and their wording are one decision; how a value is made harmless (a Slack code
span with ``&<>`` escaped, a Discord code span whose backticks are swapped, a
Teams ``TextRun``) and how a message is cut to a size are each channel's own,
and security-relevant. Nothing here escapes or cuts anything: every string is
raw, and :attr:`Fact.code` tells the channel which values came from the
request and must be shown as code. :func:`text_lines` lays the facts out as
lines for the text channels, with the templates and escaping functions each
of them passes in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING

from ..report import endpoint_suppressed_text, suppressed_text

if TYPE_CHECKING:
    from ..metrics import PerformanceMetrics

#: The profile line of an alert without one (profiler ``off``, or no sample).
NO_PROFILE = "none captured (profiler off or no sample taken)"
#: The suppressed line when dedupe let everything through since the last alert.
NONE_SUPPRESSED = "none since the last alert"


@dataclass(frozen=True)
class Fact:
    """One labelled line of an alert: ``Host: web-3, pid 4121``.

    ``value`` is raw (not escaped, not cut). ``code`` is True for a value that
    comes from the request or the host (URL, endpoint, error, host name): the
    channel shows it as inline code (or its equivalent), never as markup.
    Otherwise the value is our own words and numbers, shown as plain text,
    still escaped by the channel. ``suffix`` is our own plain text right after
    the value (``", pid 4121"``).
    """

    label: str
    value: str
    code: bool = False
    suffix: str = ""


@dataclass(frozen=True)
class Headline:
    """The title of an alert, in parts, so a channel can show ``subject`` (from
    the request) as code and the rest in its own emphasis:
    ``Slow request`` ``GET /orders/export`` ``took`` ``2.412 s``
    ``(2.4x the 1.000 s threshold)``."""

    #: ``"Slow request"``, ``"Hung request"``, ``"Slow function"``.
    lead: str
    #: ``"GET /orders/export"`` or ``"pkg.build()"``: from the request, show as code.
    subject: str
    #: ``"took"``, or ``"still running after"`` for a hung request.
    verb: str
    #: ``"2.412 s"``.
    duration: str
    #: ``"2.4x the 1.000 s threshold"``.
    ratio: str
    hung: bool

    @property
    def emoji(self) -> str:
        """The shortcode (without colons) that starts the title in the
        channels that have them: ``rotating_light`` when hung, else ``hourglass``."""
        return "rotating_light" if self.hung else "hourglass"


def headline(metrics: PerformanceMetrics) -> Headline:
    """The title's parts (see :class:`Headline`)."""
    m = metrics
    state = "Hung" if m.hung else "Slow"
    if m.kind == "request":
        subject = f"{m.method} {m.path or m.url or m.name}" if m.method else m.name
    else:
        subject = f"{m.name}()"
    return Headline(lead=f"{state} {m.kind}", subject=subject,
                    verb="still running after" if m.hung else "took",
                    duration=f"{m.duration:.3f} s",
                    ratio=f"{m.over_by:.1f}x the {m.threshold:.3f} s threshold", hung=m.hung)


def alert_facts(metrics: PerformanceMetrics, *, brief: bool = False) -> list[Fact]:
    """The facts of an alert, in the order every channel shows them:

    Endpoint (a request's), URL (a request's) or Called in (a function's
    request), Status, Error, Duration, Started (UTC), Host with the pid,
    Suppressed (dedupe), Also suppressed (the endpoint limit), Profile (when
    none was captured, or the engine left a note). A fact without a value is
    left out.

    ``brief``: only Endpoint and Duration, for a channel whose size limit
    leaves no room for the rest even with every value cut short.
    """
    m = metrics
    facts: list[Fact] = []
    if m.kind == "request":
        facts.append(Fact("Endpoint", m.name, code=True))
    title = headline(m)
    duration = Fact("Duration", f"{title.duration}, {title.ratio}")
    if brief:
        return [*facts, duration]
    if m.kind == "request":
        if m.url:
            facts.append(Fact("URL", m.url, code=True))
    elif m.method:
        facts.append(Fact("Called in", f"{m.method} {m.url or m.path}", code=True))
    if m.status_code is not None:
        facts.append(Fact("Status", str(m.status_code)))
    if m.error:
        facts.append(Fact("Error", m.error, code=True))
    facts.append(duration)
    facts.append(Fact("Started", m.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")))
    facts.append(Fact("Host", m.host, code=True, suffix=f", pid {m.pid}"))
    facts.append(Fact("Suppressed", suppressed_text(m) if m.suppressed else NONE_SUPPRESSED))
    if m.endpoint_suppressed:
        facts.append(Fact("Also suppressed", endpoint_suppressed_text(m)))
    if m.profile is None:
        facts.append(Fact("Profile", NO_PROFILE))
    elif m.profile.note:
        facts.append(Fact("Profile", m.profile.note))
    return facts


def text_lines(metrics: PerformanceMetrics, *, title: str, fact: str,
               code: Callable[[str], str], plain: Callable[[str], str],
               brief: bool = False) -> list[str]:
    """The headline and facts as lines of a text message, for the channels
    whose markup is text (``mattermost``, ``slack``, ``discord``).

    ``title`` and ``fact`` are format strings in the channel's markup:
    ``title`` takes ``{emoji}``, ``{lead}``, ``{subject}``, ``{verb}``,
    ``{duration}`` and ``{ratio}``; ``fact`` takes ``{label}`` and ``{value}``.
    ``code`` renders a value from the request (the channel's code span, cut and
    escaped its way) and ``plain`` our own text (escaped its way); the fixed
    words (labels, the headline's lead, verb and numbers) go in as they are.
    ``brief`` as for :func:`alert_facts`.
    """
    h = headline(metrics)
    lines = [title.format(emoji=h.emoji, lead=h.lead, subject=code(h.subject), verb=h.verb,
                          duration=h.duration, ratio=h.ratio)]
    for f in alert_facts(metrics, brief=brief):
        value = (code(f.value) if f.code else plain(f.value)) + plain(f.suffix)
        lines.append(fact.format(label=f.label, value=value))
    return lines
