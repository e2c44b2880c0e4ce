"""Secrets at rest: AES-GCM under the settings key, and SES SMTP passwords."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# SES derives SMTP passwords from the secret key with this message and version
# byte (Amazon SES Developer Guide, "Obtaining Amazon SES SMTP credentials").
_SMTP_DATE = "11111111"
_SMTP_SERVICE = "ses"
_SMTP_TERMINAL = "aws4_request"
_SMTP_MESSAGE = "SendRawEmail"
_SMTP_VERSION = b"\x04"


def load_or_create_key(secret_key: str | None, data_dir: Path) -> bytes:
    """Return the 32-byte key that encrypts stored secrets."""
    if secret_key:
        key = base64.b64decode(secret_key)
        if len(key) != 32:
            raise ValueError("SESAME_SECRET_KEY must be 32 bytes, base64-encoded")
        return key
    path = data_dir / "secret.key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64encode(AESGCM.generate_key(bit_length=256)))
    return base64.b64decode(path.read_bytes().strip())


class SecretBox:
    """Encrypt and decrypt small secrets; the associated data binds a row."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, associated: bytes = b"") -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, associated)

    def open(self, sealed: bytes, associated: bytes = b"") -> bytes:
        return self._aead.decrypt(sealed[:12], sealed[12:], associated)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def smtp_password(secret_access_key: str, region: str) -> str:
    """Derive the SES SMTP password for a secret access key in a region."""
    key = _hmac(("AWS4" + secret_access_key).encode(), _SMTP_DATE)
    for part in (region, _SMTP_SERVICE, _SMTP_TERMINAL, _SMTP_MESSAGE):
        key = _hmac(key, part)
    return base64.b64encode(_SMTP_VERSION + key).decode()


def password_digest(password: str) -> bytes:
    """Hash an SMTP password for storage.

    The password is 256 bits of HMAC output, not a human choice, so a fast hash
    gives no guessing advantage and keeps AUTH cheap.
    """
    return hashlib.sha256(password.encode()).digest()


def token_digest(token: str) -> bytes:
    """Hash a verification token for storage; the token itself is only mailed."""
    return hashlib.sha256(token.encode()).digest()
