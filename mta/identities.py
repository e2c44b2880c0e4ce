"""Identities an account may send from: verified addresses and DNS-verified domains.

An address is verified through a single-use link mailed to it; a domain when its
``_amazonses`` TXT token, or one of its DKIM records, is found in DNS.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from sesame import crypto

DKIM_SELECTORS = 3  # as SES's Easy DKIM: three keys, so one can rotate at a time

# SES marks a domain Failed when its token is not found within 72 hours.
DOMAIN_VERIFICATION_WINDOW_SECONDS = 72 * 3600

_COLUMNS = (
    "id, account_id, name, kind, verification_status, verification_token,"
    " verified_at, dkim_enabled, dkim_status, dkim_origin, mail_from_domain, created_at"
)


class IdentityError(Exception):
    """An identity name that cannot be used; carries an SES error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Identity:
    id: int
    account_id: str
    name: str
    kind: str  # email_address | domain
    verification_status: str
    verification_token: str | None
    verified_at: datetime | None
    dkim_enabled: bool
    dkim_status: str
    dkim_origin: str
    mail_from_domain: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DkimKeyRow:
    selector: str
    algorithm: str
    public_key: str
    private_key_sealed: bytes


@dataclass(frozen=True, slots=True)
class DnsRecord:
    name: str
    type: str
    value: str


def _identity(row: dict[str, Any]) -> Identity:
    return Identity(**row)


def normalize_domain(domain: str) -> str:
    """Return a domain as a lower-case A-label without a trailing dot."""
    text = domain.strip().rstrip(".").lower()
    if not text or any(c.isspace() or ord(c) < 32 for c in text) or "@" in text:
        raise IdentityError("InvalidParameterValue", f"Invalid domain name <{domain}>.")
    try:
        ascii_name = text.encode("idna").decode("ascii")
    except UnicodeError:
        raise IdentityError(
            "InvalidParameterValue", f"Invalid domain name <{domain}>."
        ) from None
    labels = ascii_name.split(".")
    if len(labels) < 2 or any(not label or len(label) > 63 for label in labels):
        raise IdentityError("InvalidParameterValue", f"Invalid domain name <{domain}>.")
    return ascii_name


