"""Apply quota.policy to accounts: load their recorded history, write what changed.

The scheduler calls :func:`evaluate_all`; operators end reviews with :func:`review`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from quota import policy
from quota.policy import (
    AccountState,
    EnforcementReason,
    EnforcementStatus,
    Reputation,
    UsageHistory,
)
from sesame.log import event

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400


class ChangeKind(StrEnum):
    """What a change changed."""

    ENFORCEMENT = "enforcement"
    QUOTA = "quota"


class Actor(StrEnum):
    """Who made a change."""

    POLICY = "policy"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Change:
    """One change to an account's enforcement status or quota, as logged."""

    account_id: str
    kind: ChangeKind
    actor: Actor
    reason: str
    old_status: EnforcementStatus
    new_status: EnforcementStatus
    old_max_24_hour_send: float
    new_max_24_hour_send: float
    old_max_send_rate: float
    new_max_send_rate: float
    bounce_rate: float | None
    complaint_rate: float | None
    recipients: int
    at: datetime


@dataclass(frozen=True, slots=True)
class _Account:
    """The account columns the policy reads, also the guard of the update."""

    id: str
    production: bool
    quota_override: bool
    status: EnforcementStatus
    probation_until: datetime | None
    max_24_hour_send: float
    max_send_rate: float
    quota_changed_at: datetime
    reputation_since: datetime | None


_ACCOUNTS = (
    "select id, production, quota_override, enforcement_status, probation_until,"
    " max_24_hour_send, max_send_rate, coalesce(quota_changed_at, created_at),"
    " reputation_since from accounts"
)

# Per account and day (0 = the 24 hours ending now): recipients sent, counted
# bounces and complaints. One statement, so the rollups and the events above
# their watermark are read from the same snapshot and nothing counts twice.
_HISTORY = """
with acct as (
    select id, greatest(%(start)s, reputation_since) as since from accounts
    where %(ids)s::text[] is null or id = any(%(ids)s::text[])
), counted as (
    select s.account_id, s.period_start as at, s.delivery_attempts as recipients,
           0 as bounces, 0 as complaints
    from send_statistics s join acct on acct.id = s.account_id
    where s.period_start > %(start)s - interval '15 minutes'
      and s.period_start + interval '15 minutes' > acct.since
      and s.period_start <= %(now)s
    union all
    select e.account_id, e.created_at, coalesce((e.detail->>'recipients')::bigint, 1),
           0, 0
    from events e join acct on acct.id = e.account_id
    where e.id > (select last_event_id from rollup_state
                  where name = 'send_statistics')
      and e.event_type = 'send' and e.created_at > acct.since
      and e.created_at <= %(now)s
    union all
    select e.account_id, e.created_at, 0,
           (e.event_type = 'bounce' and e.bounce_type = 'Permanent'
            and e.bounce_subtype is distinct from 'OnAccountSuppressionList'
            and not exists (
                select 1 from identities i
                where i.account_id = e.account_id and i.kind = 'domain'
                  and i.verification_status = 'success'
                  and (e.domain = i.name
                       or right(e.domain, length(i.name) + 1) = '.' || i.name)
            ))::int,
           (e.event_type = 'complaint'
            and e.feedback_type is distinct from 'not-spam')::int
    from (
        select ev.account_id, ev.created_at, ev.event_type, ev.bounce_type,
               ev.bounce_subtype, lower(substring(ev.recipient from '[^@]*$')) as domain,
               ev.detail->>'complaintFeedbackType' as feedback_type
        from events ev join acct on acct.id = ev.account_id
        where ev.event_type in ('bounce', 'complaint') and ev.created_at > %(start)s
          and ev.created_at > acct.since and ev.created_at <= %(now)s
    ) e
)
select account_id,
       least(%(last_day)s, floor(extract(epoch from %(now)s - at) / %(day)s))::int,
       sum(recipients)::bigint, sum(bounces)::bigint, sum(complaints)::bigint
from counted group by 1, 2
"""


def _account(row: tuple[Any, ...]) -> _Account:
    """Build an _Account from a row of _ACCOUNTS."""
    return _Account(
        id=row[0],
        production=row[1],
        quota_override=row[2],
        status=EnforcementStatus(row[3]),
        probation_until=row[4],
        max_24_hour_send=row[5],
        max_send_rate=row[6],
        quota_changed_at=row[7],
        reputation_since=row[8],
    )


