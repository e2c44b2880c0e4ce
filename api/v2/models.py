"""Pydantic models shared by the SESv2 routes, with SES's field names on the wire.

Fields are snake_case in Python and PascalCase in JSON, as botocore sends them.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_pascal

from api.v2.auth import bad_request, error

# Epoch seconds of 9999-12-31T23:59:59Z: the last instant Python's datetime holds.
MAX_EPOCH = 253_402_300_799
# Our NextTokens hold a name or a (time, address) pair: far below this.
MAX_TOKEN_CHARS = 2048


class SesModel(BaseModel):
    """A model whose JSON names are the SES v2 member names."""

    model_config = ConfigDict(
        alias_generator=to_pascal, validate_by_name=True, validate_by_alias=True
    )


class ErrorResponse(BaseModel):
    """The body of every SES v2 error; ``x-amzn-ErrorType`` names the error."""

    message: str = Field(description="What went wrong, in SES's wording.")


class EmptyResponse(SesModel):
    """An operation that answers with an empty JSON object."""


class Tag(SesModel):
    """A resource tag."""

    key: str = Field(min_length=1, max_length=128, description="The tag's name.")
    value: str = Field(max_length=256, description="The tag's value.")


class MessageTag(SesModel):
    """A message tag, published with the message's events."""

    name: str = Field(description="Tag name: ASCII letters, digits, '_' and '-'.")
    value: str = Field(description="Tag value: ASCII letters, digits, '_' and '-'.")


class MessageHeader(SesModel):
    """A header field added to a message Sesame builds."""

    name: str = Field(
        min_length=1,
        max_length=126,
        pattern=r"^[!-9;-@A-~]+$",
        description="Field name (RFC 5322 ftext).",
    )
    value: str = Field(
        min_length=1,
        max_length=995,
        pattern=r"^[ -~]*$",
        description="Field value, printable ASCII.",
    )


class Destination(SesModel):
    """Recipients of a message; Bcc addresses are not written into it."""

    to_addresses: Annotated[list[str], Field(description="To: addresses.")] = []
    cc_addresses: Annotated[list[str], Field(description="Cc: addresses.")] = []
    bcc_addresses: Annotated[list[str], Field(description="Blind-copy addresses.")] = []


SuppressionListReason = Literal["BOUNCE", "COMPLAINT"]
Status = Literal["PENDING", "SUCCESS", "FAILED", "TEMPORARY_FAILURE", "NOT_STARTED"]


def epoch(moment: datetime) -> float:
    """Return a timestamp as SES v2 writes it in JSON: epoch seconds."""
    return moment.timestamp()


def from_epoch(seconds: float) -> datetime:
    """Return the UTC time of epoch seconds received in a JSON body."""
    return datetime.fromtimestamp(seconds, UTC)


_STATUSES: dict[str, Status] = {status.lower(): status for status in get_args(Status)}


def ses_status(value: str) -> Status:
    """Return an identity or DKIM status as SES v2 spells it."""
    return _STATUSES[value]


def encode_page_token(position: Any) -> str:
    """Return an opaque NextToken that resumes a listing after ``position``."""
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode()


def decode_page_token(token: str | None, code: str = "BadRequestException") -> Any:
    """Return the position a NextToken stands for, or raise ``code``."""
    if token is None:
        return None
    try:
        if len(token) > MAX_TOKEN_CHARS:
            raise ValueError("too long")
        return json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeError, RecursionError):
        raise error(code, "The NextToken is not valid.") from None


def decode_blob(data: str, name: str) -> bytes:
    """Decode a base64 blob member, or raise BadRequestException naming it."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{name} is not valid base64.") from None
