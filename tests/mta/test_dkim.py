"""DKIM signing: Sesame's signatures must verify with dkimpy (RFC 6376/8301/8463)."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mta.delivery import dkim as sesame_dkim
from mta.delivery.dkim import DkimKey

DOMAIN = "example.com"
TIMESTAMP = 1_700_000_000

# A throwaway 512-bit key made with `openssl genpkey`; cryptography refuses to
# generate keys this small, and RFC 8301 says they must not be used.
RSA_512_PEM = b"""-----BEGIN PRIVATE KEY-----
MIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEA+dTFds5v8d6op6gQ
CNIkE9fQiIv8zTTOQqIT7aQVreechNhVnm+ITzHgOMUvHz71JgGs04J1FVWFV4e3
5ahxyQIDAQABAkBs6hiH+emNvW8zYC5VWh+GUxDDZpv4biv5mqUrddxJqpHrpB9Y
Av+/Et8JIUyY6mVzLlUTDvB9FMrGOgcgz2sBAiEA/vGQPSzVcW0sVk/qBN44fpjq
SdcHdXuSkrhXkSDZu6ECIQD63cjlxeMG7JtjE4xTyEUCsQFqBDaC4BiXCkW9/9dF
KQIhALIYYiC6LykbkPuCvAJGksStYg3PLyC9AHmKWXHCtxfBAiBus6ALhR+B1rdb
KS0ra5zIa0OsfN9xMWKohCfyiAt+wQIhAMPbbv7UeQhlptvgTJGpjW731g2mWtqD
ePBl1mD3h2mQ
-----END PRIVATE KEY-----
"""

BASE_HEADERS = (
    b"From: Sender <sender@example.com>\r\n"
    b"To: Rcpt <rcpt@mail.test>\r\n"
    b"Subject: Monthly report\r\n"
    b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"Message-ID: <0100018bd0@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
)

Dns = Callable[..., bytes | None]


@pytest.fixture(scope="module")
def rsa_key() -> tuple[DkimKey, str]:
    pem, pub = sesame_dkim.generate_rsa_key()
    return sesame_dkim.load_key(DOMAIN, "rsa1", pem), pub


@pytest.fixture(scope="module")
def ed_key() -> tuple[DkimKey, str]:
    pem, pub = sesame_dkim.generate_ed25519_key()
    return sesame_dkim.load_key(DOMAIN, "ed1", pem), pub


def make_dns(*keys: tuple[DkimKey, str]) -> Dns:
    """Serve each key's dns_record() the way dkimpy's dnsfunc expects."""
    records = {
        f"{key.selector}._domainkey.{key.domain}.".encode(): sesame_dkim.dns_record(
            pub, key.algorithm
        ).encode()
        for key, pub in keys
    }

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    return dnsfunc


@pytest.fixture(scope="module")
def dns(rsa_key: tuple[DkimKey, str], ed_key: tuple[DkimKey, str]) -> Dns:
    return make_dns(rsa_key, ed_key)


@pytest.fixture(scope="module")
def both(rsa_key: tuple[DkimKey, str], ed_key: tuple[DkimKey, str]) -> list[DkimKey]:
    return [rsa_key[0], ed_key[0]]


def signed(message: bytes, keys: list[DkimKey]) -> bytes:
    return sesame_dkim.sign(message, keys, timestamp=TIMESTAMP) + message


def verify_all(message: bytes, count: int, dns: Dns) -> list[bool]:
    """Verify every DKIM-Signature on the message, top first."""
    checker = dkim.DKIM(message)
    results = []
    for i in range(count):
        try:
            results.append(bool(checker.verify(idx=i, dnsfunc=dns)))
        except dkim.DKIMException:
            # dkimpy raises rather than returns False on a body hash mismatch.
            results.append(False)
    return results


def tags(field: bytes) -> dict[str, str]:
    """Parse one DKIM-Signature field's tags, with FWS removed."""
    value = field.split(b":", 1)[1].decode()
    value = re.sub(r"\s+", "", value)
    return dict(part.split("=", 1) for part in value.split(";") if part)


def fields(header: bytes) -> list[bytes]:
    return [b"DKIM-Signature:" + f for f in header.split(b"DKIM-Signature:")[1:]]


