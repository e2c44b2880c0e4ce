"""Deliver a claimed batch of recipients and record every outcome.

The story of one batch: load the claimed rows, resolve each destination once,
sign each message once, send over reused sessions, then write all outcomes and
events in one transaction that only touches rows still holding our lease.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from psycopg import AsyncConnection

from mta import dns, verp
from mta.delivery import dkim, outcome, shaping
from mta.delivery.outcome import AttemptOutcome, AttemptResult
from mta.delivery.session import SessionPool
from sesame import metrics
from sesame.cache import TtlCache
from sesame.log import event
from sesame.runtime import Runtime

log = logging.getLogger(__name__)

DKIM_KEY_CACHE_SECONDS = 60.0
# Outcomes are written in groups of this many as attempts finish, so a worker
# killed mid-batch leaves at most about this many deliveries unrecorded (each
# may be delivered again), however large the batch.
RECORD_EVERY = 100


@dataclass(frozen=True, slots=True)
class Claimed:
    """A recipient row claimed for this attempt, with its message."""

    id: int
    message_id: str
    account_id: str
    address: str
    domain: str
    attempts: int
    expires_at: datetime
    created_at: datetime
    from_domain: str | None
    raw: bytes
    suppressed: bool  # on the account's suppression list for a reason it honours
    tls_required: bool = False  # the message's configuration set says REQUIRE


# A send to a suppressed address is accepted but never attempted; SES reports it
# as a permanent bounce that does not count toward the bounce rate.
SUPPRESSED = AttemptResult(
    outcome=AttemptOutcome.FAILED,
    smtp_code=None,
    enhanced_status="5.1.1",
    response="Address is on the account's suppression list",
    mx_host=None,
    bounce_type="Permanent",
    bounce_subtype="OnAccountSuppressionList",
)


class Deliverer:
    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.settings = settings
        self.resolver = dns.Resolver(settings.nameservers, settings.dns_timeout_seconds)
        self._smarthost = _smarthost(settings.smarthost)
        self.sessions = SessionPool(
            local_hostname=settings.hostname,
            port=self._smarthost[1] if self._smarthost else settings.delivery_port,
            connect_timeout=settings.smtp_connect_timeout_seconds,
            command_timeout=settings.smtp_command_timeout_seconds,
            limits=functools.partial(
                _process_limits,
                shaping.parse_overrides(settings.site_limits),
                settings.workers,
            ),
        )
        self.verp_key = verp.verp_key(runtime.key)
        self.slots = asyncio.Semaphore(settings.delivery_concurrency)
        self._keys: TtlCache[tuple[str, str], list[dkim.DkimKey]] = TtlCache(
            DKIM_KEY_CACHE_SECONDS
        )

    async def close(self) -> None:
        await self.sessions.close()

    async def deliver(self, recipient_ids: list[int], lease_token: str) -> int:
        """Attempt every still-claimed recipient of the batch; return how many."""
        rows = await self._claimed(recipient_ids, lease_token)
        if not rows:
            return 0

        keeper = asyncio.ensure_future(
            self._keep_lease([row.id for row in rows], lease_token)
        )
        try:
            await self._attempt_all(rows, lease_token)
        finally:
            keeper.cancel()
        return len(rows)

    async def _keep_lease(self, ids: list[int], lease_token: str) -> None:
        """Extend the batch's lease while it runs, until cancelled.

        A batch slowed by a paced or sluggish destination may outlive one lease;
        without this the sweeper would hand its rows to another worker while it
        still sends them. A killed worker stops extending, and its rows come
        back when the lease ends.
        """
        lease = self.settings.lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            try:
                async with self.runtime.pool.connection() as conn:
                    await conn.execute(
                        "update recipients"
                        " set lease_until = now() + make_interval(secs => %s)"
                        " where id = any(%s) and lease_token = %s"
                        " and state = 'sending'",
                        (lease, ids, lease_token),
                    )
            except Exception as exc:  # the next round may succeed; never stop
                event(
                    log,
                    "lease extension failed",
                    logging.WARNING,
                    error=type(exc).__name__,
                )

    async def _attempt_all(self, rows: list[Claimed], lease_token: str) -> None:
        """Attempt every row; write outcomes as they come, all before returning."""
        signed: dict[str, asyncio.Task[bytes]] = {}

        def signed_once(row: Claimed) -> asyncio.Task[bytes]:
            # Signed when its first recipient's turn comes, not all up front: a
            # batch's signing then interleaves with its SMTP waits.
            task = signed.get(row.message_id)
            if task is None:
                task = signed[row.message_id] = asyncio.ensure_future(self._sign(row))
            return task

        started = datetime.now(UTC)
        finished: list[tuple[Claimed, AttemptResult]] = []
        writes: list[asyncio.Task[None]] = []

        def write_finished() -> None:
            done, results = zip(*finished, strict=True)
            finished.clear()
            record = self._record(list(done), list(results), lease_token, started)
            writes.append(asyncio.ensure_future(record))

        async def attempt(row: Claimed) -> None:
            finished.append((row, await self._attempt(row, signed_once)))
            if len(finished) >= RECORD_EVERY:
                write_finished()

        await asyncio.gather(*(attempt(row) for row in rows))
        if finished:
            write_finished()

        # The job ends only once every outcome is written (or raises if one
        # write failed: those rows keep their lease and are retried).
        for failure in await asyncio.gather(*writes, return_exceptions=True):
            if isinstance(failure, BaseException):
                raise failure

    async def _claimed(self, ids: list[int], lease_token: str) -> list[Claimed]:
        async with self.runtime.pool.connection() as conn:
            cur = await conn.execute(
                "select r.id, r.message_id, r.account_id, r.address, r.domain,"
                " r.attempts, r.expires_at, m.created_at, m.from_domain, m.raw,"
                " exists (select 1 from suppressions s join accounts a"
                " on a.id = s.account_id where s.account_id = r.account_id"
                " and s.address = lower(r.address)"
                # A configuration set's suppressed reasons replace the account's.
                " and s.reason = any(coalesce(c.suppressed_reasons,"
                " a.suppressed_reasons))),"
                " coalesce(c.tls_policy = 'require', false)"
                " from recipients r join messages m on m.id = r.message_id"
                " left join configuration_sets c on c.account_id = m.account_id"
                " and c.name = m.configuration_set"
                " where r.id = any(%s) and r.lease_token = %s and r.state = 'sending'",
                (ids, lease_token),
            )
            return [
                Claimed(  # type: ignore[misc]
                    *row[:9],
                    raw=bytes(row[9]),
                    suppressed=row[10],
                    tls_required=row[11],
                )
                for row in await cur.fetchall()
            ]

    async def _sign(self, row: Claimed) -> bytes:
        if not row.from_domain:
            return row.raw
        keys = await self._signing_keys(row.account_id, row.from_domain)
        if not keys:
            return row.raw
        started = time.perf_counter()
        header = dkim.sign(row.raw, keys)
        metrics.DKIM_SIGN_SECONDS.observe(time.perf_counter() - started)
        event(
            log,
            "message signed",
            logging.DEBUG,
            message_id=row.message_id,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return header + row.raw

    async def _addresses(self, host: str) -> list[str]:
        if _is_ip_address(host):
            return [host]
        return await self.resolver.addresses(host)

    async def _signing_keys(self, account_id: str, domain: str) -> list[dkim.DkimKey]:
        async def load() -> list[dkim.DkimKey]:
            async with self.runtime.pool.connection() as conn:
                return await _load_keys(conn, self.runtime, account_id, domain)

        return await self._keys.get((account_id, domain), load)

    async def _attempt(
        self, row: Claimed, signed: Callable[[Claimed], Awaitable[bytes]]
    ) -> AttemptResult:
        if row.suppressed:
            return SUPPRESSED
        async with self.slots:
            if self._smarthost:
                name = self._smarthost[0]
                hosts = [(name, ip) for ip in await self._addresses(name)]
            else:
                route = await self.resolver.route(row.domain)
                if isinstance(route, dns.RouteFailure):
                    return outcome.dns_failure(
                        route.permanent, route.enhanced_status, route.reason
                    )
                hosts = [(mx.name, ip) for mx in route.hosts for ip in mx.addresses]
            data = await signed(row)
            mail_from = verp.return_path(
                row.id, self.settings.return_path_domain, self.verp_key
            )
            try:
                results = await self.sessions.send(
                    hosts=hosts,
                    mail_from=mail_from,
                    rcpt_to=[row.address],
                    data=data,
                    tls_required=row.tls_required,
                )
            except Exception as exc:  # a bug must not lose the batch's other outcomes
                log.exception(
                    "delivery attempt failed",
                    extra={
                        "fields": {
                            "message_id": row.message_id,
                            "recipient_domain": row.domain,
                        }
                    },
                )
                return outcome.connection_failure(
                    f"internal error: {type(exc).__name__}", None
                )
            return results[0]

    async def _record(
        self,
        rows: list[Claimed],
        results: list[AttemptResult],
        lease_token: str,
        started: datetime,
    ) -> None:
        now = datetime.now(UTC)
        updates: list[tuple[Any, ...]] = []
        attempts: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        suppressions: list[tuple[Any, ...]] = []
        finished: list[tuple[Claimed, AttemptResult, str, str]] = []
        for row, result in zip(rows, results, strict=True):
            state, next_at, kind = self._next_state(row, result, now)
            finished.append((row, result, state, kind))
            updates.append(
                (
                    state,
                    next_at,
                    result.smtp_code,
                    result.enhanced_status,
                    result.response[:1000],
                    result.mx_host,
                    row.id,
                    lease_token,
                )
            )
            if result is not SUPPRESSED:
                attempts.append(
                    (
                        row.id,
                        row.attempts,
                        result.outcome.value,
                        result.mx_host,
                        result.smtp_code,
                        result.enhanced_status,
                        result.response[:1000],
                        started,
                        int((now - started).total_seconds() * 1000),
                    )
                )
            events.append(_event(row, result, kind, now, next_at))
            if kind == "bounce" and result.suppressible:
                suppressions.append(
                    (row.address.lower(), row.message_id, row.account_id)
                )
            event(
                log,
                "attempt finished",
                account_id=row.account_id,
                message_id=row.message_id,
                recipient_domain=row.domain,
                attempt=row.attempts,
                mx=result.mx_host,
                smtp_code=result.smtp_code,
                enhanced_status=result.enhanced_status,
                outcome=result.outcome.value,
            )

        columns = [list(column) for column in zip(*updates, strict=True)]
        async with self.runtime.pool.connection() as conn:
            async with conn.transaction():
                # One statement for the batch; only rows still holding our lease
                # are written, so a batch that lost its lease records nothing.
                cur = await conn.execute(
                    "update recipients r set state = u.state,"
                    " next_attempt_at = coalesce(u.next_at, r.next_attempt_at),"
                    " smtp_code = u.code, enhanced_status = u.status,"
                    " response = u.response, mx_host = u.mx, lease_until = null,"
                    " lease_token = null, updated_at = now()"
                    " from unnest(%s::text[], %s::timestamptz[], %s::int[], %s::text[],"
                    " %s::text[], %s::text[], %s::bigint[])"
                    " as u(state, next_at, code, status, response, mx, id)"
                    " where r.id = u.id and r.lease_token = %s returning r.id",
                    (*columns[:7], lease_token),
                )
                ours = {row[0] for row in await cur.fetchall()}
                async with conn.cursor().copy(
                    "copy delivery_attempts (recipient_id, attempt, outcome, mx_host,"
                    " smtp_code, enhanced_status, response, started_at, duration_ms)"
                    " from stdin"
                ) as copy:
                    for attempt in attempts:
                        if attempt[0] in ours:
                            await copy.write_row(attempt)
                async with conn.cursor().copy(
                    "copy events (account_id, message_id, recipient_id, event_type,"
                    " recipient, bounce_type, bounce_subtype, detail) from stdin"
                ) as copy:
                    for recorded in events:
                        if recorded[2] in ours:
                            await copy.write_row(recorded)
                if suppressions:
                    await conn.cursor().executemany(
                        "insert into suppressions (account_id, address, reason,"
                        " message_id) select a.id, %s, 'BOUNCE', m.id from messages m"
                        " join accounts a on a.id = m.account_id"
                        " left join configuration_sets c on c.account_id = m.account_id"
                        " and c.name = m.configuration_set where m.id = %s"
                        " and a.id = %s and 'BOUNCE' = any(coalesce(c.suppressed_reasons,"
                        " a.suppressed_reasons))"
                        " on conflict (account_id, address) do update set"
                        " reason = 'BOUNCE', updated_at = now(),"
                        " message_id = excluded.message_id",
                        suppressions,
                    )
        # Counted once committed, and only rows that were still ours to write.
        metrics.deliveries_recorded([f for f in finished if f[0].id in ours], now)

    def _next_state(
        self, row: Claimed, result: AttemptResult, now: datetime
    ) -> tuple[str, datetime | None, str]:
        """Return (state, next attempt time, event type) after an attempt."""
        if result.outcome is AttemptOutcome.DELIVERED:
            return "delivered", None, "delivery"
        if result is SUPPRESSED:
            return "suppressed", None, "bounce"
        if result.outcome is AttemptOutcome.FAILED:
            return "bounced", None, "bounce"
        if now >= row.expires_at:
            return "bounced", None, "expired"
        delay = retry_delay(
            row.attempts,
            self.settings.retry_base_seconds,
            self.settings.retry_max_interval_seconds,
            result.retry_after,
        )
        return "deferred", min(now + timedelta(seconds=delay), row.expires_at), "delay"


def retry_delay(
    attempt: int, base: float, cap: float, hint: float | None = None
) -> float:
    """Seconds before the next attempt: doubling from ``base``, at most ``cap``.

    Jitter only lengthens a delay (by up to 10 %), so successive delays never
    shrink; a server's "try again in N seconds" hint is honoured up to the cap.
    """
    delay: float = base * (2 ** max(0, attempt - 1)) * (1 + random.random() * 0.1)
    if hint:
        delay = max(delay, hint)
    return min(delay, cap)


def _event(
    row: Claimed,
    result: AttemptResult,
    kind: str,
    now: datetime,
    next_at: datetime | None,
) -> tuple[Any, ...]:
    diagnostic = (
        f"smtp; {result.smtp_code} {result.response}"
        if result.smtp_code
        else result.response
    )
    if kind == "delivery":
        detail = {
            "timestamp": now.isoformat(),
            "processingTimeMillis": int((now - row.created_at).total_seconds() * 1000),
            "smtpResponse": f"{result.smtp_code} {result.response}".strip(),
            "reportingMTA": result.mx_host,
        }
        return (
            row.account_id,
            row.message_id,
            row.id,
            "delivery",
            row.address,
            None,
            None,
            orjson.dumps(detail).decode(),
        )
    if kind == "delay":
        detail = {
            "delayType": result.delay_type or "Undetermined",
            "status": result.enhanced_status,
            "diagnosticCode": diagnostic,
            "expirationTime": row.expires_at.isoformat(),
            "nextAttemptAt": next_at.isoformat() if next_at else None,
        }
        return (
            row.account_id,
            row.message_id,
            row.id,
            "delivery_delay",
            row.address,
            None,
            None,
            orjson.dumps(detail).decode(),
        )
    detail = {
        "action": "failed",
        "status": result.enhanced_status,
        "diagnosticCode": diagnostic,
        "remoteMta": result.mx_host,
    }
    bounce_type = result.bounce_type or "Transient"
    subtype = result.bounce_subtype or "General"
    return (
        row.account_id,
        row.message_id,
        row.id,
        "bounce",
        row.address,
        bounce_type,
        subtype,
        orjson.dumps(detail).decode(),
    )


async def _load_keys(
    conn: AsyncConnection[Any], runtime: Runtime, account_id: str, domain: str
) -> list[dkim.DkimKey]:
    """Keys of the closest verified DKIM domain identity covering ``domain``."""
    labels = domain.split(".")
    candidates = [".".join(labels[i:]) for i in range(len(labels) - 1)]
    cur = await conn.execute(
        "select i.name, k.selector, k.private_key_sealed from identities i"
        " join dkim_keys k on k.identity_id = i.id"
        " where i.account_id = %s and i.name = any(%s) and i.kind = 'domain'"
        " and i.dkim_enabled and i.dkim_status = 'success' and k.active"
        " order by length(i.name) desc, k.id",
        (account_id, candidates),
    )
    rows = await cur.fetchall()
    if not rows:
        return []
    best = rows[0][0]
    keys: dict[str, dkim.DkimKey] = {}
    for name, selector, sealed in rows:
        if name != best:
            continue
        pem = runtime.box.open(bytes(sealed), selector.encode())
        key = dkim.load_key(name, selector, pem, stored=True)
        # One signature per algorithm: the other Easy DKIM selectors are there
        # for rotation, not to sign every message three times.
        keys.setdefault(key.algorithm, key)
    return list(keys.values())


def _process_limits(
    overrides: dict[str, shaping.SiteLimits], workers: int, name: str
) -> shaping.SiteLimits:
    """This process's share of a site's limits: SESAME_WORKERS processes send."""
    return shaping.limits_for(name, overrides).share(workers)


@functools.lru_cache(maxsize=64)
def _is_ip_address(host: str) -> bool:
    """Tell whether host is an IP address literal rather than a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _smarthost(value: str | None) -> tuple[str, int] | None:
    """Parse ``host:port`` (port 25 when omitted)."""
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        return value, 25
    return host.strip("[]"), int(port)
