"""Identifiers in the shapes SES clients expect."""

from __future__ import annotations

import secrets
import string
import time
import uuid
from typing import NewType

AccountId = NewType("AccountId", str)
MessageId = NewType("MessageId", str)
RecipientId = NewType("RecipientId", int)

_KEY_ALPHABET = string.ascii_uppercase + "234567"
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"


def new_account_id() -> AccountId:
    """Return a 12-digit account id, like an AWS account number."""
    return AccountId(str(secrets.randbelow(9 * 10**11) + 10**11))


def new_access_key_id() -> str:
    """Return an access key id shaped like AWS's (``AKIA`` + 16 characters)."""
    return "AKIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))


def new_secret_access_key() -> str:
    """Return a 40-character secret access key (238 bits)."""
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40))


def new_message_id(now_ms: int | None = None) -> MessageId:
    """Return a MessageId in SES's format: ``0100`` + ms time + uuid + ``-000000``."""
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    return MessageId(f"0100{now_ms:012x}-{uuid.uuid4()}-000000")


def new_request_id() -> str:
    return str(uuid.uuid4())