def test_rsa_signature_verifies(rsa_key: tuple[DkimKey, str], dns: Dns) -> None:
    message = BASE_HEADERS + b"\r\nHello.\r\n"
    assert dkim.verify(signed(message, [rsa_key[0]]), dnsfunc=dns)


def test_ed25519_signature_verifies(ed_key: tuple[DkimKey, str], dns: Dns) -> None:
    message = BASE_HEADERS + b"\r\nHello.\r\n"
    assert dkim.verify(signed(message, [ed_key[0]]), dnsfunc=dns)


def test_dual_signature_both_verify(both: list[DkimKey], dns: Dns) -> None:
    message = BASE_HEADERS + b"\r\nHello.\r\n"
    header = sesame_dkim.sign(message, both, timestamp=TIMESTAMP)
    rsa_tags, ed_tags = (tags(f) for f in fields(header))
    assert (rsa_tags["a"], ed_tags["a"]) == ("rsa-sha256", "ed25519-sha256")
    assert rsa_tags["bh"] == ed_tags["bh"]
    assert rsa_tags["h"] == ed_tags["h"]
    assert len(base64.b64decode(ed_tags["b"])) == 64
    assert verify_all(header + message, 2, dns) == [True, True]


MESSAGES = {
    "folded headers": (
        b"From: A very long display name\r\n <sender@example.com>\r\n"
        b"To: one@mail.test,\r\n\ttwo@mail.test,\r\n   three@mail.test\r\n"
        b"Subject: a subject\r\n that is folded\r\n\tacross three lines\r\n"
        b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\nBody\r\n"
    ),
    "trailing whitespace": (
        b"From: sender@example.com \t\r\n"
        b"Subject:   spaced \t out  \r\n"
        b"To: rcpt@mail.test  \r\n\r\n"
        b"line one   \r\nline\t\ttwo \t\r\n  \r\n \t \r\n"
    ),
    "empty body": BASE_HEADERS + b"\r\n",
    "no body separator": BASE_HEADERS,
    "body without final CRLF": BASE_HEADERS + b"\r\nfirst\r\nlast line",
    "many trailing empty lines": BASE_HEADERS + b"\r\ntext\r\n" + b"\r\n" * 50,
    "only empty lines": BASE_HEADERS + b"\r\n" + b"\r\n" * 5,
    "8-bit body": (
        BASE_HEADERS
        + b"\r\n"
        + "Grüße aus Köln — ☃ naïve café\r\n".encode()
        + b"latin-1 \xe9\xe8\xff\r\n"
    ),
    "repeated received": (
        b"Received: from a.mail.test by b.mail.test; Tue, 14 Nov 2023 22:13:18 +0000\r\n"
        b"Received: from c.mail.test\r\n\tby a.mail.test; Tue, 14 Nov 2023 22:13:17 +0000\r\n"
        + BASE_HEADERS
        + b"Received: from d.mail.test by c.mail.test\r\n\r\nbody\r\n"
    ),
    "repeated signed fields": (
        BASE_HEADERS
        + b"To: second@mail.test\r\nCc: c1@mail.test\r\nCc: c2@mail.test\r\n"
        b"References: <a@example.com>\r\nReferences: <b@example.com>\r\n\r\nbody\r\n"
    ),
    "8-bit headers": (
        "From: Jörg <jörg@example.com>\r\nSubject: Grüße\r\n\r\nbody\r\n".encode()
    ),
    "long lines": BASE_HEADERS + b"\r\n" + (b"x" * 990 + b"\r\n") * 3,
}


@pytest.mark.parametrize("message", MESSAGES.values(), ids=MESSAGES.keys())
def test_message_shapes_verify(message: bytes, both: list[DkimKey], dns: Dns) -> None:
    assert verify_all(signed(message, both), 2, dns) == [True, True]


def test_unterminated_last_line_matches_smtp_transport(
    both: list[DkimKey], dns: Dns
) -> None:
    # SMTP DATA ends the last line with CRLF, which strips its trailing WSP too.
    message = BASE_HEADERS + b"\r\nlast line with spaces  \t"
    header = sesame_dkim.sign(message, both, timestamp=TIMESTAMP)
    assert verify_all(header + message + b"\r\n", 2, dns) == [True, True]