def _utc(now: datetime | None) -> datetime:
    """Return the evaluation time: now, or the given timezone-aware time."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("the evaluation time must be timezone-aware")
    return now


async def load_histories(
    conn: AsyncConnection[Any],
    now: datetime | None = None,
    account_ids: Collection[str] | None = None,
) -> dict[str, UsageHistory]:
    """Return every account's daily counts over the 14 days before `now`."""
    now = _utc(now)
    cur = await conn.execute(
        _HISTORY,
        {
            "now": now,
            "start": now - policy.WINDOW_DAYS * policy.DAY,
            "ids": None if account_ids is None else list(account_ids),
            "day": SECONDS_PER_DAY,
            "last_day": policy.WINDOW_DAYS - 1,
        },
    )
    days: dict[str, list[policy.DayCounts]] = {}
    for account_id, day, recipients, bounces, complaints in await cur.fetchall():
        counts = days.setdefault(account_id, [policy.DayCounts()] * policy.WINDOW_DAYS)
        seen = counts[day]
        counts[day] = policy.DayCounts(
            seen.recipients + recipients,
            seen.bounces + bounces,
            seen.complaints + complaints,
        )
    return {key: UsageHistory(tuple(value)) for key, value in days.items()}


async def _load_accounts(
    conn: AsyncConnection[Any], account_ids: Collection[str] | None
) -> list[_Account]:
    """Return the accounts to evaluate, all of them unless `account_ids` is given."""
    if account_ids is None:
        cur = await conn.execute(_ACCOUNTS + " order by id")
    else:
        cur = await conn.execute(
            _ACCOUNTS + " where id = any(%s) order by id", (list(account_ids),)
        )
    return [_account(row) for row in await cur.fetchall()]


async def evaluate_all(
    conn: AsyncConnection[Any],
    now: datetime | None = None,
    *,
    account_ids: Collection[str] | None = None,
) -> list[Change]:
    """Apply the policy to every account (or the given ones); return the changes."""
    now = _utc(now)
    accounts = await _load_accounts(conn, account_ids)
    histories = await load_histories(conn, now, account_ids)
    changes: list[Change] = []
    for account in accounts:
        history = histories.get(account.id, UsageHistory())
        changes += await _evaluate(conn, account, history, now)
    return changes


async def _evaluate(
    conn: AsyncConnection[Any],
    account: _Account,
    history: UsageHistory,
    now: datetime,
) -> list[Change]:
    """Decide for one account and write the decision if it changes anything."""
    decision = policy.decide(
        AccountState(
            production=account.production,
            quota_override=account.quota_override,
            status=account.status,
            probation_until=account.probation_until,
            max_24_hour_send=account.max_24_hour_send,
            max_send_rate=account.max_send_rate,
            quota_changed_at=account.quota_changed_at,
        ),
        history,
        now,
    )
    rep, enforcement, quota = decision.reputation, decision.enforcement, decision.quota
    if (
        enforcement.status is account.status
        and enforcement.probation_until == account.probation_until
        and not quota.raised
    ):
        return []
    changes: list[Change] = []
    if enforcement.status is not account.status:
        changes.append(
            _change(
                account,
                ChangeKind.ENFORCEMENT,
                Actor.POLICY,
                enforcement.reason,
                enforcement.status,
                rep,
                now,
            )
        )
    if quota.raised:
        changes.append(
            _change(
                account,
                ChangeKind.QUOTA,
                Actor.POLICY,
                quota.reason,
                enforcement.status,
                rep,
                now,
                quota.max_24_hour_send,
                quota.max_send_rate,
            )
        )
    async with conn.transaction():
        cur = await conn.execute(
            "update accounts set enforcement_status = %s, probation_until = %s,"
            " max_24_hour_send = %s, max_send_rate = %s, quota_changed_at = %s,"
            " updated_at = now()"
            " where id = %s and enforcement_status = %s"
            " and probation_until is not distinct from %s"
            " and max_24_hour_send = %s and max_send_rate = %s"
            " and production = %s and quota_override = %s"
            " and reputation_since is not distinct from %s",
            (
                enforcement.status.value,
                enforcement.probation_until,
                quota.max_24_hour_send,
                quota.max_send_rate,
                decision.quota_changed_at,
                account.id,
                account.status.value,
                account.probation_until,
                account.max_24_hour_send,
                account.max_send_rate,
                account.production,
                account.quota_override,
                account.reputation_since,
            ),
        )
        if cur.rowcount != 1:
            # An operator changed the account since it was read; the next
            # evaluation decides from what the operator left.
            event(log, "reputation evaluation skipped", account=account.id)
            return []
        await _record(conn, changes)
    for change in changes:
        _log(change)
    return changes


def _change(
    account: _Account,
    kind: ChangeKind,
    actor: Actor,
    reason: str,
    new_status: EnforcementStatus,
    rep: Reputation | None,
    now: datetime,
    new_max_24_hour_send: float | None = None,
    new_max_send_rate: float | None = None,
) -> Change:
    """Describe a change to `account`; the quota stays unless given."""
    return Change(
        account_id=account.id,
        kind=kind,
        actor=actor,
        reason=str(reason),
        old_status=account.status,
        new_status=new_status,
        old_max_24_hour_send=account.max_24_hour_send,
        new_max_24_hour_send=(
            account.max_24_hour_send
            if new_max_24_hour_send is None
            else new_max_24_hour_send
        ),
        old_max_send_rate=account.max_send_rate,
        new_max_send_rate=(
            account.max_send_rate if new_max_send_rate is None else new_max_send_rate
        ),
        bounce_rate=rep.bounce_rate if rep else None,
        complaint_rate=rep.complaint_rate if rep else None,
        recipients=rep.recipients if rep else 0,
        at=now,
    )


