"""QuotaGate against the real Redis: SES's burst, daily window, wipes and races."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable

import pytest
import redis
from redis.asyncio import Redis

from quota import Admission, QuotaGate, quota_keys

# A whole minute (28333334 * 60), so minute boundaries fall on round offsets.
T0 = 1_700_000_040.0
DAY = 86_400.0
MINUTE0 = int(T0 // 60)


class History:
    """The rebuild callback: fixed rows standing in for PostgreSQL, and a count."""

    def __init__(self, rows: Iterable[tuple[int, int]] = ()) -> None:
        self.rows = list(rows)
        self.calls = 0

    async def __call__(self) -> list[tuple[int, int]]:
        self.calls += 1
        return list(self.rows)


@pytest.fixture
async def aredis(redis_client: redis.Redis, redis_url: str) -> AsyncIterator[Redis]:
    """An asyncio client on the test db, which redis_client flushes around us."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def gate(aredis: Redis) -> QuotaGate:
    return QuotaGate(aredis)


@pytest.fixture
def account() -> str:
    return uuid.uuid4().hex[:12]


async def send(
    gate: QuotaGate,
    account: str,
    recipients: int,
    now: float,
    *,
    daily: float = 1_000_000,
    rate: float = 1_000,
    history: History | None = None,
) -> Admission:
    """Admit a send and return only the verdict."""
    decision = await gate.admit(
        account,
        recipients,
        max_24_hour_send=daily,
        max_send_rate=rate,
        rebuild=history or History(),
        now=now,
    )
    return decision.admission


def test_keys_share_the_account_hash_tag() -> None:
    assert quota_keys("123456789012") == (
        "sesame:{123456789012}:day",
        "sesame:{123456789012}:rate",
    )


async def test_burst_at_one_per_second(gate: QuotaGate, account: str) -> None:
    first = await gate.admit(
        account, 5, max_24_hour_send=200, max_send_rate=1, rebuild=History(), now=T0
    )
    assert first.admission is Admission.ADMITTED
    assert first.tokens == -4
    # The bucket is 4 in debt: it is back to zero, still refused, 4 s later.
    for later in (0.0, 1.0, 2.5, 4.0):
        assert (
            await send(gate, account, 1, T0 + later, rate=1) is Admission.RATE_EXCEEDED
        )
    assert await send(gate, account, 1, T0 + 4.01, rate=1) is Admission.ADMITTED
    assert await send(gate, account, 1, T0 + 4.02, rate=1) is Admission.RATE_EXCEEDED
    assert await gate.sent_last_24_hours(account, rebuild=History(), now=T0 + 5) == 6


async def test_capacity_is_one_second_of_rate(gate: QuotaGate, account: str) -> None:
    # An hour idle still banks only 10 tokens at 10/s.
    assert await send(gate, account, 1, T0, rate=10) is Admission.ADMITTED
    idle = T0 + 3600
    verdicts = [await send(gate, account, 1, idle, rate=10) for _ in range(11)]
    assert verdicts == [Admission.ADMITTED] * 10 + [Admission.RATE_EXCEEDED]
    assert await send(gate, account, 1, idle + 0.1, rate=10) is Admission.ADMITTED
    assert await send(gate, account, 1, idle + 0.1, rate=10) is Admission.RATE_EXCEEDED


async def test_fractional_rate_has_capacity_one(gate: QuotaGate, account: str) -> None:
    # 0.5/s still holds one token; two recipients leave it 1 in debt for 2 s.
    assert await send(gate, account, 2, T0, rate=0.5) is Admission.ADMITTED
    assert await send(gate, account, 1, T0 + 2, rate=0.5) is Admission.RATE_EXCEEDED
    assert await send(gate, account, 1, T0 + 2.1, rate=0.5) is Admission.ADMITTED


