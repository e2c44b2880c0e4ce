"""Render events rows as SES event-publishing JSON (eventType, mail, and one object).

Field names follow the SES Developer Guide's event publishing examples.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.policy import default as _email_policy
from typing import Any

__all__ = [
    "EVENT_TYPES",
    "as_notification",
    "HEADER_FETCH_BYTES",
    "EventRow",
    "MessageRow",
    "event_type_name",
    "iso",
    "parse_headers",
    "render",
]

# events.event_type -> (SES eventType, the key of its event object).
_NAMES: dict[str, tuple[str, str]] = {
    "send": ("Send", "send"),
    "reject": ("Reject", "reject"),
    "delivery": ("Delivery", "delivery"),
    "bounce": ("Bounce", "bounce"),
    "complaint": ("Complaint", "complaint"),
    "delivery_delay": ("DeliveryDelay", "deliveryDelay"),
    "rendering_failure": ("Rendering Failure", "failure"),
}
EVENT_TYPES: tuple[str, ...] = tuple(_NAMES)

# SES truncates the headers of a notification at 10 KB (§7.1 of the notes).
HEADERS_LIMIT = 10 * 1024
# Bytes of messages.raw read to find commonHeaders: the 10 KB SES keeps, plus
# room for From/To/Subject written after a long block of other fields.
HEADER_FETCH_BYTES = 32 * 1024
# Longest field value handed to the stdlib address parser, which is slow on
# long adversarial input; 50 recipients of 254 characters fit comfortably.
_MAX_PARSED_VALUE = 16 * 1024
# The only documented Reject reason: a virus was found.
_DEFAULT_REJECT_REASON = "Bad content"
_LINE = re.compile(rb"\r?\n")
_FIELD_NAME = re.compile(rb"[!-9;-~]+")


@dataclass(frozen=True, slots=True)
class EventRow:
    """One row of ``events``, with the expiry of its recipient if known."""

    id: int
    account_id: str
    message_id: str | None
    recipient_id: int | None
    event_type: str
    recipient: str | None
    bounce_type: str | None
    bounce_subtype: str | None
    detail: Mapping[str, Any] | None
    created_at: datetime
    feedback_id: str | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class MessageRow:
    """What the ``mail`` object needs of a ``messages`` row and its recipients."""

    id: str
    account_id: str
    source: str
    from_domain: str | None
    head: bytes  # the first HEADER_FETCH_BYTES of messages.raw
    raw_size: int  # length of messages.raw, to tell a cut header block
    configuration_set: str | None
    tags: Mapping[str, str] | None
    created_at: datetime
    destination: Sequence[str] = field(default_factory=tuple)


def event_type_name(event_type: str) -> str:
    """Return the SES eventType for an events.event_type value."""
    return _NAMES[event_type][0]


def iso(value: datetime | str | None) -> str | None:
    """Return a time as ISO 8601 in UTC with milliseconds and Z, as SES writes it."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return value  # not ours to fix; pass it through as written
    else:
        when = value
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def render(
    event: EventRow, message: MessageRow | None, *, reporting_mta: str
) -> dict[str, Any]:
    """Build the SES event-publishing record of one event.

    ``reporting_mta`` is our own host name, named where SES names its sending host.
    """
    name, key = _NAMES[event.event_type]
    return {
        "eventType": name,
        "eventId": str(event.id),
        "mail": _mail(event, message),
        key: _OBJECTS[event.event_type](event, _detail(event), reporting_mta),
    }


def as_notification(record: Mapping[str, Any]) -> dict[str, Any]:
    """Turn an event-publishing record into an identity notification.

    SetIdentityNotificationTopic's notifications name their kind in
    notificationType, carry no eventId and no mail tags, and are otherwise the
    same objects (SES Developer Guide, notification contents).
    """
    mail = {k: v for k, v in record["mail"].items() if k != "tags"}
    notification: dict[str, Any] = {"notificationType": record["eventType"]}
    notification["mail"] = mail
    for key, value in record.items():
        if key not in ("eventType", "eventId", "mail"):
            notification[key] = value
    return notification


# -- the mail object ------------------------------------------------------------


