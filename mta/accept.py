"""The one accept path: every API send, SMTP submission and system mail ends here.

A message is accepted only once it and one row per recipient are committed in
PostgreSQL; callers answer 200/250 after :meth:`Acceptor.accept` returns.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from mta import identities
from quota.gate import Admission, QuotaGate
from sesame import accounts, metrics
from sesame.accounts import Account
from sesame.cache import TtlCache
from sesame.ids import MessageId
from sesame.log import event
from sesame.settings import Settings

log = logging.getLogger(__name__)

WAKE_KEY = "sesame:dispatch:wake"

# SES lists the unverified identities in one sentence; beyond this many it
# ends the list with "..." rather than grow the error without bound.
_MAX_LISTED_IDENTITIES = 10


class AcceptError(Exception):
    """A send that Sesame refuses, with the SES error code and wording."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StoreUnavailable(Exception):
    """PostgreSQL could not commit the message; nothing was accepted."""


@dataclass(slots=True)
class Submission:
    """A message ready to accept: envelope, checked addresses and final bytes."""

    account: Account
    message_id: MessageId
    source: str  # Source / MAIL FROM as given, for events
    senders: list[tuple[str, str]]  # (address, as written) to check: Source, From, ...
    recipients: list[tuple[str, str]]  # (address, as written), deduplicated
    raw: bytes
    subject: str | None
    from_domain: str | None
    interface: str  # api | smtp | system
    configuration_set: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    # The configuration set's MaxDeliverySeconds; None: the settings' default.
    max_delivery_seconds: float | None = None


