"""Reputation, enforcement status and automatic quota growth as pure decisions.

Every input is recorded history and a clock; quota/reputation.py does the I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

DAY = timedelta(days=1)

# -- reputation -------------------------------------------------------------------

# SES judges rates over a "representative volume", "an amount of email that
# represents your typical sending practices", different per sender
# [DG:faqs-enforcement bn-q5]. Ours: the most recent whole days (24 hours each,
# counted back from now) that hold 10,000 recipients, at most 14 days back.
REPRESENTATIVE_RECIPIENTS = 10_000
# 14 days is also how far GetSendStatistics and its rollups reach (mta/statistics.py).
WINDOW_DAYS = 14
# SES says reviews last "the review period" without a length [DG:faqs-enforcement
# pr-q1, pr-q11]; ours is a week, long enough to send enough mail to heal.
REVIEW_PERIOD = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The rates at which one metric affects an account, as fractions."""

    growth: float  # quotas grow only below this
    recover: float  # a review ends early below this (hysteresis)
    review: float  # HEALTHY -> PROBATION at or above this
    pause: float  # -> SHUTDOWN at or above this
    min_volume: int  # recipients in the window before the rate is judged at all


BOUNCE = Thresholds(
    # "For best results, you should maintain a bounce rate below 2%"
    # [DG:faqs-enforcement bn-q4].
    growth=0.02,
    # Ours: 80 % of the review threshold, so a rate hovering at 5 % cannot flap.
    recover=0.04,
    # "5% or greater ... under review", "10% or greater ... might pause" (bn-q4).
    review=0.05,
    pause=0.10,
    # Ours: at this volume a review takes 25 bounces and a pause 50, so one
    # bounce in ten sends is no evidence.
    min_volume=500,
)
COMPLAINT = Thresholds(
    # "maintain a complaint rate below 0.1%" [DG:faqs-enforcement cm-feedback-loop-q5].
    growth=0.001,
    # Ours: 80 % of the review threshold, as for bounces.
    recover=0.0008,
    # "0.1% or greater ... under review", "0.5% or greater ... might pause" (same).
    review=0.001,
    pause=0.005,
    # Ours: at this volume a review takes 2 complaints and a pause 10, never one.
    min_volume=2_000,
)


class EnforcementStatus(StrEnum):
    """SES's GetAccount EnforcementStatus, stored in lower case."""

    HEALTHY = "healthy"
    PROBATION = "probation"
    SHUTDOWN = "shutdown"


class Level(StrEnum):
    """Where one rate stands against its thresholds, best first."""

    LOW = "low"  # below `recover`
    ELEVATED = "elevated"  # SES's "almost healed" while under review
    REVIEW = "review"
    PAUSE = "pause"


_LEVELS = tuple(Level)


@dataclass(frozen=True, slots=True)
class DayCounts:
    """One 24-hour period of an account's recorded sending."""

    recipients: int = 0  # recipients of accepted sends (send events)
    bounces: int = 0  # Permanent, not OnAccountSuppressionList, not own domains
    complaints: int = 0


@dataclass(frozen=True, slots=True)
class UsageHistory:
    """Daily counts, newest first: days[k] is the 24 hours ending k days before now."""

    days: tuple[DayCounts, ...] = ()


@dataclass(frozen=True, slots=True)
class Reputation:
    """An account's counts over its representative window."""

    recipients: int
    bounces: int
    complaints: int
    days: int  # how many days of history the window covers

    @property
    def bounce_rate(self) -> float | None:
        """Return the bounce rate, or None below the minimum volume."""
        return _rate(self.bounces, self.recipients, BOUNCE)

    @property
    def complaint_rate(self) -> float | None:
        """Return the complaint rate, or None below the minimum volume."""
        return _rate(self.complaints, self.recipients, COMPLAINT)

    @property
    def level(self) -> Level | None:
        """Return the worse level of the judged rates, or None if neither is."""
        levels = [
            level_of(rate, limits)
            for rate, limits in (
                (self.bounce_rate, BOUNCE),
                (self.complaint_rate, COMPLAINT),
            )
            if rate is not None
        ]
        return max(levels, key=_LEVELS.index) if levels else None


