"""The SES v1 actions (API version 2010-12-01), one coroutine per action."""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from api import sending, xml
from api.errors import invalid, missing
from api.query import Params
from mta import identities, statistics
from mta.accept import Acceptor
from mta.identities import IdentityError
from sesame import accounts
from sesame.accounts import Account
from sesame.runtime import Runtime

log = logging.getLogger(__name__)

# SES caps ListIdentities pages at 1,000 items and GetIdentity*Attributes at 100.
MAX_LIST_ITEMS = 1000
MAX_ATTRIBUTE_IDENTITIES = 100


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
    source = p.require("Source")
    to = p.members("Destination.ToAddresses")
    cc = p.members("Destination.CcAddresses")
    bcc = p.members("Destination.BccAddresses")
    reply_to = p.members("ReplyToAddresses")
    subject = p.get("Message.Subject.Data")
    if subject is None:
        raise missing("Message.Subject.Data")
    text = p.get("Message.Body.Text.Data")
    html = p.get("Message.Body.Html.Data")
    if text is None and html is None:
        raise missing("Message.Body")

    submission = await sending.simple_submission(
        call.runtime,
        call.account,
        source=source,
        to=to,
        cc=cc,
        bcc=bcc,
        reply_to=reply_to,
        content=sending.SimpleContent(
            subject=subject,
            subject_charset=p.get("Message.Subject.Charset"),
            text=text,
            text_charset=p.get("Message.Body.Text.Charset"),
            html=html,
            html_charset=p.get("Message.Body.Html.Charset"),
        ),
        return_path=p.get("ReturnPath"),
        configuration_set=p.get("ConfigurationSetName"),
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

    submission = await sending.raw_submission(
        call.runtime,
        call.account,
        data=raw,
        source=p.get("Source"),
        destinations=p.members("Destinations"),
        configuration_set=p.get("ConfigurationSetName"),
        tags=_tags(p),
    )
    return xml.element("MessageId", await call.acceptor.accept(submission))


def _tags(p: Params) -> dict[str, str]:
    return sending.check_tags(
        (item.get("Name", ""), item.get("Value", "")) for item in p.structs("Tags")
    )


# -- identities -------------------------------------------------------------


async def verify_email_identity(call: Call) -> str | None:
    await _start_email_verification(call, call.params.require("EmailAddress"))
    return ""


async def verify_email_address(call: Call) -> str | None:
    await _start_email_verification(call, call.params.require("EmailAddress"))
    return None


async def _start_email_verification(call: Call, address_text: str) -> None:
    address = sending.identity_name(address_text, "email_address")
    await sending.start_email_verification(
        call.runtime, call.acceptor, call.account, address
    )


async def verify_domain_identity(call: Call) -> str | None:
    domain = sending.identity_name(call.params.require("Domain"), "domain")
    async with call.runtime.pool.connection() as conn:
        identity = await identities.create_domain_identity(
            conn, call.account.id, domain
        )
    return xml.element("VerificationToken", identity.verification_token)


async def verify_domain_dkim(call: Call) -> str | None:
    domain = sending.identity_name(call.params.require("Domain"), "domain")
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

# Templates and configuration sets have modules of their own, which use the
# helpers above and add their actions to ACTIONS when imported.
from api import v1_configuration_sets, v1_templates  # noqa: E402, F401, I001