async def test_daily_quota_boundary(gate: QuotaGate, account: str) -> None:
    assert await send(gate, account, 199, T0, daily=200) is Admission.ADMITTED
    assert await send(gate, account, 2, T0 + 1, daily=200) is Admission.DAILY_EXCEEDED
    decision = await gate.admit(
        account,
        1,
        max_24_hour_send=200,
        max_send_rate=1000,
        rebuild=History(),
        now=T0 + 2,
    )
    assert decision.admission is Admission.ADMITTED
    assert decision.sent_last_24_hours == 200
    refused = await gate.admit(
        account,
        1,
        max_24_hour_send=200,
        max_send_rate=1000,
        rebuild=History(),
        now=T0 + 3,
    )
    assert refused.admission is Admission.DAILY_EXCEEDED
    assert refused.sent_last_24_hours == 200


async def test_daily_refusal_consumes_no_tokens(gate: QuotaGate, account: str) -> None:
    assert await send(gate, account, 2, T0, daily=3, rate=2) is Admission.ADMITTED
    # At T0 + 1 the bucket has refilled to 2; the refused send must leave it so.
    refused = await gate.admit(
        account, 2, max_24_hour_send=3, max_send_rate=2, rebuild=History(), now=T0 + 1
    )
    assert refused.admission is Admission.DAILY_EXCEEDED
    assert refused.tokens == 2
    taken = await gate.admit(
        account, 1, max_24_hour_send=3, max_send_rate=2, rebuild=History(), now=T0 + 1
    )
    assert (taken.admission, taken.tokens, taken.sent_last_24_hours) == (
        Admission.ADMITTED,
        1,
        3,
    )


async def test_daily_is_checked_before_rate(gate: QuotaGate, account: str) -> None:
    assert await send(gate, account, 3, T0, daily=3, rate=1) is Admission.ADMITTED
    # Both limits are hit; SES reports the daily one.
    assert await send(gate, account, 1, T0, daily=3, rate=1) is Admission.DAILY_EXCEEDED


async def test_rate_refusal_counts_nothing(gate: QuotaGate, account: str) -> None:
    assert await send(gate, account, 3, T0, rate=1) is Admission.ADMITTED
    for i in range(10):
        verdict = await send(gate, account, 7, T0 + i / 5, rate=1)
        assert verdict is Admission.RATE_EXCEEDED
    assert await send(gate, account, 1, T0 + 2.5, rate=1) is Admission.ADMITTED
    assert await gate.sent_last_24_hours(account, rebuild=History(), now=T0 + 3) == 4


async def test_sends_leave_the_window_after_24_hours(
    gate: QuotaGate, account: str, aredis: Redis
) -> None:
    assert await send(gate, account, 3, T0) is Admission.ADMITTED
    assert await send(gate, account, 4, T0 + 3600) is Admission.ADMITTED

    async def sent(at: float) -> int:
        return await gate.sent_last_24_hours(account, rebuild=History(), now=at)

    assert await sent(T0 + DAY - 1) == 7
    assert await sent(T0 + DAY + 60) == 4
    assert await aredis.hkeys(quota_keys(account).day) == [
        b"total",
        b"oldest",
        str(MINUTE0 + 60).encode(),
    ]
    assert await sent(T0 + 3600 + DAY + 60) == 0
    # The daily quota frees up as the window moves on.
    assert await send(gate, account, 10, T0 + DAY + 60, daily=14) is Admission.ADMITTED


async def test_expiry_walks_only_the_minutes_that_left(
    gate: QuotaGate, account: str, aredis: Redis
) -> None:
    # One recipient in every minute of a day: 1440 buckets.
    for minute in range(1440):
        assert await send(gate, account, 1, T0 + 60 * minute) is Admission.ADMITTED
    end = T0 + 60 * 1439

    async def sent(at: float) -> int:
        return await gate.sent_last_24_hours(account, rebuild=History(), now=at)

    assert await sent(end) == 1440
    assert await sent(end + 60) == 1439
    assert await sent(end + 60 + 12 * 3600) == 1439 - 720
    assert await aredis.hlen(quota_keys(account).day) == 2 + 1439 - 720
    # Idle past a whole day: every bucket goes, by a scan of the few left.
    assert await sent(end + 3 * DAY) == 0
    assert await aredis.hlen(quota_keys(account).day) == 2


