"""Record inbound RFC 3464 DSNs and RFC 5965 ARF reports as events and suppressions.

Reports are attributed through the VERP reverse-path (RFC 5321 4.1.1.2) and
recorded once per recipient, in one transaction each; SMTP is not required.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import orjson
from psycopg_pool import AsyncConnectionPool

from mta import verp
from mta.delivery import outcome
from mta.delivery.outcome import AttemptOutcome, AttemptResult
from mta.feedback.arf import FeedbackReport, parse_arf
from mta.feedback.dsn import (
    DeliveryReport,
    DsnRecipient,
    _field_groups,
    _split_header,
    _text,
    parse_dsn,
)
from sesame.log import event

__all__ = [
    "Attribution",
    "FeedbackRecorder",
    "RecipientOutcome",
    "Recorded",
    "Report",
    "ReportKind",
    "Result",
    "attribute",
    "parse_report",
]

log = logging.getLogger(__name__)

# The outer header block is searched for Message-ID and Date only; real ones are
# a few KiB, and the line cap bounds the work whatever the shape.
_MAX_OUTER_HEADER = 256 * 1024
_MAX_OUTER_LINES = 2_000
# Free-text values stored in event detail; diagnostic texts run to a few
# hundred characters, the recipients table keeps 1000 of a reply too.
_MAX_TEXT = 1000
_MAX_NAME = 255
# A transaction has at most this many envelope recipients worth looking at; the
# MX allows far fewer, callers without SMTP are cut off here.
_MAX_ENVELOPE = 100
# Parsing a report holds the event loop; above this size it runs in a thread.
_THREAD_PARSE_BYTES = 256 * 1024
# mta.verp issues local parts "b-<id>-<mac>"; a failed check on one of those is
# a forgery (or a corrupted token), anything else is just not ours.
_TOKEN_PREFIX = "b-"
# "smtp; 451 ..." in a Diagnostic-Code gives the basic reply code of a delay.
_DIAGNOSTIC_REPLY = re.compile(r"\s*[\w-]+\s*;\s*(4\d\d)(?!\d)", re.ASCII)
# RFC 5321 4.2.2: 450 is the generic "mailbox unavailable, try again" reply.
_DEFAULT_DELAY_REPLY = 450
_IP_SEPARATORS = re.compile(r"[\s()\[\];,]+")
_FEEDBACK_ID_LABEL = b"sesame feedback-id v1\x00"

# A configuration set's suppressed reasons replace the account's, as at delivery.
_RECIPIENT_SQL = (
    "select r.message_id, r.account_id, r.address,"
    " coalesce(c.suppressed_reasons, a.suppressed_reasons)"
    " from recipients r join accounts a on a.id = r.account_id"
    " join messages m on m.id = r.message_id"
    " left join configuration_sets c on c.account_id = m.account_id"
    " and c.name = m.configuration_set where r.id = %s"
)
_EVENT_SQL = (
    "insert into events (account_id, message_id, recipient_id, event_type,"
    " recipient, bounce_type, bounce_subtype, detail, feedback_id)"
    " values (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " on conflict (recipient_id, event_type, feedback_id)"
    " where feedback_id is not null do nothing returning id"
)
# An asynchronous bounce after a 250 ends the recipient; clearing the lease keeps
# a deliverer still holding it from writing another state over this one.
_BOUNCED_SQL = (
    "update recipients set state = 'bounced', lease_token = null,"
    " lease_until = null, updated_at = now()"
    " where id = %s and state in ('delivered', 'sending', 'deferred')"
)
_SUPPRESS_SQL = (
    "insert into suppressions (account_id, address, reason, message_id, feedback_id)"
    " values (%s, %s, %s, %s, %s) on conflict (account_id, address) do update set"
    " reason = excluded.reason, message_id = excluded.message_id,"
    " feedback_id = excluded.feedback_id, updated_at = now()"
)


class ReportKind(StrEnum):
    """What an inbound message turned out to be."""

    DSN = "dsn"
    ARF = "arf"
    UNKNOWN = "unknown"


class Result(StrEnum):
    """What became of one inbound message (the ``result`` metric label)."""

    ATTRIBUTED = "attributed"  # at least one event was written
    FORGED = "forged"  # a token of ours with a wrong MAC
    UNKNOWN = "unknown"  # no token of ours, or no such recipient any more
    UNPARSEABLE = "unparseable"  # neither a DSN nor an ARF report
    IGNORED = "ignored"  # ours, nothing to record: delivered, relayed, duplicate


@dataclass(frozen=True, slots=True)
class Report:
    """A parsed report and the id that makes recording it idempotent."""

    kind: ReportKind
    feedback_id: str
    dsn: DeliveryReport | None = None
    arf: FeedbackReport | None = None

    @property
    def return_paths(self) -> tuple[str, ...]:
        """Addresses in the report that may carry our VERP token, best first."""
        found: tuple[str | None, ...]
        if self.arf is not None:
            found = (self.arf.original_mail_from, self.arf.original_return_path)
        elif self.dsn is not None:
            found = (self.dsn.original_return_path,)
        else:
            found = ()
        return tuple(address for address in found if address)


@dataclass(frozen=True, slots=True)
class Attribution:
    """The recipient rows a report names, or whether a token was forged."""

    recipient_ids: tuple[int, ...]
    forged: bool


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    """What recording a report did for one recipient row."""

    recipient_id: int
    reason: str  # recorded, duplicate, nothing_to_record, no_recipient_row
    account_id: str | None = None
    message_id: str | None = None
    event_type: str | None = None
    bounce_type: str | None = None
    bounce_subtype: str | None = None
    state_changed: bool = False
    suppressed: str | None = None  # the suppression reason written, if any


@dataclass(frozen=True, slots=True)
class Recorded:
    """What became of one inbound message."""

    kind: ReportKind
    result: Result
    reason: str
    feedback_id: str | None = None
    recipients: tuple[RecipientOutcome, ...] = ()


@dataclass(frozen=True, slots=True)
class _Plan:
    """The rows one report means for one recipient."""

    event_type: str
    detail: dict[str, Any]
    bounce_type: str | None = None
    bounce_subtype: str | None = None
    bounce: bool = False
    suppress: str | None = None


class FeedbackRecorder:
    """Attribute reports to recipient rows and record them in PostgreSQL."""

    def __init__(
        self, pool: AsyncConnectionPool, return_path_domain: str, verp_key: bytes
    ) -> None:
        self._pool = pool
        self._domain = return_path_domain.lower()
        self._key = verp_key

    async def process(
        self, data: bytes, envelope_recipients: Sequence[str] = ()
    ) -> Recorded:
        """Parse, attribute and record one inbound message; never raise for input."""
        if len(data) > _THREAD_PARSE_BYTES:
            report = await asyncio.to_thread(parse_report, data)
        else:
            report = parse_report(data)
        if report is None:
            return Recorded(ReportKind.UNKNOWN, Result.UNPARSEABLE, "not_a_report")
        found = attribute(
            envelope_recipients[:_MAX_ENVELOPE],
            report.return_paths,
            self._domain,
            self._key,
        )
        if not found.recipient_ids:
            result = Result.FORGED if found.forged else Result.UNKNOWN
            reason = "bad_token" if found.forged else "no_token"
            return Recorded(report.kind, result, reason, report.feedback_id)
        outcomes = tuple(
            [await self.record(report, rid) for rid in found.recipient_ids]
        )
        if any(o.reason == "recorded" for o in outcomes):
            result, reason = Result.ATTRIBUTED, "recorded"
        elif all(o.reason == "no_recipient_row" for o in outcomes):
            result, reason = Result.UNKNOWN, "no_recipient_row"
        else:
            result = Result.IGNORED
            reason = next(o.reason for o in outcomes if o.reason != "no_recipient_row")
        return Recorded(report.kind, result, reason, report.feedback_id, outcomes)

    async def record(self, report: Report, recipient_id: int) -> RecipientOutcome:
        """Write what a report means for one recipient row, in one transaction."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(_RECIPIENT_SQL, (recipient_id,))
            row = await cur.fetchone()
            if row is None:
                return RecipientOutcome(recipient_id, "no_recipient_row")
            message_id, account_id, address, suppressed_reasons = row
            ids = {"account_id": account_id, "message_id": message_id}
            plan = _plan(report, address)
            if plan is None:
                return RecipientOutcome(recipient_id, "nothing_to_record", **ids)
            cur = await conn.execute(
                _EVENT_SQL,
                (
                    account_id,
                    message_id,
                    recipient_id,
                    plan.event_type,
                    address,
                    plan.bounce_type,
                    plan.bounce_subtype,
                    orjson.dumps(plan.detail).decode(),
                    report.feedback_id,
                ),
            )
            if await cur.fetchone() is None:
                return RecipientOutcome(recipient_id, "duplicate", **ids)
            changed = False
            if plan.bounce:
                cur = await conn.execute(_BOUNCED_SQL, (recipient_id,))
                changed = cur.rowcount == 1
            suppressed = None
            if plan.suppress is not None and plan.suppress in suppressed_reasons:
                await conn.execute(
                    _SUPPRESS_SQL,
                    (
                        account_id,
                        address.lower(),
                        plan.suppress,
                        message_id,
                        report.feedback_id,
                    ),
                )
                suppressed = plan.suppress
        done = RecipientOutcome(
            recipient_id,
            "recorded",
            event_type=plan.event_type,
            bounce_type=plan.bounce_type,
            bounce_subtype=plan.bounce_subtype,
            state_changed=changed,
            suppressed=suppressed,
            **ids,
        )
        event(
            log,
            "feedback recorded",
            account_id=account_id,
            message_id=message_id,
            recipient_id=recipient_id,
            kind=report.kind.value,
            event_type=plan.event_type,
            bounce_type=plan.bounce_type,
            bounce_subtype=plan.bounce_subtype,
            status=plan.detail.get("status"),
            state_changed=changed,
            suppressed=suppressed,
            feedback_id=report.feedback_id,
        )
        return done


