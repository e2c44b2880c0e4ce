"""Verify AWS Signature Version 4 on incoming API requests the way Amazon SES does.

Implements AWS SigV4 (AWS General Reference, "Signing AWS API requests"): the
Authorization-header scheme and the presigned query-string scheme, AWS4-HMAC-SHA256.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from urllib.parse import quote_from_bytes, unquote_to_bytes

__all__ = [
    "Authorization",
    "HeaderInput",
    "SigV4Error",
    "check_signature",
    "invalid_client_token",
    "parse_authorization",
]

HeaderInput = (
    Mapping[str, str] | Sequence[tuple[str, str]] | Sequence[tuple[bytes, bytes]]
)

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
# SDKs sign SES requests as "ses"; "email" is the endpoint prefix
# (email.<region>.amazonaws.com), which curl signs with when not told a service.
SERVICES = frozenset({"ses", "email"})
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# AWS refuses presigned URLs that stay valid for more than seven days.
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

_MISSING_TOKEN = (
    "The request must contain either a valid (registered) AWS access key ID "
    "or X.509 certificate."
)
_INCOMPLETE = "The request signature does not conform to AWS standards."
_INVALID_TOKEN = "The security token included in the request is invalid."
_MISMATCH = (
    "The request signature we calculated does not match the signature you "
    "provided. Check your AWS Secret Access Key and signing method. Consult the "
    "service documentation for details."
)

_QUERY_AUTH_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z", re.ASCII)
_SCOPE_DATE = re.compile(r"\d{8}", re.ASCII)
# Scope parts and header names end up in the string to sign and the key cache,
# so only visible ASCII (no spaces) is accepted; real values are far narrower.
_TOKEN = re.compile(r"[!-~]+", re.ASCII)
_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)
_UNRESERVED = re.compile(rb"[A-Za-z0-9\-._~]*")


class SigV4Error(Exception):
    """Authentication failed; carries the SES error code, wording and HTTP status."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def invalid_client_token() -> SigV4Error:
    """Return the error SES gives for an unknown access key ID."""
    return SigV4Error("InvalidClientTokenId", _INVALID_TOKEN, 403)


def _missing_token() -> SigV4Error:
    return SigV4Error("MissingAuthenticationToken", _MISSING_TOKEN, 403)


def _incomplete(reason: str) -> SigV4Error:
    return SigV4Error("IncompleteSignature", f"{_INCOMPLETE} {reason}", 400)


def _mismatch(message: str = _MISMATCH) -> SigV4Error:
    return SigV4Error("SignatureDoesNotMatch", message, 403)


@dataclass(frozen=True, slots=True)
class Authorization:
    """The signing claims of one request, parsed but not yet verified."""

    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str
    # Seconds a presigned URL stays valid; None for Authorization-header requests.
    expires: int | None = None


def parse_authorization(
    headers: HeaderInput, query_string: bytes | str = b""
) -> Authorization:
    """Parse the SigV4 claims from the Authorization header or presigned query."""
    view = _header_lists(headers)
    query = _as_bytes(query_string)
    presigned = b"X-Amz-Algorithm" in query and any(
        _form_decode(key) == "X-Amz-Algorithm" for key, _ in _split_query(query)
    )
    header = ",".join(_values(view, "authorization")).strip()
    if not header:
        if presigned:
            return _parse_query_auth(query)
        raise _missing_token()
    if presigned:
        raise _incomplete(
            "Only one authentication mechanism is allowed: the Authorization "
            "header or the X-Amz-Algorithm query parameter."
        )

    algorithm, _, rest = header.partition(" ")
    if algorithm != ALGORITHM:
        raise _incomplete(f"Only the {ALGORITHM} algorithm is supported.")
    parts: dict[str, str] = {}
    for component in rest.split(","):
        component = component.strip()
        if not component:
            continue
        key, eq, value = component.partition("=")
        if not eq:
            raise _incomplete("Authorization header components must be key=value.")
        key = key.strip()
        if key in parts:
            raise _incomplete("Authorization header repeats a component.")
        parts[key] = value.strip()
    for required in ("Credential", "SignedHeaders", "Signature"):
        if required not in parts:
            raise _incomplete(f"Authorization header requires '{required}' parameter.")

    amz = _values(view, "x-amz-date")
    if amz:
        amz_date = ",".join(amz).strip()
    else:
        date_values = _values(view, "date")
        if not date_values:
            raise _incomplete(
                "Authorization header requires existence of either a "
                "'X-Amz-Date' or a 'Date' header."
            )
        amz_date = _date_header_to_amz(",".join(date_values))
    return _build(
        parts["Credential"], parts["SignedHeaders"], parts["Signature"], amz_date
    )


