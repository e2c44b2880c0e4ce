"""DKIM signing (RFC 6376) with rsa-sha256 (RFC 8301) and ed25519-sha256 (RFC 8463).

Canonicalisation is relaxed/relaxed on raw bytes; keys are loaded once into OpenSSL.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

__all__ = [
    "SIGNED_HEADERS",
    "OVERSIGNED_HEADERS",
    "DkimKey",
    "dns_record",
    "generate_ed25519_key",
    "generate_rsa_key",
    "load_key",
    "sign",
]

RSA_SHA256 = "rsa-sha256"
ED25519_SHA256 = "ed25519-sha256"

# RFC 8301 §3.2: signers MUST use RSA keys of at least 1024 bits.
MIN_RSA_BITS = 1024

#: Header fields signed when present, in the order they appear in h=.
SIGNED_HEADERS: tuple[str, ...] = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "reply-to",
    "in-reply-to",
    "references",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "feedback-id",
    "sender",
)

#: Fields listed once more than they occur (RFC 6376 §8.15), so an added copy
#: breaks the signature; absent ones are listed once, which forbids adding them.
OVERSIGNED_HEADERS: frozenset[str] = frozenset(
    {"from", "to", "subject", "date", "reply-to", "content-type", "mime-version"}
)
# Cc is oversigned only when the message has one.
_OVERSIGNED_IF_PRESENT = frozenset({b"cc"})

_SIGNED = tuple(name.encode() for name in SIGNED_HEADERS)
_SIGNED_SET = frozenset(_SIGNED)
_OVERSIGNED = frozenset(name.encode() for name in OVERSIGNED_HEADERS)

# RFC 5322 §2.2: a field name is printable ASCII except colon; continuation lines
# start with WSP. Trailing WSP before the colon is tolerated (RFC 6376 §3.4.2).
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.M)
_WSP_RUN = re.compile(rb"[ \t]+")
# RFC 5890 LDH labels, plus underscores, which DNS allows and some selectors use.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.I)
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")

# RFC 5322 §2.1.1: lines SHOULD be no more than 78 characters excluding CRLF.
_WIDTH = 78
_FOLD = b"\r\n "
_FIELD_NAME = b"DKIM-Signature:"
_CANON_NAME = b"dkim-signature:"

_PKCS1V15 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


@dataclass(frozen=True, slots=True)
class DkimKey:
    """A signing identity: d=, s=, a= and the loaded private key."""

    domain: str
    selector: str
    algorithm: str
    private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    def __post_init__(self) -> None:
        """Reject names that could inject tags and keys that mismatch a=."""
        if not _NAME.fullmatch(self.domain) or self.domain != self.domain.lower():
            raise ValueError(
                f"DKIM domain must be a lower-case A-label: {self.domain!r}"
            )
        if not _NAME.fullmatch(self.selector):
            raise ValueError(f"invalid DKIM selector: {self.selector!r}")
        if self.algorithm == RSA_SHA256:
            if not isinstance(self.private_key, rsa.RSAPrivateKey):
                raise ValueError("rsa-sha256 needs an RSA private key")
            if self.private_key.key_size < MIN_RSA_BITS:
                raise ValueError(f"RSA key below {MIN_RSA_BITS} bits (RFC 8301)")
        elif self.algorithm == ED25519_SHA256:
            if not isinstance(self.private_key, ed25519.Ed25519PrivateKey):
                raise ValueError("ed25519-sha256 needs an Ed25519 private key")
        else:
            raise ValueError(f"unsupported DKIM algorithm: {self.algorithm!r}")


def _a_label(domain: str) -> str:
    """Return the domain as a lower-case A-label without a trailing dot."""
    domain = domain.strip().rstrip(".")
    # Python's codec is IDNA 2003; identities normally arrive as A-labels already.
    if not domain.isascii():
        domain = domain.encode("idna").decode("ascii")
    return domain.lower()


def load_key(
    domain: str, selector: str, private_key_pem: bytes, *, stored: bool = False
) -> DkimKey:
    """Load a PEM private key and pick the algorithm from its type.

    stored means the key comes from Sesame's own sealed store, where it was
    checked on the way in; OpenSSL's RSA consistency check (tens of
    milliseconds) is then skipped.
    """
    key = serialization.load_pem_private_key(
        private_key_pem, password=None, unsafe_skip_rsa_key_validation=stored
    )
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = RSA_SHA256
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm = ED25519_SHA256
    else:
        raise ValueError(f"unsupported DKIM key type: {type(key).__name__}")
    return DkimKey(_a_label(domain), selector.strip(), algorithm, key)


def _private_pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    """Serialise a private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def generate_rsa_key(bits: int = 2048) -> tuple[bytes, str]:
    """Generate an RSA key; return (PKCS#8 PEM, base64 SubjectPublicKeyInfo)."""
    if bits < MIN_RSA_BITS:
        raise ValueError(f"RSA key below {MIN_RSA_BITS} bits (RFC 8301)")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _private_pem(key), base64.b64encode(spki).decode("ascii")


