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

from .._util import safe_text
from ..report import (
    baseline_p95,
    cpu_insight,
    endpoint_suppressed_text,
    regression_text,
    slowest_profiled,
    sql_insight,
    suppressed_text,
    window_text,
)

if TYPE_CHECKING:
    from ..metrics import PerformanceMetrics

#: The profile line of an alert without one (profiler ``off``, or no sample).
NO_PROFILE = "none captured (profiler off or no sample taken)"
#: The profile line of a regression without one.
NO_RECENT_PROFILE = "none kept (no recent request of this endpoint was profiled)"
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

    #: ``"Slow request"``, ``"Hung request"``, ``"Slow function"``, ``"Regression"``.
    lead: str
    #: ``"GET /orders/export"``, ``"pkg.build()"`` or a regression's endpoint:
    #: from the request, show as code.
    subject: str
    #: ``"took"``, ``"still running after"`` for a hung request, ``"p95 now"``
    #: for a regression.
    verb: str
    #: ``"2.412 s"``.
    duration: str
    #: ``"2.4x the 1.000 s threshold"``, ``"4.1x its baseline p95 0.300 s"``.
    ratio: str
    hung: bool
    regression: bool = False

    @property
    def emoji(self) -> str:
        """The shortcode (without colons) that starts the title in the
        channels that have them: ``rotating_light`` when hung,
        ``chart_with_upwards_trend`` for a regression, else ``hourglass``."""
        if self.regression:
            return "chart_with_upwards_trend"
        return "rotating_light" if self.hung else "hourglass"


def headline(metrics: PerformanceMetrics) -> Headline:
    """The title's parts (see :class:`Headline`)."""
    m = metrics
    if m.kind == "regression":
        was = baseline_p95(m)
        ratio = (f"{m.duration / was:.1f}x its baseline p95 {was:.3f} s" if was
                 else f"over the {m.threshold:.3f} s alert threshold")
        return Headline(lead="Regression", subject=m.name, verb="p95 now",
                        duration=f"{m.duration:.3f} s", ratio=ratio, hung=False,
                        regression=True)
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
    request), Status, Error, Duration, CPU and Mostly waiting (when the CPU
    time was measured), SQL (when any ran), Trace (when one was recording),
    Started (UTC), Host with the pid, Suppressed (dedupe), Also suppressed
    (the endpoint limit), Profile (when none was captured, or the engine
    left a note). A fact without a value is left out. A regression shows
    Endpoint, Regression, Recent and Baseline (its two windows) instead of
    the request's facts, and Recent since instead of Started.

    ``brief``: only Endpoint and Duration (a regression's Regression), for a
    channel whose size limit leaves no room for the rest even with every
    value cut short.
    """
    m = metrics
    if m.kind == "regression":
        return _regression_facts(m, brief=brief)
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
    facts += insight_facts(m)
    facts.append(Fact("Started", m.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")))
    facts += _closing_facts(m)
    if m.profile is None:
        facts.append(Fact("Profile", NO_PROFILE))
    elif m.profile.note:
        facts.append(Fact("Profile", m.profile.note))
    return facts


def _regression_facts(m: PerformanceMetrics, *, brief: bool) -> list[Fact]:
    facts = [Fact("Endpoint", m.name, code=True), Fact("Regression", regression_text(m))]
    if brief:
        return facts
    data = m.regression or {}
    facts.append(Fact("Recent", window_text(data.get("recent"))))
    facts.append(Fact("Baseline", window_text(data.get("baseline"))))
    facts += insight_facts(m)
    facts.append(Fact("Recent since",
                      m.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")))
    facts += _closing_facts(m)
    if m.profile is None:
        facts.append(Fact("Profile", NO_RECENT_PROFILE))
    else:
        slowest = slowest_profiled(m)
        took = f" ({slowest:.3f} s)" if slowest is not None else ""
        note = f"; {m.profile.note}" if m.profile.note else ""
        facts.append(Fact("Profile", f"of the slowest recent request profiled{took}{note}"))
    return facts


def _closing_facts(m: PerformanceMetrics) -> list[Fact]:
    facts = [Fact("Host", m.host, code=True, suffix=f", pid {m.pid}"),
             Fact("Suppressed", suppressed_text(m) if m.suppressed else NONE_SUPPRESSED)]
    if m.endpoint_suppressed:
        facts.append(Fact("Also suppressed", endpoint_suppressed_text(m)))
    return facts


def insight_facts(metrics: PerformanceMetrics) -> list[Fact]:
    """CPU, Mostly waiting, SQL and Trace, each only when known (the same
    words as the report's header: see :func:`~flask_perfwatch.report.cpu_insight`
    and :func:`~flask_perfwatch.report.sql_insight`). The waiting line is
    source code and the trace id is not ours: both are shown as code."""
    m = metrics
    facts = []
    cpu = cpu_insight(m)
    if cpu is not None:
        facts.append(Fact("CPU", cpu.text()))
        waiting = cpu.waiting
        if waiting is not None and waiting.where:
            facts.append(Fact("Mostly waiting", waiting.where, code=True,
                              suffix=f", {waiting.kind}; {waiting.seconds:.2f} s off the CPU"))
        elif waiting is not None:
            facts.append(Fact("Mostly waiting", waiting.text()))
    sql = sql_insight(m)
    if sql is not None:
        facts.append(Fact("SQL", sql.text()))
    if m.trace_id:
        facts.append(Fact("Trace", m.trace_id, code=True,
                          suffix=f", span {safe_text(m.span_id)}" if m.span_id else ""))
    return facts


def insight_summary(metrics: PerformanceMetrics) -> str:
    """The insight facts on one line, for a channel that has only one
    (``log``): ``CPU 0.06 s of 0.49 s (12 %), mostly waiting: sleeping at
    app.py line 16: time.sleep(0.2); SQL: 3 statements, 12 calls, 0.05 s;
    trace 4bf92f3577b34da6a3ce929d0e0e4736``. Empty when nothing is known.
    Control characters are escaped; nothing else is."""
    m = metrics
    parts = []
    cpu = cpu_insight(m)
    if cpu is not None:
        text = f"CPU {cpu.text()}"
        if cpu.waiting is not None:
            text += f", mostly waiting: {cpu.waiting.text()}"
        parts.append(text)
    sql = sql_insight(m)
    if sql is not None:
        parts.append(f"SQL: {sql.text()}")
    if m.trace_id:
        parts.append(f"trace {m.trace_id}")
    return safe_text("; ".join(parts))


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