def _parse_query_auth(query: bytes) -> Authorization:
    """Parse the X-Amz-* parameters of a presigned URL."""
    params: dict[str, str] = {}
    for raw_key, raw_value in _split_query(query):
        key = _form_decode(raw_key)
        if key in _QUERY_AUTH_PARAMS:
            if key in params:
                raise _incomplete(f"Query parameter {key} is repeated.")
            params[key] = _form_decode(raw_value)
    for required in _QUERY_AUTH_PARAMS:
        if required not in params:
            raise _incomplete(f"Query-string authentication requires {required}.")
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise _incomplete(f"Only the {ALGORITHM} algorithm is supported.")
    expires_text = params["X-Amz-Expires"]
    if not expires_text.isdecimal() or not (
        0 < int(expires_text) <= MAX_PRESIGN_EXPIRES
    ):
        raise _incomplete(
            f"X-Amz-Expires must be a number of seconds from 1 to "
            f"{MAX_PRESIGN_EXPIRES}."
        )
    return _build(
        params["X-Amz-Credential"],
        params["X-Amz-SignedHeaders"],
        params["X-Amz-Signature"],
        params["X-Amz-Date"],
        int(expires_text),
    )


def _build(
    credential: str,
    signed_headers: str,
    signature: str,
    amz_date: str,
    expires: int | None = None,
) -> Authorization:
    """Validate the parsed pieces and assemble them into an Authorization."""
    access_key_id, date, region, service = _parse_credential(credential)
    names = _parse_signed_headers(signed_headers)
    if not _SIGNATURE.fullmatch(signature):
        raise _incomplete("Signature must be 64 hexadecimal digits.")
    if _amz_date_epoch(amz_date) is None:
        raise _incomplete("Date must be in ISO-8601 'basic format' (yyyymmddThhmmssZ).")
    if amz_date[:8] != date:
        raise _incomplete("Credential scope date does not match the request date.")
    return Authorization(
        access_key_id=access_key_id,
        date=date,
        region=region,
        service=service,
        signed_headers=names,
        signature=signature.lower(),
        amz_date=amz_date,
        expires=expires,
    )


# Clients reuse one credential scope and header list for a whole day, so the
# parsed forms are cached; failures raise and are not cached.
@lru_cache(maxsize=1024)
def _parse_credential(credential: str) -> tuple[str, str, str, str]:
    """Split <key>/<date>/<region>/<service>/aws4_request, validating each part."""
    scope = credential.split("/")
    if len(scope) != 5 or not all(_TOKEN.fullmatch(part) for part in scope):
        raise _incomplete(
            "Credential must have the form "
            "<access key>/<yyyymmdd>/<region>/<service>/aws4_request."
        )
    access_key_id, date, region, service, terminator = scope
    if terminator != TERMINATOR:
        raise _incomplete(f"Credential scope must end with '{TERMINATOR}'.")
    if service not in SERVICES:
        raise _incomplete("Credential should be scoped to a valid service: 'ses'.")
    if not _SCOPE_DATE.fullmatch(date):
        raise _incomplete("Credential scope date must be yyyymmdd.")
    return access_key_id, date, region, service


@lru_cache(maxsize=1024)
def _parse_signed_headers(text: str) -> tuple[str, ...]:
    """Split SignedHeaders into lower-cased names, requiring host among them."""
    names = tuple(name.strip().lower() for name in text.split(";"))
    if not all(_TOKEN.fullmatch(name) for name in names):
        raise _incomplete("SignedHeaders must be header names separated by ';'.")
    if "host" not in names:
        raise _incomplete("'Host' must be a signed header.")
    return names


