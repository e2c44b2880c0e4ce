"""Sending statistics: 15-minute rollups of events, as GetSendStatistics reports them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

PERIOD_SECONDS = 15 * 60
WINDOW = "14 days"
# Events younger than this are left for the next rollup, so a transaction that
# took an id earlier but committed later is never skipped by the watermark.
SETTLE_SECONDS = 60

_COUNTS = """
    sum(case when event_type = 'send'
             then coalesce((detail->>'recipients')::bigint, 1) else 0 end),
    count(*) filter (where event_type = 'bounce' and bounce_type = 'Permanent'),
    count(*) filter (where event_type = 'complaint'),
    count(*) filter (where event_type = 'reject')
"""
_PERIOD = "to_timestamp(floor(extract(epoch from created_at) / 900) * 900)"


@dataclass(frozen=True, slots=True)
class SendDataPoint:
    timestamp: datetime
    delivery_attempts: int
    bounces: int
    complaints: int
    rejects: int


async def roll_up(conn: AsyncConnection[Any]) -> int:
    """Fold settled events into 15-minute counts; return the events folded."""
    async with conn.transaction():
        cur = await conn.execute(
            "select last_event_id from rollup_state where name = 'send_statistics'"
            " for update"
        )
        row = await cur.fetchone()
        assert row is not None
        last = row[0]
        cur = await conn.execute(
            "select coalesce(max(id), %s), count(*) from events where id > %s"
            " and created_at < now() - make_interval(secs => %s)",
            (last, last, SETTLE_SECONDS),
        )
        top, count = await cur.fetchone()  # type: ignore[misc]
        if not count:
            return 0
        await conn.execute(
            "insert into send_statistics as s (account_id, period_start,"
            " delivery_attempts, bounces, complaints, rejects)"
            f" select account_id, {_PERIOD}, {_COUNTS} from events"
            " where id > %s and id <= %s group by 1, 2"
            " on conflict (account_id, period_start) do update set"
            " delivery_attempts = s.delivery_attempts + excluded.delivery_attempts,"
            " bounces = s.bounces + excluded.bounces,"
            " complaints = s.complaints + excluded.complaints,"
            " rejects = s.rejects + excluded.rejects",
            (last, top),
        )
        await conn.execute(
            "update rollup_state set last_event_id = %s where name = 'send_statistics'",
            (top,),
        )
        await conn.execute(
            f"delete from send_statistics where period_start < now() - interval '{WINDOW}'"
        )
    return int(count)


async def send_statistics(
    conn: AsyncConnection[Any], account_id: str
) -> list[SendDataPoint]:
    """The account's data points over two weeks: rollups plus not-yet-rolled events."""
    cur = await conn.execute(
        "with live as ("
        f" select {_PERIOD} as period_start, {_COUNTS} from events"
        " where account_id = %s and id > (select last_event_id from rollup_state"
        " where name = 'send_statistics') group by 1"
        "), rolled as ("
        " select period_start, delivery_attempts, bounces, complaints, rejects"
        " from send_statistics where account_id = %s"
        f" and period_start > now() - interval '{WINDOW}'"
        ")"
        " select period_start, sum(a)::bigint, sum(b)::bigint, sum(c)::bigint,"
        " sum(d)::bigint from (select * from live union all select * from rolled)"
        " as t(period_start, a, b, c, d) group by period_start order by period_start",
        (account_id, account_id),
    )
    return [
        SendDataPoint(row[0], int(row[1]), int(row[2]), int(row[3]), int(row[4]))
        for row in await cur.fetchall()
    ]
