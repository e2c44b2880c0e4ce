"""SESv2 email identities: create, read, list, delete, DKIM and MAIL FROM settings.

Domains get Easy DKIM (three Sesame-held RSA-2048 keys) unless the caller brings
its own key (BYODKIM), which is stored sealed like Sesame's own.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from fastapi import APIRouter, Path, Query
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from pydantic import Field

from api import sending
from api.errors import ApiError
from api.v2.auth import Caller, CallerDep, V2Route, bad_request, error, not_found
from api.v2.models import (
    EmptyResponse,
    SesModel,
    Status,
    Tag,
    decode_blob,
    decode_page_token,
    encode_page_token,
    epoch,
    ses_status,
)
from mta import identities
from mta.delivery import dkim
from mta.identities import Identity, IdentityError
from sesame import crypto
from sesame.log import event

log = logging.getLogger(__name__)

router = APIRouter(route_class=V2Route, tags=["Identities"])
# Routes outside /v2/email: botocore 1.35 sent DKIM signing under /v1/email.
legacy_router = APIRouter(route_class=V2Route, tags=["Identities"])

# SES lists at most 1,000 identities a page; 100 when the caller does not say.
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
# BYODKIM keys: SES takes RSA 1024 or 2048; Ed25519 and up to 4096 bits also sign.
MAX_RSA_BITS = 4096
# RFC 5321 §4.5.3.1: a 64-octet local part, '@', and a 255-octet domain.
MAX_IDENTITY_CHARS = 320

IdentityType = Literal["EMAIL_ADDRESS", "DOMAIN", "MANAGED_DOMAIN"]
KeyLength = Literal["RSA_1024_BIT", "RSA_2048_BIT"]
SigningOrigin = Literal["AWS_SES", "EXTERNAL"]
BehaviorOnMxFailure = Literal["USE_DEFAULT_VALUE", "REJECT_MESSAGE"]
FilterKey = Literal["IDENTITY_NAME_CONTAINS", "IDENTITY_TYPE", "VERIFICATION_STATUS"]

EmailIdentityPath = Annotated[
    str,
    Path(
        alias="EmailIdentity",
        min_length=1,
        description="An address or a domain, percent-encoded.",
    ),
]

_KINDS: dict[str, IdentityType] = {"email_address": "EMAIL_ADDRESS", "domain": "DOMAIN"}


# -- models ------------------------------------------------------------------


class DkimSigningAttributes(SesModel):
    """A key the caller brings (BYODKIM), or the length of the next Easy DKIM key."""

    domain_signing_selector: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=63,
            pattern=r"^(([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9]))$",
            description="The selector the key is published under.",
        ),
    ] = None
    domain_signing_private_key: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=20480,
            description="The private key in base64: DER, or a whole PEM file.",
        ),
    ] = None
    next_signing_key_length: Annotated[
        KeyLength | None,
        Field(description="Accepted; Easy DKIM keys are always RSA-2048."),
    ] = None
    domain_signing_attributes_origin: Annotated[
        str | None,
        Field(description="AWS_SES or EXTERNAL; EXTERNAL when a key is given."),
    ] = None


class DkimAttributes(SesModel):
    """How messages from an identity are DKIM-signed."""

    signing_enabled: bool = Field(description="Whether messages are signed.")
    status: Status = Field(description="Whether the DKIM records were found in DNS.")
    tokens: Annotated[
        list[str] | None,
        Field(description="Selectors of the keys; publish them as DnsRecords shows."),
    ] = None
    signing_attributes_origin: SigningOrigin = Field(
        description="AWS_SES for keys Sesame made, EXTERNAL for a key brought."
    )
    next_signing_key_length: Annotated[
        KeyLength | None, Field(description="Length of the next Easy DKIM key.")
    ] = None
    current_signing_key_length: Annotated[
        KeyLength | None, Field(description="Length of the current Easy DKIM keys.")
    ] = None
    last_key_generation_timestamp: Annotated[
        float | None,
        Field(description="When the current keys were made (epoch seconds)."),
    ] = None


class CreateEmailIdentityRequest(SesModel):
    """Start verifying an address (by mail) or a domain (by DNS)."""

    email_identity: str = Field(
        min_length=1, description="An email address or a domain."
    )
    tags: Annotated[
        list[Tag], Field(description="Accepted; not stored (Tags reads []).")
    ] = []
    dkim_signing_attributes: Annotated[
        DkimSigningAttributes | None,
        Field(description="A domain's own DKIM key (BYODKIM) instead of Easy DKIM."),
    ] = None
    configuration_set_name: Annotated[
        str | None,
        Field(description="Accepted; identities have no default configuration set."),
    ] = None


class CreateEmailIdentityResponse(SesModel):
    """The new identity's type, and a domain's DKIM attributes."""

    identity_type: IdentityType = Field(description="EMAIL_ADDRESS or DOMAIN.")
    verified_for_sending_status: bool = Field(
        description="Whether the identity may send now."
    )
    dkim_attributes: Annotated[
        DkimAttributes | None, Field(description="For domains: the keys to publish.")
    ] = None


class MailFromAttributes(SesModel):
    """The custom MAIL FROM domain of an identity."""

    mail_from_domain: Annotated[
        str | None, Field(description="The MAIL FROM domain.")
    ] = None
    mail_from_domain_status: Annotated[
        Literal["PENDING", "SUCCESS", "FAILED", "TEMPORARY_FAILURE"] | None,
        Field(description="PENDING: Sesame does not check its MX records."),
    ] = None
    behavior_on_mx_failure: Annotated[
        BehaviorOnMxFailure,
        Field(description="What happens when the MX records are gone."),
    ] = "USE_DEFAULT_VALUE"


class VerificationInfo(SesModel):
    """When the identity was last verified."""

    last_success_timestamp: Annotated[
        float | None, Field(description="When verification succeeded (epoch seconds).")
    ] = None


class DnsRecord(SesModel):
    """A DNS record to publish for a domain identity (Sesame's addition)."""

    name: str = Field(description="Owner name of the record.")
    type: str = Field(description="Record type, TXT.")
    value: str = Field(description="Record data.")


class GetEmailIdentityResponse(SesModel):
    """An identity's verification, DKIM and MAIL FROM state."""

    identity_type: IdentityType = Field(description="EMAIL_ADDRESS or DOMAIN.")
    feedback_forwarding_status: bool = Field(
        description="Always true: feedback is forwarded by events."
    )
    verified_for_sending_status: bool = Field(
        description="Whether the identity may send now."
    )
    dkim_attributes: DkimAttributes = Field(description="DKIM signing state.")
    mail_from_attributes: MailFromAttributes = Field(description="MAIL FROM domain.")
    policies: Annotated[
        dict[str, str], Field(description="Always empty: no sending policies.")
    ] = {}
    tags: Annotated[list[Tag], Field(description="Always empty.")] = []
    verification_status: Status = Field(description="Verification state.")
    verification_info: VerificationInfo = Field(description="Verification times.")
    dns_records: Annotated[
        list[DnsRecord],
        Field(
            description="Sesame: records a domain's owner publishes (TXT token, DKIM)."
        ),
    ] = []


class DeleteEmailIdentityResponse(EmptyResponse):
    """The identity is gone."""


class ListEmailIdentitiesRequest(SesModel):
    """One page of the account's identities."""

    filter: Annotated[
        dict[FilterKey, str] | None,
        Field(
            description="IDENTITY_TYPE, VERIFICATION_STATUS, IDENTITY_NAME_CONTAINS."
        ),
    ] = None
    next_token: Annotated[str | None, Field(description="From the previous page.")] = (
        None
    )
    page_size: Annotated[
        int | None,
        Field(ge=0, le=MAX_PAGE_SIZE, description="Identities per page (0: 100)."),
    ] = None


class IdentityInfo(SesModel):
    """One identity in a listing."""

    identity_type: IdentityType = Field(description="EMAIL_ADDRESS or DOMAIN.")
    identity_name: str = Field(description="The address or domain.")
    sending_enabled: bool = Field(description="Whether it may send now.")
    verification_status: Status = Field(description="Verification state.")


class ListEmailIdentitiesResponse(SesModel):
    """A page of identities, in name order."""

    email_identities: list[IdentityInfo] = Field(description="The identities.")
    next_token: Annotated[
        str | None, Field(description="Present when more follow.")
    ] = None


class PutEmailIdentityDkimAttributesRequest(SesModel):
    """Turn DKIM signing on or off for a domain."""

    signing_enabled: Annotated[bool, Field(description="Sign messages from it.")] = (
        False
    )


class PutEmailIdentityDkimAttributesResponse(EmptyResponse):
    """Signing is switched."""


class PutEmailIdentityDkimSigningAttributesRequest(SesModel):
    """Switch a domain between Easy DKIM and a key of its own."""

    signing_attributes_origin: str = Field(
        pattern=r"^(EXTERNAL|AWS_SES(_[A-Z0-9_]+)?)$",
        description="AWS_SES (Sesame's keys) or EXTERNAL (SigningAttributes' key).",
    )
    signing_attributes: Annotated[
        DkimSigningAttributes | None,
        Field(description="The selector and private key, for EXTERNAL."),
    ] = None


class PutEmailIdentityDkimSigningAttributesResponse(SesModel):
    """The domain's DKIM state after the switch."""

    dkim_status: Status = Field(description="PENDING until DNS shows the keys.")
    dkim_tokens: list[str] = Field(description="Selectors of the keys.")


class PutEmailIdentityMailFromAttributesRequest(SesModel):
    """Set or clear the custom MAIL FROM domain."""

    mail_from_domain: Annotated[
        str | None,
        Field(description="A subdomain of the identity's domain; absent clears it."),
    ] = None
    behavior_on_mx_failure: Annotated[
        BehaviorOnMxFailure | None,
        Field(description="Only USE_DEFAULT_VALUE is supported."),
    ] = None


class PutEmailIdentityMailFromAttributesResponse(EmptyResponse):
    """The MAIL FROM domain is stored."""


# -- routes ------------------------------------------------------------------


@router.post(
    "/identities",
    name="CreateEmailIdentity",
    operation_id="CreateEmailIdentity",
    response_model=CreateEmailIdentityResponse,
    response_model_exclude_none=True,
)
async def create_email_identity(
    body: CreateEmailIdentityRequest, call: CallerDep
) -> CreateEmailIdentityResponse:
    """Create an identity: mail a link to an address, or give a domain DKIM keys."""
    kind, name = _parse(body.email_identity, bad_request)
    external = None
    signing = body.dkim_signing_attributes
    if signing is not None and kind == "domain" and _wants_external(signing):
        external = _external_key(
            name, signing.domain_signing_selector, signing.domain_signing_private_key
        )
    runtime, account = call.runtime, call.account

    async with runtime.pool.connection() as conn:
        if await identities.get_identity(conn, account.id, name) is not None:
            raise error(
                "AlreadyExistsException", f"Email identity {name} already exists."
            )
    if kind == "email_address":
        identity = await sending.start_email_verification(
            runtime, call.acceptor, account, name
        )
        return CreateEmailIdentityResponse(
            identity_type="EMAIL_ADDRESS",
            verified_for_sending_status=identity.verification_status == "success",
        )

    async with runtime.pool.connection() as conn:
        async with conn.transaction():
            identity = await identities.create_domain_identity(conn, account.id, name)
            if external is not None:
                await _store_external_key(conn, runtime.box, identity, external)
            else:
                await identities.enable_easy_dkim(conn, runtime.box, identity)
        identity = await _reload(conn, identity)
        attributes = await _dkim_attributes(conn, identity)
    call.acceptor.forget(account.id)
    event(log, "domain identity created", identity_id=identity.id)
    return CreateEmailIdentityResponse(
        identity_type="DOMAIN",
        verified_for_sending_status=identity.verification_status == "success",
        dkim_attributes=attributes,
    )


@router.get(
    "/identities/{EmailIdentity}",
    name="GetEmailIdentity",
    operation_id="GetEmailIdentity",
    response_model=GetEmailIdentityResponse,
    response_model_exclude_none=True,
)
async def get_email_identity(
    email_identity: EmailIdentityPath, call: CallerDep
) -> GetEmailIdentityResponse:
    """Describe an identity, with the DNS records a domain must publish."""
    async with call.runtime.pool.connection() as conn:
        identity = await _load(conn, call, email_identity)
        dkim_attributes = await _dkim_attributes(conn, identity)
        records = await identities.dns_records(conn, identity)
    mail_from = MailFromAttributes()
    if identity.mail_from_domain:
        mail_from = MailFromAttributes(
            mail_from_domain=identity.mail_from_domain,
            mail_from_domain_status="PENDING",
        )
    return GetEmailIdentityResponse(
        identity_type=_KINDS[identity.kind],
        feedback_forwarding_status=True,
        verified_for_sending_status=identity.verification_status == "success",
        dkim_attributes=dkim_attributes,
        mail_from_attributes=mail_from,
        verification_status=ses_status(identity.verification_status),
        verification_info=VerificationInfo(
            last_success_timestamp=(
                epoch(identity.verified_at) if identity.verified_at else None
            )
        ),
        dns_records=[
            DnsRecord(name=r.name, type=r.type, value=r.value) for r in records
        ],
    )


@router.delete(
    "/identities/{EmailIdentity}",
    name="DeleteEmailIdentity",
    operation_id="DeleteEmailIdentity",
    response_model=DeleteEmailIdentityResponse,
)
async def delete_email_identity(
    email_identity: EmailIdentityPath, call: CallerDep
) -> DeleteEmailIdentityResponse:
    """Delete an identity and its DKIM keys."""
    _, name = _parse(email_identity, not_found)
    async with call.runtime.pool.connection() as conn:
        deleted = await identities.delete_identity(conn, call.account.id, name)
    if not deleted:
        raise not_found(f"Email identity {name} does not exist.")
    call.acceptor.forget(call.account.id)
    return DeleteEmailIdentityResponse()


@router.post(
    "/list-identities",
    name="ListEmailIdentities",
    operation_id="ListEmailIdentities",
    response_model=ListEmailIdentitiesResponse,
    response_model_exclude_none=True,
)
async def list_email_identities(
    body: ListEmailIdentitiesRequest, call: CallerDep
) -> ListEmailIdentitiesResponse:
    """List the account's identities a page at a time, in name order."""
    filters = {str(key): value for key, value in (body.filter or {}).items()}
    return await _list(call, filters, body.next_token, body.page_size)


@router.get(
    "/identities",
    name="ListEmailIdentities",
    operation_id="ListEmailIdentitiesByGet",
    response_model=ListEmailIdentitiesResponse,
    response_model_exclude_none=True,
    description="The route botocore used before 1.43.105; same answer as POST.",
)
async def list_email_identities_by_get(
    call: CallerDep,
    next_token: Annotated[str | None, Query(alias="NextToken")] = None,
    page_size: Annotated[
        int | None, Query(alias="PageSize", ge=0, le=MAX_PAGE_SIZE)
    ] = None,
) -> ListEmailIdentitiesResponse:
    """List the account's identities (the older GET form of ListEmailIdentities)."""
    return await _list(call, {}, next_token, page_size)


@router.put(
    "/identities/{EmailIdentity}/dkim",
    name="PutEmailIdentityDkimAttributes",
    operation_id="PutEmailIdentityDkimAttributes",
    response_model=PutEmailIdentityDkimAttributesResponse,
)
async def put_email_identity_dkim_attributes(
    email_identity: EmailIdentityPath,
    body: PutEmailIdentityDkimAttributesRequest,
    call: CallerDep,
) -> PutEmailIdentityDkimAttributesResponse:
    """Turn DKIM signing of a domain on (making Easy DKIM keys if none) or off."""
    unverified = bad_request(
        f"Domain {email_identity} is not verified for DKIM signing."
    )
    try:
        kind, name = identities.parse_identity(email_identity)
    except IdentityError:
        raise unverified from None
    async with call.runtime.pool.connection() as conn:
        identity = await identities.get_identity(conn, call.account.id, name)
        if identity is None or kind != "domain":
            raise unverified
        keys = await identities.dkim_keys(conn, identity.id)
        if body.signing_enabled and not keys:
            await identities.enable_easy_dkim(conn, call.runtime.box, identity)
        else:
            await conn.execute(
                "update identities set dkim_enabled = %s where id = %s",
                (body.signing_enabled, identity.id),
            )
    return PutEmailIdentityDkimAttributesResponse()


async def put_email_identity_dkim_signing_attributes(
    email_identity: EmailIdentityPath,
    body: PutEmailIdentityDkimSigningAttributesRequest,
    call: CallerDep,
) -> PutEmailIdentityDkimSigningAttributesResponse:
    """Sign a domain with Easy DKIM keys, or with the caller's own key."""
    runtime = call.runtime
    async with runtime.pool.connection() as conn:
        identity = await _load(conn, call, email_identity)
        if identity.kind != "domain":
            raise bad_request("DKIM signing can only be configured for a domain.")
        if body.signing_attributes_origin == "EXTERNAL":
            signing = body.signing_attributes or DkimSigningAttributes()
            external = _external_key(
                identity.name,
                signing.domain_signing_selector,
                signing.domain_signing_private_key,
            )
            await _store_external_key(conn, runtime.box, identity, external)
        else:
            async with conn.transaction():
                if identity.dkim_origin == "external":
                    await _drop_keys(conn, identity)
                await identities.enable_easy_dkim(conn, runtime.box, identity)
        identity = await _reload(conn, identity)
        keys = await identities.dkim_keys(conn, identity.id)
    call.acceptor.forget(call.account.id)
    return PutEmailIdentityDkimSigningAttributesResponse(
        dkim_status=ses_status(identity.dkim_status),
        dkim_tokens=[key.selector for key in keys],
    )


for _router, _prefix in ((router, ""), (legacy_router, "/v1/email")):
    _router.add_api_route(
        f"{_prefix}/identities/{{EmailIdentity}}/dkim/signing",
        put_email_identity_dkim_signing_attributes,
        methods=["PUT"],
        name="PutEmailIdentityDkimSigningAttributes",
        operation_id="PutEmailIdentityDkimSigningAttributes"
        + ("V1Path" if _prefix else ""),
        response_model=PutEmailIdentityDkimSigningAttributesResponse,
        deprecated=bool(_prefix),
    )


@router.put(
    "/identities/{EmailIdentity}/mail-from",
    name="PutEmailIdentityMailFromAttributes",
    operation_id="PutEmailIdentityMailFromAttributes",
    response_model=PutEmailIdentityMailFromAttributesResponse,
)
async def put_email_identity_mail_from_attributes(
    email_identity: EmailIdentityPath,
    body: PutEmailIdentityMailFromAttributesRequest,
    call: CallerDep,
) -> PutEmailIdentityMailFromAttributesResponse:
    """Set or clear an identity's custom MAIL FROM domain."""
    if body.behavior_on_mx_failure == "REJECT_MESSAGE":
        # TODO(#6): BehaviorOnMxFailure has no column and Sesame does not look up
        # the MAIL FROM domain's MX; REJECT_MESSAGE is refused meanwhile.
        raise bad_request("BehaviorOnMxFailure REJECT_MESSAGE is not supported.")
    async with call.runtime.pool.connection() as conn:
        identity = await _load(conn, call, email_identity)
        domain = None
        if body.mail_from_domain:
            domain = _mail_from_domain(identity, body.mail_from_domain)
        await conn.execute(
            "update identities set mail_from_domain = %s where id = %s",
            (domain, identity.id),
        )
    return PutEmailIdentityMailFromAttributesResponse()


# -- helpers -----------------------------------------------------------------


def _parse(text: str, failure: Callable[[str], ApiError]) -> tuple[str, str]:
    """Return (kind, stored name) of an identity as written, or raise ``failure``."""
    if len(text) > MAX_IDENTITY_CHARS:
        raise failure(f"An identity is at most {MAX_IDENTITY_CHARS} characters long.")
    kind = "email_address" if "@" in text else "domain"
    try:
        return kind, sending.identity_name(text, kind)
    except ApiError as exc:
        raise failure(exc.message) from None


async def _load(conn: AsyncConnection[Any], call: Caller, text: str) -> Identity:
    """Return the caller's identity named ``text``, or raise NotFoundException."""
    _, name = _parse(text, not_found)
    identity = await identities.get_identity(conn, call.account.id, name)
    if identity is None:
        raise not_found(f"Email identity {name} does not exist.")
    return identity


async def _reload(conn: AsyncConnection[Any], identity: Identity) -> Identity:
    found = await identities.get_identity(conn, identity.account_id, identity.name)
    assert found is not None
    return found


async def _list(
    call: Caller, filters: dict[str, str], token: str | None, page_size: int | None
) -> ListEmailIdentitiesResponse:
    """Return one page of identities matching the ListEmailIdentities filter."""
    limit = page_size or DEFAULT_PAGE_SIZE
    after = decode_page_token(token)
    if after is not None and not isinstance(after, str):
        raise bad_request("The NextToken is not valid.")
    clauses = ["account_id = %s"]
    params: list[Any] = [call.account.id]
    kind = filters.get("IDENTITY_TYPE")
    if kind is not None:
        if kind not in get_args(IdentityType):
            raise bad_request(f"Invalid IDENTITY_TYPE filter <{kind}>.")
        # MANAGED_DOMAIN matches nothing: Sesame has no managed domains.
        clauses.append("kind = %s")
        params.append(kind.lower())
    status = filters.get("VERIFICATION_STATUS")
    if status is not None:
        if status not in get_args(Status):
            raise bad_request(f"Invalid VERIFICATION_STATUS filter <{status}>.")
        clauses.append("verification_status = %s")
        params.append(status.lower())
    contains = filters.get("IDENTITY_NAME_CONTAINS")
    if contains:
        clauses.append("strpos(name, %s) > 0")
        params.append(contains.lower())
    if after is not None:
        clauses.append("name > %s")
        params.append(after)
    params.append(limit + 1)

    async with call.runtime.pool.connection() as conn:
        cur = await conn.execute(
            "select name, kind, verification_status from identities"
            f" where {' and '.join(clauses)} order by name limit %s",
            params,
        )
        rows = await cur.fetchall()
    page = rows[:limit]
    return ListEmailIdentitiesResponse(
        email_identities=[
            IdentityInfo(
                identity_type=_KINDS[kind_],
                identity_name=name,
                sending_enabled=status_ == "success",
                verification_status=ses_status(status_),
            )
            for name, kind_, status_ in page
        ],
        next_token=encode_page_token(page[-1][0]) if len(rows) > limit else None,
    )


async def _dkim_attributes(
    conn: AsyncConnection[Any], identity: Identity
) -> DkimAttributes:
    """Describe a domain's DKIM keys and state as SES's DkimAttributes."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "select selector, created_at from dkim_keys"
        " where identity_id = %s and active order by id",
        (identity.id,),
    )
    keys = await cur.fetchall()
    easy = identity.dkim_origin != "external"
    status = identity.dkim_status if keys or identity.dkim_enabled else "not_started"
    return DkimAttributes(
        signing_enabled=identity.dkim_enabled,
        status=ses_status(status),
        tokens=[key["selector"] for key in keys] or None,
        signing_attributes_origin="AWS_SES" if easy else "EXTERNAL",
        next_signing_key_length="RSA_2048_BIT" if easy else None,
        current_signing_key_length="RSA_2048_BIT" if easy and keys else None,
        last_key_generation_timestamp=(
            epoch(max(key["created_at"] for key in keys)) if keys else None
        ),
    )


@dataclass(frozen=True, slots=True)
class _ExternalKey:
    selector: str
    pem: bytes
    public_key: str
    algorithm: str


def _wants_external(signing: DkimSigningAttributes) -> bool:
    return signing.domain_signing_attributes_origin == "EXTERNAL" or bool(
        signing.domain_signing_private_key or signing.domain_signing_selector
    )


def _external_key(
    domain: str, selector: str | None, private_key: str | None
) -> _ExternalKey:
    """Check a BYODKIM key and return it as Sesame stores and publishes keys."""
    if not selector or not private_key:
        raise bad_request(
            "DomainSigningSelector and DomainSigningPrivateKey are both required"
            " for EXTERNAL signing."
        )
    data = decode_blob(private_key, "DomainSigningPrivateKey")
    invalid = bad_request(
        "DomainSigningPrivateKey must be an unencrypted RSA or Ed25519 private key."
    )
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise invalid from None
    if isinstance(key, rsa.RSAPrivateKey):
        if not dkim.MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise bad_request(
                f"DomainSigningPrivateKey must be an RSA key of {dkim.MIN_RSA_BITS}"
                f" to {MAX_RSA_BITS} bits."
            )
        public = key.public_key().public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        algorithm = dkim.RSA_SHA256
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        # RFC 8463 §4.2: an Ed25519 p= is the bare public key, not an SPKI.
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        algorithm = dkim.ED25519_SHA256
    else:
        raise invalid
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        dkim.load_key(domain, selector, pem)
    except ValueError as exc:
        raise bad_request(f"The DKIM key cannot be used: {exc}.") from None
    return _ExternalKey(selector, pem, base64.b64encode(public).decode(), algorithm)


async def _store_external_key(
    conn: AsyncConnection[Any],
    box: crypto.SecretBox,
    identity: Identity,
    key: _ExternalKey,
) -> None:
    """Replace a domain's keys with the caller's; signing waits for DNS again."""
    async with conn.transaction():
        await _drop_keys(conn, identity)
        await conn.execute(
            "insert into dkim_keys"
            " (identity_id, selector, algorithm, private_key_sealed, public_key)"
            " values (%s, %s, %s, %s, %s)",
            (
                identity.id,
                key.selector,
                key.algorithm,
                box.seal(key.pem, key.selector.encode()),
                key.public_key,
            ),
        )
        await conn.execute(
            "update identities set dkim_enabled = true, dkim_origin = 'external',"
            " dkim_status = 'pending' where id = %s",
            (identity.id,),
        )


async def _drop_keys(conn: AsyncConnection[Any], identity: Identity) -> None:
    """Delete a domain's keys; its DKIM state starts over from pending."""
    await conn.execute("delete from dkim_keys where identity_id = %s", (identity.id,))
    await conn.execute(
        "update identities set dkim_status = 'pending' where id = %s", (identity.id,)
    )


def _mail_from_domain(identity: Identity, text: str) -> str:
    """Return a MAIL FROM domain after checking it is under the identity's domain."""
    try:
        domain = identities.normalize_domain(text)
    except IdentityError as exc:
        raise bad_request(exc.message) from None
    parent = identity.name.rpartition("@")[2]
    if not domain.endswith("." + parent):
        raise bad_request(f"MAIL FROM domain {domain} must be a subdomain of {parent}.")
    return domain