def check_signature(
    auth: Authorization,
    secret_access_key: str,
    *,
    method: str,
    raw_path: str | bytes,
    query_string: bytes | str,
    headers: HeaderInput,
    body: bytes,
    now: float | None = None,
    max_skew_seconds: int = 300,
) -> None:
    """Raise SigV4Error unless the request carries a valid, current signature."""
    view = _header_lists(headers)
    payload_hash = _payload_hash(view, body)
    canonical_headers = "".join(
        f"{name}:{_canonical_value(_values(view, name))}\n"
        for name in auth.signed_headers
    )
    tail = f"\n{canonical_headers}\n{';'.join(auth.signed_headers)}\n{payload_hash}"
    head = method.upper() + "\n"
    sts_head = (
        f"{ALGORITHM}\n{auth.amz_date}\n"
        f"{auth.date}/{auth.region}/{auth.service}/{TERMINATOR}\n"
    )
    key = _signing_key(secret_access_key, auth.date, auth.region, auth.service)
    presigned = auth.expires is not None
    for uri, query in _canonical_targets(
        _as_bytes(raw_path), _as_bytes(query_string), presigned
    ):
        canonical = f"{head}{uri}\n{query}{tail}".encode("utf-8", "surrogateescape")
        string_to_sign = sts_head + hashlib.sha256(canonical).hexdigest()
        computed = hmac.digest(key, string_to_sign.encode(), "sha256").hex()
        if hmac.compare_digest(computed, auth.signature):
            break
    else:
        raise _mismatch()
    _check_time(auth, time.time() if now is None else now, max_skew_seconds)


@lru_cache(maxsize=1024)
def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """Derive the SigV4 signing key (kDate → kRegion → kService → kSigning)."""
    key = hmac.digest(f"AWS4{secret}".encode(), date.encode(), "sha256")
    for part in (region, service, TERMINATOR):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


def _check_time(auth: Authorization, now: float, max_skew: int) -> None:
    """Reject requests signed too far from now, or presigned URLs past expiry."""
    signed_at = _amz_date_epoch(auth.amz_date)
    if signed_at is None:  # only for an Authorization not made by this module
        raise _incomplete("Date must be in ISO-8601 'basic format' (yyyymmddThhmmssZ).")
    # SES compares whole seconds and prints them, so drop the fraction first.
    current = int(now)
    window = max_skew if auth.expires is None else auth.expires
    if signed_at < current - window:
        raise _mismatch(
            f"Signature expired: {auth.amz_date} is now earlier than "
            f"{_format(current - window)} ({_format(current)} - {_span(window)}.)"
        )
    if signed_at > current + max_skew:
        raise _mismatch(
            f"Signature not yet current: {auth.amz_date} is still later than "
            f"{_format(current + max_skew)} ({_format(current)} + {_span(max_skew)}.)"
        )


def _format(epoch: int) -> str:
    return time.strftime(AMZ_DATE_FORMAT, time.gmtime(epoch))


def _span(seconds: int) -> str:
    """Render a duration as SES does ("5 min"), falling back to seconds."""
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} sec"


# Requests arriving in the same second share a stamp; cache its conversion.
@lru_cache(maxsize=256)
def _amz_date_epoch(value: str) -> int | None:
    """Return the Unix time of a yyyymmddThhmmssZ stamp, or None if malformed."""
    if not _AMZ_DATE.fullmatch(value):
        return None
    try:
        moment = datetime(
            int(value[0:4]),
            int(value[4:6]),
            int(value[6:8]),
            int(value[9:11]),
            int(value[11:13]),
            int(value[13:15]),
            tzinfo=UTC,
        )
    except ValueError:
        return None
    return int(moment.timestamp())


def _date_header_to_amz(value: str) -> str:
    """Convert a Date header (RFC 7231, or already yyyymmddThhmmssZ) to a stamp."""
    value = value.strip()
    if _AMZ_DATE.fullmatch(value):
        return value
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        # Let _build report the malformed date with the usual wording.
        return value
    if moment.tzinfo is None:
        # RFC 5322 "-0000" (what botocore writes) means UTC with no local offset.
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(AMZ_DATE_FORMAT)


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


_HeaderView = dict[str, list[str | bytes]]


def _header_lists(headers: HeaderInput) -> _HeaderView:
    """Group raw header values by lower-cased name, keeping repeats in order."""
    items: Iterable[tuple[str | bytes, str | bytes]]
    items = headers.items() if isinstance(headers, Mapping) else headers
    grouped: _HeaderView = {}
    for name, value in items:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        grouped.setdefault(name.lower(), []).append(value)
    return grouped