def normalize_address(address: str) -> str:
    """Return an address with its domain as a lower-case A-label."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or any(ord(c) < 33 or ord(c) > 126 for c in local):
        raise IdentityError(
            "InvalidParameterValue", f"Invalid email address <{address}>."
        )
    return f"{local.lower()}@{normalize_domain(domain)}"


def parse_identity(name: str) -> tuple[str, str]:
    """Return (kind, normalised name) for an identity as a client wrote it."""
    if "@" in name:
        return "email_address", normalize_address(name)
    return "domain", normalize_domain(name)


def covered(address: str, verified: frozenset[str]) -> bool:
    """Whether an address is covered by a verified address or (parent) domain."""
    if address in verified:
        return True
    domain = address.rpartition("@")[2]
    labels = domain.split(".")
    return any(".".join(labels[i:]) in verified for i in range(len(labels) - 1))


async def verified_names(conn: AsyncConnection[Any], account_id: str) -> frozenset[str]:
    cur = await conn.execute(
        "select name from identities"
        " where account_id = %s and verification_status = 'success'",
        (account_id,),
    )
    return frozenset(row[0] for row in await cur.fetchall())


async def get_identity(
    conn: AsyncConnection[Any], account_id: str, name: str
) -> Identity | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"select {_COLUMNS} from identities where account_id = %s and name = %s",
        (account_id, name),
    )
    row = await cur.fetchone()
    return _identity(row) if row else None


async def get_identities(
    conn: AsyncConnection[Any], account_id: str, names: list[str]
) -> list[Identity]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"select {_COLUMNS} from identities where account_id = %s and name = any(%s)",
        (account_id, names),
    )
    return [_identity(row) for row in await cur.fetchall()]


async def list_identities(
    conn: AsyncConnection[Any],
    account_id: str,
    kind: str | None = None,
    after: str | None = None,
    limit: int = 1000,
    status: str | None = None,
) -> list[Identity]:
    """Identities in name order, starting after a name (for paging)."""
    clauses = ["account_id = %s"]
    params: list[Any] = [account_id]
    if kind:
        clauses.append("kind = %s")
        params.append(kind)
    if status:
        clauses.append("verification_status = %s")
        params.append(status)
    if after is not None:
        clauses.append("name > %s")
        params.append(after)
    params.append(limit)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"select {_COLUMNS} from identities where {' and '.join(clauses)}"
        " order by name limit %s",
        params,
    )
    return [_identity(row) for row in await cur.fetchall()]


async def delete_identity(
    conn: AsyncConnection[Any], account_id: str, name: str
) -> bool:
    cur = await conn.execute(
        "delete from identities where account_id = %s and name = %s", (account_id, name)
    )
    return cur.rowcount > 0


async def create_email_identity(
    conn: AsyncConnection[Any], account_id: str, address: str, ttl_seconds: int
) -> tuple[Identity, str | None]:
    """Create (or refresh) an address identity; return it and a new link token.

    The token is None when the address is already verified.
    """
    cur = conn.cursor(row_factory=dict_row)
    async with conn.transaction():
        await cur.execute(
            "insert into identities (account_id, name, kind) values (%s, %s, 'email_address')"
            " on conflict (account_id, name) do update set name = excluded.name"
            f" returning {_COLUMNS}",
            (account_id, address),
        )
        row = await cur.fetchone()
        assert row is not None
        identity = _identity(row)
        if identity.verification_status == "success":
            return identity, None
        # 256 bits from the OS CSPRNG; only its hash is stored.
        token = secrets.token_urlsafe(32)
        await conn.execute(
            "insert into verification_tokens (token_sha256, identity_id, expires_at)"
            " values (%s, %s, now() + make_interval(secs => %s))",
            (crypto.token_digest(token), identity.id, ttl_seconds),
        )
    return identity, token


async def confirm_email_identity(
    conn: AsyncConnection[Any], token: str
) -> Identity | None:
    """Verify the address a link token was mailed to; None if unknown, used or expired."""
    cur = conn.cursor(row_factory=dict_row)
    async with conn.transaction():
        await cur.execute(
            "update verification_tokens set used_at = now()"
            " where token_sha256 = %s and used_at is null and expires_at > now()"
            " returning identity_id",
            (crypto.token_digest(token),),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        await cur.execute(
            "update identities set verification_status = 'success', verified_at = now()"
            f" where id = %s returning {_COLUMNS}",
            (row["identity_id"],),
        )
        identity = await cur.fetchone()
    return _identity(identity) if identity else None


async def create_domain_identity(
    conn: AsyncConnection[Any], account_id: str, domain: str
) -> Identity:
    """Create a domain identity with its TXT token, or return the existing one."""
    # SES tokens are 32 random bytes in base64 (44 characters).
    token = base64.b64encode(secrets.token_bytes(32)).decode()
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "insert into identities (account_id, name, kind, verification_token)"
        " values (%s, %s, 'domain', %s)"
        " on conflict (account_id, name) do update set verification_token ="
        " coalesce(identities.verification_token, excluded.verification_token)"
        f" returning {_COLUMNS}",
        (account_id, domain, token),
    )
    row = await cur.fetchone()
    assert row is not None
    return _identity(row)


async def enable_easy_dkim(
    conn: AsyncConnection[Any], box: crypto.SecretBox, identity: Identity
) -> list[str]:
    """Give a domain identity Sesame-held RSA-2048 keys; return their selectors."""
    from mta.delivery import dkim

    existing = await dkim_keys(conn, identity.id)
    if existing:
        return [key.selector for key in existing if key.algorithm == "rsa-sha256"]
    selectors = []
    async with conn.transaction():
        for _ in range(DKIM_SELECTORS):
            # SES's DKIM tokens are 32 lower-case characters; they name the selector.
            selector = base64.b32encode(secrets.token_bytes(20)).decode().lower()
            # Generating an RSA key takes tens of milliseconds of CPU: keep it
            # off the event loop that serves other requests.
            pem, public = await asyncio.to_thread(dkim.generate_rsa_key, 2048)
            await conn.execute(
                "insert into dkim_keys"
                " (identity_id, selector, algorithm, private_key_sealed, public_key)"
                " values (%s, %s, 'rsa-sha256', %s, %s)",
                (identity.id, selector, box.seal(pem, selector.encode()), public),
            )
            selectors.append(selector)
        await conn.execute(
            "update identities set dkim_enabled = true, dkim_origin = 'aws_ses',"
            " dkim_status = case when dkim_status = 'success' then 'success'"
            " else 'pending' end where id = %s",
            (identity.id,),
        )
    return selectors


async def add_ed25519_key(
    conn: AsyncConnection[Any], box: crypto.SecretBox, identity: Identity
) -> str:
    """Give a DKIM domain a second, Ed25519 key (RFC 8463); return its selector.

    Messages are then signed twice: receivers that know Ed25519 check that
    signature, the others the RSA one.
    """
    from mta.delivery import dkim

    for key in await dkim_keys(conn, identity.id):
        if key.algorithm == "ed25519-sha256":
            return key.selector
    selector = "ed" + base64.b32encode(secrets.token_bytes(15)).decode().lower()
    pem, public = dkim.generate_ed25519_key()
    await conn.execute(
        "insert into dkim_keys"
        " (identity_id, selector, algorithm, private_key_sealed, public_key)"
        " values (%s, %s, 'ed25519-sha256', %s, %s)",
        (identity.id, selector, box.seal(pem, selector.encode()), public),
    )
    return selector


async def dkim_keys(conn: AsyncConnection[Any], identity_id: int) -> list[DkimKeyRow]:
    cur = await conn.execute(
        "select selector, algorithm, public_key, private_key_sealed from dkim_keys"
        " where identity_id = %s and active order by id",
        (identity_id,),
    )
    return [DkimKeyRow(r[0], r[1], r[2], bytes(r[3])) for r in await cur.fetchall()]


async def dns_records(
    conn: AsyncConnection[Any], identity: Identity
) -> list[DnsRecord]:
    """The records a domain's owner publishes for verification and DKIM."""
    from mta.delivery import dkim

    if identity.kind != "domain":
        return []
    records = []
    if identity.verification_token:
        records.append(
            DnsRecord(f"_amazonses.{identity.name}", "TXT", identity.verification_token)
        )
    for key in await dkim_keys(conn, identity.id):
        records.append(
            DnsRecord(
                f"{key.selector}._domainkey.{identity.name}",
                "TXT",
                dkim.dns_record(key.public_key, key.algorithm),
            )
        )
    return records


