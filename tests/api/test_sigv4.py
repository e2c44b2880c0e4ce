"""SigV4 verification against requests signed by botocore, boto3, curl and by hand."""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from unittest.mock import patch
from urllib.parse import quote, urlencode, urlsplit

import boto3
import pytest
import uvicorn
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st

from api.sigv4 import (
    Authorization,
    SigV4Error,
    check_signature,
    invalid_client_token,
    parse_authorization,
)

ACCESS_KEY = "AKIASESAMETEST000001"
SECRET = "sesame/Test+Secret0123456789abcdefghijkl"
# The instant used by SES's own example of an expired-signature message.
SIGNED_AT = datetime(2018, 11, 7, 0, 38, 42)
SIGNED_EPOCH = calendar.timegm(SIGNED_AT.timetuple())
BASE = "http://127.0.0.1:8080"

MISMATCH = (
    "The request signature we calculated does not match the signature you "
    "provided. Check your AWS Secret Access Key and signing method. Consult the "
    "service documentation for details."
)
INCOMPLETE = "The request signature does not conform to AWS standards."


@dataclass
class Wire:
    """A request as an ASGI server hands it over: raw path, raw query, byte headers."""

    method: str
    raw_path: bytes
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)

    def verify(self, secret: str = SECRET, now: float | None = None) -> Authorization:
        """Parse and check this request, returning the verified claims."""
        auth = parse_authorization(self.headers, self.query_string)
        check_signature(
            auth,
            secret,
            method=self.method,
            raw_path=self.raw_path,
            query_string=self.query_string,
            headers=self.headers,
            body=self.body,
            now=SIGNED_EPOCH if now is None else now,
        )
        return auth

    def with_header(self, name: str, value: str | None) -> Wire:
        """Return a copy with every `name` header replaced (or removed if None)."""
        lname = name.lower().encode()
        kept = [(k, v) for k, v in self.headers if k != lname]
        if value is not None:
            kept.append((lname, value.encode()))
        return replace(self, headers=kept)


def botocore_sign(
    method: str,
    url: str,
    *,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    service: str = "ses",
    region: str = "us-east-1",
    at: datetime = SIGNED_AT,
    context: Mapping[str, Any] | None = None,
) -> Wire:
    """Sign with botocore's SigV4Auth at a fixed instant and return the wire view."""
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    request.context.update(context or {})
    with patch("botocore.auth.get_current_datetime", return_value=at):
        SigV4Auth(Credentials(ACCESS_KEY, SECRET), service, region).add_auth(request)
    return _wire(request)


