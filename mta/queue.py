"""Operator control of the delivery queue: inspect, suspend, retry, bounce, purge.

Each operation is an async function over an autocommit psycopg connection, shared
by the ``sesame queue`` and ``sesame message`` commands (sesame/operator_cli.py).
None of it is served over HTTP.

Only recipients that are not final are ever changed: ``queued`` and ``deferred``.
A row claimed by the scheduler (``sending``) is skipped and counted, so an attempt
in flight always records its own outcome. Bulk changes list the matching rows
once, then change them in batches of one statement each, so a large queue is
never locked at once; a row claimed between two batches is skipped like any
other claimed row, and rows accepted after the listing are left alone.

Choices SES does not dictate, because it has no such operations:

- An operator bounce is a Bounce event of type ``Undetermined``/``Undetermined``
  with status 5.0.0, so the sender hears about it, while it counts toward
  neither the bounce rate (which counts ``Permanent`` bounces only) nor the
  suppression list: the recipient did nothing wrong.
- A purge deletes the recipients (and their delivery attempts) and records no
  event and no webhook; the events already written (send, delays) stay, and the
  ``queue purged`` log line is the operator's record.
- A suspension keeps recipients in their state and does not stop the clock: a
  recipient still bounces at its give-up age.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import idna
import orjson
from psycopg import AsyncConnection, sql

from sesame.log import event

log = logging.getLogger(__name__)

SuspensionKind = Literal["domain", "account"]
SummaryKey = Literal["account", "domain", "state"]

# The states an operator may change; the others are final or claimed.
PENDING_STATES: tuple[str, ...] = ("queued", "deferred")
BATCH_SIZE = 1000
SAMPLE_SIZE = 20

OPERATOR_BOUNCE_TYPE = "Undetermined"
OPERATOR_BOUNCE_SUBTYPE = "Undetermined"
# RFC 3463 has no "cancelled by the sender's operator"; X.0.0 is "other".
OPERATOR_BOUNCE_STATUS = "5.0.0"

_SUMMARY_COLUMNS: dict[str, str] = {
    "account": "account_id",
    "domain": "domain",
    "state": "state",
}
# A suspension is in force from its creation until ``until`` (if any).
_ACTIVE = "(s.until is null or s.until > now())"


class QueueError(Exception):
    """An operation that cannot run as asked, with a one-line reason."""


class Progress(Protocol):
    """Told the size of a bulk change, then each batch as it is done."""

    def start(self, total: int) -> None: ...

    def advance(self, done: int) -> None: ...


# -- selecting recipients -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selector:
    """Which recipients an operation applies to; a None field matches anything."""

    domain: str | None = None
    account_id: str | None = None
    message_id: str | None = None
    states: tuple[str, ...] = PENDING_STATES

    def __post_init__(self) -> None:
        if not self.states or not set(self.states) <= set(PENDING_STATES):
            raise QueueError(f"states must be among {', '.join(PENDING_STATES)}")

    @property
    def narrowed(self) -> bool:
        """Whether any of domain, account or message is given."""
        return any((self.domain, self.account_id, self.message_id))

    def where(self, states: Sequence[str] | None = None) -> sql.Composed:
        """Return the condition on ``recipients r`` for these (or other) states."""
        chosen = self.states if states is None else states
        # Literal states, so the planner sees that the partial indexes apply.
        parts: list[sql.Composable] = [
            sql.SQL("r.state in ({})").format(
                sql.SQL(", ").join(sql.Literal(s) for s in chosen)
            )
        ]
        for column, value in (
            ("domain", self.domain),
            ("account_id", self.account_id),
            ("message_id", self.message_id),
        ):
            if value is not None:
                parts.append(sql.SQL("r.{} = {}").format(sql.Identifier(column), value))
        return sql.SQL(" and ").join(parts)

    def describe(self) -> dict[str, Any]:
        """The selector as logged and reported."""
        return {
            "domain": self.domain,
            "account_id": self.account_id,
            "message_id": self.message_id,
            "states": ",".join(self.states),
        }


def normalize_domain(text: str) -> str:
    """Return a destination domain as recipients store it: a lower-case A-label."""
    domain = text.strip().rstrip(".")
    if not domain or "@" in domain or any(c.isspace() for c in domain):
        raise QueueError(f"invalid domain {text.strip()!r}")
    if domain.isascii():
        return domain.lower()
    try:
        # The accept path converts with UTS 46 too (mta/message.py).
        return idna.encode(domain, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError):
        raise QueueError(f"invalid domain {text.strip()!r}") from None


async def check_selector(conn: AsyncConnection[Any], selector: Selector) -> None:
    """Raise QueueError if the selector names an account or message that is not."""
    if selector.account_id is not None:
        await _require_account(conn, selector.account_id)
    if selector.message_id is not None:
        cur = await conn.execute(
            "select 1 from messages where id = %s", (selector.message_id,)
        )
        if await cur.fetchone() is None:
            raise QueueError(f"no message {selector.message_id}")


async def _require_account(conn: AsyncConnection[Any], account_id: str) -> None:
    cur = await conn.execute("select 1 from accounts where id = %s", (account_id,))
    if await cur.fetchone() is None:
        raise QueueError(f"no account {account_id}")


# -- summary --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueGroup:
    """Recipients waiting in one account, destination domain or state."""

    key: str | None  # None for the total
    queued: int
    deferred: int
    sending: int
    due: int  # claimable now, suspended or not
    oldest_due_seconds: float | None  # how long the longest-due one has waited
    oldest_seconds: float | None  # age of the oldest recipient waiting
    suspended: bool | None = None  # None when grouped by state


@dataclass(frozen=True, slots=True)
class QueueSummary:
    by: SummaryKey
    groups: list[QueueGroup]
    total: QueueGroup
    suspensions: list[Suspension] = field(default_factory=list)


async def summary(
    conn: AsyncConnection[Any], by: SummaryKey = "domain", account_id: str | None = None
) -> QueueSummary:
    """Count waiting recipients per account, domain or state, largest group first."""
    if by not in _SUMMARY_COLUMNS:
        raise QueueError("summarise by account, domain or state")
    if account_id is not None:
        await _require_account(conn, account_id)
    key = sql.Identifier(_SUMMARY_COLUMNS[by])
    account = (
        sql.SQL(" and account_id = {}").format(account_id)
        if account_id is not None
        else sql.SQL("")
    )
    due = sql.SQL(
        "state in ('queued', 'deferred') and next_attempt_at <= now()"
        " and expires_at > now()"
    )
    # Two scans, each matching one partial index exactly (recipients_due,
    # recipients_leased), rather than one over every recipient ever sent.
    query = sql.SQL(
        "with waiting as ("
        " select account_id, domain, state, next_attempt_at, expires_at, created_at"
        " from recipients where state in ('queued', 'deferred'){account}"
        " union all"
        " select account_id, domain, state, next_attempt_at, expires_at, created_at"
        " from recipients where state = 'sending'{account})"
        " select grouping({key}) = 1, {key},"
        " count(*) filter (where state = 'queued'),"
        " count(*) filter (where state = 'deferred'),"
        " count(*) filter (where state = 'sending'),"
        " count(*) filter (where {due}),"
        " extract(epoch from now() - min(next_attempt_at) filter (where {due}))"
        "::float8,"
        " extract(epoch from now() - min(created_at))::float8"
        " from waiting group by grouping sets (({key}), ())"
        " order by 1, count(*) desc, 2"
    ).format(account=account, key=key, due=due)
    cur = await conn.execute(query)
    rows = await cur.fetchall()
    active = await suspensions(conn)
    suspended = {(s.kind, s.value) for s in active}
    groups: list[QueueGroup] = []
    total = QueueGroup(None, 0, 0, 0, 0, None, None)
    for is_total, value, queued, deferred, sending, due_n, oldest_due, oldest in rows:
        flag = None if by == "state" else (by, value) in suspended
        group = QueueGroup(
            value,
            int(queued),
            int(deferred),
            int(sending),
            int(due_n),
            oldest_due,
            oldest,
            None if is_total else flag,
        )
        if is_total:
            total = group
        else:
            groups.append(group)
    return QueueSummary(by, groups, total, active)


# -- suspensions ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Suspension:
    """Delivery held for a destination domain or an account."""

    kind: SuspensionKind
    value: str
    reason: str | None
    created_at: datetime
    until: datetime | None


_SUSPENSION_COLUMNS = "kind, value, reason, created_at, until"


def _suspension(row: Sequence[Any]) -> Suspension:
    return Suspension(row[0], row[1], row[2], row[3], row[4])


def _check_kind(kind: str) -> None:
    if kind not in ("domain", "account"):
        raise QueueError("suspend a domain or an account")


async def suspend(
    conn: AsyncConnection[Any],
    kind: SuspensionKind,
    value: str,
    reason: str | None = None,
    until: datetime | None = None,
) -> Suspension:
    """Stop claiming recipients of a domain or account; replace any suspension."""
    _check_kind(kind)
    if kind == "domain":
        value = normalize_domain(value)
    else:
        await _require_account(conn, value)
    cur = await conn.execute(
        "insert into delivery_suspensions as s (kind, value, reason, until)"
        " values (%s, %s, %s, %s) on conflict (kind, value) do update set"
        " reason = excluded.reason, until = excluded.until,"
        # A suspension that had lapsed starts anew; one in force keeps its start.
        f" created_at = case when {_ACTIVE} then s.created_at else now() end"
        f" returning {_SUSPENSION_COLUMNS}",
        (kind, value, reason, until),
    )
    row = await cur.fetchone()
    assert row is not None
    suspension = _suspension(row)
    event(
        log,
        "delivery suspended",
        kind=kind,
        value=value,
        until=until.isoformat() if until else None,
        reason=reason,
    )
    return suspension


async def resume(
    conn: AsyncConnection[Any], kind: SuspensionKind, value: str
) -> Suspension | None:
    """End a suspension; return it, or None if there was none."""
    _check_kind(kind)
    if kind == "domain":
        value = normalize_domain(value)
    cur = await conn.execute(
        "delete from delivery_suspensions where kind = %s and value = %s"
        f" returning {_SUSPENSION_COLUMNS}",
        (kind, value),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    event(log, "delivery resumed", kind=kind, value=value)
    return _suspension(row)


async def suspensions(conn: AsyncConnection[Any]) -> list[Suspension]:
    """Return the suspensions in force, oldest first."""
    cur = await conn.execute(
        f"select {_SUSPENSION_COLUMNS} from delivery_suspensions s where {_ACTIVE}"
        " order by created_at, kind, value"
    )
    return [_suspension(row) for row in await cur.fetchall()]


async def pending_count(conn: AsyncConnection[Any], selector: Selector) -> int:
    """Count the recipients a selector matches now."""
    cur = await conn.execute(
        sql.SQL("select count(*) from recipients r where {}").format(selector.where())
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


# -- retry, bounce, purge -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanGroup:
    account_id: str
    domain: str
    state: str
    recipients: int


@dataclass(frozen=True, slots=True)
class PlannedRecipient:
    id: int
    message_id: str
    account_id: str
    address: str
    state: str
    attempts: int
    next_attempt_at: datetime


@dataclass(frozen=True, slots=True)
class Plan:
    """What a bounce or purge with this selector would change, and what it skips."""

    matched: int
    skipped_sending: int  # claimed by a worker now: left to finish
    groups: list[PlanGroup]
    sample: list[PlannedRecipient]  # the first few, by id


async def plan(
    conn: AsyncConnection[Any], selector: Selector, sample: int = SAMPLE_SIZE
) -> Plan:
    """Describe the recipients a selector matches, without changing anything."""
    where = selector.where()
    cur = await conn.execute(
        sql.SQL(
            "select account_id, domain, state, count(*) from recipients r where {}"
            " group by 1, 2, 3 order by 4 desc, 1, 2, 3"
        ).format(where)
    )
    groups = [PlanGroup(a, d, s, int(n)) for a, d, s, n in await cur.fetchall()]
    cur = await conn.execute(
        sql.SQL(
            "select id, message_id, account_id, address, state, attempts,"
            " next_attempt_at from recipients r where {} order by id limit {}"
        ).format(where, sample)
    )
    planned = [PlannedRecipient(*row) for row in await cur.fetchall()]
    cur = await conn.execute(
        sql.SQL("select count(*) from recipients r where {}").format(
            selector.where(("sending",))
        )
    )
    row = await cur.fetchone()
    return Plan(
        matched=sum(g.recipients for g in groups),
        skipped_sending=int(row[0]) if row else 0,
        groups=groups,
        sample=planned,
    )


async def retry(
    conn: AsyncConnection[Any],
    selector: Selector,
    progress: Progress | None = None,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Make matching recipients that wait for a later attempt due now."""
    ready = sql.SQL("r.next_attempt_at > now() and r.expires_at > now()")
    ids = await _ids(conn, selector, ready)
    done = await _in_batches(
        conn,
        ids,
        sql.SQL(
            "with batch as (select id from recipients r where r.id = any({ids})"
            " and {where} and {ready} for update skip locked)"
            " update recipients r set next_attempt_at = now(), updated_at = now()"
            " from batch where r.id = batch.id"
        ),
        selector,
        {"ready": ready},
        progress,
        batch_size,
    )
    event(log, "queue retried", recipients=done, **selector.describe())
    return done