def _rate(count: int, recipients: int, limits: Thresholds) -> float | None:
    """Return count/recipients once recipients reach the minimum volume."""
    if recipients < limits.min_volume:
        return None
    return count / recipients


def level_of(rate: float, limits: Thresholds) -> Level:
    """Place one rate against its thresholds."""
    if rate >= limits.pause:
        return Level.PAUSE
    if rate >= limits.review:
        return Level.REVIEW
    if rate >= limits.recover:
        return Level.ELEVATED
    return Level.LOW


def reputation(history: UsageHistory) -> Reputation:
    """Sum the newest days until they hold the representative volume or 14 days."""
    recipients = bounces = complaints = days = 0
    for day in history.days[:WINDOW_DAYS]:
        if recipients >= REPRESENTATIVE_RECIPIENTS:
            break
        recipients += day.recipients
        bounces += day.bounces
        complaints += day.complaints
        days += 1
    return Reputation(recipients, bounces, complaints, days)


# -- enforcement ------------------------------------------------------------------


class EnforcementReason(StrEnum):
    """Why an account has the enforcement status it has after an evaluation."""

    WITHIN_THRESHOLDS = "within_thresholds"
    NOT_ENOUGH_VOLUME = "not_enough_volume"
    REVIEW_THRESHOLD = "review_threshold"
    PAUSE_THRESHOLD = "pause_threshold"
    UNDER_REVIEW = "under_review"
    RECOVERED = "recovered"
    REVIEW_ENDED_ABOVE_THRESHOLD = "review_ended_above_threshold"
    REVIEW_ENDED_BELOW_THRESHOLD = "review_ended_below_threshold"
    AWAITING_OPERATOR = "awaiting_operator"
    OPERATOR_REVIEW = "operator_review"


@dataclass(frozen=True, slots=True)
class EnforcementState:
    """An account's recorded enforcement status."""

    status: EnforcementStatus
    probation_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class EnforcementDecision:
    """The status an account should have now, and why."""

    status: EnforcementStatus
    probation_until: datetime | None
    reason: EnforcementReason


def next_enforcement(
    state: EnforcementState, rep: Reputation, now: datetime
) -> EnforcementDecision:
    """Move an account between HEALTHY, PROBATION and SHUTDOWN by its rates."""
    if state.status is EnforcementStatus.SHUTDOWN:
        # Only an operator's review ends a pause (quota.reputation.review).
        return EnforcementDecision(
            EnforcementStatus.SHUTDOWN, None, EnforcementReason.AWAITING_OPERATOR
        )
    level = rep.level
    if state.status is EnforcementStatus.PROBATION:
        return _on_probation(state.probation_until or now + REVIEW_PERIOD, level, now)
    if level is None:
        return EnforcementDecision(
            EnforcementStatus.HEALTHY, None, EnforcementReason.NOT_ENOUGH_VOLUME
        )
    if level is Level.PAUSE:
        return EnforcementDecision(
            EnforcementStatus.SHUTDOWN, None, EnforcementReason.PAUSE_THRESHOLD
        )
    if level is Level.REVIEW:
        return EnforcementDecision(
            EnforcementStatus.PROBATION,
            now + REVIEW_PERIOD,
            EnforcementReason.REVIEW_THRESHOLD,
        )
    return EnforcementDecision(
        EnforcementStatus.HEALTHY, None, EnforcementReason.WITHIN_THRESHOLDS
    )