def _wire(request: AWSRequest) -> Wire:
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    # urllib3 sends the URL's host[:port] as Host; botocore signs the same value.
    headers = [(b"host", parts.netloc.encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in prepared.headers.items()]
    body = prepared.body or b""
    return Wire(
        method=prepared.method,
        raw_path=parts.path.encode(),
        query_string=parts.query.encode(),
        headers=headers,
        body=body if isinstance(body, bytes) else body.encode(),
    )


def hand_sign(
    method: str,
    host: str,
    raw_path: str,
    query_string: str,
    *,
    canonical_uri: str,
    canonical_query: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
    service: str = "ses",
    region: str = "us-east-1",
    at: datetime = SIGNED_AT,
) -> Wire:
    """Sign the way `curl --aws-sigv4` does, written from the SigV4 spec alone.

    Signs host, x-amz-date and every header in `headers` (curl signs the ones the
    user passed with -H); no x-amz-content-sha256 for a non-S3 service.
    """
    stamp = at.strftime("%Y%m%dT%H%M%SZ")
    wire_headers = [("host", host), *headers, ("x-amz-date", stamp)]
    grouped: dict[str, list[str]] = {}
    for name, value in wire_headers:
        grouped.setdefault(name.lower(), []).append(" ".join(value.split()))
    names = sorted(grouped)
    canonical = "\n".join(
        [
            method,
            canonical_uri,
            canonical_query,
            "".join(f"{n}:{','.join(grouped[n])}\n" for n in names),
            ";".join(names),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            stamp,
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + SECRET).encode()
    for part in (stamp[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return Wire(
        method=method,
        raw_path=raw_path.encode(),
        query_string=query_string.encode(),
        headers=[(n.lower().encode(), v.encode()) for n, v in wire_headers]
        + [(b"authorization", authorization.encode()), (b"user-agent", b"curl/8")],
        body=body,
    )


def expect_error(wire: Wire, code: str, status: int, **kwargs: Any) -> SigV4Error:
    """Verify `wire`, asserting it fails with `code` and `status`."""
    with pytest.raises(SigV4Error) as caught:
        wire.verify(**kwargs)
    assert (caught.value.code, caught.value.status) == (code, status)
    return caught.value


# --- requests that must verify ---------------------------------------------------


SES_V1_BODY = (
    b"Action=SendEmail&Version=2010-12-01&Source=sender%40example.com"
    b"&Destination.ToAddresses.member.1=user%2Bx%40example.com"
    b"&Message.Subject.Data=Hello+world&Message.Body.Text.Data=Hi+there%21"
)
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


def test_ses_v1_form_post() -> None:
    wire = botocore_sign("POST", f"{BASE}/", body=SES_V1_BODY, headers=FORM)
    auth = wire.verify()
    assert auth == Authorization(
        access_key_id=ACCESS_KEY,
        date="20181107",
        region="us-east-1",
        service="ses",
        signed_headers=("content-type", "host", "x-amz-date"),
        signature=auth.signature,
        amz_date="20181107T003842Z",
    )


def test_sesv2_path_is_double_encoded() -> None:
    wire = botocore_sign("GET", f"{BASE}/v2/email/identities/user%2Bx%40example.com")
    assert wire.raw_path == b"/v2/email/identities/user%2Bx%40example.com"
    wire.verify()


def test_repeated_query_keys() -> None:
    url = f"{BASE}/v2/email/suppression/addresses?Reason=BOUNCE&Reason=COMPLAINT"
    wire = botocore_sign("GET", url + "&PageSize=5")
    wire.verify()
    # The canonical query is sorted, so the order on the wire does not matter.
    replace(wire, query_string=b"PageSize=5&Reason=COMPLAINT&Reason=BOUNCE").verify()


def test_put_with_json_body() -> None:
    body = json.dumps({"SendingEnabled": True}).encode()
    headers = {"Content-Type": "application/json"}
    wire = botocore_sign(
        "PUT", f"{BASE}/v2/email/account/sending", body=body, headers=headers
    )
    wire.verify()


@pytest.mark.parametrize("service", ["ses", "email"])
@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "ap-southeast-2"])
def test_services_and_regions(service: str, region: str) -> None:
    url = f"https://email.{region}.amazonaws.com/v2/email/account"
    wire = botocore_sign("GET", url, service=service, region=region)
    assert (b"host", f"email.{region}.amazonaws.com".encode()) in wire.headers
    auth = wire.verify()
    assert (auth.service, auth.region) == (service, region)


def test_host_with_port_is_signed_as_sent() -> None:
    wire = botocore_sign("GET", "http://127.0.0.1:8080/v2/email/account")
    assert (b"host", b"127.0.0.1:8080") in wire.headers
    wire.verify()
    expect_error(wire.with_header("Host", "127.0.0.1"), "SignatureDoesNotMatch", 403)


def test_header_shapes_are_interchangeable() -> None:
    wire = botocore_sign("POST", f"{BASE}/", body=SES_V1_BODY, headers=FORM)
    as_str = [(k.decode().title(), v.decode()) for k, v in wire.headers]
    for headers in (wire.headers, as_str, dict(as_str)):
        auth = parse_authorization(headers)
        check_signature(
            auth,
            SECRET,
            method="post",
            raw_path=wire.raw_path.decode(),
            query_string=wire.query_string.decode(),
            headers=headers,
            body=wire.body,
            now=SIGNED_EPOCH,
        )


def test_repeated_headers_are_joined_with_commas() -> None:
    wire = botocore_sign(
        "GET", f"{BASE}/v2/email/account", headers={"X-Sesame-Tag": "a,b"}
    )
    # A proxy may split a list header into separate lines; AWS rejoins them.
    split = wire.with_header("X-Sesame-Tag", None)
    split.headers += [(b"x-sesame-tag", b" a "), (b"x-sesame-tag", b"b")]
    split.verify()


def test_date_header_instead_of_x_amz_date() -> None:
    wire = botocore_sign(
        "GET",
        f"{BASE}/v2/email/account",
        headers={"Date": "Mon, 01 Jan 2001 00:00:00 GMT"},
    )
    assert not any(name == b"x-amz-date" for name, _ in wire.headers)
    assert wire.verify().amz_date == "20181107T003842Z"


def test_query_plus_and_percent_20_both_verify() -> None:
    # botocore signs a URL's own query exactly as written, '+' included ...
    botocore_sign("GET", f"{BASE}/v2/email/templates?NextToken=a+b%7Ec").verify()
    # ... and its serialisers write spaces as %20 and leave '~' bare.
    query = urlencode({"NextToken": "a b~c"}, quote_via=quote)
    botocore_sign("GET", f"{BASE}/v2/email/templates?{query}").verify()
    # A client that normalises (decode, then re-encode) signs %20 for '+'.
    hand_sign(
        "GET",
        "127.0.0.1:8080",
        "/v2/email/templates",
        "NextToken=a+b%7ec",
        canonical_uri="/v2/email/templates",
        canonical_query="NextToken=a%20b~c",
        headers=[],
    ).verify()


def test_unsigned_payload_is_accepted() -> None:
    wire = botocore_sign(
        "POST",
        "https://email.us-east-1.amazonaws.com/",
        body=SES_V1_BODY,
        headers=FORM,
        context={"payload_signing_enabled": False},
    )
    assert (b"x-amz-content-sha256", b"UNSIGNED-PAYLOAD") in wire.headers
    wire.verify()


def test_declared_payload_hash_must_match_body() -> None:
    body = b'{"a": 1}'
    headers = {"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()}
    wire = botocore_sign("PUT", f"{BASE}/v2/email/x", body=body, headers=headers)
    wire.verify()
    expect_error(replace(wire, body=b'{"a": 2}'), "SignatureDoesNotMatch", 403)


def test_dot_segments_and_double_slashes_are_normalised() -> None:
    wire = botocore_sign("GET", f"{BASE}/v2/email/./identities//x/../y")
    wire.verify()
    replace(wire, raw_path=b"/v2/email/identities/y").verify()


# --- curl --aws-sigv4 ------------------------------------------------------------


def test_curl_shaped_json_post() -> None:
    body = b'{"FromEmailAddress": "sender@example.com"}'
    wire = hand_sign(
        "POST",
        "127.0.0.1:8080",
        "/v2/email/outbound-emails",
        "",
        canonical_uri="/v2/email/outbound-emails",
        canonical_query="",
        headers=[("Content-Type", "application/json")],
        body=body,
    )
    auth = wire.verify()
    assert auth.signed_headers == ("content-type", "host", "x-amz-date")
    assert not any(name == b"x-amz-content-sha256" for name, _ in wire.headers)
    expect_error(replace(wire, body=body + b" "), "SignatureDoesNotMatch", 403)


@pytest.mark.parametrize(
    "canonical_uri",
    [
        # Newer curl (curl/curl#17129) encodes the path again for non-S3 services.
        "/v2/email/identities/user%252Bx%2540example.com",
        # Older curl signs the path exactly as it sends it.
        "/v2/email/identities/user%2Bx%40example.com",
    ],
)
def test_curl_shaped_encoded_path(canonical_uri: str) -> None:
    hand_sign(
        "GET",
        "127.0.0.1:8080",
        "/v2/email/identities/user%2Bx%40example.com",
        "PageSize=5&Reason=BOUNCE",
        canonical_uri=canonical_uri,
        canonical_query="PageSize=5&Reason=BOUNCE",
        headers=[("Accept", "*/*")],
    ).verify()


def test_single_encoded_fallback_cannot_rename_a_resource() -> None:
    # Signed for identity "a%b": AWS's canonical URI is /…/a%2525b.
    wire = botocore_sign("DELETE", f"{BASE}/v2/email/identities/a%25b")
    wire.verify()
    # Sending that canonical text as the path names identity "a%25b" instead.
    forged = replace(wire, raw_path=b"/v2/email/identities/a%2525b")
    expect_error(forged, "SignatureDoesNotMatch", 403)


def test_plus_cannot_stand_in_for_percent_2b() -> None:
    wire = botocore_sign("GET", f"{BASE}/v2/email/x?EmailAddress=a%2Bb%40example.com")
    wire.verify()
    forged = replace(wire, query_string=b"EmailAddress=a+b%40example.com")
    expect_error(forged, "SignatureDoesNotMatch", 403)


# --- presigned URLs --------------------------------------------------------------


def presign(url: str, expires: int = 300) -> Wire:
    """Presign a GET with botocore's SigV4QueryAuth at the fixed instant."""
    request = AWSRequest(method="GET", url=url)
    signer = SigV4QueryAuth(
        Credentials(ACCESS_KEY, SECRET), "ses", "eu-west-1", expires
    )
    with patch("botocore.auth.get_current_datetime", return_value=SIGNED_AT):
        signer.add_auth(request)
    return _wire(request)


def test_presigned_url() -> None:
    wire = presign(f"{BASE}/v2/email/identities/user%2Bx%40example.com?PageSize=5")
    assert not any(name == b"authorization" for name, _ in wire.headers)
    auth = wire.verify()
    assert (auth.expires, auth.region, auth.signed_headers) == (
        300,
        "eu-west-1",
        ("host",),
    )
    wire.verify(now=SIGNED_EPOCH + 300)
    error = expect_error(wire, "SignatureDoesNotMatch", 403, now=SIGNED_EPOCH + 301)
    assert error.message == (
        "Signature expired: 20181107T003842Z is now earlier than 20181107T003843Z "
        "(20181107T004343Z - 5 min.)"
    )
    tampered = wire.query_string.replace(b"PageSize=5", b"PageSize=6")
    expect_error(replace(wire, query_string=tampered), "SignatureDoesNotMatch", 403)


def test_presigned_url_with_authorization_header_is_refused() -> None:
    wire = presign(f"{BASE}/v2/email/account")
    both = wire.with_header("Authorization", "AWS4-HMAC-SHA256 Credential=x")
    error = expect_error(both, "IncompleteSignature", 400)
    assert "Only one authentication mechanism" in error.message


@pytest.mark.parametrize(
    "drop", ["X-Amz-Credential", "X-Amz-Expires", "X-Amz-SignedHeaders"]
)
def test_presigned_url_missing_parameter(drop: str) -> None:
    wire = presign(f"{BASE}/v2/email/account")
    kept = [p for p in wire.query_string.split(b"&") if not p.startswith(drop.encode())]
    expect_error(
        replace(wire, query_string=b"&".join(kept)), "IncompleteSignature", 400
    )


# --- requests that must fail ------------------------------------------------------


def test_missing_authorization() -> None:
    wire = botocore_sign("GET", f"{BASE}/v2/email/account")
    error = expect_error(
        wire.with_header("Authorization", None), "MissingAuthenticationToken", 403
    )
    assert error.message == (
        "The request must contain either a valid (registered) AWS access key ID "
        "or X.509 certificate."
    )


GOOD_SCOPE = f"{ACCESS_KEY}/20181107/us-east-1/ses/aws4_request"
ZEROS = "0" * 64


@pytest.mark.parametrize(
    "header",
    [
        "AWS4-HMAC-SHA256",
        f"AWS4-HMAC-SHA256 Credential={GOOD_SCOPE}, SignedHeaders=host;x-amz-date",
        f"AWS4-HMAC-SHA256 SignedHeaders=host;x-amz-date, Signature={ZEROS}",
        f"AWS4-HMAC-SHA256 Credential={GOOD_SCOPE}, Signature={ZEROS}",
        f"AWS4-HMAC-SHA256 Credential={GOOD_SCOPE}, SignedHeaders, Signature={ZEROS}",
        f"AWS4-HMAC-SHA256 Credential={GOOD_SCOPE}, Credential={GOOD_SCOPE}, "
        f"SignedHeaders=host;x-amz-date, Signature={ZEROS}",
        f"AWS4-HMAC-SHA1 Credential={GOOD_SCOPE}, SignedHeaders=host, "
        f"Signature={ZEROS}",
        f"AWS4-ECDSA-P256-SHA256 Credential={GOOD_SCOPE}, SignedHeaders=host, "
        f"Signature={ZEROS}",
        "Basic dXNlcjpwYXNz",
        "AWS AKIASESAMETEST000001:c2lnbmF0dXJl",
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20181107/us-east-1/ses, "
        f"SignedHeaders=host, Signature={ZEROS}",
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20181107/us-east-1/ses/aws4, "
        f"SignedHeaders=host, Signature={ZEROS}",
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/2018117/us-east-1/ses/aws4_request,"
        f" SignedHeaders=host, Signature={ZEROS}",
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20181107//ses/aws4_request, "
        f"SignedHeaders=host, Signature={ZEROS}",
        f"AWS4-HMAC-SHA256 Credential=/20181107/us-east-1/ses/aws4_request, "
        f"SignedHeaders=host, Signature={ZEROS}",
        f"AWS4-HMAC-SHA256 Credential={GOOD_SCOPE}, SignedHeaders=x-amz-date, "
        f"Signature={ZEROS}",
        f"AWS4-HMAC-SHA256 Credential={GOOD_SCOPE}, SignedHeaders=host;;x-amz-date, "
        f"Signature={ZEROS}",
        f"AWS4-HMAC-SHA256 Credential={GOOD_SCOPE}, SignedHeaders=host, Signature=xyz",
        f"AWS4-HMAC-SHA256 Credential={GOOD_SCOPE}, SignedHeaders=host, "
        f"Signature={'g' * 64}",
    ],
)
def test_malformed_authorization(header: str) -> None:
    wire = botocore_sign("GET", f"{BASE}/v2/email/account")
    error = expect_error(
        wire.with_header("Authorization", header), "IncompleteSignature", 400
    )
    assert error.message.startswith(INCOMPLETE)


@pytest.mark.parametrize("service", ["s3", "sesv2", "SES", "sts"])
def test_unknown_service(service: str) -> None:
    wire = botocore_sign("GET", f"{BASE}/v2/email/account", service=service)
    expect_error(wire, "IncompleteSignature", 400)


def test_scope_date_must_match_request_date() -> None:
    wire = botocore_sign("GET", f"{BASE}/v2/email/account")
    expect_error(
        wire.with_header("X-Amz-Date", "20181108T003842Z"), "IncompleteSignature", 400
    )


@pytest.mark.parametrize(
    "stamp", [None, "20181107T003842", "2018-11-07T00:38:42Z", "20181332T003842Z"]
)
def test_missing_or_malformed_request_date(stamp: str | None) -> None:
    wire = botocore_sign("GET", f"{BASE}/v2/email/account")
    expect_error(wire.with_header("X-Amz-Date", stamp), "IncompleteSignature", 400)


def test_clock_skew_past() -> None:
    wire = botocore_sign("GET", f"{BASE}/v2/email/account")
    # SES's documented example: signed 00:38:42, checked at 00:55:54.
    now = SIGNED_EPOCH + 17 * 60 + 12
    error = expect_error(wire, "SignatureDoesNotMatch", 403, now=now)
    assert error.message == (
        "Signature expired: 20181107T003842Z is now earlier than 20181107T005054Z "
        "(20181107T005554Z - 5 min.)"
    )
    error = expect_error(wire, "SignatureDoesNotMatch", 403, now=SIGNED_EPOCH + 360)
    assert error.message == (
        "Signature expired: 20181107T003842Z is now earlier than 20181107T003942Z "
        "(20181107T004442Z - 5 min.)"
    )


def test_clock_skew_future() -> None:
    wire = botocore_sign("GET", f"{BASE}/v2/email/account")
    error = expect_error(wire, "SignatureDoesNotMatch", 403, now=SIGNED_EPOCH - 360)
    assert error.message == (
        "Signature not yet current: 20181107T003842Z is still later than "
        "20181107T003742Z (20181107T003242Z + 5 min.)"
    )


@pytest.mark.parametrize("offset", [-299, -300, 0, 299, 300, 299.9])
def test_clock_skew_within_five_minutes(offset: float) -> None:
    botocore_sign("GET", f"{BASE}/v2/email/account").verify(now=SIGNED_EPOCH + offset)


def test_bad_signature_is_reported_before_skew() -> None:
    wire = botocore_sign("GET", f"{BASE}/v2/email/account")
    error = expect_error(
        wire, "SignatureDoesNotMatch", 403, secret="wrong", now=SIGNED_EPOCH + 3600
    )
    assert error.message == MISMATCH


def test_wrong_secret() -> None:
    wire = botocore_sign("POST", f"{BASE}/", body=SES_V1_BODY, headers=FORM)
    assert (
        expect_error(wire, "SignatureDoesNotMatch", 403, secret=SECRET + "x").message
        == MISMATCH
    )


def test_tampering_is_detected() -> None:
    wire = botocore_sign(
        "POST",
        f"{BASE}/v2/email/outbound-emails?x=1",
        body=b'{"a": 1}',
        headers={"Content-Type": "application/json"},
    )
    wire.verify()
    tampered = [
        replace(wire, body=b'{"a": 2}'),
        replace(wire, raw_path=b"/v2/email/outbound-email"),
        replace(wire, query_string=b"x=2"),
        replace(wire, query_string=b"x=1&y=2"),
        replace(wire, method="PUT"),
        wire.with_header("Content-Type", "text/plain"),
    ]
    for forged in tampered:
        expect_error(forged, "SignatureDoesNotMatch", 403)


def test_unsigned_header_may_change() -> None:
    wire = botocore_sign("POST", f"{BASE}/", body=SES_V1_BODY, headers=FORM)
    wire.with_header("User-Agent", "something-else/1.0").verify()
    wire.with_header("X-Forwarded-For", "10.0.0.1").verify()


def test_invalid_client_token_wording() -> None:
    error = invalid_client_token()
    assert (error.code, error.status, error.message) == (
        "InvalidClientTokenId",
        403,
        "The security token included in the request is invalid.",
    )


@settings(max_examples=60, deadline=None)
@given(
    name=st.text(min_size=1, max_size=20).filter(lambda s: s not in {".", ".."}),
    value=st.text(max_size=20),
)
def test_botocore_round_trip_for_any_text(name: str, value: str) -> None:
    path = "/v2/email/identities/" + quote(name, safe="")
    # quote_plus-style encoding: '+' for spaces, '~' escaped; botocore signs it as is.
    query = urlencode({"Filter": value, "PageSize": "5"})
    with_plus = botocore_sign("GET", f"{BASE}{path}?{query}")
    with_plus.verify()
    # The canonical encoding botocore's serialisers produce.
    query = urlencode({"Filter": value, "PageSize": "5"}, quote_via=quote, safe="~")
    botocore_sign("GET", f"{BASE}{path}?{query}").verify()


def test_verification_speed() -> None:
    body = json.dumps({"FromEmailAddress": "sender@example.com"}).encode()
    wire = botocore_sign(
        "POST",
        f"{BASE}/v2/email/outbound-emails",
        body=body,
        headers={"Content-Type": "application/json", "User-Agent": "Boto3/1.34"},
    )
    rounds = 5000
    started = time.perf_counter()
    for _ in range(rounds):
        wire.verify()
    per_call = (time.perf_counter() - started) / rounds * 1e6
    print(f"\nSigV4 parse+verify: {per_call:.1f} µs per request")
    # Generous bound so a loaded CI machine does not flake; expect ~20 µs.
    assert per_call < 500


# --- real clients over loopback --------------------------------------------------


class Verifier:
    """An ASGI app that verifies each request and reports the outcome as its error."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            auth = parse_authorization(scope["headers"], scope["query_string"])
            if auth.access_key_id != ACCESS_KEY:
                raise invalid_client_token()
            check_signature(
                auth,
                SECRET,
                method=scope["method"],
                raw_path=scope["raw_path"],
                query_string=scope["query_string"],
                headers=scope["headers"],
                body=body,
            )
            code, text = "SesameVerified", auth.service
        except SigV4Error as error:
            code, text = error.code, error.message
        self.seen.append({"path": scope["raw_path"], "query": scope["query_string"]})
        # Answer 400 so each client surfaces the code without retrying.
        if scope["path"] == "/":
            payload = (
                f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
                f"<Message>{text}</Message></Error><RequestId>1</RequestId>"
                f"</ErrorResponse>"
            ).encode()
            headers = [(b"content-type", b"text/xml")]
        else:
            payload = json.dumps({"code": code, "message": text}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"x-amzn-errortype", code.encode()),
            ]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture(scope="module")
def endpoint() -> Iterator[tuple[str, Verifier]]:
    app = Verifier()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def boto_client(endpoint: tuple[str, Verifier], monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(name, os.devnull)
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
        region_name="eu-west-1",
    )

    def make(service: str, key: str = ACCESS_KEY) -> Any:
        return session.client(
            service,
            endpoint_url=endpoint[0],
            aws_access_key_id=key,
            aws_secret_access_key=SECRET,
            config=Config(retries={"total_max_attempts": 1}),
        )

    return make


def outcome(call: Any, **kwargs: Any) -> str:
    """Run a boto3 call that the Verifier always answers with an error code."""
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return str(caught.value.response["Error"]["Code"])


def test_boto3_ses_v1_send_email(boto_client: Any) -> None:
    ses = boto_client("ses")
    result = outcome(
        ses.send_email,
        Source="sender@example.com",
        Destination={"ToAddresses": ["user+x@example.com"]},
        Message={
            "Subject": {"Data": "Hello world & more"},
            "Body": {"Text": {"Data": "Hi there!"}},
        },
    )
    assert result == "SesameVerified"


def test_boto3_sesv2_calls(boto_client: Any, endpoint: tuple[str, Verifier]) -> None:
    sesv2 = boto_client("sesv2")
    assert outcome(sesv2.get_email_identity, EmailIdentity="user+x@example.com") == (
        "SesameVerified"
    )
    assert (
        endpoint[1].seen[-1]["path"] == b"/v2/email/identities/user%2Bx%40example.com"
    )
    assert (
        outcome(
            sesv2.list_suppressed_destinations,
            Reasons=["BOUNCE", "COMPLAINT"],
            PageSize=5,
            NextToken="a b+c/d=",
        )
        == "SesameVerified"
    )
    assert b"Reason=BOUNCE&Reason=COMPLAINT" in endpoint[1].seen[-1]["query"]
    assert outcome(sesv2.put_account_sending_attributes, SendingEnabled=True) == (
        "SesameVerified"
    )


def test_boto3_unknown_key(boto_client: Any) -> None:
    sesv2 = boto_client("sesv2", key="AKIAUNKNOWNKEY000000")
    assert outcome(sesv2.get_account) == "InvalidClientTokenId"


def _curl_supports_sigv4() -> bool:
    curl = shutil.which("curl")
    if curl is None:
        return False
    usage = subprocess.run([curl, "--help", "all"], capture_output=True, text=True)
    return "--aws-sigv4" in usage.stdout


@pytest.mark.skipif(not _curl_supports_sigv4(), reason="curl without --aws-sigv4")
@pytest.mark.parametrize(
    ("path", "extra"),
    [
        (
            "/v2/email/outbound-emails",
            ["-H", "Content-Type: application/json", "-d", '{"a": 1}'],
        ),
        ("/v2/email/identities/user%2Bx%40example.com", []),
        ("/v2/email/identities/user+x@example.com", []),
        (
            "/v2/email/suppression/addresses?PageSize=5&Reason=BOUNCE&Reason=COMPLAINT",
            [],
        ),
    ],
)
def test_real_curl(endpoint: tuple[str, Verifier], path: str, extra: list[str]) -> None:
    result = subprocess.run(
        [
            "curl",
            "--silent",
            "--noproxy",
            "*",
            "--aws-sigv4",
            "aws:amz:us-east-1:ses",
            "--user",
            f"{ACCESS_KEY}:{SECRET}",
            *extra,
            endpoint[0] + path,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(result.stdout)["code"] == "SesameVerified"