def _mail(event: EventRow, message: MessageRow | None) -> dict[str, Any]:
    if message is None:  # deleted since; say what the event row still knows
        return {
            "timestamp": iso(event.created_at),
            "sendingAccountId": event.account_id,
            "messageId": event.message_id,
            "destination": [event.recipient] if event.recipient else [],
        }
    fields, complete = _header_fields(message.head, message.raw_size)
    headers, truncated = _within_limit(fields, complete)
    mail: dict[str, Any] = {
        "timestamp": iso(message.created_at),
        "source": message.source,
        "sendingAccountId": message.account_id,
        "messageId": message.id,
        # A message whose template failed to render has no recipient rows; its
        # rendering_failure event names the destination instead.
        "destination": list(message.destination)
        or list(_detail(event).get("destination") or []),
        "headersTruncated": truncated,
        "headers": [{"name": n, "value": v} for n, v in headers],
        # From the whole fetched block: a long header block still names these.
        "commonHeaders": _common_headers([(n, v) for n, v, _ in fields]),
        "tags": _tags(message),
    }
    return mail


def parse_headers(head: bytes, raw_size: int) -> tuple[list[tuple[str, str]], bool]:
    """Return the unfolded fields within HEADERS_LIMIT, and whether any were cut.

    ``head`` is the start of the message; ``raw_size`` its whole length.
    """
    return _within_limit(*_header_fields(head, raw_size))


def _header_fields(
    head: bytes, raw_size: int
) -> tuple[list[tuple[str, str, int]], bool]:
    """Return (name, unfolded value, raw size) of each field, and if the block ended."""
    end = head.find(b"\r\n\r\n")
    if end >= 0:
        section, complete = head[: end + 2], True
    elif head.startswith((b"\r\n", b"\n")):
        section, complete = b"", True
    else:
        lf = head.find(b"\n\n")
        if lf >= 0:
            section, complete = head[: lf + 1], True
        elif len(head) >= raw_size:
            section, complete = head, True  # a message of headers only
        else:
            # The fetch ended inside the header block: keep whole lines only.
            section, complete = head[: head.rfind(b"\n") + 1], False
    fields: list[tuple[str, str, int]] = []
    for raw_field in _fields(section):
        colon = raw_field.index(b":")
        name = raw_field[:colon].decode("ascii")
        value = _LINE.sub(b"", raw_field[colon + 1 :]).strip(b" \t")
        fields.append((name, value.decode("utf-8", "replace"), len(raw_field)))
    return fields, complete


def _within_limit(
    fields: list[tuple[str, str, int]], complete: bool
) -> tuple[list[tuple[str, str]], bool]:
    """Keep whole fields while they fit in HEADERS_LIMIT; say if any were left out."""
    kept: list[tuple[str, str]] = []
    used = 0
    for name, value, size in fields:
        used += size
        if used > HEADERS_LIMIT:
            return kept, True
        kept.append((name, value))
    return kept, not complete


def _fields(section: bytes) -> list[bytes]:
    """Split a header section into whole fields, continuation lines included."""
    out: list[bytes] = []
    for line in section.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if out:
                out[-1] += line
            continue
        colon = line.find(b":")
        if colon > 0 and _FIELD_NAME.fullmatch(line, 0, colon):
            out.append(line)
        # Anything else is not a field; SES would have refused it at send time.
    return out


