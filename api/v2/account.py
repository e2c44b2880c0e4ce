"""SESv2 account operations: quota and status, production access, account switches.

A request for production access is stored as the account's details with a
PENDING review; ``sesame account grant-production`` settles it.
"""

from __future__ import annotations

import logging
import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from psycopg.types.json import Jsonb
from pydantic import Field, ValidationError

from api.v2.auth import CallerDep, V2Route, error
from api.v2.models import EmptyResponse, SesModel, SuppressionListReason
from sesame import accounts
from sesame.log import event

log = logging.getLogger(__name__)

router = APIRouter(route_class=V2Route, tags=["Account"])

ReviewStatus = Literal["PENDING", "FAILED", "GRANTED", "DENIED"]
EnforcementStatus = Literal["HEALTHY", "PROBATION", "SHUTDOWN"]

_ENFORCEMENT: dict[str, EnforcementStatus] = {
    "healthy": "HEALTHY",
    "probation": "PROBATION",
    "shutdown": "SHUTDOWN",
}
_REASONS: dict[str, SuppressionListReason] = {
    "BOUNCE": "BOUNCE",
    "COMPLAINT": "COMPLAINT",
}


class SendQuota(SesModel):
    """How much the account may send."""

    max_24_hour_send: float = Field(description="Recipients per rolling 24 hours.")
    max_send_rate: float = Field(description="Recipients per second.")
    sent_last_24_hours: float = Field(description="Recipients in the last 24 hours.")


class SuppressionAttributes(SesModel):
    """Which bounces and complaints add addresses to the suppression list."""

    suppressed_reasons: list[SuppressionListReason] = Field(
        description="BOUNCE and/or COMPLAINT."
    )


class ReviewDetails(SesModel):
    """The state of a request for production access."""

    status: Annotated[
        ReviewStatus | None, Field(description="PENDING until an operator grants it.")
    ] = None
    case_id: Annotated[str | None, Field(description="The request's case number.")] = (
        None
    )


class AccountDetails(SesModel):
    """What the account told Sesame when it asked for production access."""

    mail_type: Annotated[
        Literal["MARKETING", "TRANSACTIONAL"] | None,
        Field(description="The kind of mail sent."),
    ] = None
    website_url: Annotated[
        str | None, Field(alias="WebsiteURL", description="The sender's website.")
    ] = None
    contact_language: Annotated[
        Literal["EN", "JA"] | None, Field(description="Language for contact.")
    ] = None
    use_case_description: Annotated[
        str | None, Field(description="How the account sends mail.")
    ] = None
    additional_contact_email_addresses: Annotated[
        list[str] | None, Field(description="Who else to contact.")
    ] = None
    review_details: Annotated[
        ReviewDetails | None, Field(description="The review of the request.")
    ] = None


class GetAccountResponse(SesModel):
    """The account's quota, status and settings."""

    dedicated_ip_auto_warmup_enabled: Annotated[
        bool, Field(description="Always false: no dedicated IPs.")
    ] = False
    enforcement_status: EnforcementStatus = Field(
        description="PROBATION while under review; SHUTDOWN when paused for it."
    )
    production_access_enabled: bool = Field(description="Out of the sandbox.")
    send_quota: SendQuota = Field(description="Quota and usage.")
    sending_enabled: bool = Field(
        description="Whether the account can send now, all switches considered."
    )
    suppression_attributes: SuppressionAttributes = Field(
        description="Account-level suppression settings."
    )
    details: Annotated[
        AccountDetails | None,
        Field(description="Present once production access was requested."),
    ] = None


class PutAccountDetailsRequest(SesModel):
    """Ask for production access, describing how the account sends."""

    mail_type: Literal["MARKETING", "TRANSACTIONAL"] = Field(
        description="The kind of mail sent."
    )
    website_url: str = Field(
        alias="WebsiteURL",
        min_length=1,
        max_length=1000,
        description="The sender's website.",
    )
    contact_language: Annotated[
        Literal["EN", "JA"] | None, Field(description="Language for contact.")
    ] = None
    use_case_description: Annotated[
        str | None, Field(max_length=5000, description="How the account sends mail.")
    ] = None
    additional_contact_email_addresses: Annotated[
        list[str] | None,
        Field(min_length=1, max_length=4, description="Who else to contact."),
    ] = None
    production_access_enabled: Annotated[
        bool | None, Field(description="Request production access (the default).")
    ] = None


class PutAccountDetailsResponse(EmptyResponse):
    """The request is recorded."""


class PutAccountSendingAttributesRequest(SesModel):
    """Turn the account's sending on or off."""

    sending_enabled: Annotated[
        bool, Field(description="Absent means off, as in SES.")
    ] = False


class PutAccountSendingAttributesResponse(EmptyResponse):
    """Sending is switched."""


