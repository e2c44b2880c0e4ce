"""SESv2 account-level suppression list: add, read, remove and list addresses.

Addresses are stored lower-cased; listings run newest first, as SES shows them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import Field

from api.errors import ApiError
from api.v2.auth import Caller, CallerDep, V2Route, bad_request, error, not_found
from api.v2.models import (
    EmptyResponse,
    SesModel,
    SuppressionListReason,
    decode_page_token,
    encode_page_token,
    epoch,
)
from sesame.suppression_cli import normalize_address

router = APIRouter(route_class=V2Route, tags=["Suppression list"])

# SES pages suppression listings at up to 1,000 entries.
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100

EmailAddressPath = Annotated[
    str,
    Path(
        alias="EmailAddress", min_length=1, description="The address, percent-encoded."
    ),
]
TenantQuery = Annotated[
    str | None,
    Query(alias="TenantName", description="Accepted; Sesame has no tenants."),
]

# A manual entry keeps an automatic one's message and feedback ids only when it
# gives the same reason; a changed reason makes them describe something else.
_UPSERT = (
    "insert into suppressions (account_id, address, reason) values (%s, %s, %s)"
    " on conflict (account_id, address) do update set reason = excluded.reason,"
    " updated_at = now(),"
    " message_id = case when suppressions.reason = excluded.reason"
    " then suppressions.message_id end,"
    " feedback_id = case when suppressions.reason = excluded.reason"
    " then suppressions.feedback_id end"
)


class PutSuppressedDestinationRequest(SesModel):
    """Add an address to the suppression list, or change its reason."""

    email_address: str = Field(description="A bare address.")
    reason: SuppressionListReason = Field(description="BOUNCE or COMPLAINT.")
    tenant_name: Annotated[
        str | None, Field(min_length=1, description="Accepted; Sesame has no tenants.")
    ] = None


class PutSuppressedDestinationResponse(EmptyResponse):
    """The address is suppressed."""


class SuppressedDestinationAttributes(SesModel):
    """The message and report that suppressed an address automatically."""

    message_id: Annotated[
        str | None, Field(description="The message that bounced.")
    ] = None
    feedback_id: Annotated[
        str | None, Field(description="The report that said so.")
    ] = None


class SuppressedDestination(SesModel):
    """An address on the suppression list."""

    email_address: str = Field(description="The address.")
    reason: SuppressionListReason = Field(description="BOUNCE or COMPLAINT.")
    last_update_time: float = Field(description="Added or changed (epoch seconds).")
    attributes: Annotated[
        SuppressedDestinationAttributes | None,
        Field(description="Present when feedback added it."),
    ] = None


class GetSuppressedDestinationResponse(SesModel):
    """One suppressed address."""

    suppressed_destination: SuppressedDestination = Field(description="The entry.")


class DeleteSuppressedDestinationResponse(EmptyResponse):
    """The address may receive mail again."""


class SuppressedDestinationSummary(SesModel):
    """An address in a listing."""

    email_address: str = Field(description="The address.")
    reason: SuppressionListReason = Field(description="BOUNCE or COMPLAINT.")
    last_update_time: float = Field(description="Added or changed (epoch seconds).")


class ListSuppressedDestinationsResponse(SesModel):
    """A page of suppressed addresses, newest first."""

    suppressed_destination_summaries: list[SuppressedDestinationSummary] = Field(
        description="The entries."
    )
    next_token: Annotated[
        str | None, Field(description="Present when more follow.")
    ] = None


@router.put(
    "/suppression/addresses",
    name="PutSuppressedDestination",
    operation_id="PutSuppressedDestination",
    response_model=PutSuppressedDestinationResponse,
)
async def put_suppressed_destination(
    body: PutSuppressedDestinationRequest, call: CallerDep
) -> PutSuppressedDestinationResponse:
    """Suppress an address for the account, or change why it is suppressed."""
    address = _address(body.email_address, bad_request)
    async with call.runtime.pool.connection() as conn:
        await conn.execute(_UPSERT, (call.account.id, address, body.reason))
    return PutSuppressedDestinationResponse()


@router.get(
    "/suppression/addresses/{EmailAddress}",
    name="GetSuppressedDestination",
    operation_id="GetSuppressedDestination",
    response_model=GetSuppressedDestinationResponse,
    response_model_exclude_none=True,
)
async def get_suppressed_destination(
    email_address: EmailAddressPath,
    call: CallerDep,
    tenant_name: TenantQuery = None,
) -> GetSuppressedDestinationResponse:
    """Describe one suppressed address."""
    address = _address(email_address, not_found)
    async with call.runtime.pool.connection() as conn:
        cur = await conn.execute(
            "select reason, updated_at, message_id, feedback_id from suppressions"
            " where account_id = %s and address = %s",
            (call.account.id, address),
        )
        row = await cur.fetchone()
    if row is None:
        raise _absent(address)
    reason, updated_at, message_id, feedback_id = row
    attributes = None
    if message_id or feedback_id:
        attributes = SuppressedDestinationAttributes(
            message_id=message_id, feedback_id=feedback_id
        )
    return GetSuppressedDestinationResponse(
        suppressed_destination=SuppressedDestination(
            email_address=address,
            reason=reason,
            last_update_time=epoch(updated_at),
            attributes=attributes,
        )
    )


@router.delete(
    "/suppression/addresses/{EmailAddress}",
    name="DeleteSuppressedDestination",
    operation_id="DeleteSuppressedDestination",
    response_model=DeleteSuppressedDestinationResponse,
)
async def delete_suppressed_destination(
    email_address: EmailAddressPath,
    call: CallerDep,
    tenant_name: TenantQuery = None,
) -> DeleteSuppressedDestinationResponse:
    """Take an address off the suppression list."""
    address = _address(email_address, not_found)
    async with call.runtime.pool.connection() as conn:
        cur = await conn.execute(
            "delete from suppressions where account_id = %s and address = %s",
            (call.account.id, address),
        )
    if cur.rowcount == 0:
        raise _absent(address)
    return DeleteSuppressedDestinationResponse()


@router.get(
    "/suppression/addresses",
    name="ListSuppressedDestinations",
    operation_id="ListSuppressedDestinations",
    response_model=ListSuppressedDestinationsResponse,
    response_model_exclude_none=True,
)
async def list_suppressed_destinations(
    call: CallerDep,
    reasons: Annotated[
        list[SuppressionListReason] | None,
        Query(alias="Reason", description="Only these reasons (repeat the key)."),
    ] = None,
    start_date: Annotated[
        datetime | None,
        Query(alias="StartDate", description="Updated at or after (ISO 8601)."),
    ] = None,
    end_date: Annotated[
        datetime | None,
        Query(alias="EndDate", description="Updated before (ISO 8601)."),
    ] = None,
    next_token: Annotated[str | None, Query(alias="NextToken")] = None,
    page_size: Annotated[
        int | None, Query(alias="PageSize", ge=0, le=MAX_PAGE_SIZE)
    ] = None,
    tenant_name: TenantQuery = None,
) -> ListSuppressedDestinationsResponse:
    """List suppressed addresses, newest first, a page at a time."""
    limit = page_size or DEFAULT_PAGE_SIZE
    clauses = ["account_id = %s"]
    params: list[Any] = [call.account.id]
    if reasons:
        clauses.append("reason = any(%s)")
        params.append(sorted(set(reasons)))
    if start_date is not None:
        clauses.append("updated_at >= %s")
        params.append(_utc(start_date))
    if end_date is not None:
        clauses.append("updated_at < %s")
        params.append(_utc(end_date))
    after = _position(next_token)
    if after is not None:
        clauses.append("(updated_at < %s or (updated_at = %s and address > %s))")
        params += [after[0], after[0], after[1]]
    params.append(limit + 1)

    rows = await _select(call, clauses, params)
    page = rows[:limit]
    token = None
    if len(rows) > limit:
        last_address, _, last_updated = page[-1]
        token = encode_page_token([last_updated.isoformat(), last_address])
    return ListSuppressedDestinationsResponse(
        suppressed_destination_summaries=[
            SuppressedDestinationSummary(
                email_address=address, reason=reason, last_update_time=epoch(updated)
            )
            for address, reason, updated in page
        ],
        next_token=token,
    )


async def _select(
    call: Caller, clauses: list[str], params: list[Any]
) -> list[tuple[Any, ...]]:
    async with call.runtime.pool.connection() as conn:
        cur = await conn.execute(
            "select address, reason, updated_at from suppressions"
            f" where {' and '.join(clauses)}"
            " order by updated_at desc, address limit %s",
            params,
        )
        return list(await cur.fetchall())


def _address(text: str, failure: Callable[[str], ApiError]) -> str:
    """Return the stored form of an address, or raise ``failure``."""
    try:
        return normalize_address(text)
    except ValueError as exc:
        raise failure(f"Invalid email address <{text}>: {exc}") from None


def _absent(address: str) -> ApiError:
    return not_found(f"Email address {address} is not on the suppression list.")


def _position(token: str | None) -> tuple[datetime, str] | None:
    """Return the (updated_at, address) a NextToken resumes after."""
    code = "InvalidNextTokenException"
    position = decode_page_token(token, code)
    if position is None:
        return None
    try:
        moment, address = position
        return _utc(datetime.fromisoformat(moment)), str(address)
    except (TypeError, ValueError):
        raise error(code, "The NextToken is not valid.") from None


def _utc(moment: datetime) -> datetime:
    """Read a time without a zone as UTC, as SES does."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
