"""VERP return-path tokens: a recipient id plus a truncated HMAC in the local part.

Shape: RFC 5321 local part (at most 64 octets), RFC 4648 base32 alphabet,
RFC 2104 HMAC-SHA256, key derived with RFC 5869 HKDF.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# RFC 4648 section 6 alphabet, lower-cased so tokens survive case-folding MTAs.
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_DIGIT = {c: i for i, c in enumerate(_ALPHABET)}
# Recipient ids are PostgreSQL bigint identities: positive and signed 64-bit.
_MAX_ID = 2**63 - 1
# 10 bytes = 80 bits of MAC, exactly 16 base32 characters with no padding bits,
# so every MAC string is canonical and a one-character change always changes it.
_MAC_BYTES = 10
# 2**63 - 1 needs 13 base32 digits; "b-" + 13 + "-" + 16 = 32 octets, well
# under the RFC 5321 section 4.5.3.1.1 limit of 64.
_TOKEN = re.compile(r"b-([a-z2-7]{1,13})-([a-z2-7]{16})", re.ASCII)
# Longest address worth looking at: 64-octet local part, "@", 255-octet domain,
# plus angle brackets and some surrounding whitespace.
_MAX_ADDRESS = 400
_HKDF_INFO = b"sesame verp return-path v1"
_MAC_LABEL = b"sesame-verp-v1\x00"


def verp_key(secret_key: bytes) -> bytes:
    """Derive the return-path MAC key from the installation's 32-byte secret."""
    if len(secret_key) != 32:
        raise ValueError("the installation secret must be 32 bytes")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
    return hkdf.derive(secret_key)


def return_path(recipient_id: int, domain: str, key: bytes) -> str:
    """Return the MAIL FROM address that names one recipient row."""
    if not 1 <= recipient_id <= _MAX_ID:
        raise ValueError("recipient_id must be a positive signed 64-bit integer")
    if not domain or not domain.isascii() or "@" in domain:
        raise ValueError("domain must be a non-empty ASCII domain name")
    domain = domain.lower()
    return f"b-{_encode_id(recipient_id)}-{_mac(recipient_id, domain, key)}@{domain}"


def recipient_id_from(address: str, domain: str, key: bytes) -> int | None:
    """Return the recipient id in a return-path we issued, or None if it is not ours."""
    if not isinstance(address, str) or len(address) > _MAX_ADDRESS:
        return None
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    # Only ASCII is compared: str.lower() maps some non-ASCII letters (the
    # Kelvin sign, for one) onto ASCII ones, which would let altered tokens pass.
    if not address.isascii() or not domain.isascii():
        return None
    local, at, got_domain = address.rpartition("@")
    if not at or got_domain.lower() != domain.lower():
        return None
    match = _TOKEN.fullmatch(local.lower())
    if match is None:
        return None
    recipient_id = _decode_id(match.group(1))
    if recipient_id is None:
        return None
    expected = _mac(recipient_id, domain.lower(), key)
    if not hmac.compare_digest(expected, match.group(2)):
        return None
    return recipient_id


def _encode_id(value: int) -> str:
    """Write a positive integer in base32 digits, most significant first."""
    digits: list[str] = []
    while value:
        value, rem = divmod(value, 32)
        digits.append(_ALPHABET[rem])
    return "".join(reversed(digits))


def _decode_id(text: str) -> int | None:
    """Read base32 digits back, refusing leading zeros so each id has one token."""
    if text.startswith(_ALPHABET[0]):
        return None
    value = 0
    for char in text:
        value = value * 32 + _DIGIT[char]
    if not 1 <= value <= _MAX_ID:
        return None
    return value


def _mac(recipient_id: int, domain: str, key: bytes) -> str:
    """Compute the truncated, base32-encoded MAC binding an id to a domain."""
    message = _MAC_LABEL + domain.encode("ascii") + b"\x00"
    message += recipient_id.to_bytes(8, "big")
    digest = hmac.new(key, message, hashlib.sha256).digest()[:_MAC_BYTES]
    return base64.b32encode(digest).decode("ascii").lower()