async def pending_domains(conn: AsyncConnection[Any]) -> list[Identity]:
    """Domains whose verification or DKIM records are still being looked for."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"select {_COLUMNS} from identities where kind = 'domain' and ("
        " verification_status in ('pending', 'temporary_failure')"
        " or (dkim_enabled and dkim_status in ('pending', 'temporary_failure')))"
        " order by last_checked_at nulls first limit 1000"
    )
    return [_identity(row) for row in await cur.fetchall()]


async def check_domain(
    conn: AsyncConnection[Any], resolver: Any, identity: Identity
) -> tuple[str, str]:
    """Look a domain's records up; return its (verification, DKIM) status.

    Raises the resolver's temporary error when DNS cannot answer.
    """
    status, dkim_status = identity.verification_status, identity.dkim_status
    if status != "success" and identity.verification_token:
        found = await resolver.txt(f"_amazonses.{identity.name}") or []
        if identity.verification_token in found:
            status = "success"
    if identity.dkim_enabled and dkim_status != "success":
        keys = await dkim_keys(conn, identity.id)
        published = 0
        for key in keys:
            found = (
                await resolver.txt(f"{key.selector}._domainkey.{identity.name}") or []
            )
            if any(f"p={key.public_key}" in value.replace(" ", "") for value in found):
                published += 1
        if keys and published == len(keys):
            dkim_status = "success"
            status = "success"  # as SES: published DKIM records also prove ownership
    age = (
        datetime.now(identity.created_at.tzinfo) - identity.created_at
    ).total_seconds()
    if age > DOMAIN_VERIFICATION_WINDOW_SECONDS:
        status = "failed" if status != "success" else status
        dkim_status = (
            "failed" if dkim_status not in ("success", "not_started") else dkim_status
        )
    return status, dkim_status


async def record_domain_check(
    conn: AsyncConnection[Any], identity: Identity, status: str, dkim_status: str
) -> None:
    await conn.execute(
        "update identities set verification_status = %s, dkim_status = %s,"
        " last_checked_at = now(),"
        " verified_at = case when %s = 'success' then coalesce(verified_at, now())"
        " else verified_at end where id = %s",
        (status, dkim_status, status, identity.id),
    )