def _on_probation(
    until: datetime, level: Level | None, now: datetime
) -> EnforcementDecision:
    """Decide for an account under review until `until`."""
    if level is None:
        # No evidence either way: the review waits for enough mail to judge.
        return EnforcementDecision(
            EnforcementStatus.PROBATION, until, EnforcementReason.NOT_ENOUGH_VOLUME
        )
    if level is Level.PAUSE:
        return EnforcementDecision(
            EnforcementStatus.SHUTDOWN, None, EnforcementReason.PAUSE_THRESHOLD
        )
    if level is Level.LOW:
        return EnforcementDecision(
            EnforcementStatus.HEALTHY, None, EnforcementReason.RECOVERED
        )
    if now < until:
        return EnforcementDecision(
            EnforcementStatus.PROBATION, until, EnforcementReason.UNDER_REVIEW
        )
    # "If you don't correct the issue before the review period is over, we might
    # pause your ability to send additional email" [DG:faqs-enforcement pr-q1].
    if level is Level.REVIEW:
        return EnforcementDecision(
            EnforcementStatus.SHUTDOWN,
            None,
            EnforcementReason.REVIEW_ENDED_ABOVE_THRESHOLD,
        )
    return EnforcementDecision(
        EnforcementStatus.HEALTHY, None, EnforcementReason.REVIEW_ENDED_BELOW_THRESHOLD
    )


# -- quota growth -----------------------------------------------------------------

# The 24-hour quotas an account climbs, one rung per step. The launch post: 1,000
# a day to start, "10,000 daily messages within 3 days and up to 1,000,000 daily
# messages within a couple of weeks" (ses-launch.md). Three steps of about x2.15
# (the cube root of 10) reach 10,000 on day 3; nine shrinking steps (x2 down to
# x1.4) reach 1,000,000 on day 12, leaving two days of slack in the fortnight.
QUOTA_LADDER: tuple[int, ...] = (
    1_000,
    2_200,
    4_700,
    10_000,
    20_000,
    40_000,
    75_000,
    130_000,
    220_000,
    350_000,
    500_000,
    700_000,
    1_000_000,
)
# "occur automatically as you start to approach your existing limits"
# (ses-launch.md); ours: the busiest 24 hours reached half the quota.
APPROACH_FRACTION = 0.5
# Ours: a weekly sender still grows from its weekly peak.
USAGE_LOOKBACK_DAYS = 7
# Ours: at most one rung per 24 hours, so each rung is used for a day first.
STEP_INTERVAL = DAY
# "all the way to 90 per second within a couple of weeks" (ses-launch.md); more
# takes an operator (quota_override).
MAX_SEND_RATE = 90.0
# 1/s at 1,000 a day and 10/s at 10,000 (ses-launch.md): 1 per second per 1,000.
_LINEAR_UNTIL = 10_000
# From 10/s at 10,000 to 90/s at 1,000,000 (ses-launch.md), straight on log axes:
# rate = 10 * (quota / 10,000) ** (log 9 / log 100).
_RATE_EXPONENT = math.log(9) / math.log(100)


class QuotaReason(StrEnum):
    """Why an account's quota did or did not grow in an evaluation."""

    RAISED = "raised"
    NOT_PRODUCTION = "not_production"
    OPERATOR_OVERRIDE = "operator_override"
    SHUTDOWN = "shutdown"
    PROBATION = "probation"
    AT_CEILING = "at_ceiling"
    TOO_SOON = "too_soon"
    LOW_USAGE = "low_usage"
    NOT_ENOUGH_VOLUME = "not_enough_volume"
    RATES_TOO_HIGH = "rates_too_high"
    STATUS_CHANGED = "status_changed"


@dataclass(frozen=True, slots=True)
class QuotaState:
    """What the growth policy reads about an account."""

    production: bool
    quota_override: bool
    status: EnforcementStatus  # after this evaluation's enforcement decision
    max_24_hour_send: float
    max_send_rate: float
    changed_at: datetime  # when the quota last changed, else when the account began


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    """The quota an account should have now, and why."""

    max_24_hour_send: float
    max_send_rate: float
    reason: QuotaReason

    @property
    def raised(self) -> bool:
        """Whether this decision raises the quota."""
        return self.reason is QuotaReason.RAISED


