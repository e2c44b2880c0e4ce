"""Accounts and their credentials: SigV4 access keys and SES-style SMTP logins."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from sesame import crypto, ids
from sesame.ids import AccountId
from sesame.settings import Settings

_COLUMNS = (
    "id, name, production, sending_enabled, paused_by_operator, enforcement_status,"
    " max_24_hour_send, max_send_rate, quota_override, suppressed_reasons, details,"
    " created_at"
)


@dataclass(frozen=True, slots=True)
class Account:
    id: AccountId
    name: str
    production: bool
    sending_enabled: bool
    paused_by_operator: bool
    enforcement_status: str
    max_24_hour_send: float
    max_send_rate: float
    quota_override: bool
    suppressed_reasons: tuple[str, ...]
    details: dict[str, Any] | None
    created_at: datetime

    @property
    def can_send(self) -> bool:
        """Whether the account, the operator and enforcement all allow sending."""
        return (
            self.sending_enabled
            and not self.paused_by_operator
            and self.enforcement_status != "shutdown"
        )


@dataclass(frozen=True, slots=True)
class NewCredentials:
    """Credentials as shown once, at creation; only hashes and ciphertext are kept."""

    access_key_id: str
    secret_access_key: str
    smtp_username: str
    smtp_password: str


def _account(row: dict[str, Any]) -> Account:
    return Account(
        id=AccountId(row["id"]),
        name=row["name"],
        production=row["production"],
        sending_enabled=row["sending_enabled"],
        paused_by_operator=row["paused_by_operator"],
        enforcement_status=row["enforcement_status"],
        max_24_hour_send=row["max_24_hour_send"],
        max_send_rate=row["max_send_rate"],
        quota_override=row["quota_override"],
        suppressed_reasons=tuple(row["suppressed_reasons"]),
        details=row["details"],
        created_at=row["created_at"],
    )


async def create_account(
    conn: AsyncConnection[Any],
    box: crypto.SecretBox,
    settings: Settings,
    name: str,
    production: bool = False,
) -> tuple[Account, NewCredentials]:
    """Create an account with one access key; return it and its credentials."""
    account_id = ids.new_account_id()
    if production:
        quota = (
            settings.production_max_24_hour_send,
            settings.production_max_send_rate,
        )
    else:
        quota = (settings.sandbox_max_24_hour_send, settings.sandbox_max_send_rate)
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "insert into accounts (id, name, production, max_24_hour_send, max_send_rate)"
            f" values (%s, %s, %s, %s, %s) returning {_COLUMNS}",
            (account_id, name, production, *quota),
        )
        row = await cur.fetchone()
        assert row is not None
        credentials = await add_credentials(conn, box, settings, account_id)
    return _account(row), credentials


async def add_credentials(
    conn: AsyncConnection[Any],
    box: crypto.SecretBox,
    settings: Settings,
    account_id: str,
) -> NewCredentials:
    """Issue a new access key for an account."""
    access_key_id = ids.new_access_key_id()
    secret = ids.new_secret_access_key()
    password = crypto.smtp_password(secret, settings.region)
    await conn.execute(
        "insert into credentials"
        " (access_key_id, account_id, secret_sealed, smtp_password_sha256)"
        " values (%s, %s, %s, %s)",
        (
            access_key_id,
            account_id,
            box.seal(secret.encode(), access_key_id.encode()),
            crypto.password_digest(password),
        ),
    )
    return NewCredentials(access_key_id, secret, access_key_id, password)


async def get_account(conn: AsyncConnection[Any], account_id: str) -> Account | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(f"select {_COLUMNS} from accounts where id = %s", (account_id,))
    row = await cur.fetchone()
    return _account(row) if row else None


async def list_accounts(conn: AsyncConnection[Any]) -> list[Account]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(f"select {_COLUMNS} from accounts order by created_at, id")
    return [_account(row) for row in await cur.fetchall()]


async def update_account(
    conn: AsyncConnection[Any], account_id: str, **changes: Any
) -> Account | None:
    """Set the given columns of one account; return the account after the change."""
    allowed = {
        "production",
        "sending_enabled",
        "paused_by_operator",
        "enforcement_status",
        "max_24_hour_send",
        "max_send_rate",
        "quota_override",
        "suppressed_reasons",
        "details",
    }
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"cannot update account columns: {sorted(unknown)}")
    assignments = ", ".join(f"{name} = %s" for name in changes)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"update accounts set {assignments}, updated_at = now() where id = %s"
        f" returning {_COLUMNS}",
        (*changes.values(), account_id),
    )
    row = await cur.fetchone()
    return _account(row) if row else None


async def access_key_secret(
    conn: AsyncConnection[Any], box: crypto.SecretBox, access_key_id: str
) -> tuple[AccountId, str] | None:
    """Return the account and secret of an access key, or None if unknown."""
    cur = await conn.execute(
        "select account_id, secret_sealed from credentials where access_key_id = %s",
        (access_key_id,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    secret = box.open(row[1], access_key_id.encode()).decode()
    return AccountId(row[0]), secret


async def smtp_login(
    conn: AsyncConnection[Any], username: str, password: str
) -> AccountId | None:
    """Return the account whose SMTP credentials these are, or None."""
    cur = await conn.execute(
        "select account_id, smtp_password_sha256 from credentials"
        " where access_key_id = %s",
        (username,),
    )
    row = await cur.fetchone()
    digest = crypto.password_digest(password)
    if row is None:
        # Same work either way, so timing does not reveal which usernames exist.
        hmac.compare_digest(digest, bytes(32))
        return None
    if not hmac.compare_digest(digest, bytes(row[1])):
        return None
    return AccountId(row[0])