def parse_report(data: bytes) -> Report | None:
    """Parse an ARF report or a DSN naming at least one recipient; else None."""
    arf = parse_arf(data)
    if arf is not None:
        material: list[Any] = [
            arf.feedback_type,
            arf.user_agent,
            arf.version,
            arf.arrival_date,
            arf.source_ip,
            list(arf.original_rcpt_to),
            arf.original_mail_from,
            arf.reported_domain,
            arf.original_return_path,
            arf.original_message_id,
        ]
        return Report(ReportKind.ARF, _feedback_id("arf", data, material), arf=arf)
    dsn = parse_dsn(data)
    if dsn is None or not dsn.recipients:
        return None
    material = [
        dsn.reporting_mta,
        dsn.arrival_date,
        [
            [
                r.final_recipient,
                r.original_recipient,
                r.action,
                r.status,
                r.diagnostic_code,
                r.remote_mta,
            ]
            for r in dsn.recipients
        ],
        dsn.original_return_path,
        dsn.original_message_id,
    ]
    return Report(ReportKind.DSN, _feedback_id("dsn", data, material), dsn=dsn)


def attribute(
    envelope_recipients: Iterable[str],
    return_paths: Iterable[str],
    domain: str,
    key: bytes,
) -> Attribution:
    """Find our recipient ids: envelope recipients first, else the report's paths."""
    envelope = list(envelope_recipients)
    paths = list(return_paths)
    ids = _verified(envelope, domain, key)
    if not ids:
        # Return-Path and Original-Mail-From name the same message; one will do.
        ids = _verified(paths, domain, key)[:1]
    if ids:
        return Attribution(tuple(ids), forged=False)
    forged = any(_looks_like_token(a, domain) for a in envelope + paths)
    return Attribution((), forged=forged)