async def _record(conn: AsyncConnection[Any], changes: list[Change]) -> None:
    """Append changes to reputation_changes."""
    cur = conn.cursor()
    await cur.executemany(
        "insert into reputation_changes (account_id, kind, actor, reason,"
        " old_status, new_status, old_max_24_hour_send, new_max_24_hour_send,"
        " old_max_send_rate, new_max_send_rate, bounce_rate, complaint_rate,"
        " recipients, created_at)"
        " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [
            (
                c.account_id,
                c.kind.value,
                c.actor.value,
                c.reason,
                c.old_status.value,
                c.new_status.value,
                c.old_max_24_hour_send,
                c.new_max_24_hour_send,
                c.old_max_send_rate,
                c.new_max_send_rate,
                c.bounce_rate,
                c.complaint_rate,
                c.recipients,
                c.at,
            )
            for c in changes
        ],
    )


def _log(change: Change) -> None:
    """Write one change to the structured log; enforcement changes as warnings."""
    if change.kind is ChangeKind.ENFORCEMENT:
        event(
            log,
            "enforcement status changed",
            logging.WARNING,
            account=change.account_id,
            old=change.old_status.value,
            new=change.new_status.value,
            reason=change.reason,
            actor=change.actor.value,
            bounce_rate=_percent(change.bounce_rate),
            complaint_rate=_percent(change.complaint_rate),
            recipients=change.recipients,
        )
    else:
        event(
            log,
            "sending quota raised",
            account=change.account_id,
            max_24_hour_send=change.new_max_24_hour_send,
            max_send_rate=change.new_max_send_rate,
            old_max_24_hour_send=change.old_max_24_hour_send,
            old_max_send_rate=change.old_max_send_rate,
        )


def _percent(rate: float | None) -> str | None:
    """Return a rate as a percentage for logs, None when it was not judged."""
    return None if rate is None else f"{rate * 100:.3f}%"


async def review(
    conn: AsyncConnection[Any],
    account_id: str,
    decision: EnforcementStatus | str,
    now: datetime | None = None,
) -> Change | None:
    """Set an account HEALTHY or PROBATION after an operator's review.

    Rates are judged afresh from `now`: the mail that led to the review no longer
    counts, and quota growth waits a day. Return the change, or None if there is
    no such account.
    """
    status = EnforcementStatus(decision)
    if status is EnforcementStatus.SHUTDOWN:
        raise ValueError(
            "a review sets healthy or probation; pause with `sesame account pause`"
        )
    now = _utc(now)
    until = (
        now + policy.REVIEW_PERIOD if status is EnforcementStatus.PROBATION else None
    )
    async with conn.transaction():
        cur = await conn.execute(_ACCOUNTS + " where id = %s for update", (account_id,))
        row = await cur.fetchone()
        if row is None:
            return None
        account = _account(row)
        await conn.execute(
            "update accounts set enforcement_status = %s, probation_until = %s,"
            " reputation_since = %s, quota_changed_at = %s, updated_at = now()"
            " where id = %s",
            (status.value, until, now, now, account_id),
        )
        change = _change(
            account,
            ChangeKind.ENFORCEMENT,
            Actor.OPERATOR,
            EnforcementReason.OPERATOR_REVIEW,
            status,
            None,
            now,
        )
        await _record(conn, [change])
    _log(change)
    return change


async def recent_changes(
    conn: AsyncConnection[Any], account_id: str, limit: int = 50
) -> list[Change]:
    """Return an account's latest changes, newest first."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "select * from reputation_changes where account_id = %s"
        " order by created_at desc, id desc limit %s",
        (account_id, limit),
    )
    return [
        Change(
            account_id=row["account_id"],
            kind=ChangeKind(row["kind"]),
            actor=Actor(row["actor"]),
            reason=row["reason"],
            old_status=EnforcementStatus(row["old_status"]),
            new_status=EnforcementStatus(row["new_status"]),
            old_max_24_hour_send=row["old_max_24_hour_send"],
            new_max_24_hour_send=row["new_max_24_hour_send"],
            old_max_send_rate=row["old_max_send_rate"],
            new_max_send_rate=row["new_max_send_rate"],
            bounce_rate=row["bounce_rate"],
            complaint_rate=row["complaint_rate"],
            recipients=row["recipients"],
            at=row["created_at"],
        )
        for row in await cur.fetchall()
    ]
