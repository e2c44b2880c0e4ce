"""The SES v1 actions (API version 2010-12-01), one coroutine per action."""

from __future__ import annotations

import base64
import binascii
import email.utils
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from api import xml
from api.errors import ApiError, invalid, missing
from api.query import Params
from mta import identities, message, statistics
from mta.accept import Acceptor, Submission
from mta.identities import IdentityError
from sesame import accounts, ids
from sesame.accounts import Account
from sesame.log import event
from sesame.runtime import Runtime

log = logging.getLogger(__name__)

# SES caps ListIdentities pages at 1,000 items and GetIdentity*Attributes at 100.
MAX_LIST_ITEMS = 1000
MAX_ATTRIBUTE_IDENTITIES = 100
_TAG = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


@dataclass
class Call:
    """One authenticated API call."""

    runtime: Runtime
    acceptor: Acceptor
    account: Account
    params: Params
    request_id: str


Handler = Callable[[Call], Awaitable[str | None]]


# -- sending ----------------------------------------------------------------


async def send_email(call: Call) -> str | None:
    p = call.params
    source_text = p.require("Source")
    source = _address(source_text)
    to = [_address(a) for a in p.members("Destination.ToAddresses")]
    cc = [_address(a) for a in p.members("Destination.CcAddresses")]
    bcc = [_address(a) for a in p.members("Destination.BccAddresses")]
    reply_to = [_address(a) for a in p.members("ReplyToAddresses")]
    subject = p.get("Message.Subject.Data")
    if subject is None:
        raise missing("Message.Subject.Data")
    text = p.get("Message.Body.Text.Data")
    html = p.get("Message.Body.Html.Data")
    if text is None and html is None:
        raise missing("Message.Body")
    return_path = p.get("ReturnPath")
    senders = [(source.address, source_text)]
    if return_path:
        senders.append((_address(return_path).address, return_path))

    message_id = ids.new_message_id()
    try:
        raw = message.build_simple(
            source=source,
            to=to,
            cc=cc,
            reply_to=reply_to,
            subject=subject,
            subject_charset=p.get("Message.Subject.Charset"),
            text=text,
            text_charset=p.get("Message.Body.Text.Charset"),
            html=html,
            html_charset=p.get("Message.Body.Html.Charset"),
        )
        raw = _stamp(raw, _message_id_header(call, message_id))
    except message.MessageError as exc:
        raise ApiError(exc.code, exc.message) from None
    _check_size(call, raw)

    submission = Submission(
        account=call.account,
        message_id=message_id,
        source=source_text,
        senders=senders,
        recipients=_recipients(call, [*to, *cc, *bcc]),
        raw=raw,
        subject=subject,
        from_domain=source.domain,
        interface="api",
        configuration_set=await _configuration_set(call, p.get("ConfigurationSetName")),
        tags=_tags(p),
    )
    return xml.element("MessageId", await call.acceptor.accept(submission))