async def bounce(
    conn: AsyncConnection[Any],
    selector: Selector,
    reason: str | None = None,
    progress: Progress | None = None,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Bounce matching recipients now, with a Bounce event each; return how many."""
    text = "Bounced by the operator" + (f": {reason}" if reason else "")
    detail = orjson.dumps(
        {
            "action": "failed",
            "status": OPERATOR_BOUNCE_STATUS,
            "diagnosticCode": text,
            "remoteMta": None,
        }
    ).decode()
    ids = await _ids(conn, selector)
    done = await _in_batches(
        conn,
        ids,
        sql.SQL(
            "with batch as (select id from recipients r where r.id = any({ids})"
            " and {where} for update skip locked),"
            " bounced as (update recipients r set state = 'bounced',"
            " smtp_code = null, enhanced_status = {status}, response = {text},"
            " lease_until = null, lease_token = null, updated_at = now()"
            " from batch where r.id = batch.id"
            " returning r.id, r.message_id, r.account_id, r.address)"
            " insert into events (account_id, message_id, recipient_id, event_type,"
            " recipient, bounce_type, bounce_subtype, detail)"
            " select account_id, message_id, id, 'bounce', address, {type},"
            " {subtype}, {detail}::jsonb from bounced"
        ),
        selector,
        {
            "status": sql.Literal(OPERATOR_BOUNCE_STATUS),
            "text": sql.Literal(text[:1000]),
            "type": sql.Literal(OPERATOR_BOUNCE_TYPE),
            "subtype": sql.Literal(OPERATOR_BOUNCE_SUBTYPE),
            "detail": sql.Literal(detail),
        },
        progress,
        batch_size,
    )
    event(log, "queue bounced", recipients=done, reason=reason, **selector.describe())
    return done


async def purge(
    conn: AsyncConnection[Any],
    selector: Selector,
    progress: Progress | None = None,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Delete matching recipients without telling the sender; return how many."""
    ids = await _ids(conn, selector)
    done = await _in_batches(
        conn,
        ids,
        sql.SQL(
            "with batch as (select id from recipients r where r.id = any({ids})"
            " and {where} for update skip locked)"
            " delete from recipients r using batch where r.id = batch.id"
        ),
        selector,
        {},
        progress,
        batch_size,
    )
    event(log, "queue purged", logging.WARNING, recipients=done, **selector.describe())
    return done


async def _ids(
    conn: AsyncConnection[Any],
    selector: Selector,
    extra: sql.Composable | None = None,
) -> list[int]:
    """List the ids a selector matches now, in id (roughly heap) order."""
    condition = selector.where()
    if extra is not None:
        condition = sql.SQL("{} and {}").format(condition, extra)
    cur = await conn.execute(
        sql.SQL(
            "select coalesce(array_agg(id order by id), '{{}}') from recipients r"
            " where {}"
        ).format(condition)
    )
    row = await cur.fetchone()
    return list(row[0]) if row else []


async def _in_batches(
    conn: AsyncConnection[Any],
    ids: list[int],
    statement: sql.SQL,
    selector: Selector,
    parts: dict[str, sql.Composable],
    progress: Progress | None,
    batch_size: int,
) -> int:
    """Run a statement once per batch of ids; return the rows it changed."""
    if progress is not None:
        progress.start(len(ids))
    query = statement.format(
        ids=sql.Placeholder("ids"), where=selector.where(), **parts
    )
    done = 0
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        # One statement per batch: atomic on its own, and it re-checks each
        # row's state, so rows claimed since the listing are skipped.
        cur = await conn.execute(query, {"ids": batch})
        done += max(cur.rowcount, 0)
        if progress is not None:
            progress.advance(len(batch))
    return done


# -- one message ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageInfo:
    id: str
    account_id: str
    source: str
    from_domain: str | None
    subject: str | None
    size: int  # bytes of the MIME message as stored
    recipient_count: int
    interface: str
    configuration_set: str | None
    tags: Any
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RecipientInfo:
    id: int
    address: str
    domain: str
    state: str
    attempts: int
    next_attempt_at: datetime | None  # None once final
    expires_at: datetime
    lease_until: datetime | None
    smtp_code: int | None
    enhanced_status: str | None
    response: str | None
    mx_host: str | None
    created_at: datetime
    updated_at: datetime
    suspended: bool  # waiting and its domain or account is suspended


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """A delivery attempt or an event of the message, in time order."""

    time: datetime
    kind: Literal["attempt", "event"]
    name: str  # the attempt's outcome or the event's type
    recipient_id: int | None
    address: str | None
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MessageHistory:
    message: MessageInfo
    recipients: list[RecipientInfo]
    history: list[HistoryEntry]


async def message_history(
    conn: AsyncConnection[Any], message_id: str
) -> MessageHistory | None:
    """Return a message, its recipients and everything that happened to it."""
    cur = await conn.execute(
        "select id, account_id, source, from_domain, subject, octet_length(raw),"
        " recipient_count, interface, configuration_set, tags, created_at"
        " from messages where id = %s",
        (message_id,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    message = MessageInfo(*row)
    cur = await conn.execute(
        "select r.id, r.address, r.domain, r.state, r.attempts,"
        " case when r.state in ('queued', 'deferred') then r.next_attempt_at end,"
        " r.expires_at, r.lease_until, r.smtp_code, r.enhanced_status, r.response,"
        " r.mx_host, r.created_at, r.updated_at,"
        " r.state in ('queued', 'deferred') and exists (select 1 from"
        " delivery_suspensions s where ((s.kind = 'domain' and s.value = r.domain)"
        f" or (s.kind = 'account' and s.value = r.account_id)) and {_ACTIVE})"
        " from recipients r where r.message_id = %s order by r.id",
        (message_id,),
    )
    recipients = [RecipientInfo(*row) for row in await cur.fetchall()]
    addresses = {r.id: r.address for r in recipients}
    history: list[tuple[datetime, int, int, HistoryEntry]] = []
    cur = await conn.execute(
        "select a.id, a.started_at, a.recipient_id, a.attempt, a.outcome, a.mx_host,"
        " a.smtp_code, a.enhanced_status, a.response, a.duration_ms"
        " from delivery_attempts a join recipients r on r.id = a.recipient_id"
        " where r.message_id = %s",
        (message_id,),
    )
    for (
        aid,
        at,
        rid,
        attempt,
        outcome,
        mx,
        code,
        status,
        reply,
        ms,
    ) in await cur.fetchall():
        entry = HistoryEntry(
            at,
            "attempt",
            outcome,
            rid,
            addresses.get(rid),
            {
                "attempt": attempt,
                "mx_host": mx,
                "smtp_code": code,
                "enhanced_status": status,
                "reply": reply,
                "duration_ms": ms,
            },
        )
        # An attempt is listed before the event it led to, written just after.
        history.append((at, 0, aid, entry))
    cur = await conn.execute(
        "select id, created_at, event_type, recipient_id, recipient, bounce_type,"
        " bounce_subtype, detail, feedback_id from events where message_id = %s",
        (message_id,),
    )
    for (
        eid,
        at,
        kind,
        rid,
        address,
        btype,
        subtype,
        detail,
        feedback,
    ) in await cur.fetchall():
        details: dict[str, Any] = {}
        if btype or subtype:
            details["bounce_type"] = btype
            details["bounce_subtype"] = subtype
        if feedback:
            details["feedback_id"] = feedback
        if detail:
            details["detail"] = detail
        entry = HistoryEntry(
            at, "event", kind, rid, address or addresses.get(rid), details
        )
        history.append((at, 1, eid, entry))
    history.sort(key=lambda item: item[:3])
    return MessageHistory(message, recipients, [item[3] for item in history])
