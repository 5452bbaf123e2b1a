"""Blinker signals sent by flask_perfwatch.

Connect to them like to Flask's own signals::

    from flask_perfwatch import signals

    @signals.slow_request.connect_via(app)
    def on_slow(sender, metrics, **extra):
        statsd.timing("slow." + metrics.name, metrics.duration)

The sender is the Flask app. For :class:`~flask_perfwatch.PerfWatchMiddleware`
it is the middleware, and for watched functions called outside any app it is
the :class:`~flask_perfwatch.PerfWatch` instance. ``slow_request`` and
``request_hung`` are sent on the thread that ran the request; the ``alert_*``
signals are sent from the background delivery thread.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: A request or watched function took longer than its threshold. Sent before
#: dedupe, with ``metrics`` (:class:`~flask_perfwatch.metrics.PerformanceMetrics`).
#: The built-in alert pipeline is one receiver of it.
slow_request = _signals.signal("slow-request")

#: A request is still running after ``PERFWATCH_HANG_AFTER`` seconds. Sent once
#: per request, with ``metrics`` describing it so far (partial profile).
request_hung = _signals.signal("request-hung")

#: Dedupe swallowed an alert because the same key alerted within the window.
#: Sent with ``metrics``.
alert_suppressed = _signals.signal("alert-suppressed")

#: One notifier delivered an alert. Sent with ``metrics`` and ``notifier``.
alert_sent = _signals.signal("alert-sent")

#: One notifier gave up on an alert after its retries. Sent with ``metrics``,
#: ``notifier`` and ``error`` (the exception).
alert_failed = _signals.signal("alert-failed")

#: An endpoint's recent p95 latency went over ``PERFWATCH_REGRESSION_FACTOR``
#: times its baseline p95. Sent once per regression with ``metrics``, whose
#: ``kind`` is ``"regression"``, ``name`` the endpoint, ``duration`` the recent
#: p95 and ``threshold`` the baseline p95 times the factor; ``metrics.regression``
#: holds both windows' statistics. The built-in alert pipeline is one receiver.
endpoint_regressed = _signals.signal("endpoint-regressed")

__all__ = [
    "alert_failed",
    "alert_sent",
    "alert_suppressed",
    "endpoint_regressed",
    "request_hung",
    "slow_request",
]