def _values(view: _HeaderView, name: str) -> list[str]:
    """Return the decoded values of one header (values are decoded only on use)."""
    # surrogateescape keeps arbitrary bytes intact through the str round trip.
    return [
        value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
        for value in view.get(name, ())
    ]


def _canonical_value(values: list[str]) -> str:
    """Trim each value, collapse inner whitespace, and comma-join repeats."""
    return ",".join(" ".join(value.split()) for value in values)


def _payload_hash(view: _HeaderView, body: bytes) -> str:
    """Return the payload line of the canonical request, checking any declared hash."""
    declared_values = _values(view, "x-amz-content-sha256")
    if not declared_values:
        return hashlib.sha256(body).hexdigest()
    declared = ",".join(declared_values).strip()
    if declared != UNSIGNED_PAYLOAD and (
        declared.lower() != hashlib.sha256(body).hexdigest()
    ):
        raise _mismatch()
    return declared


def _canonical_targets(
    raw_path: bytes, query: bytes, presigned: bool
) -> Iterator[tuple[str, str]]:
    """Yield (CanonicalURI, CanonicalQueryString) pairs to try, AWS's form first.

    AWS double-encodes the path and re-encodes the query; the alternatives cover
    clients that sign the path as sent (curl before its 2025 fix, curl/curl#17129)
    or the query as sent (botocore when the URL already carries a query string).
    """
    path = _normalise_path(raw_path.partition(b"?")[0])
    double = quote_from_bytes(path, safe="/~")
    normalised = _normalised_query(query, presigned)
    yield double, normalised
    as_sent = _as_sent_query(query, presigned)
    if as_sent != normalised:
        yield double, as_sent
    # A signature over the double-encoded form of a path containing '%' would
    # also match the single-encoded form of that text sent literally (with "%25"
    # in it), naming a different resource; so never fall back for such paths.
    if b"%25" in path:
        return
    single = path.decode("utf-8", "surrogateescape")
    if single != double:
        yield single, normalised
        if as_sent != normalised:
            yield single, as_sent


def _normalise_path(path: bytes) -> bytes:
    """Remove dot segments and empty segments, keeping a trailing slash."""
    if not path:
        return b"/"
    if b"//" not in path and b"/." not in path:
        return path
    segments: list[bytes] = []
    for segment in path.split(b"/"):
        if not segment or segment == b".":
            continue
        if segment == b"..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    lead = b"/" if path.startswith(b"/") else b""
    trail = b"/" if path.endswith(b"/") and segments else b""
    return lead + b"/".join(segments) + trail


def _partitions(query: bytes) -> Iterator[tuple[bytes, bytes, bytes]]:
    """Split a raw query on '&' and each piece on its first '=', empty pieces too."""
    return (pair.partition(b"=") for pair in query.split(b"&"))


def _split_query(query: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield the raw (key, value) of each non-empty &-separated query parameter."""
    for pair in query.split(b"&"):
        if pair:
            key, _, value = pair.partition(b"=")
            yield key, value


def _form_decode(component: bytes) -> str:
    """Decode one query component as a server framework would ('+' is a space)."""
    return unquote_to_bytes(component.replace(b"+", b" ")).decode(
        "utf-8", "surrogateescape"
    )


def _encode_component(component: bytes) -> str:
    """Re-encode a query component with only RFC 3986 unreserved characters bare."""
    if _UNRESERVED.fullmatch(component):
        return component.decode("ascii")
    decoded = unquote_to_bytes(component.replace(b"+", b" "))
    return quote_from_bytes(decoded, safe="~")


def _normalised_query(query: bytes, presigned: bool) -> str:
    """Build AWS's CanonicalQueryString: decode, re-encode, sort by key then value."""
    if not query:
        return ""
    pairs = sorted(
        (_encode_component(key), _encode_component(value))
        for key, value in _split_query(query)
    )
    return "&".join(
        f"{key}={value}"
        for key, value in pairs
        if not (presigned and key == "X-Amz-Signature")
    )


def _as_sent_query(query: bytes, presigned: bool) -> str:
    """Build the query as botocore signs a URL's own query: raw pairs, sorted."""
    if not query:
        return ""
    pairs = sorted((key, value) for key, _, value in _partitions(query))
    return "&".join(
        f"{key.decode('utf-8', 'surrogateescape')}="
        f"{value.decode('utf-8', 'surrogateescape')}"
        for key, value in pairs
        if not (presigned and key == b"X-Amz-Signature")
    )
