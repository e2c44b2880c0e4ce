"""Faults under load: real processes die, stores vanish, nothing accepted is lost.

Each test runs a scenario from tests/faults/scenarios.py at a size that keeps the
whole directory within a few minutes on two cores; ``loadtest/faults.py`` runs
the same scenarios larger. Each prints accepted / delivered / lost / duplicated.

Pass: lost = 0, and duplicates at most the deliveries in flight at the fault
(delivery is at-least-once, like Postfix's: a crash between the remote 250 and
recording it sends that recipient again).
"""

from __future__ import annotations

import pytest

from tests.faults import scenarios
from tests.faults.harness import Figures, report

pytestmark = pytest.mark.timeout(150)


def assert_nothing_lost(figures: Figures) -> None:
    assert figures.accepted > 0
    assert figures.lost == 0, figures.line()
    assert figures.duplicated <= figures.in_flight, figures.line()
    assert figures.extra.get("drained", True), figures.line()
    assert not figures.extra.get("never sent but delivered"), figures.line()
    assert not figures.extra.get("answered but not stored"), figures.line()


def test_worker_killed_mid_batch_loses_nothing(stack_factory):
    stack = stack_factory(sink_delay=0.005)
    figures = report(scenarios.worker_kill(stack, messages=500, rate=200))
    assert_nothing_lost(figures)
    assert figures.extra["restarts"] >= 2  # both killed workers came back


def test_api_process_killed_under_load_loses_no_answered_message(stack_factory):
    stack = stack_factory()
    figures = report(scenarios.api_kill(stack, messages=500, rate=150, kills=3))
    assert_nothing_lost(figures)
    assert figures.extra["kills"] == 3
    # Nothing delivery-side was disturbed, so no recipient may arrive twice.
    assert figures.duplicated == 0
    # A request cut off after its commit is delivered although unanswered:
    # that is allowed (the client retries and the recipient gets two copies).
    assert figures.unanswered_delivered == figures.unanswered_stored


def test_smtp_process_killed_under_load_loses_no_accepted_message(stack_factory):
    stack = stack_factory()
    figures = report(scenarios.smtp_kill(stack, messages=240, rate=80, kills=2))
    assert_nothing_lost(figures)
    assert figures.duplicated == 0
    assert figures.unanswered_delivered == figures.unanswered_stored


def test_redis_flushall_under_load_loses_nothing(stack_factory):
    stack = stack_factory(sink_delay=0.005)
    figures = report(scenarios.redis_flushall(stack, messages=500, rate=200))
    assert_nothing_lost(figures)


def test_redis_restarted_empty_under_load_loses_nothing(stack_factory):
    stack = stack_factory(sink_delay=0.005)
    figures = report(scenarios.redis_restart(stack, messages=500, rate=200))
    assert_nothing_lost(figures)
    # While Redis was away sends were refused with an answer, never accepted.
    assert figures.refused_delivered == 0


def test_postgres_restart_refuses_while_down_and_loses_nothing(stack_factory):
    stack = stack_factory(own_postgres=True, sink_delay=0.005)
    figures = report(scenarios.postgres_restart(stack, messages=300, rate=100))
    assert_nothing_lost(figures)
    assert figures.extra["accepted_while_down"] == 0
    assert figures.refused > 0  # the outage was seen by the clients
    assert set(figures.extra["refusals"]) <= {"ServiceUnavailable", 451, 454, 421}


def test_tempfailed_domain_bounces_once_at_give_up_with_growing_intervals(
    stack_factory,
):
    stack = stack_factory(
        tempfail=(scenarios.SLOW_DOMAIN,), settings=scenarios.TEMPFAIL_SETTINGS
    )
    figures = report(scenarios.tempfail_window(stack, messages=20))
    assert figures.lost == 0, figures.line()
    assert figures.extra["all_bounced"], figures.line()
    assert figures.extra["_bounces"] == [1] * 10, figures.line()
    # Retried several times, never before the chosen delay, delays never shrink.
    assert all(len(i) >= 3 for i in figures.extra["_observed"].values())
    assert figures.extra["retried_early"] == 0, figures.line()
    assert figures.extra["scheduled_interval_shrinks"] == 0, figures.line()
    for intervals in figures.extra["_observed"].values():
        # Observed gaps add dispatch latency (a sweep is 0.2 s) to the delay.
        assert all(
            b >= a - 0.35 for a, b in zip(intervals, intervals[1:], strict=False)
        ), intervals
    assert 5.0 <= figures.extra["give_up_after_s"] <= 8.0, figures.line()


def test_backlog_resumes_after_every_component_restarts(stack_factory):
    stack = stack_factory()
    figures = report(scenarios.backlog(stack, messages=3000))
    assert_nothing_lost(figures)
    assert figures.accepted == 3000
    # The first recovered delivery does not wait for the killed workers' leases.
    assert figures.extra["first_delivery_after_restart_s"] < 15, figures.line()
