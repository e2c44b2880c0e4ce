"""Turn the fields of an SES send into a checked Submission, for the v1 and v2 APIs.

Each protocol parses its own parameters; the message is built, sized and
addressed here, the same way for both, before the one accept path.
"""

from __future__ import annotations

import email.utils
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from api.errors import ApiError, invalid
from mta import configuration_sets, identities, message
from mta.accept import Acceptor, Submission
from mta.configuration_sets import ConfigurationSet
from mta.identities import IdentityError
from sesame import ids
from sesame.accounts import Account
from sesame.log import event
from sesame.runtime import Runtime

log = logging.getLogger(__name__)

# SES's rule for message tag names and values (SendEmail "Tags").
_TAG = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
# Custom header fields that name a sender (RFC 5322 3.6.2, 3.6.6).
_SENDER_FIELDS = frozenset({"sender", "resent-from", "resent-sender"})


@dataclass(frozen=True, slots=True)
class SimpleContent:
    """The parts of a message that Sesame builds: subject, bodies, extras."""

    subject: str
    subject_charset: str | None = None
    text: str | None = None
    text_charset: str | None = None
    html: str | None = None
    html_charset: str | None = None
    headers: Sequence[tuple[str, str]] = ()
    attachments: Sequence[message.Attachment] = field(default_factory=tuple)


async def simple_submission(
    runtime: Runtime,
    account: Account,
    *,
    source: str,
    to: Sequence[str],
    cc: Sequence[str],
    bcc: Sequence[str],
    reply_to: Sequence[str],
    content: SimpleContent,
    return_path: str | None = None,
    configuration_set: str | None = None,
    tags: dict[str, str] | None = None,
) -> Submission:
    """Build the message of a SendEmail and the Submission that carries it."""
    sender = parse_address(source)
    to_addresses = [parse_address(a) for a in to]
    cc_addresses = [parse_address(a) for a in cc]
    bcc_addresses = [parse_address(a) for a in bcc]
    reply_addresses = [parse_address(a) for a in reply_to]
    senders = [(sender.address, source)]
    if return_path:
        senders.append((parse_address(return_path).address, return_path))
    # A custom Sender (or Resent-*) field names who sent the message, as From
    # does, so it must be an own identity too, as in SendRawEmail.
    for name, value in content.headers:
        if name.lower() in _SENDER_FIELDS:
            senders.append((parse_address(value).address, value))

    message_id = ids.new_message_id()
    try:
        raw = message.build_simple(
            source=sender,
            to=to_addresses,
            cc=cc_addresses,
            reply_to=reply_addresses,
            subject=content.subject,
            subject_charset=content.subject_charset,
            text=content.text,
            text_charset=content.text_charset,
            html=content.html,
            html_charset=content.html_charset,
            headers=content.headers,
            attachments=content.attachments,
        )
        raw = stamp(raw, message_id_header(runtime, message_id))
    except message.MessageError as exc:
        raise ApiError(exc.code, exc.message) from None
    check_size(runtime, raw)

    configuration = await resolve_configuration_set(runtime, account, configuration_set)
    return Submission(
        account=account,
        message_id=message_id,
        source=source,
        senders=senders,
        recipients=recipients(runtime, [*to_addresses, *cc_addresses, *bcc_addresses]),
        raw=raw,
        subject=content.subject,
        from_domain=sender.domain,
        interface="api",
        configuration_set=configuration.name if configuration else None,
        tags=dict(tags or {}),
        max_delivery_seconds=_max_delivery_seconds(configuration),
    )


async def raw_submission(
    runtime: Runtime,
    account: Account,
    *,
    data: bytes,
    source: str | None,
    destinations: Sequence[str],
    configuration_set: str | None = None,
    tags: dict[str, str] | None = None,
) -> Submission:
    """Check a caller's MIME message and build the Submission that carries it."""
    try:
        parsed = message.parse_raw(data, max_bytes=runtime.settings.max_message_bytes)
    except message.MessageError as exc:
        raise ApiError(exc.code, exc.message) from None

    if source:
        sender = parse_address(source)
    elif parsed.from_:
        sender = parsed.from_[0]
        source = sender.formatted()
    else:
        raise invalid("Missing required header 'From'.")
    senders = [(sender.address, source)]
    senders += [(a.address, a.formatted()) for a in parsed.from_]
    if parsed.sender:
        senders.append((parsed.sender.address, parsed.sender.formatted()))
    if parsed.return_path:
        senders.append((parsed.return_path.address, parsed.return_path.formatted()))

    if destinations:
        rcpts = [parse_address(a) for a in destinations]
    else:
        rcpts = message.recipients_of(parsed)
        if not rcpts:
            raise invalid("Missing required header 'To'.")

    message_id = ids.new_message_id()
    try:
        final = message.finalize(
            parsed.raw,
            message_id_header=message_id_header(runtime, message_id),
            date=_now(),
        )
    except message.MessageError as exc:
        raise ApiError(exc.code, exc.message) from None
    check_size(runtime, final)

    configuration = await resolve_configuration_set(
        runtime, account, configuration_set or parsed.configuration_set
    )
    return Submission(
        account=account,
        message_id=message_id,
        source=source,
        senders=_dedupe(senders),
        recipients=recipients(runtime, rcpts),
        raw=final,
        subject=parsed.subject,
        from_domain=parsed.from_[0].domain if parsed.from_ else sender.domain,
        interface="api",
        configuration_set=configuration.name if configuration else None,
        tags={**parsed.tags, **(tags or {})},
        max_delivery_seconds=_max_delivery_seconds(configuration),
    )


