"""The X-Sesame-Signature scheme, as a consumer checks it."""

from __future__ import annotations

import hashlib
import hmac

from workers import webhooks

SECRET = "whsec_test-secret"
BODY = b'{"eventType":"Send"}'


def test_the_scheme_is_hmac_sha256_over_timestamp_dot_body():
    header = webhooks.sign(SECRET, BODY, 1_700_000_000)
    expected = hmac.new(
        SECRET.encode(), b"1700000000." + BODY, hashlib.sha256
    ).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_verify_accepts_a_fresh_signature_only():
    header = webhooks.sign(SECRET, BODY, 1_700_000_000)
    assert webhooks.verify_signature(SECRET, header, BODY, now=1_700_000_100)
    assert not webhooks.verify_signature("whsec_other", header, BODY, now=1_700_000_100)
    assert not webhooks.verify_signature(SECRET, header, BODY + b" ", now=1_700_000_100)
    # Older (or newer) than the tolerance: a replay.
    assert not webhooks.verify_signature(SECRET, header, BODY, now=1_700_000_301)
    assert webhooks.verify_signature(
        SECRET, header, BODY, tolerance=600, now=1_700_000_301
    )


def test_verify_accepts_any_of_several_v1_values():
    good = webhooks.sign(SECRET, BODY, 1_700_000_000).split(",")[1]
    header = f"t=1700000000,v1={'0' * 64},{good}"
    assert webhooks.verify_signature(SECRET, header, BODY, now=1_700_000_000)


def test_verify_refuses_malformed_headers():
    for header in ("", "t=1700000000", "v1=abc", "t=x,v1=abc", "garbage"):
        assert not webhooks.verify_signature(SECRET, header, BODY, now=1_700_000_000)


def test_new_secrets_are_random_and_prefixed():
    one, two = webhooks.new_signing_secret(), webhooks.new_signing_secret()
    assert one != two and one.startswith("whsec_") and len(one) >= 40