def generate_ed25519_key() -> tuple[bytes, str]:
    """Generate an Ed25519 key; return (PKCS#8 PEM, base64 raw public key)."""
    key = ed25519.Ed25519PrivateKey.generate()
    # RFC 8463 §4.2: p= carries the bare 32-octet public key, not an SPKI.
    raw = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return _private_pem(key), base64.b64encode(raw).decode("ascii")


def dns_record(public_key_b64: str, algorithm: str) -> str:
    """Build the TXT record value published at <selector>._domainkey.<domain>."""
    if algorithm == RSA_SHA256:
        k = "rsa"
    elif algorithm == ED25519_SHA256:
        k = "ed25519"
    else:
        raise ValueError(f"unsupported DKIM algorithm: {algorithm!r}")
    if not _BASE64.fullmatch(public_key_b64):
        raise ValueError("public key must be unbroken base64")
    # A 2048-bit p= exceeds 255 octets: the DNS publisher splits it into strings.
    return f"v=DKIM1; k={k}; p={public_key_b64}"


def _put(out: list[bytes], col: int, tag: bytes) -> int:
    """Append SP and a tag, folding before it or at its colons; return the column."""
    room = _WIDTH - col - 1
    if len(tag) <= room:
        out.append(b" " + tag)
        return col + 1 + len(tag)
    # Only h= has colons; RFC 6376 §3.5 allows FWS around them. Elsewhere the
    # fold replaces the SP before the tag, so the canonical form is unchanged.
    cut = tag.rfind(b":", 0, room) + 1
    if cut:
        out.append(b" " + tag[:cut])
        tag = tag[cut:]
    while True:
        out.append(_FOLD)
        cut = tag.rfind(b":", 0, _WIDTH - 1) + 1 if len(tag) >= _WIDTH else 0
        if not cut:
            out.append(tag)
            return 1 + len(tag)
        out.append(tag[:cut])
        tag = tag[cut:]


def _fold_base64(out: list[bytes], col: int, data: bytes) -> None:
    """Append base64 data, filling the current line and breaking with FWS."""
    room = _WIDTH - col
    if room < 16:
        out.append(_FOLD)
        room = _WIDTH - 1
    out.append(data[:room])
    for start in range(room, len(data), _WIDTH - 1):
        out.append(_FOLD)
        out.append(data[start : start + _WIDTH - 1])


@lru_cache(maxsize=4096)
def _key_head(algorithm: str, domain: str, selector: str) -> tuple[bytes, int]:
    """Fold the per-key tags once; return them and the column they end at."""
    out = [_FIELD_NAME]
    col = len(_FIELD_NAME)
    for tag in ("v=1;", f"a={algorithm};", "c=relaxed/relaxed;", f"d={domain};"):
        col = _put(out, col, tag.encode("ascii"))
    col = _put(out, col, f"s={selector};".encode("ascii"))
    return b"".join(out), col


def _canon_value(value: bytes) -> bytes:
    """Canonicalise a header field value per RFC 6376 §3.4.2 (relaxed)."""
    if b"\r\n" in value:
        value = value.replace(b"\r\n", b"")
    if b"\t" in value or b"  " in value:
        value = _WSP_RUN.sub(b" ", value)
    return value.strip(b" ")


