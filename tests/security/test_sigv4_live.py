"""SigV4 against the running API: stale, misscoped or tampered requests do nothing.

tests/api/test_sigv4.py covers the verifier itself; here every request goes over
HTTP to a real server, and a refused SendEmail must leave no message behind.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import httpx
import pytest

from tests.security.conftest import (
    error_code,
    messages_of,
    send_signed,
    sigv4_headers,
)


def send_body(**extra: str) -> bytes:
    return urlencode(
        {
            "Action": "SendEmail",
            "Version": "2010-12-01",
            "Source": "sender@alice.example",
            "Destination.ToAddresses.member.1": "someone@dest.test",
            "Message.Subject.Data": "Hello",
            "Message.Body.Text.Data": "Body",
            **extra,
        }
    ).encode()


def test_a_correctly_signed_send_is_accepted(alice):
    response = send_signed(alice.server.url, alice.creds, "POST", "/", send_body())
    assert response.status_code == 200, response.text
    assert messages_of(alice.server.settings, alice.id) == 1


@pytest.mark.parametrize(
    "offset",
    [
        timedelta(minutes=-6),
        timedelta(minutes=6),
        timedelta(days=-1),
        timedelta(days=3),
    ],
)
def test_clock_skew_beyond_five_minutes_is_refused(alice, offset):
    when = datetime.now(UTC) + offset
    response = send_signed(
        alice.server.url, alice.creds, "POST", "/", send_body(), when=when
    )
    assert response.status_code == 403
    assert error_code(response) == "SignatureDoesNotMatch"
    assert "Signature expired" in response.text or "not yet current" in response.text
    assert messages_of(alice.server.settings, alice.id) == 0


@pytest.mark.parametrize(
    "scope",
    [
        {"service": "s3"},
        {"service": "sts"},
        {"scope_date": "20200101"},  # scope date is not X-Amz-Date's date
    ],
)
def test_wrong_scope_is_refused(alice, scope):
    response = send_signed(
        alice.server.url, alice.creds, "POST", "/", send_body(), **scope
    )
    assert response.status_code in (400, 403)
    assert error_code(response) in ("IncompleteSignature", "SignatureDoesNotMatch")
    assert messages_of(alice.server.settings, alice.id) == 0


def tamper(alice, *, body=None, path="/", headers=None, drop=None):
    """Sign a SendEmail properly, then change one thing before sending it."""
    url = alice.server.url + "/"
    signed_body = send_body()
    signed = sigv4_headers(alice.creds, "POST", url, signed_body)
    signed.update(headers or {})
    if drop:
        signed.pop(drop)
    return httpx.post(
        alice.server.url + path,
        content=signed_body if body is None else body,
        headers=signed,
        timeout=30,
    )


@pytest.mark.parametrize(
    "change",
    [
        {"body": send_body(**{"Destination.ToAddresses.member.2": "x@evil.test"})},
        {"body": send_body(Source="x@evil.test")},
        {"body": send_body() + b"&Message.Subject.Data=Changed"},
        {"body": send_body()[:-1]},
        {"path": "/?Action=SendEmail"},
        {"path": "/?x=1"},
        {"headers": {"x-amz-date": "20300101T000000Z"}},
        {"headers": {"host": "other.example"}},
        {"headers": {"content-type": "text/plain"}},
        {"drop": "x-amz-date"},
    ],
    ids=[
        "added-recipient",
        "changed-source",
        "appended-field",
        "truncated-body",
        "added-query",
        "changed-query",
        "changed-date",
        "changed-host",
        "changed-signed-header",
        "dropped-signed-header",
    ],
)
def test_tampered_request_is_refused_and_sends_nothing(alice, change):
    response = tamper(alice, **change)
    assert response.status_code in (400, 403), response.text
    assert error_code(response) in ("SignatureDoesNotMatch", "IncompleteSignature")
    assert messages_of(alice.server.settings, alice.id) == 0


def test_unsigned_header_may_change(alice):
    response = tamper(alice, headers={"user-agent": "changed/1.0"})
    assert response.status_code == 200


def test_unknown_key_and_missing_signature_are_refused(alice):
    response = httpx.post(
        alice.server.url + "/",
        content=send_body(),
        headers=sigv4_headers(
            ("AKIAUNKNOWNKEY000000", "x" * 40),
            "POST",
            alice.server.url + "/",
            send_body(),
        ),
    )
    assert (response.status_code, error_code(response)) == (403, "InvalidClientTokenId")
    response = httpx.post(
        alice.server.url + "/",
        content=send_body(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert (response.status_code, error_code(response)) == (
        403,
        "MissingAuthenticationToken",
    )
    assert messages_of(alice.server.settings, alice.id) == 0


def test_another_tenants_key_with_a_guessed_secret_is_refused(alice, bob):
    response = httpx.post(
        alice.server.url + "/",
        content=send_body(),
        headers=sigv4_headers(
            (bob.creds.access_key_id, alice.creds.secret_access_key),
            "POST",
            alice.server.url + "/",
            send_body(),
        ),
    )
    assert (response.status_code, error_code(response)) == (
        403,
        "SignatureDoesNotMatch",
    )
    assert messages_of(bob.server.settings, bob.id) == 0


def test_sesv2_path_cannot_be_swapped_after_signing(alice):
    url = alice.server.url + "/v2/email/account"
    headers = sigv4_headers(alice.creds, "GET", url, b"")
    for other in ("/v2/email/identities", "/v2/email/account/", "/v2/email/Account"):
        response = httpx.get(alice.server.url + other, headers=headers)
        # A trailing slash is redirected (307) before any handler runs.
        assert not response.is_success, other
        assert b"SendQuota" not in response.content
    assert httpx.get(url, headers=headers).status_code == 200


def test_replay_within_the_window_is_accepted_as_ses_does(alice):
    """SigV4 has no nonce: a captured request replays until its 5 minutes pass.

    SES behaves the same; this documents the policy (see the security report).
    """
    url = alice.server.url + "/"
    body = send_body()
    headers = sigv4_headers(alice.creds, "POST", url, body)
    for _ in range(2):
        assert httpx.post(url, content=body, headers=headers).status_code == 200
    assert messages_of(alice.server.settings, alice.id) == 2