async def test_keys_expire_after_25_hours(
    gate: QuotaGate, account: str, aredis: Redis
) -> None:
    assert await send(gate, account, 1, T0) is Admission.ADMITTED
    for key in quota_keys(account):
        ttl = await aredis.pttl(key)
        assert 24.9 * 3600_000 < ttl <= 25 * 3600_000


async def test_wipe_rebuilds_the_count_from_history(
    gate: QuotaGate, account: str, aredis: Redis
) -> None:
    for offset, recipients in ((0, 5), (600, 7), (3600, 11)):
        assert await send(gate, account, recipients, T0 + offset) is Admission.ADMITTED
    now = T0 + 7200
    # What PostgreSQL holds for the last day, plus a row older than the window.
    history = History(
        [(MINUTE0, 5), (MINUTE0 + 10, 7), (MINUTE0 + 60, 11), (MINUTE0 - 1440, 100)]
    )
    # A wipe as FLUSHALL or a restart leaves it, without touching other dbs.
    await aredis.flushdb()
    await aredis.script_flush()

    after = await gate.admit(
        account, 1, max_24_hour_send=30, max_send_rate=1, rebuild=history, now=now
    )
    assert history.calls == 1
    assert after.admission is Admission.ADMITTED
    assert after.sent_last_24_hours == 24
    # The rate bucket was wiped too and starts full (capacity 1).
    assert after.tokens == 0
    assert await send(gate, account, 7, now + 5, daily=30, history=history) is (
        Admission.DAILY_EXCEEDED
    )
    assert history.calls == 1


async def test_account_without_history_is_rebuilt_once(
    gate: QuotaGate, account: str, aredis: Redis
) -> None:
    history = History()
    assert await gate.sent_last_24_hours(account, rebuild=history, now=T0) == 0
    assert await aredis.hgetall(quota_keys(account).day) == {
        b"total": b"0",
        b"oldest": str(MINUTE0 - 1439).encode(),
    }
    for i in range(5):
        verdict = await send(gate, account, 1, T0 + i, history=history)
        assert verdict is Admission.ADMITTED
    assert history.calls == 1


async def test_rebuilders_in_two_processes_do_not_double_count(
    redis_client: redis.Redis, redis_url: str, account: str
) -> None:
    clients = [Redis.from_url(redis_url) for _ in range(2)]
    gates = [QuotaGate(client) for client in clients]
    both_asked = asyncio.Barrier(2)

    class Racing(History):
        async def __call__(self) -> list[tuple[int, int]]:
            rows = await super().__call__()
            # Both processes have read PostgreSQL before either writes Redis.
            await both_asked.wait()
            return rows

    histories = [Racing([(MINUTE0 - 30, 40)]) for _ in gates]
    try:
        decisions = await asyncio.gather(
            *(
                gate.admit(
                    account,
                    recipients,
                    max_24_hour_send=1000,
                    max_send_rate=100,
                    rebuild=history,
                    now=T0,
                )
                for gate, history, recipients in zip(
                    gates, histories, (2, 3), strict=True
                )
            )
        )
        assert [h.calls for h in histories] == [1, 1]
        assert {d.admission for d in decisions} == {Admission.ADMITTED}
        sent = await gates[0].sent_last_24_hours(account, rebuild=History(), now=T0)
        assert sent == 40 + 2 + 3
    finally:
        for client in clients:
            await client.aclose()


async def test_one_rebuild_per_process_after_a_wipe(
    gate: QuotaGate, account: str
) -> None:
    history = History([(MINUTE0 - 1, 10)])
    verdicts = await asyncio.gather(
        *(send(gate, account, 1, T0, history=history) for _ in range(20))
    )
    assert verdicts == [Admission.ADMITTED] * 20
    assert history.calls == 1
    assert await gate.sent_last_24_hours(account, rebuild=history, now=T0) == 30