class Acceptor:
    """Check a submission against identities, sandbox, quota; then commit it."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        redis: Redis,
        settings: Settings,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._settings = settings
        self._gate = QuotaGate(redis)
        self._writer = CommitBatcher(pool)
        self._accounts: TtlCache[str, Account | None] = TtlCache(
            settings.account_cache_seconds
        )
        self._verified: TtlCache[str, frozenset[str]] = TtlCache(
            settings.account_cache_seconds
        )
        self._wake_pending = False

    async def start(self) -> None:
        self._writer.start()

    async def stop(self) -> None:
        await self._writer.stop()

    async def account(self, account_id: str) -> Account | None:
        async def load() -> Account | None:
            async with self._pool.connection() as conn:
                return await accounts.get_account(conn, account_id)

        return await self._accounts.get(account_id, load)

    def forget(self, account_id: str) -> None:
        """Drop cached state of an account after this process changed it."""
        self._accounts.invalidate(account_id)
        self._verified.invalidate(account_id)

    async def verified_names(self, account_id: str) -> frozenset[str]:
        async def load() -> frozenset[str]:
            async with self._pool.connection() as conn:
                return await identities.verified_names(conn, account_id)

        return await self._verified.get(account_id, load)

    async def accept(self, submission: Submission) -> MessageId:
        """Accept a message durably, or raise :class:`AcceptError`."""
        account = submission.account
        if not account.can_send:
            metrics.message_rejected(submission.interface, "paused")
            raise AcceptError("AccountSendingPausedException", "Account is paused.")

        verified = await self.verified_names(account.id)
        failed = [
            written
            for addr, written in submission.senders
            if not identities.covered(addr, verified)
        ]
        if not account.production:
            failed += [
                written
                for addr, written in submission.recipients
                if not identities.covered(addr, verified)
            ]
        if failed:
            metrics.message_rejected(submission.interface, "not_verified")
            raise AcceptError("MessageRejected", self._not_verified(failed))

        decision = await self._gate.admit(
            account.id,
            len(submission.recipients),
            max_24_hour_send=account.max_24_hour_send,
            max_send_rate=account.max_send_rate,
            rebuild=lambda: self.recent_sends(account.id),
        )
        if decision.admission is Admission.RATE_EXCEEDED:
            metrics.message_rejected(submission.interface, "rate_exceeded")
            raise AcceptError("Throttling", "Maximum sending rate exceeded.")
        if decision.admission is Admission.DAILY_EXCEEDED:
            metrics.message_rejected(submission.interface, "daily_quota_exceeded")
            raise AcceptError("Throttling", "Daily message quota exceeded.")

        try:
            await self._writer.commit(
                submission, self._expires_at(submission.max_delivery_seconds)
            )
        except Exception as exc:
            await self._gate.refund(account.id, len(submission.recipients))
            event(
                log,
                "message not committed",
                logging.ERROR,
                account_id=account.id,
                message_id=submission.message_id,
                error=type(exc).__name__,
            )
            metrics.message_rejected(submission.interface, "unavailable")
            raise StoreUnavailable(str(exc)) from exc

        event(
            log,
            "message accepted",
            account_id=account.id,
            message_id=submission.message_id,
            interface=submission.interface,
            recipients=len(submission.recipients),
        )
        metrics.message_accepted(
            account.id, submission.interface, len(submission.recipients)
        )
        self._wake_dispatcher()
        return submission.message_id

    async def accept_system(self, submission: Submission) -> MessageId:
        """Commit Sesame's own mail (verification links) without identity or quota checks."""
        await self._writer.commit(submission, self._expires_at())
        metrics.message_accepted(submission.account.id, "system", 1)
        self._wake_dispatcher()
        return submission.message_id

    def _not_verified(self, failed: list[str]) -> str:
        listed = ", ".join(failed[:_MAX_LISTED_IDENTITIES])
        if len(failed) > _MAX_LISTED_IDENTITIES:
            listed += ", ..."
        return (
            "Email address is not verified. The following identities failed the check"
            f" in region {self._settings.region.upper()}: {listed}"
        )

    async def recent_sends(self, account_id: str) -> list[tuple[int, int]]:
        """Recipients accepted per minute over the last 24 hours, from PostgreSQL."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "select (extract(epoch from created_at)::bigint / 60) as minute,"
                " sum(recipient_count)::bigint from messages"
                " where account_id = %s and interface <> 'system'"
                " and created_at > now() - interval '24 hours 5 minutes'"
                " group by minute",
                (account_id,),
            )
            return [(int(m), int(n)) for m, n in await cur.fetchall()]

    async def sent_last_24_hours(self, account_id: str) -> int:
        return await self._gate.sent_last_24_hours(
            account_id, rebuild=lambda: self.recent_sends(account_id)
        )

    def _expires_at(self, max_delivery_seconds: float | None = None) -> datetime:
        return datetime.now(UTC) + timedelta(
            seconds=max_delivery_seconds or self._settings.max_delivery_seconds
        )

    def _wake_dispatcher(self) -> None:
        """Tell the scheduler new work is due; coalesced, and harmless if lost."""
        if self._wake_pending:
            return
        self._wake_pending = True

        async def send() -> None:
            await asyncio.sleep(0.005)
            self._wake_pending = False
            try:
                await self._redis.lpush(WAKE_KEY, b"1")
            except Exception:  # the scheduler's sweep finds the work anyway
                pass

        asyncio.get_running_loop().create_task(send())


@dataclass(slots=True)
class _Pending:
    submission: Submission
    expires_at: datetime
    done: asyncio.Future[None]


class CommitBatcher:
    """Group commit: write many accepted messages in one PostgreSQL transaction.

    Each caller still waits for the commit of the transaction that holds its
    message, so durability is unchanged; the commit cost is shared.
    """

    def __init__(
        self, pool: AsyncConnectionPool, writers: int = 4, max_batch: int = 200
    ) -> None:
        self._pool = pool
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._writers = writers
        self._max_batch = max_batch
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._run()) for _ in range(self._writers)
            ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def commit(self, submission: Submission, expires_at: datetime) -> None:
        if not self._tasks:
            self.start()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(submission, expires_at, done))
        await done

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch, exc)
                    continue
                # One bad message must not fail its neighbours: retry one by one.
                for item in batch:
                    try:
                        await self._write([item])
                    except Exception as item_exc:
                        _settle([item], item_exc)
                    else:
                        _settle([item], None)
            else:
                _settle(batch, None)

    async def _write(self, batch: list[_Pending]) -> None:
        async with self._pool.connection() as conn:
            async with conn.transaction():
                await _copy_rows(conn, batch)


def _settle(batch: list[_Pending], error: BaseException | None) -> None:
    for item in batch:
        if item.done.done():
            continue
        if error is None:
            item.done.set_result(None)
        else:
            item.done.set_exception(error)


async def _copy_rows(conn: AsyncConnection[Any], batch: list[_Pending]) -> None:
    cur = conn.cursor()
    async with cur.copy(
        "copy messages (id, account_id, source, from_domain, subject, raw,"
        " recipient_count, interface, configuration_set, tags) from stdin"
    ) as copy:
        for item in batch:
            s = item.submission
            await copy.write_row(
                (
                    s.message_id,
                    s.account.id,
                    s.source,
                    s.from_domain,
                    s.subject,
                    s.raw,
                    len(s.recipients),
                    s.interface,
                    s.configuration_set,
                    orjson.dumps(s.tags).decode() if s.tags else None,
                )
            )
    async with cur.copy(
        "copy recipients (message_id, account_id, address, domain, expires_at)"
        " from stdin"
    ) as copy:
        for item in batch:
            s = item.submission
            for address, _ in s.recipients:
                domain = address.rpartition("@")[2]
                await copy.write_row(
                    (
                        s.message_id,
                        s.account.id,
                        address,
                        domain,
                        item.expires_at,
                    )
                )
    async with cur.copy(
        "copy events (account_id, message_id, event_type, recipient, bounce_type,"
        " bounce_subtype, detail) from stdin"
    ) as copy:
        for item in batch:
            s = item.submission
            if s.interface == "system":
                continue
            count = f'{{"recipients": {len(s.recipients)}}}'
            await copy.write_row(
                (s.account.id, s.message_id, "send", None, None, None, count)
            )