def parse_address(text: str) -> message.Address:
    """Parse one address as SES does, raising its error on failure."""
    try:
        return message.parse_address(text)
    except message.MessageError as exc:
        raise ApiError(exc.code, exc.message) from None


def recipients(
    runtime: Runtime, addresses: Iterable[message.Address]
) -> list[tuple[str, str]]:
    """Deduplicate recipients, enforcing at least one and the per-message limit."""
    seen: dict[str, str] = {}
    for addr in addresses:
        seen.setdefault(addr.address, addr.formatted())
    if not seen:
        raise invalid("Destination must contain at least one recipient address.")
    limit = runtime.settings.max_recipients
    if len(seen) > limit:
        raise invalid(f"Recipient count exceeds {limit}.")
    return list(seen.items())


def check_size(runtime: Runtime, raw: bytes) -> None:
    """Refuse a message larger than the configured limit, in SES's words."""
    limit = runtime.settings.max_message_bytes
    if len(raw) > limit:
        raise invalid(f"Message length is more than {limit} bytes long: '{len(raw)}'.")


def message_id_header(runtime: Runtime, message_id: str) -> str:
    """Return the Message-ID header value Sesame gives a message."""
    return f"<{message_id}@{runtime.settings.hostname}>"


def stamp(raw: bytes, message_id_header: str) -> bytes:
    """Add Message-ID and Date to a message built here, already in wire form."""
    date = email.utils.format_datetime(_now())
    return f"Message-ID: {message_id_header}\r\nDate: {date}\r\n".encode() + raw


def check_tags(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Return message tags as a dict after checking SES's character rule."""
    tags = {}
    for name, value in pairs:
        if not _TAG.match(name) or not _TAG.match(value):
            raise invalid(
                f"Invalid tag name <{name}>: only alphanumeric ASCII characters,"
                " '_', '-' are allowed."
            )
        tags[name] = value
    return tags


async def resolve_configuration_set(
    runtime: Runtime, account: Account, name: str | None
) -> ConfigurationSet | None:
    """Return the configuration set a send names, None for none, or raise AcceptError."""
    if name is None:
        return None
    async with runtime.pool.connection() as conn:
        return await configuration_sets.resolve(conn, account.id, name)


def _max_delivery_seconds(configuration: ConfigurationSet | None) -> float | None:
    """Return the give-up age a configuration set sets, None for the default."""
    return None if configuration is None else configuration.max_delivery_seconds


def _dedupe(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for address, written in pairs:
        seen.setdefault(address, written)
    return list(seen.items())


def _now() -> datetime:
    return datetime.now(UTC)


# -- identities ---------------------------------------------------------------


def identity_name(text: str, kind: str) -> str:
    """Return the stored form of an address or domain identity, or raise."""
    try:
        if kind == "domain":
            return identities.normalize_domain(text)
        return identities.normalize_address(parse_address(text).address)
    except IdentityError as exc:
        raise ApiError(exc.code, exc.message) from None


async def start_email_verification(
    runtime: Runtime, acceptor: Acceptor, account: Account, address: str
) -> identities.Identity:
    """Create or refresh an address identity and mail it a verification link."""
    settings = runtime.settings
    async with runtime.pool.connection() as conn:
        identity, token = await identities.create_email_identity(
            conn, account.id, address, settings.verification_ttl_seconds
        )
    if token is None:
        return identity
    await _send_verification_mail(runtime, acceptor, account, address, token)
    event(
        log,
        "verification requested",
        account_id=account.id,
        identity_id=identity.id,
    )
    return identity


async def _send_verification_mail(
    runtime: Runtime, acceptor: Acceptor, account: Account, address: str, token: str
) -> None:
    settings = runtime.settings
    link = f"{settings.public_url.rstrip('/')}/verify/{token}"
    region = settings.region.upper()
    sender = message.parse_address(f"no-reply@{settings.hostname}")
    recipient = message.parse_address(address)
    text = (
        f"Dear Sesame customer,\r\n\r\n"
        f"We have received a request to authorize this email address for use with"
        f" Sesame in region {region}. If you requested this verification, please go"
        f" to the following URL to confirm that you are authorized to use this email"
        f" address:\r\n\r\n{link}\r\n\r\n"
        f"Your request will not be processed unless you confirm the address using"
        f" this URL. This link expires 24 hours after your original verification"
        f" request.\r\n\r\nIf you did NOT request to verify this email address, do"
        f" not click on the link.\r\n"
    )
    message_id = ids.new_message_id()
    raw = message.build_simple(
        source=sender,
        to=[recipient],
        cc=[],
        reply_to=[],
        subject=f"Sesame Email Address Verification Request in region {region}",
        subject_charset=None,
        text=text,
        text_charset="UTF-8",
        html=None,
        html_charset=None,
    )
    raw = stamp(raw, message_id_header(runtime, message_id))
    await acceptor.accept_system(
        Submission(
            account=account,
            message_id=message_id,
            source=sender.address,
            senders=[],
            recipients=[(recipient.address, address)],
            raw=raw,
            subject=None,
            from_domain=None,
            interface="system",
        )
    )