def rate_for_quota(quota: float) -> float:
    """Return the whole send rate that goes with a 24-hour quota (1/s to 90/s)."""
    if quota <= _LINEAR_UNTIL:
        rate = quota / 1_000
    else:
        rate = 10 * (quota / _LINEAR_UNTIL) ** _RATE_EXPONENT
    return float(min(MAX_SEND_RATE, max(1, math.floor(rate + 0.5))))


def next_rung(quota: float) -> int | None:
    """Return the ladder's first quota above `quota`, or None at the top."""
    return next((rung for rung in QUOTA_LADDER if rung > quota), None)


def next_quota(
    state: QuotaState, history: UsageHistory, now: datetime
) -> QuotaDecision:
    """Raise a healthy production account's quota one rung when it nears the limit."""

    def keep(reason: QuotaReason) -> QuotaDecision:
        return QuotaDecision(state.max_24_hour_send, state.max_send_rate, reason)

    if not state.production:
        return keep(QuotaReason.NOT_PRODUCTION)
    if state.quota_override:
        return keep(QuotaReason.OPERATOR_OVERRIDE)
    if state.status is EnforcementStatus.SHUTDOWN:
        return keep(QuotaReason.SHUTDOWN)
    if state.status is EnforcementStatus.PROBATION:
        return keep(QuotaReason.PROBATION)
    target = next_rung(state.max_24_hour_send)
    if target is None:
        return keep(QuotaReason.AT_CEILING)
    elapsed = now - state.changed_at
    if elapsed < STEP_INTERVAL:
        return keep(QuotaReason.TOO_SOON)
    # Only whole days since the last change were sent under the current quota.
    days = min(USAGE_LOOKBACK_DAYS, elapsed // DAY)
    peak = max((day.recipients for day in history.days[:days]), default=0)
    if peak < APPROACH_FRACTION * state.max_24_hour_send:
        return keep(QuotaReason.LOW_USAGE)
    rep = reputation(history)
    bounce_rate, complaint_rate = rep.bounce_rate, rep.complaint_rate
    if bounce_rate is None:
        return keep(QuotaReason.NOT_ENOUGH_VOLUME)
    if bounce_rate >= BOUNCE.growth or (
        complaint_rate is not None and complaint_rate >= COMPLAINT.growth
    ):
        return keep(QuotaReason.RATES_TOO_HIGH)
    rate = max(state.max_send_rate, rate_for_quota(target))
    return QuotaDecision(float(target), rate, QuotaReason.RAISED)


# -- both together ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountState:
    """Everything the policy reads about one account."""

    production: bool
    quota_override: bool
    status: EnforcementStatus
    probation_until: datetime | None
    max_24_hour_send: float
    max_send_rate: float
    quota_changed_at: datetime  # when the quota last changed, else account creation


@dataclass(frozen=True, slots=True)
class Decision:
    """One evaluation of an account: its standing, status and quota."""

    reputation: Reputation
    enforcement: EnforcementDecision
    quota: QuotaDecision
    quota_changed_at: datetime  # the growth clock after this evaluation


def decide(state: AccountState, history: UsageHistory, now: datetime) -> Decision:
    """Decide an account's enforcement status, then whether its quota grows."""
    rep = reputation(history)
    enforcement = next_enforcement(
        EnforcementState(state.status, state.probation_until), rep, now
    )
    if enforcement.status is not state.status:
        # Days spent under another status are no evidence of responsible use:
        # the quota stays and growth waits a full day from now.
        quota = QuotaDecision(
            state.max_24_hour_send, state.max_send_rate, QuotaReason.STATUS_CHANGED
        )
        return Decision(rep, enforcement, quota, now)
    quota = next_quota(
        QuotaState(
            production=state.production,
            quota_override=state.quota_override,
            status=enforcement.status,
            max_24_hour_send=state.max_24_hour_send,
            max_send_rate=state.max_send_rate,
            changed_at=state.quota_changed_at,
        ),
        history,
        now,
    )
    return Decision(
        rep, enforcement, quota, now if quota.raised else state.quota_changed_at
    )
