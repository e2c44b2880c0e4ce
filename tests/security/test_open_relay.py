"""No one sends as an identity they do not own: the open-relay matrix.

Over the API (v1 SendEmail/SendRawEmail, v2 SendEmail), SMTP submission and the
inbound MX. Every attempt is refused with SES's error and writes no message.
"""

from __future__ import annotations

import base64
import smtplib

import pytest
from botocore.exceptions import ClientError

from tests.security.conftest import messages_of, rows
from tests.support.api_server import verify_identity

BODY = {"Subject": {"Data": "Hi"}, "Body": {"Text": {"Data": "Hello"}}}
TO = {"ToAddresses": ["someone@dest.test"]}


def refused(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    return str(excinfo.value.response["Error"]["Code"])


# Sources that are not alice's own identity (alice.example), however written.
FOREIGN_SOURCES = [
    "someone@unverified.test",
    "owner@bob.example",  # another account's verified domain
    "Bob <owner@bob.example>",
    "sender@alice.example.evil.test",  # verified name as a subdomain prefix
    "sender@evil-alice.example",
    "sender@alice-example.test",
    "sender@xn--lice-8ve.example",  # "аlice.example" with a Cyrillic а
    "sender@\u0430lice.example",
    '"sender@alice.example" <x@evil.test>',
    "sender@alice.example <x@evil.test>",
    "x@evil.test\x00@alice.example",
    "x@evil.test, sender@alice.example",
    "sender@alice.example, x@evil.test",
    "<@alice.example:x@evil.test>",
    "x@evil.test (sender@alice.example)",
    "=?utf-8?q?sender=40alice.example?= <x@evil.test>",
    "undisclosed:;",
    "sender@[127.0.0.1]",
    "sender@localhost",
    "",
]


@pytest.mark.parametrize("source", FOREIGN_SOURCES)
def test_send_email_from_a_foreign_source_is_refused(alice, bob, source):
    verify_identity(bob.server.settings, bob.id, "owner@bob.example")
    with pytest.raises(ClientError) as excinfo:
        alice.ses.send_email(Source=source, Destination=TO, Message=BODY)
    assert refused(excinfo) in ("MessageRejected", "InvalidParameterValue")
    assert messages_of(alice.server.settings, alice.id) == 0


def test_own_identity_in_any_case_and_subdomains_is_accepted(alice):
    for source in (
        "sender@alice.example",
        "Sender <SENDER@ALICE.EXAMPLE>",
        "news@mail.alice.example",
    ):
        alice.ses.send_email(Source=source, Destination=TO, Message=BODY)
    assert messages_of(alice.server.settings, alice.id) == 3


def test_unverified_return_path_is_refused(alice):
    with pytest.raises(ClientError) as excinfo:
        alice.ses.send_email(
            Source="sender@alice.example",
            ReturnPath="bounces@evil.test",
            Destination=TO,
            Message=BODY,
        )
    assert refused(excinfo) == "MessageRejected"
    assert messages_of(alice.server.settings, alice.id) == 0


def test_sandbox_account_cannot_reach_unverified_recipients(api):
    from tests.security.conftest import new_tenant

    sandboxed = new_tenant(api, "sandboxed", "sandbox.example", production=False)
    for destination in (
        {"ToAddresses": ["stranger@dest.test"]},
        {"ToAddresses": ["me@sandbox.example"], "BccAddresses": ["x@dest.test"]},
        {"CcAddresses": ["stranger@dest.test"]},
    ):
        with pytest.raises(ClientError) as excinfo:
            sandboxed.ses.send_email(
                Source="me@sandbox.example", Destination=destination, Message=BODY
            )
        assert refused(excinfo) == "MessageRejected"
    assert messages_of(api.settings, sandboxed.id) == 0


def raw(headers: str, body: str = "Hello.\r\n") -> bytes:
    return (headers.strip().replace("\n", "\r\n") + "\r\n\r\n" + body).encode()


# Raw messages whose header senders are not all alice's.
SPOOFED_RAW = {
    "foreign From": raw("From: x@evil.test\nTo: someone@dest.test\nSubject: s"),
    "other tenant's From": raw(
        "From: owner@bob.example\nTo: someone@dest.test\nSubject: s"
    ),
    "two From fields": raw(
        "From: sender@alice.example\nFrom: x@evil.test\nTo: a@dest.test\nSubject: s"
    ),
    "second address in From": raw(
        "From: sender@alice.example, x@evil.test\nTo: a@dest.test\nSubject: s"
    ),
    "foreign Sender": raw(
        "From: sender@alice.example\nSender: x@evil.test\nTo: a@dest.test\nSubject: s"
    ),
    "foreign Return-Path": raw(
        "Return-Path: <x@evil.test>\nFrom: sender@alice.example\nTo: a@dest.test\n"
        "Subject: s"
    ),
    "quoted lookalike": raw(
        'From: "sender@alice.example" <x@evil.test>\nTo: a@dest.test\nSubject: s'
    ),
    "encoded-word address": raw(
        "From: =?utf-8?q?sender=40alice.example?= <x@evil.test>\nTo: a@dest.test\n"
        "Subject: s"
    ),
    "folded From hiding a second address": raw(
        "From: sender@alice.example,\n x@evil.test\nTo: a@dest.test\nSubject: s"
    ),
    "group syntax From": raw(
        "From: friends: x@evil.test;\nTo: a@dest.test\nSubject: s"
    ),
    "no From": raw("To: a@dest.test\nSubject: s"),
}


@pytest.mark.parametrize("name", SPOOFED_RAW)
def test_send_raw_email_with_spoofed_senders_is_refused(alice, bob, name):
    with pytest.raises(ClientError) as excinfo:
        alice.ses.send_raw_email(RawMessage={"Data": SPOOFED_RAW[name]})
    assert refused(excinfo) in ("MessageRejected", "InvalidParameterValue")
    assert messages_of(alice.server.settings, alice.id) == 0


def test_send_raw_email_source_and_from_must_both_be_owned(alice):
    own = raw("From: sender@alice.example\nTo: a@dest.test\nSubject: s")
    foreign = raw("From: x@evil.test\nTo: a@dest.test\nSubject: s")
    with pytest.raises(ClientError):
        alice.ses.send_raw_email(Source="x@evil.test", RawMessage={"Data": own})
    with pytest.raises(ClientError):
        alice.ses.send_raw_email(
            Source="sender@alice.example", RawMessage={"Data": foreign}
        )
    assert messages_of(alice.server.settings, alice.id) == 0
    alice.ses.send_raw_email(Source="sender@alice.example", RawMessage={"Data": own})
    assert messages_of(alice.server.settings, alice.id) == 1


@pytest.mark.parametrize(
    "source", ["x@evil.test", "owner@bob.example", "sender@alice.example.evil.test"]
)
def test_sesv2_send_email_from_a_foreign_identity_is_refused(alice, bob, source):
    with pytest.raises(ClientError) as excinfo:
        alice.sesv2.send_email(
            FromEmailAddress=source,
            Destination=TO,
            Content={"Simple": BODY},
        )
    assert refused(excinfo) in ("MessageRejected", "BadRequestException")
    with pytest.raises(ClientError):
        alice.sesv2.send_email(
            Destination=TO,
            Content={
                "Raw": {"Data": raw(f"From: {source}\nTo: a@dest.test\nSubject: s")}
            },
        )
    assert messages_of(alice.server.settings, alice.id) == 0


# -- SMTP submission ---------------------------------------------------------------


def auth_plain(smtp_client: smtplib.SMTP, user: str, password: str) -> int:
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return smtp_client.docmd("AUTH", "PLAIN " + token)[0]


def transaction(
    smtp_client: smtplib.SMTP, mail_from: str, rcpt: str, data: bytes
) -> int:
    """Run MAIL, RCPT, DATA; return the first reply code that is not 2xx/3xx."""
    code, _ = smtp_client.docmd("MAIL", f"FROM:<{mail_from}>")
    if code >= 400:
        return code
    code, _ = smtp_client.docmd("RCPT", f"TO:<{rcpt}>")
    if code >= 400:
        return code
    try:
        code, _ = smtp_client.data(data)
    except smtplib.SMTPDataError as exc:
        return exc.smtp_code
    return code


def test_smtp_without_auth_relays_nothing(smtp, alice):
    client = smtplib.SMTP("127.0.0.1", smtp.port, timeout=10)
    client.ehlo("relay-test.example")
    # Before STARTTLS, and after it without AUTH: refused at MAIL.
    assert client.docmd("MAIL", "FROM:<sender@alice.example>")[0] == 530
    client.starttls(context=smtp.client_context)
    client.ehlo("relay-test.example")
    for mail_from in ("sender@alice.example", "", "x@evil.test", "postmaster"):
        assert client.docmd("MAIL", f"FROM:<{mail_from}>")[0] == 530
    assert client.docmd("RCPT", "TO:<victim@dest.test>")[0] == 530
    assert client.docmd("DATA")[0] == 530
    client.quit()
    assert messages_of(alice.server.settings, alice.id) == 0


def test_smtp_wrong_password_and_foreign_username_fail(smtp, alice, bob):
    client = smtp.implicit()
    assert auth_plain(client, alice.creds.smtp_username, "not-the-password") == 535
    assert auth_plain(client, alice.creds.smtp_username, bob.creds.smtp_password) == (
        535
    )
    assert auth_plain(client, "AKIAUNKNOWN00000000", alice.creds.smtp_password) == 535
    assert transaction(client, "sender@alice.example", "a@dest.test", b"x") == 530
    client.close()


SMTP_SPOOFS = {
    "foreign MAIL FROM": ("x@evil.test", "From: sender@alice.example"),
    "other tenant's MAIL FROM": ("owner@bob.example", "From: sender@alice.example"),
    "foreign From": ("sender@alice.example", "From: x@evil.test"),
    "other tenant's From": ("sender@alice.example", "From: owner@bob.example"),
    "foreign Sender": (
        "sender@alice.example",
        "From: sender@alice.example\r\nSender: x@evil.test",
    ),
    "two From fields": (
        "sender@alice.example",
        "From: sender@alice.example\r\nFrom: x@evil.test",
    ),
    "null reverse-path": ("", "From: sender@alice.example"),
    "source route": ("@alice.example:x@evil.test", "From: sender@alice.example"),
}


@pytest.mark.parametrize("name", SMTP_SPOOFS)
def test_smtp_authenticated_sender_cannot_spoof(smtp, alice, bob, name):
    mail_from, from_header = SMTP_SPOOFS[name]
    client = smtp.implicit(login=alice.creds)
    data = f"{from_header}\r\nTo: a@dest.test\r\nSubject: s\r\n\r\nbody\r\n".encode()
    code = transaction(client, mail_from, "a@dest.test", data)
    client.close()
    assert code >= 500, name
    assert messages_of(alice.server.settings, alice.id) == 0


def test_smtp_own_identity_is_accepted(smtp, alice):
    client = smtp.implicit(login=alice.creds)
    data = b"From: sender@alice.example\r\nTo: a@dest.test\r\nSubject: s\r\n\r\nb\r\n"
    assert transaction(client, "sender@alice.example", "a@dest.test", data) == 250
    client.close()
    assert messages_of(alice.server.settings, alice.id) == 1


# -- the inbound MX takes mail for the return-path domain only ----------------------


@pytest.fixture
def mx(api, redis_client):
    from tests.inbound.conftest import DOMAIN, MxThread

    settings = api.settings.model_copy(
        update={
            "mail_from_domain": DOMAIN,
            "hostname": "mx.sesame.test",
            "mx_host": "127.0.0.1",
            "mx_port": 0,
        }
    )
    server = MxThread(settings).start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    "rcpt",
    [
        "victim@dest.test",
        "victim@bounces.example.test.evil.test",
        "victim%dest.test@bounces.example.test",
        "victim!dest.test@bounces.example.test",
        '"victim@dest.test"@bounces.example.test',
        "@bounces.example.test:victim@dest.test",
        "postmaster@localhost",
        "victim@[127.0.0.1]",
    ],
)
def test_mx_relays_nothing(mx, rcpt):
    with mx.client() as client:
        client.ehlo("outside.example")
        assert client.docmd("MAIL", "FROM:<x@evil.test>")[0] == 250
        code, _ = client.docmd("RCPT", f"TO:<{rcpt}>")
        assert code >= 500
        assert client.docmd("DATA")[0] >= 500
    # Nothing at all is stored from the MX side for this transaction.
    assert (
        rows(mx.settings, "select count(*) from messages where source = 'x@evil.test'")[
            0
        ][0]
        == 0
    )
