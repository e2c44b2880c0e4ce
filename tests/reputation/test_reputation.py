"""evaluate_all and review against a real database, with chosen event times."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection

from mta import statistics
from quota.policy import REVIEW_PERIOD, DayCounts, EnforcementStatus
from quota.reputation import (
    Actor,
    ChangeKind,
    evaluate_all,
    load_histories,
    recent_changes,
    review,
)
from sesame import accounts, crypto
from sesame.settings import Settings

HEALTHY = EnforcementStatus.HEALTHY
PROBATION = EnforcementStatus.PROBATION
SHUTDOWN = EnforcementStatus.SHUTDOWN
HOUR = timedelta(hours=1)


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True
    ) as connection:
        yield connection


@pytest.fixture
def box(settings: Settings) -> crypto.SecretBox:
    return crypto.SecretBox(crypto.load_or_create_key(None, settings.data_dir))


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC)


class Accounts:
    """Create accounts and record their sending at chosen times."""

    def __init__(
        self, conn: AsyncConnection[Any], box: crypto.SecretBox, settings: Settings
    ) -> None:
        self.conn = conn
        self.box = box
        self.settings = settings

    async def create(
        self, production: bool = True, age: timedelta = 2 * 24 * HOUR
    ) -> str:
        """Create an account that began `age` ago."""
        account, _ = await accounts.create_account(
            self.conn,
            self.box,
            self.settings,
            f"rep-{uuid.uuid4().hex[:8]}",
            production,
        )
        await self.conn.execute(
            "update accounts set created_at = now() - %s where id = %s",
            (age, account.id),
        )
        return account.id

    async def send(self, account_id: str, at: datetime, recipients: int) -> None:
        """Record one accepted message to `recipients` recipients, as accept does."""
        message_id = f"rep-{uuid.uuid4().hex}"
        await self.conn.execute(
            "insert into messages (id, account_id, source, raw, recipient_count,"
            " interface, created_at)"
            " values (%s, %s, 'a@example.com', %s, %s, 'api', %s)",
            (message_id, account_id, b"", recipients, at),
        )
        await self.conn.execute(
            "insert into events"
            " (account_id, message_id, event_type, detail, created_at)"
            " values (%s, %s, 'send', %s, %s)",
            (account_id, message_id, f'{{"recipients": {recipients}}}', at),
        )

    async def feedback(
        self,
        account_id: str,
        at: datetime,
        count: int,
        event_type: str = "bounce",
        domain: str = "dest.test",
        bounce_type: str | None = "Permanent",
        subtype: str | None = "General",
    ) -> None:
        """Record `count` bounce or complaint events to addresses at `domain`."""
        if event_type == "complaint":
            bounce_type = subtype = None
        cur = self.conn.cursor()
        await cur.executemany(
            "insert into events (account_id, event_type, recipient, bounce_type,"
            " bounce_subtype, created_at) values (%s, %s, %s, %s, %s, %s)",
            [
                (account_id, event_type, f"u{i}@{domain}", bounce_type, subtype, at)
                for i in range(count)
            ],
        )

    async def row(self, account_id: str) -> dict[str, Any]:
        cur = await self.conn.execute(
            "select enforcement_status, probation_until, max_24_hour_send,"
            " max_send_rate, quota_changed_at, reputation_since"
            " from accounts where id = %s",
            (account_id,),
        )
        names = (
            "status",
            "probation_until",
            "max_24_hour_send",
            "max_send_rate",
            "quota_changed_at",
            "reputation_since",
        )
        values = await cur.fetchone()
        assert values is not None
        return dict(zip(names, values, strict=True))

    async def set(self, account_id: str, **columns: Any) -> None:
        assignments = ", ".join(f"{name} = %s" for name in columns)
        await self.conn.execute(
            f"update accounts set {assignments} where id = %s",
            (*columns.values(), account_id),
        )


@pytest.fixture
def made(
    conn: AsyncConnection[Any], box: crypto.SecretBox, settings: Settings
) -> Accounts:
    return Accounts(conn, box, settings)


async def test_bounces_put_an_account_on_probation_then_pause_it(
    conn: AsyncConnection[Any], made: Accounts, now: datetime
) -> None:
    account_id = await made.create()
    await made.send(account_id, now - 3 * HOUR, 600)
    await made.send(account_id, now - 2 * HOUR, 400)
    await made.feedback(account_id, now - HOUR, 60)

    (change,) = await evaluate_all(conn, now, account_ids=[account_id])
    assert (change.kind, change.actor, change.reason) == (
        ChangeKind.ENFORCEMENT,
        Actor.POLICY,
        "review_threshold",
    )
    assert (change.old_status, change.new_status) == (HEALTHY, PROBATION)
    assert change.bounce_rate == pytest.approx(0.06)
    assert change.recipients == 1_000
    row = await made.row(account_id)
    assert row["status"] == "probation"
    assert row["probation_until"] == now + REVIEW_PERIOD
    # The quota is frozen on probation, busy as the account is.
    assert row["max_24_hour_send"] == 1_000

    await made.feedback(account_id, now - HOUR, 50)
    (change,) = await evaluate_all(conn, now + HOUR, account_ids=[account_id])
    assert (change.new_status, change.reason) == (SHUTDOWN, "pause_threshold")
    account = await accounts.get_account(conn, account_id)
    assert account is not None and not account.can_send
    logged = await recent_changes(conn, account_id)
    assert [c.new_status for c in logged] == [SHUTDOWN, PROBATION]


async def test_suppression_list_and_own_domain_bounces_do_not_count(
    conn: AsyncConnection[Any], made: Accounts, now: datetime
) -> None:
    account_id = await made.create()
    await conn.execute(
        "insert into identities (account_id, name, kind, verification_status)"
        " values (%s, 'example.com', 'domain', 'success'),"
        " (%s, 'pending.test', 'domain', 'pending')",
        (account_id, account_id),
    )
    at = now - HOUR
    await made.send(account_id, now - 2 * HOUR, 1_000)
    await made.feedback(account_id, at, 80, subtype="OnAccountSuppressionList")
    await made.feedback(account_id, at, 80, domain="example.com")
    await made.feedback(account_id, at, 40, domain="mail.EXAMPLE.com")
    await made.feedback(account_id, at, 40, bounce_type="Transient")
    # Counted: an unverified domain, a domain merely ending in the verified name.
    await made.feedback(account_id, at, 20, domain="pending.test")
    await made.feedback(account_id, at, 10, domain="notexample.com")

    histories = await load_histories(conn, now, [account_id])
    assert histories[account_id].days[0] == DayCounts(1_000, 30, 0)
    assert await evaluate_all(conn, now, account_ids=[account_id]) == []
    assert (await made.row(account_id))["status"] == "healthy"


async def test_complaints_pause_an_account(
    conn: AsyncConnection[Any], made: Accounts, now: datetime
) -> None:
    account_id = await made.create(production=False)
    await made.send(account_id, now - 30 * HOUR, 1_500)
    await made.send(account_id, now - 3 * HOUR, 500)
    await made.feedback(account_id, now - 2 * HOUR, 10, event_type="complaint")
    (change,) = await evaluate_all(conn, now, account_ids=[account_id])
    assert (change.new_status, change.reason) == (SHUTDOWN, "pause_threshold")
    assert change.complaint_rate == pytest.approx(0.005)


async def test_not_spam_reports_are_not_complaints(
    conn: AsyncConnection[Any], made: Accounts, now: datetime
) -> None:
    account_id = await made.create(production=False)
    await made.send(account_id, now - 3 * HOUR, 2_000)
    await made.feedback(account_id, now - 2 * HOUR, 10, event_type="complaint")
    await conn.execute(
        'update events set detail = \'{"complaintFeedbackType": "not-spam"}\''
        " where account_id = %s and event_type = 'complaint'",
        (account_id,),
    )
    assert await evaluate_all(conn, now, account_ids=[account_id]) == []


async def test_a_few_sends_are_not_judged(
    conn: AsyncConnection[Any], made: Accounts, now: datetime
) -> None:
    account_id = await made.create()
    await made.send(account_id, now - HOUR, 10)
    await made.feedback(account_id, now - HOUR, 5)
    assert await evaluate_all(conn, now, account_ids=[account_id]) == []


async def test_events_older_than_14_days_or_after_now_do_not_count(
    conn: AsyncConnection[Any], made: Accounts, now: datetime
) -> None:
    account_id = await made.create(age=30 * 24 * HOUR)
    then = now - 2 * HOUR
    await made.send(account_id, then - 15 * 24 * HOUR, 5_000)
    await made.feedback(account_id, then - 15 * 24 * HOUR, 900)
    await made.send(account_id, then - 14 * 24 * HOUR + HOUR, 700)
    await made.send(account_id, then - 25 * HOUR, 300)
    await made.send(account_id, now - HOUR, 999)
    histories = await load_histories(conn, then, [account_id])
    days = histories[account_id].days
    assert days[0] == DayCounts(0) and days[1].recipients == 300
    assert days[13].recipients == 700
    assert sum(day.recipients for day in days) == 1_000
    assert sum(day.bounces for day in days) == 0


async def test_rolled_up_and_live_sends_count_once(
    conn: AsyncConnection[Any], made: Accounts, now: datetime
) -> None:
    account_id = await made.create()
    await made.send(account_id, now - 5 * HOUR, 700)
    await made.send(account_id, now - 30 * HOUR, 300)
    await made.feedback(account_id, now - 4 * HOUR, 7)
    before = await load_histories(conn, now, [account_id])
    await statistics.roll_up(conn)
    after = await load_histories(conn, now, [account_id])
    assert before == after
    assert after[account_id].days[:2] == (DayCounts(700, 7), DayCounts(300))
    cur = await conn.execute(
        "select sum(delivery_attempts) from send_statistics where account_id = %s",
        (account_id,),
    )
    assert await cur.fetchone() == (1_000,)


async def test_a_busy_healthy_account_grows_once_a_day(
    conn: AsyncConnection[Any], made: Accounts, now: datetime
) -> None:
    account_id = await made.create()
    await made.send(account_id, now - 20 * HOUR, 450)
    await made.send(account_id, now - 2 * HOUR, 450)
    await made.feedback(account_id, now - HOUR, 5)

    (change,) = await evaluate_all(conn, now, account_ids=[account_id])
    assert (change.kind, change.reason) == (ChangeKind.QUOTA, "raised")
    assert (change.old_max_24_hour_send, change.new_max_24_hour_send) == (1_000, 2_200)
    assert (change.old_max_send_rate, change.new_max_send_rate) == (1, 2)
    row = await made.row(account_id)
    assert (row["max_24_hour_send"], row["max_send_rate"]) == (2_200, 2)
    assert row["quota_changed_at"] == now
    # Not again within 24 hours, however busy.
    await made.send(account_id, now - HOUR, 1_500)
    assert await evaluate_all(conn, now + 23 * HOUR, account_ids=[account_id]) == []
    assert (await recent_changes(conn, account_id))[0].new_max_24_hour_send == 2_200


async def test_sandbox_and_operator_quotas_are_left_alone(
    conn: AsyncConnection[Any], made: Accounts, now: datetime
) -> None:
    sandbox = await made.create(production=False)
    override = await made.create()
    await made.set(override, quota_override=True, max_24_hour_send=1_200)
    for account_id in (sandbox, override):
        await made.send(account_id, now - 2 * HOUR, 1_000)
    assert await evaluate_all(conn, now, account_ids=[sandbox, override]) == []
    assert (await made.row(sandbox))["max_24_hour_send"] == 200
    assert (await made.row(override))["max_24_hour_send"] == 1_200


async def test_a_review_that_ends_above_the_threshold_pauses(
    conn: AsyncConnection[Any], made: Accounts, now: datetime
) -> None:
    stuck = await made.create()
    healed = await made.create()
    for account_id, bounces in ((stuck, 60), (healed, 10)):
        await made.set(
            account_id, enforcement_status="probation", probation_until=now - HOUR
        )
        await made.send(account_id, now - 3 * HOUR, 1_000)
        await made.feedback(account_id, now - 2 * HOUR, bounces)
    changes = await evaluate_all(conn, now, account_ids=[stuck, healed])
    outcome = {c.account_id: (c.new_status, c.reason) for c in changes}
    assert outcome == {
        stuck: (SHUTDOWN, "review_ended_above_threshold"),
        healed: (HEALTHY, "recovered"),
    }
    assert (await made.row(healed))["probation_until"] is None


async def test_an_operator_review_resumes_and_judges_afresh(
    conn: AsyncConnection[Any], made: Accounts, now: datetime
) -> None:
    account_id = await made.create()
    await made.send(account_id, now - 3 * HOUR, 1_000)
    await made.feedback(account_id, now - 2 * HOUR, 200)
    (paused,) = await evaluate_all(conn, now, account_ids=[account_id])
    assert paused.new_status is SHUTDOWN

    later = now + HOUR
    change = await review(conn, account_id, "healthy", later)
    assert change is not None
    assert (change.actor, change.reason) == (Actor.OPERATOR, "operator_review")
    assert (change.old_status, change.new_status) == (SHUTDOWN, HEALTHY)
    row = await made.row(account_id)
    assert (row["status"], row["reputation_since"]) == ("healthy", later)
    assert row["quota_changed_at"] == later
    # The bounces before the review no longer count.
    assert await evaluate_all(conn, later + HOUR, account_ids=[account_id]) == []
    account = await accounts.get_account(conn, account_id)
    assert account is not None and account.can_send

    change = await review(conn, account_id, PROBATION, later)
    assert change is not None and change.new_status is PROBATION
    assert (await made.row(account_id))["probation_until"] == later + REVIEW_PERIOD
    with pytest.raises(ValueError):
        await review(conn, account_id, "shutdown", later)
    assert await review(conn, "no-such-account", "healthy", later) is None
    actors = [c.actor for c in await recent_changes(conn, account_id)]
    assert actors == [Actor.OPERATOR, Actor.OPERATOR, Actor.POLICY]


async def test_any_quota_change_restarts_the_growth_clock(
    conn: AsyncConnection[Any], made: Accounts, now: datetime
) -> None:
    account_id = await made.create()
    assert (await made.row(account_id))["quota_changed_at"] is None
    await accounts.update_account(conn, account_id, sending_enabled=False)
    assert (await made.row(account_id))["quota_changed_at"] is None
    await accounts.update_account(conn, account_id, max_24_hour_send=5_000)
    changed = (await made.row(account_id))["quota_changed_at"]
    assert changed is not None and abs(changed - now) < HOUR
    # So sending near the new quota waits a day before the next rung.
    await made.send(account_id, now - HOUR, 4_000)
    assert await evaluate_all(conn, now, account_ids=[account_id]) == []


async def test_evaluate_all_covers_every_account(
    conn: AsyncConnection[Any], made: Accounts, now: datetime
) -> None:
    account_id = await made.create()
    await made.send(account_id, now - 3 * HOUR, 1_000)
    await made.feedback(account_id, now - 2 * HOUR, 120)
    changes = await evaluate_all(conn, now)
    assert (account_id, SHUTDOWN) in [(c.account_id, c.new_status) for c in changes]
    with pytest.raises(ValueError):
        await evaluate_all(conn, datetime(2024, 1, 1))