def test_trace_headers_added_in_transit_keep_it_valid(
    both: list[DkimKey], dns: Dns
) -> None:
    message = signed(BASE_HEADERS + b"\r\nHello.\r\n", both)
    relayed = b"Received: from mx.example.com by mx.mail.test\r\n" + message
    assert verify_all(relayed, 2, dns) == [True, True]


@pytest.mark.parametrize("where", ["top", "bottom"])
def test_added_from_breaks_signature(both: list[DkimKey], dns: Dns, where: str) -> None:
    message = signed(BASE_HEADERS + b"\r\nHello.\r\n", both)
    extra = b"From: attacker@evil.test\r\n"
    if where == "top":
        tampered = extra + message
    else:
        head, body = message.split(b"\r\n\r\n", 1)
        tampered = head + b"\r\n" + extra + b"\r\n" + body
    assert verify_all(tampered, 2, dns) == [False, False]


@pytest.mark.parametrize("name", [b"Subject", b"To", b"Reply-To", b"Date"])
def test_added_oversigned_field_breaks_signature(
    both: list[DkimKey], dns: Dns, name: bytes
) -> None:
    message = signed(BASE_HEADERS + b"\r\nHello.\r\n", both)
    head, body = message.split(b"\r\n\r\n", 1)
    tampered = head + b"\r\n" + name + b": injected@evil.test\r\n\r\n" + body
    assert verify_all(tampered, 2, dns) == [False, False]


def test_modified_body_breaks_signature(both: list[DkimKey], dns: Dns) -> None:
    message = signed(BASE_HEADERS + b"\r\nPay invoice 1234.\r\n", both)
    tampered = message.replace(b"1234", b"9999")
    assert verify_all(tampered, 2, dns) == [False, False]


def test_modified_subject_breaks_signature(both: list[DkimKey], dns: Dns) -> None:
    message = signed(BASE_HEADERS + b"\r\nHello.\r\n", both)
    tampered = message.replace(b"Monthly report", b"Urgent report")
    assert verify_all(tampered, 2, dns) == [False, False]


def test_tags(both: list[DkimKey]) -> None:
    header = sesame_dkim.sign(BASE_HEADERS + b"\r\nHello.\r\n", both, timestamp=42)
    for field in fields(header):
        t = tags(field)
        assert "l" not in t and "x" not in t
        assert t["v"] == "1" and t["c"] == "relaxed/relaxed"
        assert t["d"] == DOMAIN and t["t"] == "42"
        h = t["h"].split(":")
        assert h.count("from") == 2
        assert h.count("to") == 2 and h.count("subject") == 2
        # Absent oversigned fields are listed once; absent Cc is not listed.
        assert h.count("reply-to") == 1 and "cc" not in h
        assert h.count("message-id") == 1


def test_repeated_fields_listed_per_occurrence(both: list[DkimKey]) -> None:
    message = MESSAGES["repeated signed fields"]
    h = tags(fields(sesame_dkim.sign(message, both))[0])["h"].split(":")
    assert h.count("to") == 3 and h.count("cc") == 3 and h.count("references") == 2
    assert "received" not in h


def test_timestamp_defaults_to_now(both: list[DkimKey]) -> None:
    header = sesame_dkim.sign(BASE_HEADERS + b"\r\n", both)
    assert abs(int(tags(fields(header)[0])["t"]) - time.time()) < 60


def test_empty_body_hash(both: list[DkimKey]) -> None:
    # RFC 6376 errata 3192: a relaxed empty body hashes as the empty string.
    header = sesame_dkim.sign(BASE_HEADERS + b"\r\n\r\n\r\n", both)
    empty = base64.b64encode(hashlib.sha256(b"").digest()).decode()
    assert tags(fields(header)[0])["bh"] == empty


def test_folding(both: list[DkimKey]) -> None:
    header = sesame_dkim.sign(BASE_HEADERS + b"\r\nHello.\r\n", both)
    assert header.endswith(b"\r\n") and header.startswith(b"DKIM-Signature: v=1;")
    lines = header[:-2].split(b"\r\n")
    assert all(len(line) <= 78 for line in lines)
    assert all(line[:1] in (b"D", b" ") for line in lines)


def test_relaxed_canonicalisation_rfc_example() -> None:
    # RFC 6376 §3.4.5's worked example.
    assert sesame_dkim._canon_value(b" Y\t\r\n\tZ  ") == b"Y Z"
    assert sesame_dkim._canon_body(b" C \r\nD \t E\r\n\r\n\r\n") == b" C\r\nD E\r\n"
    assert sesame_dkim._canon_body(b"") == b""
    assert sesame_dkim._canon_body(b"x") == b"x\r\n"


