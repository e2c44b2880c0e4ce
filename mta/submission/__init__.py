"""Message submission (RFC 6409) over SMTP with STARTTLS (RFC 3207) and AUTH (RFC 4954).

Also the raw-message rules that SMTP shares with the API's SendRawEmail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mta import message
from mta.accept import AcceptError, Submission
from sesame import ids
from sesame.accounts import Account
from sesame.ids import MessageId
from sesame.settings import Settings

__all__ = ["Limits", "SMTP_MAX_MESSAGE_BYTES", "build_raw_submission"]

# SES's SMTP interface takes messages up to 40 MB (SES quotas page); SES's own EHLO
# advertised SIZE 10485760 when the limit was 10 MB, so the same form is kept.
SMTP_MAX_MESSAGE_BYTES = 40 * 1024 * 1024

_DATE_FIELD = re.compile(rb"(?im)^date[ \t]*:")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one submission session may do; defaults follow SES and Postfix."""

    max_message_bytes: int = SMTP_MAX_MESSAGE_BYTES
    max_recipients: int = 50  # SES: 50 per message across To, Cc and Bcc
    # RFC 5321 4.5.3.2.7: a server should wait at least 5 minutes for a command.
    idle_seconds: float = 300.0
    # A deadline no activity resets, so a trickling client cannot stay forever.
    session_seconds: float = 1800.0
    # Each command at most this often per session (aiosmtpd command_call_limit);
    # MAIL and DATA therefore bound the messages per session.
    commands_per_session: int = 1000
    # HELO, EHLO, AUTH, STARTTLS: a client needs one or two of each.
    greetings_per_session: int = 20
    auth_failures: int = 5  # failures per client IP or username ...
    auth_failure_window_seconds: int = 600  # ... within this window, then 454
    max_connections: int = 1000  # per listener, then 421 at connect

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Limits:
        """Return the limits for these settings, with some replaced."""
        values: dict[str, Any] = {
            "max_message_bytes": settings.smtp_max_message_bytes,
            "max_recipients": settings.max_recipients,
            "idle_seconds": settings.smtp_idle_timeout_seconds,
            "session_seconds": settings.smtp_session_timeout_seconds,
            "commands_per_session": settings.smtp_commands_per_session,
            "auth_failures": settings.smtp_auth_failures,
            "auth_failure_window_seconds": settings.smtp_auth_failure_window_seconds,
            "max_connections": settings.smtp_max_connections,
        }
        values.update(overrides)
        return cls(**values)


def build_raw_submission(
    parsed: message.ParsedMessage,
    *,
    account: Account,
    settings: Settings,
    interface: str,
    source: message.Address | None,
    source_text: str | None,
    recipients: list[message.Address],
    max_recipients: int,
    max_bytes: int,
    configuration_set: str | None = None,
    tags: dict[str, str] | None = None,
    message_id: MessageId | None = None,
    now: datetime | None = None,
    keep_date: bool = False,
) -> Submission:
    """Build the Submission for a parsed raw message; raise AcceptError if invalid.

    The senders to check are the envelope source, every From, Sender and
    Return-Path; recipients are the envelope ones when given, else the headers'.
    Message-ID is always Sesame's; Date is replaced unless keep_date and present.
    """
    if source is None:
        if not parsed.from_:
            raise AcceptError(
                "InvalidParameterValue", "Missing required header 'From'."
            )
        source = parsed.from_[0]
        source_text = source.formatted()
    senders = [(source.address, source_text or source.formatted())]
    senders += [(a.address, a.formatted()) for a in parsed.from_]
    if parsed.sender:
        senders.append((parsed.sender.address, parsed.sender.formatted()))
    if parsed.return_path:
        senders.append((parsed.return_path.address, parsed.return_path.formatted()))

    if not recipients:
        recipients = message.recipients_of(parsed)
        if not recipients:
            raise AcceptError("InvalidParameterValue", "Missing required header 'To'.")
    unique = _dedupe([(a.address, a.formatted()) for a in recipients])
    if len(unique) > max_recipients:
        raise AcceptError(
            "InvalidParameterValue", f"Recipient count exceeds {max_recipients}."
        )

    message_id = message_id or ids.new_message_id()
    date: datetime | None = now or datetime.now(UTC)
    if keep_date and _has_date(parsed.raw):
        date = None  # finalize keeps the message's own Date
    final = message.finalize(
        parsed.raw,
        message_id_header=f"<{message_id}@{settings.hostname}>",
        date=date,
    )
    if len(final) > max_bytes:
        raise AcceptError(
            "InvalidParameterValue",
            f"Message length is more than {max_bytes} bytes long: '{len(final)}'.",
        )
    return Submission(
        account=account,
        message_id=message_id,
        source=source_text or source.formatted(),
        senders=_dedupe(senders),
        recipients=unique,
        raw=final,
        subject=parsed.subject,
        from_domain=parsed.from_[0].domain if parsed.from_ else source.domain,
        interface=interface,
        configuration_set=configuration_set or parsed.configuration_set,
        tags={**parsed.tags, **(tags or {})},
    )


def _has_date(raw: bytes) -> bool:
    """Say whether the header section (raw is CRLF-normalised) has a Date field."""
    if raw.startswith(b"\r\n"):
        return False
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[: end + 2]
    return _DATE_FIELD.search(b"\r\n" + head) is not None


def _dedupe(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for address, written in pairs:
        seen.setdefault(address, written)
    return list(seen.items())
