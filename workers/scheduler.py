"""The scheduler: dispatch due recipients to workers and keep the queue honest.

One scheduler is active at a time (a PostgreSQL advisory lock); others wait as
standbys. Everything it does is rebuilt from PostgreSQL, so Redis can be wiped.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from typing import Any

import psycopg
import redis.exceptions
from redis import Redis as SyncRedis
from rq import Queue

from mta import dns, identities, statistics
from mta.accept import WAKE_KEY
from quota import reputation
from sesame import metrics
from sesame.log import event
from sesame.runtime import Runtime
from sesame.settings import Settings
from workers import DELIVERY_QUEUE, webhooks

log = logging.getLogger(__name__)

_SCHEDULER_LOCK = 0x5E5A_0002
# Present while Redis keeps its data; when it is gone Redis was wiped or
# restarted empty, and every claimed-but-queued job went with it.
EPOCH_KEY = "sesame:epoch"
ROLLUP_SECONDS = 60.0
# Jobs waiting in Redis per worker process; more only ages leases for nothing.
PENDING_JOBS_PER_WORKER = 4
# A delivery job may run this many leases before RQ stops it.
JOB_TIMEOUT_LEASES = 6


class Scheduler:
    def __init__(self, runtime: Runtime, queue: Queue) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.queue = queue
        self.resolver = dns.Resolver(
            self.settings.nameservers, self.settings.dns_timeout_seconds
        )
        self._last_sweep = 0.0
        self._last_rollup = 0.0
        self._last_recheck = 0.0
        self._last_reputation = 0.0
        self._last_webhooks = 0.0
        # In the long-running scheduler, webhooks go out from a task of their
        # own, so a consumer that hangs cannot hold up dispatching mail.
        self.background_relay = False
        self._relay: asyncio.Task[int] | None = None
        self.gauges = metrics.GaugeSampler(
            runtime, self.settings.sweep_seconds, self.settings.metrics_account_seconds
        )

    async def tick(self) -> int:
        """Run whatever is due now; return the recipients dispatched."""
        now = time.monotonic()
        await self.check_epoch()
        if now - self._last_sweep >= self.settings.sweep_seconds:
            self._last_sweep = now
            await self.sweep()
        dispatched = await self.dispatch()
        if now - self._last_rollup >= ROLLUP_SECONDS:
            self._last_rollup = now
            async with self.runtime.pool.connection() as conn:
                await statistics.roll_up(conn)
        if now - self._last_reputation >= self.settings.reputation_evaluate_seconds:
            self._last_reputation = now
            async with self.runtime.pool.connection() as conn:
                await reputation.evaluate_all(conn)
        if now - self._last_recheck >= self.settings.identity_recheck_seconds:
            self._last_recheck = now
            await self.recheck_identities()
        if now - self._last_webhooks >= webhooks.RELAY_SECONDS:
            self._last_webhooks = now
            await self._relay_webhooks()
        await self.gauges.tick()  # throttled inside: a query per sweep period
        return dispatched

    async def _relay_webhooks(self) -> None:
        if not self.background_relay:
            await webhooks.relay_due(self.runtime)
            return
        if self._relay is None or self._relay.done():
            if self._relay is not None and not self._relay.cancelled():
                error = self._relay.exception()
                if error is not None:
                    event(
                        log,
                        "webhook relay failed",
                        logging.WARNING,
                        error=type(error).__name__,
                    )
            self._relay = asyncio.create_task(webhooks.relay_due(self.runtime))

    async def check_epoch(self) -> None:
        """Release claims whose jobs vanished with a wiped Redis."""
        redis = self.runtime.redis
        if await redis.exists(EPOCH_KEY):
            return
        async with self.runtime.pool.connection() as conn:
            cur = await conn.execute(
                "update recipients set state = 'deferred', lease_until = null,"
                " lease_token = null, next_attempt_at = now(), updated_at = now()"
                " where state = 'sending'"
            )
            released = cur.rowcount
        await redis.set(EPOCH_KEY, str(uuid.uuid4()))
        if released:
            event(
                log,
                "redis was empty; claims released",
                logging.WARNING,
                recipients=released,
            )

    async def dispatch(self) -> int:
        """Claim due recipients with a lease and enqueue them as batch jobs."""
        pending = await asyncio.to_thread(self.queue.__len__)
        metrics.QUEUE_JOBS.set(pending)
        room = max(0, self.settings.workers * PENDING_JOBS_PER_WORKER - pending)
        if room == 0:
            return 0
        batch = self.settings.dispatch_batch_size
        token = uuid.uuid4()
        async with self.runtime.pool.connection() as conn:
            cur = await conn.execute(
                "with due as ("
                " select id from recipients"
                " where state in ('queued', 'deferred') and next_attempt_at <= now()"
                " and expires_at > now()"
                # Operator suspensions (mta/queue.py): one primary-key probe each.
                " and not exists (select 1 from delivery_suspensions s"
                " where s.kind = 'domain' and s.value = recipients.domain"
                " and (s.until is null or s.until > now()))"
                " and not exists (select 1 from delivery_suspensions s"
                " where s.kind = 'account' and s.value = recipients.account_id"
                " and (s.until is null or s.until > now()))"
                " order by next_attempt_at limit %s for update skip locked)"
                " update recipients r set state = 'sending',"
                " lease_until = now() + make_interval(secs => %s), lease_token = %s,"
                " attempts = r.attempts + 1, updated_at = now()"
                " from due where r.id = due.id returning r.id, r.domain",
                (room * batch, self.settings.lease_seconds, token),
            )
            rows = await cur.fetchall()
        if not rows:
            return 0
        by_domain: dict[str, list[int]] = defaultdict(list)
        for recipient_id, domain in rows:
            by_domain[domain].append(recipient_id)
        jobs = [
            Queue.prepare_data(
                "workers.deliver.deliver_batch",
                args=(ids[i : i + batch], str(token)),
                # Workers extend the lease while a batch runs; RQ's timeout only
                # stops a batch that hangs.
                timeout=self.settings.lease_seconds * JOB_TIMEOUT_LEASES,
                result_ttl=0,
                failure_ttl=3600,
            )
            for ids in by_domain.values()
            for i in range(0, len(ids), batch)
        ]
        await asyncio.to_thread(self.queue.enqueue_many, jobs)
        event(log, "dispatched", logging.DEBUG, recipients=len(rows), jobs=len(jobs))
        return len(rows)

    async def sweep(self) -> None:
        """Return abandoned claims to the queue and bounce what is too old."""
        async with self.runtime.pool.connection() as conn:
            cur = await conn.execute(
                "update recipients set state = 'deferred', lease_until = null,"
                " lease_token = null, next_attempt_at = now(), updated_at = now()"
                " where state = 'sending' and lease_until < now()"
            )
            released = cur.rowcount
            async with conn.transaction():
                cur = await conn.execute(
                    "with expired as ("
                    " update recipients set state = 'bounced', updated_at = now()"
                    " where state in ('queued', 'deferred') and expires_at <= now()"
                    " returning id, message_id, account_id, address, enhanced_status,"
                    " smtp_code, response)"
                    " insert into events (account_id, message_id, recipient_id,"
                    " event_type, recipient, bounce_type, bounce_subtype, detail)"
                    " select account_id, message_id, id, 'bounce', address, 'Transient',"
                    " 'General', jsonb_build_object('action', 'failed',"
                    " 'status', coalesce(enhanced_status, '4.4.7'),"
                    " 'diagnosticCode', coalesce(smtp_code::text || ' ' || response,"
                    " 'delivery time expired')) from expired"
                )
                expired = cur.rowcount
        metrics.RECIPIENTS.labels("expired").inc(expired)
        if released or expired:
            event(log, "swept", released=released, expired=expired)

    async def recheck_identities(self) -> None:
        """Look pending domains up in DNS and mark the ones now verified."""
        async with self.runtime.pool.connection() as conn:
            pending = await identities.pending_domains(conn)
            for identity in pending:
                try:
                    status, dkim_status = await identities.check_domain(
                        conn, self.resolver, identity
                    )
                except dns.DnsTemporaryError:
                    continue
                await identities.record_domain_check(
                    conn, identity, status, dkim_status
                )


async def run(settings: Settings) -> int:
    assert settings.database_url and settings.redis_url
    runtime = Runtime.create(settings, pool_size=4)
    await runtime.open()
    sync_redis = SyncRedis.from_url(settings.redis_url)
    queue = Queue(DELIVERY_QUEUE, connection=sync_redis)
    scheduler = Scheduler(runtime, queue)
    scheduler.background_relay = True
    try:
        while True:
            lock = await _take_lock(settings)
            event(log, "scheduler active")
            try:
                await _run_active(scheduler, lock)
            finally:
                await lock.close()
            # The lock went with its connection (a PostgreSQL restart, a killed
            # backend): a standby may hold it now, so queue up behind it.
            event(log, "scheduler lock lost", logging.WARNING)
    finally:
        await runtime.close()
        sync_redis.close()


async def _take_lock(settings: Settings) -> psycopg.AsyncConnection[Any]:
    """Wait until this process holds the scheduler lock; return its connection."""
    assert settings.database_url
    while True:
        try:
            lock = await psycopg.AsyncConnection.connect(
                settings.database_url, autocommit=True
            )
        except psycopg.OperationalError:
            await asyncio.sleep(settings.sweep_seconds)
            continue
        try:
            cur = await lock.execute(
                "select pg_try_advisory_lock(%s)", (_SCHEDULER_LOCK,)
            )
            row = await cur.fetchone()
            if row and row[0]:
                return lock
        except psycopg.OperationalError:
            pass
        await lock.close()
        await asyncio.sleep(settings.sweep_seconds)


async def _run_active(scheduler: Scheduler, lock: psycopg.AsyncConnection[Any]) -> None:
    """Tick until the lock's connection is found gone."""
    runtime, settings = scheduler.runtime, scheduler.settings
    checked = time.monotonic()
    while True:
        if time.monotonic() - checked >= settings.sweep_seconds:
            checked = time.monotonic()
            try:
                # A dead connection shows only when used.
                await lock.execute("select 1")
            except psycopg.Error:
                return
        try:
            dispatched = await scheduler.tick()
        except (
            psycopg.OperationalError,
            OSError,
            # Redis away (restarting, failing over) is waited out like
            # PostgreSQL; check_epoch repairs what a wipe lost.
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
        ) as exc:
            event(
                log,
                "scheduler tick failed",
                logging.WARNING,
                error=type(exc).__name__,
            )
            await asyncio.sleep(1.0)
            continue
        if dispatched:
            continue
        await _wait_for_work(runtime, settings)


async def _wait_for_work(runtime: Runtime, settings: Settings) -> None:
    """Sleep until new mail is accepted or the next periodic check is due."""
    timeout = max(0.05, min(settings.sweep_seconds, 1.0))
    try:
        woke: Any = await runtime.redis.blpop([WAKE_KEY], timeout=timeout)
        if woke:
            await runtime.redis.delete(WAKE_KEY)
    except Exception:
        await asyncio.sleep(timeout)