def _common_headers(headers: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Return SES's commonHeaders: decoded addresses and subject, raw date and id."""
    first: dict[str, str] = {}
    for name, value in headers:
        first.setdefault(name.lower(), value)
    common: dict[str, Any] = {}
    for header, key in (
        ("from", "from"),
        ("reply-to", "replyTo"),
        ("to", "to"),
        ("cc", "cc"),
        ("bcc", "bcc"),
    ):
        if header in first:
            common[key] = _addresses(header, first[header])
    if "return-path" in first:
        common["returnPath"] = first["return-path"]
    if "date" in first:
        common["date"] = first["date"]
    if "message-id" in first:
        common["messageId"] = first["message-id"]
    if "subject" in first:
        common["subject"] = _decoded(first["subject"])
    return common


def _addresses(name: str, value: str) -> list[str]:
    """Return each mailbox of an address list as ``Name <addr>``, decoded."""
    try:
        parsed = _email_policy.header_factory(name, value[:_MAX_PARSED_VALUE])
        found = [str(a) for a in parsed.addresses if a.addr_spec not in ("", "<>")]
    except Exception:  # the stdlib parser raises on some malformed input
        return [value]
    return found or ([value] if value else [])


def _decoded(value: str) -> str:
    """Return an unstructured value with RFC 2047 encoded-words decoded."""
    try:
        return str(_email_policy.header_factory("subject", value[:_MAX_PARSED_VALUE]))
    except Exception:
        return value


def _tags(message: MessageRow) -> dict[str, list[str]]:
    tags: dict[str, list[str]] = {}
    if message.configuration_set:
        tags["ses:configuration-set"] = [message.configuration_set]
    if message.from_domain:
        tags["ses:from-domain"] = [message.from_domain]
    for name, value in (message.tags or {}).items():
        tags.setdefault(str(name), [str(value)])
    return tags


# -- the event objects ----------------------------------------------------------


def _detail(event: EventRow) -> dict[str, Any]:
    return dict(event.detail) if isinstance(event.detail, Mapping) else {}


def _send(event: EventRow, detail: dict[str, Any], mta: str) -> dict[str, Any]:
    return {}  # SES: always empty


def _reject(event: EventRow, detail: dict[str, Any], mta: str) -> dict[str, Any]:
    return {"reason": detail.get("reason") or _DEFAULT_REJECT_REASON}


def _failure(event: EventRow, detail: dict[str, Any], mta: str) -> dict[str, Any]:
    return {
        "errorMessage": detail.get("errorMessage"),
        "templateName": detail.get("templateName"),
    }


def _delivery(event: EventRow, detail: dict[str, Any], mta: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "timestamp": iso(detail.get("timestamp")) or iso(event.created_at),
        "processingTimeMillis": detail.get("processingTimeMillis"),
        "recipients": [event.recipient] if event.recipient else [],
        "smtpResponse": detail.get("smtpResponse"),
        # SES names its own sending host here; the deliverer's "reportingMTA"
        # is the receiving MX, so it only gives remoteMtaIp when it is an IP.
        "reportingMTA": mta,
    }
    remote = _ip(detail.get("remoteMtaIp")) or _ip(detail.get("reportingMTA"))
    if remote:
        out["remoteMtaIp"] = remote
    return out


def _bounce(event: EventRow, detail: dict[str, Any], mta: str) -> dict[str, Any]:
    recipient = _without_none(
        {
            "emailAddress": event.recipient,
            "action": detail.get("action"),
            "status": detail.get("status"),
            "diagnosticCode": detail.get("diagnosticCode"),
        }
    )
    out: dict[str, Any] = {
        "bounceType": event.bounce_type or "Undetermined",
        "bounceSubType": event.bounce_subtype or "Undetermined",
        "bouncedRecipients": [recipient],
        "timestamp": iso(event.created_at),
        "feedbackId": _feedback_id(event, detail),
        # A DSN names its reporter ("dns; mx.example"); our own bounces are
        # reported by us, as SES reports its own.
        "reportingMTA": detail.get("reportingMTA") or f"dsn; {mta}",
    }
    remote = _ip(detail.get("remoteMtaIp")) or _ip(detail.get("remoteMta"))
    if remote:
        out["remoteMtaIp"] = remote
    return out


def _complaint(event: EventRow, detail: dict[str, Any], mta: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "complainedRecipients": (
            [{"emailAddress": event.recipient}] if event.recipient else []
        ),
        "timestamp": iso(event.created_at),
        "feedbackId": _feedback_id(event, detail),
        "complaintSubType": detail.get("complaintSubType"),
    }
    # SES gives these three only when the complaint carried an ARF report.
    for key in ("userAgent", "complaintFeedbackType", "arrivalDate"):
        if detail.get(key) is not None:
            out[key] = detail[key]
    return out


def _delay(event: EventRow, detail: dict[str, Any], mta: str) -> dict[str, Any]:
    recipient = _without_none(
        {
            "emailAddress": event.recipient,
            "status": detail.get("status"),
            "diagnosticCode": detail.get("diagnosticCode"),
        }
    )
    return _without_none(
        {
            "timestamp": iso(event.created_at),
            "delayType": detail.get("delayType") or "Undetermined",
            "expirationTime": iso(detail.get("expirationTime"))
            or iso(event.expires_at),
            "reportingMTA": detail.get("reportingMTA") or mta,
            "delayedRecipients": [recipient],
        }
    )


_OBJECTS = {
    "send": _send,
    "reject": _reject,
    "delivery": _delivery,
    "bounce": _bounce,
    "complaint": _complaint,
    "delivery_delay": _delay,
    "rendering_failure": _failure,
}


def _feedback_id(event: EventRow, detail: dict[str, Any]) -> str:
    """Return the report's id if the event came from one, else the event's id."""
    given = detail.get("feedbackId") or event.feedback_id
    return str(given) if given else str(event.id)


def _ip(value: Any) -> str | None:
    """Return value if it is an IP address, bracketed or not; else None."""
    if not isinstance(value, str):
        return None
    text = value.strip().strip("[]")
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