def _verified(addresses: Iterable[str], domain: str, key: bytes) -> list[int]:
    """Return the distinct recipient ids whose tokens verify, in order."""
    ids: list[int] = []
    for address in addresses:
        recipient_id = verp.recipient_id_from(address, domain, key)
        if recipient_id is not None and recipient_id not in ids:
            ids.append(recipient_id)
    return ids


def _looks_like_token(address: str, domain: str) -> bool:
    """Tell whether an address is shaped like one of our return paths."""
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    local, at, got = text.rpartition("@")
    return (
        bool(at)
        and got.rstrip(".").lower() == domain.lower()
        and local[: len(_TOKEN_PREFIX)].lower() == _TOKEN_PREFIX
    )


def _feedback_id(kind: str, data: bytes, material: list[Any]) -> str:
    """Return a stable id for a report: the same report always gets the same id.

    Hops on the way may prepend trace fields, so the hash covers what the
    reporter wrote (its Message-ID, Date and parsed report), not the raw bytes.
    """
    message_id, date = _outer_fields(data)
    payload = orjson.dumps([kind, message_id, date, material])
    return hashlib.sha256(_FEEDBACK_ID_LABEL + payload).hexdigest()[:32]


def _outer_fields(data: bytes) -> tuple[str | None, str | None]:
    """Return the report's own Message-ID and Date fields."""
    end, _ = _split_header(data, 0, min(len(data), _MAX_OUTER_HEADER))
    groups, _ = _field_groups(data[:end], _MAX_OUTER_LINES)
    message_id: str | None = None
    date: str | None = None
    for name, value in groups[0] if groups else ():
        lowered = name.lower()
        if lowered == "message-id" and message_id is None:
            message_id = _text(value)
        elif lowered == "date" and date is None:
            date = _text(value)
    return message_id, date