async def send_raw_email(call: Call) -> str | None:
    p = call.params
    data = p.require("RawMessage.Data")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("RawMessage.Data is not valid base64.") from None
    try:
        parsed = message.parse_raw(
            raw, max_bytes=call.runtime.settings.max_message_bytes
        )
    except message.MessageError as exc:
        raise ApiError(exc.code, exc.message) from None

    source_text = p.get("Source")
    if source_text:
        source = _address(source_text)
    elif parsed.from_:
        source = parsed.from_[0]
        source_text = source.formatted()
    else:
        raise invalid("Missing required header 'From'.")
    senders = [(source.address, source_text)]
    senders += [(a.address, a.formatted()) for a in parsed.from_]
    if parsed.sender:
        senders.append((parsed.sender.address, parsed.sender.formatted()))
    if parsed.return_path:
        senders.append((parsed.return_path.address, parsed.return_path.formatted()))

    destinations = p.members("Destinations")
    if destinations:
        rcpts = [_address(a) for a in destinations]
    else:
        rcpts = message.recipients_of(parsed)
        if not rcpts:
            raise invalid("Missing required header 'To'.")

    message_id = ids.new_message_id()
    try:
        final = message.finalize(
            parsed.raw,
            message_id_header=_message_id_header(call, message_id),
            date=_now(),
        )
    except message.MessageError as exc:
        raise ApiError(exc.code, exc.message) from None
    _check_size(call, final)

    from_domain = parsed.from_[0].domain if parsed.from_ else source.domain
    submission = Submission(
        account=call.account,
        message_id=message_id,
        source=source_text,
        senders=_dedupe(senders),
        recipients=_recipients(call, rcpts),
        raw=final,
        subject=parsed.subject,
        from_domain=from_domain,
        interface="api",
        configuration_set=await _configuration_set(
            call, p.get("ConfigurationSetName") or parsed.configuration_set
        ),
        tags={**parsed.tags, **_tags(p)},
    )
    return xml.element("MessageId", await call.acceptor.accept(submission))


def _address(text: str) -> message.Address:
    try:
        return message.parse_address(text)
    except message.MessageError as exc:
        raise ApiError(exc.code, exc.message) from None