async def test_failing_rebuild_reaches_every_waiter(
    gate: QuotaGate, account: str
) -> None:
    async def broken() -> list[tuple[int, int]]:
        await asyncio.sleep(0.01)
        raise ConnectionError("postgres is down")

    results = await asyncio.gather(
        *(
            gate.admit(
                account, 1, max_24_hour_send=10, max_send_rate=1, rebuild=broken, now=T0
            )
            for _ in range(3)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(r, ConnectionError) for r in results)
    # Nothing was counted, and the next send tries again.
    assert await send(gate, account, 1, T0) is Admission.ADMITTED


async def test_concurrent_admits_never_exceed_the_daily_quota(
    redis_client: redis.Redis, redis_url: str, account: str
) -> None:
    # Four processes' worth of clients, 50 single-recipient sends, quota 20.
    clients = [Redis.from_url(redis_url) for _ in range(4)]
    gates = [QuotaGate(client) for client in clients]
    history = History()
    try:
        verdicts = await asyncio.gather(
            *(
                send(gates[i % 4], account, 1, T0, daily=20, history=history)
                for i in range(50)
            )
        )
        assert verdicts.count(Admission.ADMITTED) == 20
        assert verdicts.count(Admission.DAILY_EXCEEDED) == 30
        assert await gates[0].sent_last_24_hours(account, rebuild=history, now=T0) == 20
    finally:
        for client in clients:
            await client.aclose()


async def test_refund_gives_back_count_and_tokens(
    gate: QuotaGate, account: str
) -> None:
    assert await send(gate, account, 3, T0, daily=5, rate=1) is Admission.ADMITTED
    assert await send(gate, account, 1, T0 + 59, daily=5, rate=1) is Admission.ADMITTED
    # The commit of the 1-recipient send failed; its minute is already over.
    await gate.refund(account, 1, now=T0 + 61)
    assert await gate.sent_last_24_hours(account, rebuild=History(), now=T0 + 61) == 3
    # Its token came back too: the bucket is as if it had never been sent.
    decision = await gate.admit(
        account, 2, max_24_hour_send=5, max_send_rate=1, rebuild=History(), now=T0 + 61
    )
    assert decision.admission is Admission.ADMITTED
    assert decision.sent_last_24_hours == 5


async def test_refund_takes_newest_sends_and_stops_at_zero(
    gate: QuotaGate, account: str, aredis: Redis
) -> None:
    assert await send(gate, account, 4, T0) is Admission.ADMITTED
    assert await send(gate, account, 2, T0 + 120) is Admission.ADMITTED
    await gate.refund(account, 3, now=T0 + 130)
    day = quota_keys(account).day
    assert await aredis.hget(day, str(MINUTE0 + 2)) is None
    assert await aredis.hget(day, str(MINUTE0)) == b"3"
    await gate.refund(account, 50, now=T0 + 130)
    assert await gate.sent_last_24_hours(account, rebuild=History(), now=T0 + 130) == 0


async def test_refund_after_a_wipe_creates_nothing(
    gate: QuotaGate, account: str, aredis: Redis
) -> None:
    await gate.refund(account, 5, now=T0)
    assert await aredis.exists(*quota_keys(account)) == 0


async def test_redis_clock_and_decoded_replies(
    redis_url: str, redis_client: redis.Redis, account: str
) -> None:
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        gate = QuotaGate(client)
        decision = await gate.admit(
            account, 2, max_24_hour_send=10, max_send_rate=5, rebuild=History()
        )
        assert decision.admission is Admission.ADMITTED
        assert decision.tokens == 3
        assert await gate.sent_last_24_hours(account, rebuild=History()) == 2
        await gate.refund(account, 2)
        assert await gate.sent_last_24_hours(account, rebuild=History()) == 0
    finally:
        await client.aclose()


@pytest.mark.parametrize("recipients", [0, -1])
async def test_a_send_has_recipients(
    gate: QuotaGate, account: str, recipients: int
) -> None:
    with pytest.raises(ValueError):
        await send(gate, account, recipients, T0)
    with pytest.raises(ValueError):
        await gate.refund(account, recipients, now=T0)