def _plan(report: Report, address: str) -> _Plan | None:
    """Return the rows a report means for the recipient at address, if any."""
    if report.arf is not None:
        return _complaint(report.arf, report.feedback_id)
    if report.dsn is not None:
        return _delivery_status(report.dsn, report.feedback_id, address)
    return None


def _complaint(arf: FeedbackReport, feedback_id: str) -> _Plan:
    """Plan a complaint; every feedback type but not-spam suppresses."""
    detail = {
        "complaintFeedbackType": arf.feedback_type,
        "userAgent": _clip(arf.user_agent, _MAX_NAME),
        "arrivalDate": _iso_date(arf.arrival_date),
        "feedbackId": feedback_id,
    }
    suppress = None if arf.feedback_type == "not-spam" else "COMPLAINT"
    return _Plan("complaint", detail, suppress=suppress)


def _delivery_status(
    dsn: DeliveryReport, feedback_id: str, address: str
) -> _Plan | None:
    """Plan a bounce or delay from the DSN group about this recipient."""
    group = _pick(dsn.recipients, address)
    if group is None:
        return None
    diagnostic = _clip(group.diagnostic_code, _MAX_TEXT)
    where: dict[str, Any] = {
        "reportingMTA": _clip(dsn.reporting_mta, _MAX_NAME),
        "remoteMta": _clip(group.remote_mta, _MAX_NAME),
    }
    remote_ip = _ip_in(group.remote_mta)
    if remote_ip is not None:
        where["remoteMtaIp"] = remote_ip
    if group.action == "delayed":
        detail = {
            "delayType": _delay_type(group.status, group.diagnostic_code),
            "status": group.status,
            "diagnosticCode": diagnostic,
            **where,
            "feedbackId": feedback_id,
        }
        return _Plan("delivery_delay", detail)
    bounce_type, bounce_subtype = outcome.classify_status(
        group.status, group.diagnostic_code or ""
    )
    # AttemptResult.suppressible is the one rule for which failures prove an
    # address bad; a DSN's failure is judged exactly like a refused RCPT.
    suppressible = AttemptResult(
        outcome=AttemptOutcome.FAILED,
        smtp_code=None,
        enhanced_status=group.status,
        response="",
        mx_host=None,
        bounce_type=bounce_type,
        bounce_subtype=bounce_subtype,
    ).suppressible
    detail = {
        "action": group.action,
        "status": group.status,
        "diagnosticCode": diagnostic,
        **where,
        "feedbackId": feedback_id,
    }
    return _Plan(
        "bounce",
        detail,
        bounce_type=bounce_type,
        bounce_subtype=bounce_subtype,
        bounce=True,
        suppress="BOUNCE" if suppressible else None,
    )


def _pick(recipients: Sequence[DsnRecipient], address: str) -> DsnRecipient | None:
    """Return the failed, else delayed, group for an address; None if delivered.

    Each VERP token names one envelope recipient, so groups naming none of its
    addresses (an alias expanded, a forward) are still about it.
    """
    wanted = address.lower()
    named = [
        r
        for r in recipients
        if wanted
        in ((r.final_recipient or "").lower(), (r.original_recipient or "").lower())
    ]
    for action in ("failed", "delayed"):
        for candidate in named or recipients:
            if candidate.action == action:
                return candidate
    return None


def _delay_type(status: str, diagnostic: str | None) -> str:
    """Return the SES delay type of a delayed DSN group, as for a 4yz reply."""
    match = _DIAGNOSTIC_REPLY.match(diagnostic or "")
    code = int(match[1]) if match else _DEFAULT_DELAY_REPLY
    result = outcome.classify_reply(code, f"{status} {diagnostic or ''}")
    return result.delay_type or "Undetermined"


def _ip_in(text: str | None) -> str | None:
    """Return the first IP address written in a Remote-MTA value, if any."""
    if not text:
        return None
    for token in _IP_SEPARATORS.split(text[:_MAX_NAME]):
        token = token.rstrip(".")
        if token[:5].lower() == "ipv6:":
            token = token[5:]
        try:
            return str(ipaddress.ip_address(token))
        except ValueError:
            continue
    return None


def _iso_date(value: str | None) -> str | None:
    """Return an RFC 5322 date as ISO 8601 with milliseconds, as SES writes it."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value[:_MAX_NAME])
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:  # RFC 5322 3.3: "-0000" means UTC, zone unknown
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.isoformat(timespec="milliseconds")


def _clip(value: str | None, limit: int) -> str | None:
    """Return a value cut to at most limit characters."""
    if value is None:
        return None
    return value if len(value) <= limit else value[: limit - 3] + "..."