def test_missing_from_is_rejected(both: list[DkimKey]) -> None:
    with pytest.raises(ValueError, match="From"):
        sesame_dkim.sign(b"To: rcpt@mail.test\r\n\r\nbody\r\n", both)
    with pytest.raises(ValueError, match="From"):
        sesame_dkim.sign(b"\r\nFrom: a@example.com\r\n\r\nbody\r\n", both)


@pytest.mark.parametrize(
    "message", [b"From: a@example.com\n\nbody\n", b"From: a\r\r\n"]
)
def test_bare_line_ends_are_rejected(both: list[DkimKey], message: bytes) -> None:
    with pytest.raises(ValueError, match="CRLF"):
        sesame_dkim.sign(message, both)


def test_no_keys_is_rejected() -> None:
    with pytest.raises(ValueError):
        sesame_dkim.sign(BASE_HEADERS + b"\r\n", [])


def test_rsa_512_is_rejected() -> None:
    with pytest.raises(ValueError, match="8301"):
        sesame_dkim.load_key(DOMAIN, "small", RSA_512_PEM)
    with pytest.raises(ValueError, match="8301"):
        sesame_dkim.generate_rsa_key(512)


def test_rsa_1024_is_accepted() -> None:
    pem, pub = sesame_dkim.generate_rsa_key(1024)
    key = sesame_dkim.load_key(DOMAIN, "k1024", pem)
    assert isinstance(key.private_key, rsa.RSAPrivateKey)
    assert key.private_key.key_size == 1024
    dns = make_dns((key, pub))
    assert dkim.verify(signed(BASE_HEADERS + b"\r\nHi\r\n", [key]), dnsfunc=dns)


def test_load_key_round_trip_rsa(rsa_key: tuple[DkimKey, str]) -> None:
    pem, pub = sesame_dkim.generate_rsa_key()
    key = sesame_dkim.load_key("Example.COM.", "sel", pem)
    assert (key.domain, key.selector, key.algorithm) == (DOMAIN, "sel", "rsa-sha256")
    assert isinstance(key.private_key, rsa.RSAPrivateKey)
    assert key.private_key.key_size == 2048
    spki = key.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert base64.b64encode(spki).decode() == pub
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_load_key_round_trip_ed25519() -> None:
    pem, pub = sesame_dkim.generate_ed25519_key()
    key = sesame_dkim.load_key(DOMAIN, "sel", pem)
    assert key.algorithm == "ed25519-sha256"
    assert isinstance(key.private_key, ed25519.Ed25519PrivateKey)
    raw = key.private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert len(base64.b64decode(pub)) == 32 and base64.b64encode(raw).decode() == pub


def test_load_key_idna_domain() -> None:
    pem, _ = sesame_dkim.generate_ed25519_key()
    assert sesame_dkim.load_key("bücher.test", "s", pem).domain == "xn--bcher-kva.test"


def test_dns_record() -> None:
    assert sesame_dkim.dns_record("QUJD", "rsa-sha256") == "v=DKIM1; k=rsa; p=QUJD"
    assert (
        sesame_dkim.dns_record("QUJD", "ed25519-sha256") == "v=DKIM1; k=ed25519; p=QUJD"
    )
    with pytest.raises(ValueError):
        sesame_dkim.dns_record("QUJD", "rsa-sha1")
    with pytest.raises(ValueError):
        sesame_dkim.dns_record("QUJD; t=y", "rsa-sha256")


@pytest.mark.parametrize(
    ("domain", "selector"),
    [("example.com;x=1", "s"), ("example.com", "s\r\nX: y"), ("EXAMPLE.com", "s")],
)
def test_key_rejects_bad_names(
    ed_key: tuple[DkimKey, str], domain: str, selector: str
) -> None:
    with pytest.raises(ValueError):
        DkimKey(domain, selector, "ed25519-sha256", ed_key[0].private_key)


def test_key_rejects_algorithm_mismatch(ed_key: tuple[DkimKey, str]) -> None:
    with pytest.raises(ValueError):
        DkimKey(DOMAIN, "s", "rsa-sha256", ed_key[0].private_key)
