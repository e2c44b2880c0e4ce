"""Verification links: single use, expiring, unguessable, and refused alike when bad.

The link in the verification mail (``/verify/{token}``) verifies the address
once. A used, expired, unknown or malformed token gets the same 404 and changes
nothing; after VERIFY_FAILURES_ALLOWED failures a client is answered 429 for a
while, whatever it sends.
"""

from __future__ import annotations

import re
import secrets

import httpx
import pytest

from tests.security.conftest import rows

LINK = re.compile(rb"/verify/([A-Za-z0-9_-]+)")


@pytest.fixture(autouse=True)
def fresh_failure_counts(redis_client):
    """Every test starts with no failed attempts counted for 127.0.0.1."""
    for key in redis_client.scan_iter("sesame:verify:failures:*"):
        redis_client.delete(key)


def request_link(tenant, address: str) -> str:
    """Ask for verification and read the token from the mail Sesame queued."""
    tenant.ses.verify_email_identity(EmailAddress=address)
    raws = rows(
        tenant.server.settings,
        "select m.raw from messages m join recipients r on r.message_id = m.id"
        " where m.account_id = %s and m.interface = 'system' and r.address = %s"
        " order by m.created_at desc limit 1",
        tenant.id,
        address,
    )
    body = bytes(raws[0][0])
    # The link may be folded by quoted-printable encoding.
    unfolded = body.replace(b"=\r\n", b"")
    match = LINK.search(unfolded)
    assert match, body
    return match.group(1).decode()


def status_of(tenant, address: str) -> str:
    attrs = tenant.ses.get_identity_verification_attributes(Identities=[address])
    return attrs["VerificationAttributes"][address]["VerificationStatus"]


def visit(tenant, token: str, client: httpx.Client | None = None) -> httpx.Response:
    url = f"{tenant.server.url}/verify/{token}"
    if client is not None:
        return client.get(url)
    return httpx.get(url, timeout=10)


def test_a_link_verifies_once_and_is_then_refused(alice):
    token = request_link(alice, "reader@inbox.test")
    assert len(token) >= 43  # 256 bits in base64url
    assert status_of(alice, "reader@inbox.test") == "Pending"
    assert visit(alice, token).status_code == 200
    assert status_of(alice, "reader@inbox.test") == "Success"
    second = visit(alice, token)
    assert second.status_code == 404
    assert "invalid or has expired" in second.text


def test_an_expired_link_is_refused_and_verifies_nothing(alice):
    token = request_link(alice, "late@inbox.test")
    rows(
        alice.server.settings,
        "update verification_tokens set expires_at = now() - interval '1 second'"
        " where identity_id = (select id from identities where account_id = %s"
        " and name = %s) returning 1",
        alice.id,
        "late@inbox.test",
    )
    assert visit(alice, token).status_code == 404
    assert status_of(alice, "late@inbox.test") == "Pending"


def test_tokens_are_stored_only_as_hashes(alice):
    token = request_link(alice, "hashed@inbox.test")
    stored = rows(
        alice.server.settings,
        "select encode(token_sha256, 'hex') from verification_tokens",
    )
    assert all(token not in value for (value,) in stored)
    assert all(len(value) == 64 for (value,) in stored)


def test_a_link_for_one_tenant_verifies_only_that_tenants_identity(alice, bob):
    token = request_link(alice, "shared@inbox.test")
    bob.ses.verify_email_identity(EmailAddress="shared@inbox.test")
    assert visit(alice, token).status_code == 200
    assert status_of(alice, "shared@inbox.test") == "Success"
    assert status_of(bob, "shared@inbox.test") == "Pending"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a",
        "A" * 43,
        "../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "%00",
        "x" * 10_000,
        "\u00e9\u00e8",
        "' or 1=1 --",
        "%0d%0aSet-Cookie:%20x=1",
    ],
)
def test_unknown_or_malformed_tokens_get_the_same_404(alice, token):
    response = visit(alice, token)
    assert response.status_code == 404
    assert "set-cookie" not in response.headers


def test_guessing_tokens_verifies_nothing(alice):
    request_link(alice, "target@inbox.test")
    with httpx.Client(timeout=10) as client:
        statuses = {
            visit(alice, secrets.token_urlsafe(32), client).status_code
            for _ in range(200)
        }
    assert statuses <= {404, 429}  # 429 once attempts are throttled
    assert status_of(alice, "target@inbox.test") == "Pending"


def test_repeated_failed_attempts_from_one_client_are_throttled(alice, redis_client):
    from api.app import VERIFY_FAILURES_ALLOWED

    token = request_link(alice, "patient@inbox.test")
    with httpx.Client(timeout=10) as client:
        codes = [
            visit(alice, secrets.token_urlsafe(32), client).status_code
            for _ in range(VERIFY_FAILURES_ALLOWED + 5)
        ]
        assert codes[:VERIFY_FAILURES_ALLOWED] == [404] * VERIFY_FAILURES_ALLOWED
        assert set(codes[VERIFY_FAILURES_ALLOWED:]) == {429}
        # While throttled even the right link is refused, and not used up.
        assert visit(alice, token, client).status_code == 429
        assert status_of(alice, "patient@inbox.test") == "Pending"
        # Once the window has passed (its counter expired) the link works.
        for key in redis_client.scan_iter("sesame:verify:failures:*"):
            redis_client.delete(key)
        assert visit(alice, token, client).status_code == 200
    assert status_of(alice, "patient@inbox.test") == "Success"