class PutAccountSuppressionAttributesRequest(SesModel):
    """Choose which feedback adds addresses to the suppression list."""

    suppressed_reasons: Annotated[
        list[SuppressionListReason] | None,
        Field(description="BOUNCE and/or COMPLAINT; absent or empty: none."),
    ] = None
    validation_attributes: Annotated[
        dict[str, Any] | None, Field(description="Accepted and ignored.")
    ] = None


class PutAccountSuppressionAttributesResponse(EmptyResponse):
    """The reasons are stored."""


@router.get(
    "/account",
    name="GetAccount",
    operation_id="GetAccount",
    response_model=GetAccountResponse,
    response_model_exclude_none=True,
)
async def get_account(call: CallerDep) -> GetAccountResponse:
    """Describe the account: quota, usage, sandbox, enforcement, suppression."""
    async with call.runtime.pool.connection() as conn:
        account = await accounts.get_account(conn, call.account.id)
    assert account is not None
    sent = await call.acceptor.sent_last_24_hours(account.id)
    details = None
    if account.details:
        try:
            details = AccountDetails.model_validate(account.details)
        except ValidationError:
            log.warning("unreadable account details", exc_info=True)
    return GetAccountResponse(
        enforcement_status=_ENFORCEMENT[account.enforcement_status],
        production_access_enabled=account.production,
        send_quota=SendQuota(
            max_24_hour_send=account.max_24_hour_send,
            max_send_rate=account.max_send_rate,
            sent_last_24_hours=float(sent),
        ),
        sending_enabled=account.can_send,
        suppression_attributes=SuppressionAttributes(
            suppressed_reasons=[
                _REASONS[r] for r in account.suppressed_reasons if r in _REASONS
            ]
        ),
        details=details,
    )


@router.post(
    "/account/details",
    name="PutAccountDetails",
    operation_id="PutAccountDetails",
    response_model=PutAccountDetailsResponse,
)
async def put_account_details(
    body: PutAccountDetailsRequest, call: CallerDep
) -> PutAccountDetailsResponse:
    """Record how the account sends and, in the sandbox, ask for production access."""
    for address in body.additional_contact_email_addresses or ():
        if not 6 <= len(address) <= 254 or "@" not in address:
            raise error(
                "BadRequestException", f"Invalid contact email address <{address}>."
            )
    details = body.model_dump(
        by_alias=True, exclude_none=True, exclude={"production_access_enabled"}
    )
    async with call.runtime.pool.connection() as conn:
        async with conn.transaction():
            cur = await conn.execute(
                "select production, details from accounts where id = %s for update",
                (call.account.id,),
            )
            row = await cur.fetchone()
            assert row is not None
            production, current = row
            review = (current or {}).get("ReviewDetails") or {}
            if production:
                details["ReviewDetails"] = {**review, "Status": "GRANTED"}
            elif review.get("Status") == "PENDING":
                raise error(
                    "ConflictException",
                    "A request for production access is already under review.",
                )
            elif body.production_access_enabled is not False:
                case_id = str(secrets.randbelow(9 * 10**9) + 10**9)
                details["ReviewDetails"] = {"Status": "PENDING", "CaseId": case_id}
            await conn.execute(
                "update accounts set details = %s, updated_at = now() where id = %s",
                (Jsonb(details), call.account.id),
            )
    call.acceptor.forget(call.account.id)
    if details.get("ReviewDetails", {}).get("Status") == "PENDING":
        event(
            log,
            "production access requested",
            case_id=details["ReviewDetails"]["CaseId"],
            mail_type=body.mail_type,
        )
    return PutAccountDetailsResponse()


@router.put(
    "/account/sending",
    name="PutAccountSendingAttributes",
    operation_id="PutAccountSendingAttributes",
    response_model=PutAccountSendingAttributesResponse,
)
async def put_account_sending_attributes(
    body: PutAccountSendingAttributesRequest, call: CallerDep
) -> PutAccountSendingAttributesResponse:
    """Turn the account's own sending switch on or off."""
    async with call.runtime.pool.connection() as conn:
        await accounts.update_account(
            conn, call.account.id, sending_enabled=body.sending_enabled
        )
    call.acceptor.forget(call.account.id)
    return PutAccountSendingAttributesResponse()


@router.put(
    "/account/suppression",
    name="PutAccountSuppressionAttributes",
    operation_id="PutAccountSuppressionAttributes",
    response_model=PutAccountSuppressionAttributesResponse,
)
async def put_account_suppression_attributes(
    body: PutAccountSuppressionAttributesRequest, call: CallerDep
) -> PutAccountSuppressionAttributesResponse:
    """Set which bounces and complaints add addresses to the suppression list."""
    reasons = sorted(set(body.suppressed_reasons or ()))
    async with call.runtime.pool.connection() as conn:
        await accounts.update_account(conn, call.account.id, suppressed_reasons=reasons)
    call.acceptor.forget(call.account.id)
    return PutAccountSuppressionAttributesResponse()