def _canon_body(body: bytes) -> bytes:
    """Canonicalise a body per RFC 6376 §3.4.4 (relaxed)."""
    if not body:
        return b""
    # SMTP transport ends the last line with CRLF anyway, and its trailing WSP
    # then goes, so treat an unterminated last line as if it were terminated.
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    if b"\t" in body or b"  " in body:
        body = _WSP_RUN.sub(b" ", body)
    # After compression any trailing WSP is a single SP before the CRLF.
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")
    # Line ends are CRLF only (checked in sign), so this drops exactly the
    # trailing empty lines; an all-empty body canonicalises to nothing.
    body = body.rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


def _split(message: bytes) -> tuple[bytes, bytes]:
    """Split a message into its header block (no final CRLF) and body."""
    if message.startswith(b"\r\n"):
        return b"", message[2:]
    head, sep, body = message.partition(b"\r\n\r\n")
    if not sep and head.endswith(b"\r\n"):
        head = head[:-2]
    return head, body


def sign(
    message: bytes, keys: Sequence[DkimKey], *, timestamp: int | None = None
) -> bytes:
    """Return folded DKIM-Signature fields, one per key, to prepend to message."""
    if not keys:
        raise ValueError("no DKIM keys to sign with")
    # Callers normalise line ends to CRLF (and lines to 998 octets). Equal CR and
    # LF counts are a cheap sanity check that catches LF-only or CR-CR-LF input.
    if message.count(b"\r") != message.count(b"\n"):
        raise ValueError("message line endings must be CRLF only")
    head, body = _split(message)

    found: dict[bytes, list[bytes]] = {}
    for name, value in _FIELD.findall(head):
        lname = name.lower()
        if lname in _SIGNED_SET:
            found.setdefault(lname, []).append(value)
    if b"from" not in found:
        raise ValueError("message has no From header field")

    # RFC 6376 §5.4.2: repeated fields are listed once each and consumed from
    # the bottom up; listing a name beyond its count contributes nothing.
    names: list[bytes] = []
    signed: list[bytes] = []
    for name in _SIGNED:
        values = found.get(name)
        if values:
            names.extend([name] * len(values))
            if name in _OVERSIGNED or name in _OVERSIGNED_IF_PRESENT:
                names.append(name)
            for value in reversed(values):
                signed.append(name + b":" + _canon_value(value) + b"\r\n")
        elif name in _OVERSIGNED:
            names.append(name)
    signed_headers = b"".join(signed)

    # One body hash serves every key: both algorithms use SHA-256 (RFC 8463 §3).
    body_hash = base64.b64encode(hashlib.sha256(_canon_body(body)).digest())
    t_tag = b"t=%d;" % (int(time.time()) if timestamp is None else timestamp)
    h_tag = b"h=" + b":".join(names) + b";"
    bh_tag = b"bh=" + body_hash + b";"

    fields: list[bytes] = []
    for key in keys:
        key_head, col = _key_head(key.algorithm, key.domain, key.selector)
        out = [key_head]
        col = _put(out, col, t_tag)
        col = _put(out, col, h_tag)
        col = _put(out, col, bh_tag)
        col = _put(out, col, b"b=")
        unsigned = b"".join(out)
        # RFC 6376 §3.7: the field itself is hashed last, relaxed, with an empty
        # b= and without its trailing CRLF.
        data = signed_headers + _CANON_NAME + _canon_value(unsigned[len(_FIELD_NAME) :])
        pk = key.private_key
        if isinstance(pk, rsa.RSAPrivateKey):
            signature = pk.sign(data, _PKCS1V15, _SHA256)
        else:
            # RFC 8463 §3: PureEdDSA over the SHA-256 digest of the same input.
            signature = pk.sign(hashlib.sha256(data).digest())
        _fold_base64(out, col, base64.b64encode(signature))
        out.append(b"\r\n")
        fields.append(b"".join(out))
    return b"".join(fields)
