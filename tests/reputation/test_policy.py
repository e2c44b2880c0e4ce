"""The pure reputation, enforcement and quota-growth policy, on an injected clock."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from quota.policy import (
    DAY,
    QUOTA_LADDER,
    REVIEW_PERIOD,
    AccountState,
    DayCounts,
    Decision,
    EnforcementReason,
    EnforcementState,
    EnforcementStatus,
    QuotaReason,
    QuotaState,
    UsageHistory,
    decide,
    next_enforcement,
    next_quota,
    rate_for_quota,
    reputation,
)

HEALTHY = EnforcementStatus.HEALTHY
PROBATION = EnforcementStatus.PROBATION
SHUTDOWN = EnforcementStatus.SHUTDOWN
START = datetime(2024, 3, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def history(*days: DayCounts) -> UsageHistory:
    return UsageHistory(tuple(days))


def one_day(recipients: int, bounces: int = 0, complaints: int = 0) -> UsageHistory:
    return history(DayCounts(recipients, bounces, complaints))


def quota_state(**changes: object) -> QuotaState:
    base = QuotaState(
        production=True,
        quota_override=False,
        status=HEALTHY,
        max_24_hour_send=1_000,
        max_send_rate=1,
        changed_at=START - 2 * DAY,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# -- simulation ---------------------------------------------------------------------


def account_state(**changes: object) -> AccountState:
    base = AccountState(
        production=True,
        quota_override=False,
        status=HEALTHY,
        probation_until=None,
        max_24_hour_send=1_000,
        max_send_rate=1,
        quota_changed_at=START,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@dataclass
class Sender:
    """A production account sending a share of its quota every hour."""

    share: float  # of the 24-hour quota, spread evenly over the day
    bounce_rate: float = 0.005
    complaint_rate: float = 0.0002
    state: AccountState = field(default_factory=account_state)
    hours: list[tuple[datetime, int]] = field(default_factory=list)
    raises: list[datetime] = field(default_factory=list)

    def history(self, now: datetime) -> UsageHistory:
        """Fold the hourly log into days ending at `now`, like load_histories."""
        days = [[0, 0, 0] for _ in range(14)]
        for at, sent in self.hours:
            age = now - at
            if timedelta(0) <= age < 14 * DAY:
                day = days[age // DAY]
                day[0] += sent
                day[1] += round(sent * self.bounce_rate)
                day[2] += round(sent * self.complaint_rate)
        return UsageHistory(tuple(DayCounts(*day) for day in days))

    def run(self, days: int) -> None:
        """Send and evaluate every hour for `days` days from START."""
        for hour in range(1, days * 24 + 1):
            now = START + hour * HOUR
            sent = int(self.share * self.state.max_24_hour_send / 24)
            self.hours.append((now, sent))
            self.evaluate(self.history(now), now)

    def evaluate(self, seen: UsageHistory, now: datetime) -> Decision:
        """Decide and keep the outcome, as quota.reputation does."""
        decision = decide(self.state, seen, now)
        quota = decision.quota
        if quota.raised:
            assert quota.max_24_hour_send > self.state.max_24_hour_send
            assert quota.max_send_rate >= self.state.max_send_rate
            self.raises.append(now)
        self.state = replace(
            self.state,
            status=decision.enforcement.status,
            probation_until=decision.enforcement.probation_until,
            max_24_hour_send=quota.max_24_hour_send,
            max_send_rate=quota.max_send_rate,
            quota_changed_at=decision.quota_changed_at,
        )
        return decision


def test_near_the_limit_reaches_10_000_a_day_and_10_per_second_in_3_days() -> None:
    sender = Sender(share=0.9)
    sender.run(days=3)
    assert sender.state.max_24_hour_send >= 10_000
    assert sender.state.max_send_rate >= 10
    assert sender.state.status is HEALTHY


def test_near_the_limit_reaches_1_000_000_a_day_and_90_per_second_in_14_days() -> None:
    sender = Sender(share=0.9)
    sender.run(days=14)
    assert sender.state.max_24_hour_send == 1_000_000
    assert sender.state.max_send_rate == 90
    # One rung per day, never faster.
    gaps = [b - a for a, b in zip([START, *sender.raises], sender.raises, strict=False)]
    assert all(gap >= DAY for gap in gaps)
    assert len(sender.raises) == len(QUOTA_LADDER) - 1


def test_sending_at_half_the_quota_is_approaching_it() -> None:
    sender = Sender(share=0.51)
    sender.run(days=3)
    assert sender.state.max_24_hour_send == 10_000


def test_an_account_far_below_its_quota_does_not_grow() -> None:
    sender = Sender(share=0.4)
    sender.run(days=14)
    assert sender.state.max_24_hour_send == 1_000
    assert sender.raises == []


def test_bounces_above_2_percent_stop_growth_without_a_review() -> None:
    sender = Sender(share=0.9, bounce_rate=0.03)
    sender.run(days=5)
    assert sender.state.max_24_hour_send == 1_000
    assert sender.state.status is HEALTHY


def test_bounces_crossing_5_then_10_percent_freeze_growth_then_pause() -> None:
    sender = Sender(share=0.9)
    sender.run(days=2)
    assert sender.state.max_24_hour_send == 4_700
    # Day 3 goes badly: 414 of 6,900 recipients (6 %) bounce.
    now = START + 2 * DAY + HOUR
    bad = history(DayCounts(4_000, 400), DayCounts(2_000, 10), DayCounts(900, 4))
    sender.evaluate(bad, now)
    assert sender.state.status is PROBATION
    assert sender.state.probation_until == now + REVIEW_PERIOD
    # Probation freezes the quota, however busy the account is.
    later = now + 2 * DAY
    busy = history(*[DayCounts(4_700, 282)] * 3)
    decision = sender.evaluate(busy, later)
    assert decision.quota.reason is QuotaReason.PROBATION
    assert sender.state.status is PROBATION
    assert sender.state.max_24_hour_send == 4_700
    # Then 11 %: sending is paused and stays paused.
    worse = history(DayCounts(4_700, 517))
    sender.evaluate(worse, later + HOUR)
    assert sender.state.status is SHUTDOWN
    decision = sender.evaluate(history(DayCounts(50_000)), later + 10 * DAY)
    assert decision.quota.reason is QuotaReason.SHUTDOWN
    assert sender.state.status is SHUTDOWN
    assert sender.state.max_24_hour_send == 4_700


def test_leaving_probation_restarts_the_growth_clock() -> None:
    sender = Sender(share=0.9)
    sender.state = account_state(
        status=PROBATION,
        probation_until=START + 3 * DAY,
        quota_changed_at=START - 10 * DAY,
    )
    clean = history(DayCounts(900, 5))
    decision = sender.evaluate(clean, START)
    assert decision.enforcement.reason is EnforcementReason.RECOVERED
    assert decision.quota.reason is QuotaReason.STATUS_CHANGED
    assert decision.quota_changed_at == START
    assert sender.evaluate(clean, START + 23 * HOUR).quota.reason is (
        QuotaReason.TOO_SOON
    )
    assert sender.evaluate(clean, START + DAY).quota.raised


# -- reputation -----------------------------------------------------------------------


def test_rates_are_not_judged_below_the_minimum_volume() -> None:
    rep = reputation(one_day(10, bounces=1, complaints=1))
    assert rep.bounce_rate is None and rep.complaint_rate is None
    assert rep.level is None
    decision = next_enforcement(EnforcementState(HEALTHY), rep, START)
    assert decision.status is HEALTHY
    assert decision.reason is EnforcementReason.NOT_ENOUGH_VOLUME


def test_complaints_need_more_volume_than_bounces() -> None:
    rep = reputation(one_day(1_000, bounces=10, complaints=3))
    assert rep.bounce_rate == pytest.approx(0.01)
    assert rep.complaint_rate is None
    assert next_enforcement(EnforcementState(HEALTHY), rep, START).status is HEALTHY


def test_the_window_is_the_newest_10_000_recipients() -> None:
    # An old bad day falls outside once newer days hold the representative volume.
    rep = reputation(
        history(DayCounts(6_000), DayCounts(6_000), DayCounts(6_000, 3_000))
    )
    assert (rep.days, rep.recipients, rep.bounces) == (2, 12_000, 0)
    # A small sender is judged over at most 14 days.
    rep = reputation(UsageHistory((DayCounts(100, 1),) * 20))
    assert (rep.days, rep.recipients, rep.bounces) == (14, 1_400, 14)


@pytest.mark.parametrize(
    ("bounces", "complaints", "status", "reason"),
    [
        (49, 0, HEALTHY, EnforcementReason.WITHIN_THRESHOLDS),
        (50, 0, PROBATION, EnforcementReason.REVIEW_THRESHOLD),
        (99, 0, PROBATION, EnforcementReason.REVIEW_THRESHOLD),
        (100, 0, SHUTDOWN, EnforcementReason.PAUSE_THRESHOLD),
        (0, 1, HEALTHY, EnforcementReason.WITHIN_THRESHOLDS),
        (0, 2, PROBATION, EnforcementReason.REVIEW_THRESHOLD),
        (0, 9, PROBATION, EnforcementReason.REVIEW_THRESHOLD),
        (0, 10, SHUTDOWN, EnforcementReason.PAUSE_THRESHOLD),
    ],
)
def test_thresholds_of_a_healthy_account(
    bounces: int,
    complaints: int,
    status: EnforcementStatus,
    reason: EnforcementReason,
) -> None:
    # 1,000 recipients: 5 % is 50 bounces, 10 % is 100; 2,000: 0.1 % is 2
    # complaints, 0.5 % is 10.
    recipients = 1_000 if bounces else 2_000
    rep = reputation(one_day(recipients, bounces, complaints))
    decision = next_enforcement(EnforcementState(HEALTHY), rep, START)
    assert (decision.status, decision.reason) == (status, reason)
    expected_until = START + REVIEW_PERIOD if status is PROBATION else None
    assert decision.probation_until == expected_until


def on_probation(bounces: int, now: datetime, recipients: int = 1_000) -> object:
    state = EnforcementState(PROBATION, START + REVIEW_PERIOD)
    decision = next_enforcement(state, reputation(one_day(recipients, bounces)), now)
    return decision.status, decision.reason


def test_probation_heals_early_only_below_the_recovery_threshold() -> None:
    during = START + DAY
    assert on_probation(39, during) == (HEALTHY, EnforcementReason.RECOVERED)
    # 4.5 %: under the review threshold but not healed; the review goes on.
    assert on_probation(45, during) == (PROBATION, EnforcementReason.UNDER_REVIEW)
    assert on_probation(60, during) == (PROBATION, EnforcementReason.UNDER_REVIEW)
    assert on_probation(100, during) == (SHUTDOWN, EnforcementReason.PAUSE_THRESHOLD)


def test_the_end_of_a_review_decides() -> None:
    end = START + REVIEW_PERIOD
    assert on_probation(60, end) == (
        SHUTDOWN,
        EnforcementReason.REVIEW_ENDED_ABOVE_THRESHOLD,
    )
    assert on_probation(45, end) == (
        HEALTHY,
        EnforcementReason.REVIEW_ENDED_BELOW_THRESHOLD,
    )
    # Without enough mail to judge, the review waits for it.
    assert on_probation(60, end, recipients=100) == (
        PROBATION,
        EnforcementReason.NOT_ENOUGH_VOLUME,
    )


def test_probation_without_an_end_gets_one() -> None:
    rep = reputation(one_day(1_000, 60))
    decision = next_enforcement(EnforcementState(PROBATION), rep, START)
    assert decision.status is PROBATION
    assert decision.probation_until == START + REVIEW_PERIOD


def test_shutdown_waits_for_an_operator() -> None:
    rep = reputation(one_day(100_000))
    decision = next_enforcement(EnforcementState(SHUTDOWN), rep, START)
    assert decision.status is SHUTDOWN
    assert decision.reason is EnforcementReason.AWAITING_OPERATOR


# -- quota growth -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"production": False}, QuotaReason.NOT_PRODUCTION),
        ({"quota_override": True}, QuotaReason.OPERATOR_OVERRIDE),
        ({"status": PROBATION}, QuotaReason.PROBATION),
        ({"status": SHUTDOWN}, QuotaReason.SHUTDOWN),
        ({"changed_at": START - 23 * HOUR}, QuotaReason.TOO_SOON),
        ({"max_24_hour_send": 1_000_000, "max_send_rate": 90}, QuotaReason.AT_CEILING),
        ({"max_24_hour_send": 3_000_000, "max_send_rate": 5}, QuotaReason.AT_CEILING),
    ],
)
def test_accounts_that_do_not_grow(
    changes: dict[str, object], reason: QuotaReason
) -> None:
    state = quota_state(**changes)
    decision = next_quota(state, one_day(900_000), START)
    assert decision.reason is reason
    assert decision.max_24_hour_send == state.max_24_hour_send
    assert decision.max_send_rate == state.max_send_rate


def test_growth_needs_usage_near_the_quota_and_judged_rates() -> None:
    state = quota_state()
    assert next_quota(state, one_day(499), START).reason is QuotaReason.LOW_USAGE
    raised = next_quota(state, one_day(500), START)
    assert (raised.reason, raised.max_24_hour_send, raised.max_send_rate) == (
        QuotaReason.RAISED,
        2_200,
        2,
    )
    small = replace(state, max_24_hour_send=800)
    assert next_quota(small, one_day(450), START).reason is (
        QuotaReason.NOT_ENOUGH_VOLUME
    )
    assert next_quota(state, one_day(900, bounces=18), START).reason is (
        QuotaReason.RATES_TOO_HIGH
    )
    assert next_quota(state, one_day(900, bounces=17), START).raised


def test_only_usage_since_the_last_change_counts() -> None:
    # Changed 36 hours ago: only the last 24 hours were sent under this quota.
    state = quota_state(changed_at=START - 36 * HOUR)
    busy_before = history(DayCounts(100), DayCounts(900))
    assert next_quota(state, busy_before, START).reason is QuotaReason.LOW_USAGE
    # A weekly sender grows from its peak within the last 7 days.
    weekly = quota_state(changed_at=START - 30 * DAY)
    peak_5_days_ago = history(*[DayCounts(0)] * 5, DayCounts(800))
    assert next_quota(weekly, peak_5_days_ago, START).raised
    peak_8_days_ago = history(*[DayCounts(0)] * 8, DayCounts(800))
    assert next_quota(weekly, peak_8_days_ago, START).reason is QuotaReason.LOW_USAGE


def test_growth_never_lowers_the_send_rate() -> None:
    state = quota_state(max_24_hour_send=1_500, max_send_rate=50)
    decision = next_quota(state, one_day(1_000), START)
    assert (decision.max_24_hour_send, decision.max_send_rate) == (2_200, 50)


def test_the_send_rate_follows_the_quota() -> None:
    assert rate_for_quota(200) == 1
    assert rate_for_quota(1_000) == 1
    assert rate_for_quota(10_000) == 10
    assert rate_for_quota(1_000_000) == 90
    assert rate_for_quota(50_000_000) == 90
    quotas = range(1_000, 2_000_000, 997)
    rates = [rate_for_quota(q) for q in quotas]
    assert rates == sorted(rates)
    assert list(QUOTA_LADDER) == sorted(set(QUOTA_LADDER))
    assert QUOTA_LADDER[0] == 1_000 and QUOTA_LADDER[-1] == 1_000_000