def _recipients(call: Call, addresses: list[message.Address]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for addr in addresses:
        seen.setdefault(addr.address, addr.formatted())
    if not seen:
        raise invalid("Destination must contain at least one recipient address.")
    limit = call.runtime.settings.max_recipients
    if len(seen) > limit:
        raise invalid(f"Recipient count exceeds {limit}.")
    return list(seen.items())


def _dedupe(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for address, written in pairs:
        seen.setdefault(address, written)
    return list(seen.items())


def _check_size(call: Call, raw: bytes) -> None:
    limit = call.runtime.settings.max_message_bytes
    if len(raw) > limit:
        raise invalid(f"Message length is more than {limit} bytes long: '{len(raw)}'.")


def _message_id_header(call: Call, message_id: str) -> str:
    return f"<{message_id}@{call.runtime.settings.hostname}>"


def _stamp(raw: bytes, message_id_header: str) -> bytes:
    """Add Message-ID and Date to a message built here, already in wire form."""
    date = email.utils.format_datetime(_now())
    return f"Message-ID: {message_id_header}\r\nDate: {date}\r\n".encode() + raw


def _now() -> datetime:
    return datetime.now(UTC)


def _tags(p: Params) -> dict[str, str]:
    tags = {}
    for item in p.structs("Tags"):
        name, value = item.get("Name", ""), item.get("Value", "")
        if not _TAG.match(name) or not _TAG.match(value):
            raise invalid(
                f"Invalid tag name <{name}>: only alphanumeric ASCII characters,"
                " '_', '-' are allowed."
            )
        tags[name] = value
    return tags


async def _configuration_set(call: Call, name: str | None) -> str | None:
    if name is None:
        return None
    # TODO(#6): configuration sets are not stored yet; every name is unknown.
    raise ApiError(
        "ConfigurationSetDoesNotExist", f"Configuration set <{name}> does not exist."
    )


# -- identities -------------------------------------------------------------


async def verify_email_identity(call: Call) -> str | None:
    await _start_email_verification(call, call.params.require("EmailAddress"))
    return ""


async def verify_email_address(call: Call) -> str | None:
    await _start_email_verification(call, call.params.require("EmailAddress"))
    return None


async def _start_email_verification(call: Call, address_text: str) -> None:
    address = _identity_name(address_text, "email_address")
    settings = call.runtime.settings
    async with call.runtime.pool.connection() as conn:
        identity, token = await identities.create_email_identity(
            conn, call.account.id, address, settings.verification_ttl_seconds
        )
    if token is None:
        return
    await _send_verification_mail(call, address, token)
    event(
        log,
        "verification requested",
        account_id=call.account.id,
        identity_id=identity.id,
    )


async def _send_verification_mail(call: Call, address: str, token: str) -> None:
    settings = call.runtime.settings
    link = f"{settings.public_url.rstrip('/')}/verify/{token}"
    region = settings.region.upper()
    sender = message.parse_address(
        f"no-reply@{settings.hostname}"
        if "." in settings.hostname
        else "no-reply@localhost.localdomain"
    )
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
    raw = _stamp(raw, _message_id_header(call, message_id))
    await call.acceptor.accept_system(
        Submission(
            account=call.account,
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


async def verify_domain_identity(call: Call) -> str | None:
    domain = _identity_name(call.params.require("Domain"), "domain")
    async with call.runtime.pool.connection() as conn:
        identity = await identities.create_domain_identity(
            conn, call.account.id, domain
        )
    return xml.element("VerificationToken", identity.verification_token)


async def verify_domain_dkim(call: Call) -> str | None:
    domain = _identity_name(call.params.require("Domain"), "domain")
    async with call.runtime.pool.connection() as conn:
        identity = await identities.create_domain_identity(
            conn, call.account.id, domain
        )
        selectors = await identities.enable_easy_dkim(conn, call.runtime.box, identity)
    return xml.text_members("DkimTokens", selectors)


async def list_identities(call: Call) -> str | None:
    p = call.params
    kind = {None: None, "EmailAddress": "email_address", "Domain": "domain"}.get(
        p.get("IdentityType"), "invalid"
    )
    if kind == "invalid":
        raise invalid("IdentityType must be EmailAddress or Domain.")
    limit = p.integer("MaxItems", MAX_LIST_ITEMS) or MAX_LIST_ITEMS
    if not 1 <= limit <= MAX_LIST_ITEMS:
        raise invalid(f"MaxItems must be between 1 and {MAX_LIST_ITEMS}.")
    after = _decode_token(p.get("NextToken"))
    async with call.runtime.pool.connection() as conn:
        rows = await identities.list_identities(
            conn, call.account.id, kind=kind, after=after, limit=limit + 1
        )
    page, more = rows[:limit], len(rows) > limit
    body = xml.text_members("Identities", (i.name for i in page))
    if more:
        body += xml.element("NextToken", _encode_token(page[-1].name))
    return body


async def list_verified_email_addresses(call: Call) -> str | None:
    async with call.runtime.pool.connection() as conn:
        rows = await identities.list_identities(
            conn,
            call.account.id,
            kind="email_address",
            status="success",
            limit=100_000,
        )
    return xml.text_members("VerifiedEmailAddresses", (i.name for i in rows))


async def delete_identity(call: Call) -> str | None:
    await _delete(call, call.params.require("Identity"))
    return ""


async def delete_verified_email_address(call: Call) -> str | None:
    await _delete(call, call.params.require("EmailAddress"))
    return None


async def _delete(call: Call, name_text: str) -> None:
    try:
        _, name = identities.parse_identity(name_text)
    except IdentityError:
        return  # SES answers success for identities that do not exist
    async with call.runtime.pool.connection() as conn:
        await identities.delete_identity(conn, call.account.id, name)
    call.acceptor.forget(call.account.id)


async def get_identity_verification_attributes(call: Call) -> str | None:
    names = _attribute_identities(call)
    async with call.runtime.pool.connection() as conn:
        found = await identities.get_identities(conn, call.account.id, list(names))
    by_name = {i.name: i for i in found}
    items = []
    for name, written in names.items():
        identity = by_name.get(name)
        if identity is None:
            continue
        value = xml.element("VerificationStatus", _STATUS[identity.verification_status])
        if identity.kind == "domain":
            value += xml.element("VerificationToken", identity.verification_token)
        items.append((written, value))
    return xml.entries("VerificationAttributes", items)


async def get_identity_dkim_attributes(call: Call) -> str | None:
    names = _attribute_identities(call)
    async with call.runtime.pool.connection() as conn:
        found = await identities.get_identities(conn, call.account.id, list(names))
        by_name = {i.name: i for i in found}
        items = []
        for name, written in names.items():
            identity = by_name.get(name)
            if identity is None:
                continue
            keys = await identities.dkim_keys(conn, identity.id)
            value = xml.element("DkimEnabled", identity.dkim_enabled)
            value += xml.element(
                "DkimVerificationStatus", _STATUS[identity.dkim_status]
            )
            if keys:
                value += xml.text_members("DkimTokens", (k.selector for k in keys))
            items.append((written, value))
    return xml.entries("DkimAttributes", items)


def _attribute_identities(call: Call) -> dict[str, str]:
    written = call.params.members("Identities")
    if len(written) > MAX_ATTRIBUTE_IDENTITIES:
        raise invalid(
            f"At most {MAX_ATTRIBUTE_IDENTITIES} identities may be requested."
        )
    names: dict[str, str] = {}
    for text in written:
        try:
            names[identities.parse_identity(text)[1]] = text
        except IdentityError:
            continue
    return names


def _identity_name(text: str, kind: str) -> str:
    try:
        if kind == "domain":
            return identities.normalize_domain(text)
        return identities.normalize_address(_address(text).address)
    except IdentityError as exc:
        raise ApiError(exc.code, exc.message) from None


_STATUS = {
    "pending": "Pending",
    "success": "Success",
    "failed": "Failed",
    "temporary_failure": "TemporaryFailure",
    "not_started": "NotStarted",
}


def _encode_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode()


def _decode_token(token: str | None) -> str | None:
    if token is None:
        return None
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise invalid("NextToken is not valid.") from None


# -- account ----------------------------------------------------------------


async def get_send_quota(call: Call) -> str | None:
    account = call.account
    sent = await call.acceptor.sent_last_24_hours(account.id)
    return (
        xml.element("Max24HourSend", float(account.max_24_hour_send))
        + xml.element("MaxSendRate", float(account.max_send_rate))
        + xml.element("SentLast24Hours", float(sent))
    )


async def get_send_statistics(call: Call) -> str | None:
    async with call.runtime.pool.connection() as conn:
        points = await statistics.send_statistics(conn, call.account.id)
    members = (
        xml.element("Timestamp", p.timestamp)
        + xml.element("DeliveryAttempts", p.delivery_attempts)
        + xml.element("Bounces", p.bounces)
        + xml.element("Complaints", p.complaints)
        + xml.element("Rejects", p.rejects)
        for p in points
    )
    return xml.members("SendDataPoints", members)


async def get_account_sending_enabled(call: Call) -> str | None:
    return xml.element("Enabled", call.account.sending_enabled)


async def update_account_sending_enabled(call: Call) -> str | None:
    enabled = call.params.flag("Enabled", default=False)
    async with call.runtime.pool.connection() as conn:
        await accounts.update_account(conn, call.account.id, sending_enabled=enabled)
    call.acceptor.forget(call.account.id)
    return None


ACTIONS: dict[str, Handler] = {
    "SendEmail": send_email,
    "SendRawEmail": send_raw_email,
    "VerifyEmailIdentity": verify_email_identity,
    "VerifyEmailAddress": verify_email_address,
    "VerifyDomainIdentity": verify_domain_identity,
    "VerifyDomainDkim": verify_domain_dkim,
    "ListIdentities": list_identities,
    "ListVerifiedEmailAddresses": list_verified_email_addresses,
    "DeleteIdentity": delete_identity,
    "DeleteVerifiedEmailAddress": delete_verified_email_address,
    "GetIdentityVerificationAttributes": get_identity_verification_attributes,
    "GetIdentityDkimAttributes": get_identity_dkim_attributes,
    "GetSendQuota": get_send_quota,
    "GetSendStatistics": get_send_statistics,
    "GetAccountSendingEnabled": get_account_sending_enabled,
    "UpdateAccountSendingEnabled": update_account_sending_enabled,
}
