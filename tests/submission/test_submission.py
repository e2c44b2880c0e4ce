"""SMTP submission over real TLS: AUTH, relay rules, the accept path, limits."""

from __future__ import annotations

import asyncio
import base64
import re
import smtplib
import ssl
import time

import pytest

from mta.accept import Acceptor, StoreUnavailable, Submission
from mta.submission import Limits, replies
from sesame.ids import MessageId
from sesame.log import KeyValueFormatter
from tests.submission.conftest import (
    HOST,
    Sender,
    SmtpServer,
    plain,
    reply,
    set_account,
    stored,
)
from tests.support.api_server import create_account, verify_identity

ACCEPTED = re.compile(r"250 2\.0\.0 Ok (0100[0-9a-f]{12}-[0-9a-f-]{36}-000000)\Z")


def message(
    sender: str = "app@example.com",
    to: str = "someone@example.net",
    extra: str = "",
    body: str = "Hello.\r\n",
) -> bytes:
    return (
        f"From: App <{sender}>\r\nTo: {to}\r\nSubject: Hi\r\n{extra}\r\n{body}"
    ).encode()


def send(
    smtp: smtplib.SMTP, msg: bytes, rcpts: list[str], mail_from: str = "app@example.com"
) -> str:
    """Run one transaction; return the final reply (or the first refusal)."""
    code, text = smtp.docmd("MAIL", f"FROM:<{mail_from}>")
    if code != 250:
        return reply(code, text)
    for rcpt in rcpts:
        code, text = smtp.docmd("RCPT", f"TO:<{rcpt}>")
        if code != 250:
            return reply(code, text)
    code, text = smtp.data(msg)
    return reply(code, text)


# -- TLS and EHLO ---------------------------------------------------------------


def test_ehlo_before_tls_offers_starttls_size_and_no_auth(
    smtp_server: SmtpServer,
) -> None:
    smtp = smtplib.SMTP(HOST, smtp_server.port, timeout=10)
    code, banner = smtp.docmd("NOOP")  # the greeting was read by connect
    assert reply(code, banner) == replies.OK
    smtp.ehlo("client.example")
    assert smtp.has_extn("starttls")
    assert smtp.esmtp_features["size"] == "41943040"
    assert smtp.has_extn("enhancedstatuscodes")
    assert not smtp.has_extn("auth")
    smtp.close()


def test_greeting_names_the_host(smtp_server: SmtpServer) -> None:
    client = smtp_server.raw(implicit=False)
    client.close()
    with smtplib.SMTP() as smtp:
        code, text = smtp.connect(HOST, smtp_server.port)
        assert reply(code, text) == f"220 localhost {replies.GREETING_IDENT}"


def test_auth_and_mail_before_starttls_are_refused(
    smtp_server: SmtpServer, sender: Sender
) -> None:
    smtp = smtplib.SMTP(HOST, smtp_server.port, timeout=10)
    smtp.ehlo("client.example")
    code, text = plain(smtp, sender.creds.smtp_username, sender.creds.smtp_password)
    assert f"{code} {text}" == replies.STARTTLS_REQUIRED
    assert (
        reply(*smtp.docmd("MAIL", "FROM:<app@example.com>"))
        == replies.STARTTLS_REQUIRED
    )
    assert reply(*smtp.docmd("HELO", "client.example")) == replies.STARTTLS_REQUIRED
    smtp.close()


def test_after_starttls_auth_is_offered_and_starttls_is_not(
    smtp_server: SmtpServer,
) -> None:
    smtp = smtp_server.starttls()
    assert smtp.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
    assert not smtp.has_extn("starttls")
    assert reply(*smtp.docmd("STARTTLS")) == replies.TLS_ALREADY_ACTIVE
    smtp.quit()


def test_implicit_tls_port_offers_auth_and_refuses_starttls(
    smtp_server: SmtpServer,
) -> None:
    smtp = smtp_server.implicit()
    assert smtp.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
    assert not smtp.has_extn("starttls")
    assert reply(*smtp.docmd("STARTTLS")) == replies.TLS_ALREADY_ACTIVE
    smtp.quit()


def test_tls_certificate_is_verified_by_the_test_ca(smtp_server: SmtpServer) -> None:
    # The client context trusts only the test CA, so a handshake proves the chain.
    with smtplib.SMTP_SSL(
        HOST, smtp_server.tls_port, context=smtp_server.client_context
    ) as smtp:
        assert smtp.noop()[0] == 250


# -- AUTH -------------------------------------------------------------------------


def test_auth_plain_succeeds(smtp_server: SmtpServer, sender: Sender) -> None:
    smtp = smtp_server.starttls()
    code, text = plain(smtp, sender.creds.smtp_username, sender.creds.smtp_password)
    assert f"{code} {text}" == replies.AUTH_SUCCESSFUL
    assert reply(*smtp.docmd("AUTH", "PLAIN")) == replies.AUTH_ALREADY
    smtp.quit()


@pytest.mark.parametrize("initial_response", [True, False])
def test_auth_login_succeeds(
    smtp_server: SmtpServer, sender: Sender, initial_response: bool
) -> None:
    smtp = smtp_server.starttls()
    smtp.user, smtp.password = sender.creds.smtp_username, sender.creds.smtp_password
    code, text = smtp.auth(
        "LOGIN", smtp.auth_login, initial_response_ok=initial_response
    )
    assert reply(code, text) == replies.AUTH_SUCCESSFUL
    smtp.quit()


def test_auth_plain_with_a_challenge_succeeds(
    smtp_server: SmtpServer, sender: Sender
) -> None:
    smtp = smtp_server.implicit()
    smtp.user, smtp.password = sender.creds.smtp_username, sender.creds.smtp_password
    code, text = smtp.auth("PLAIN", smtp.auth_plain, initial_response_ok=False)
    assert reply(code, text) == replies.AUTH_SUCCESSFUL
    smtp.quit()


def test_wrong_password_and_unknown_user_get_535(
    smtp_server: SmtpServer, sender: Sender
) -> None:
    smtp = smtp_server.starttls()
    code, text = plain(smtp, sender.creds.smtp_username, "B" + "x" * 43)
    assert f"{code} {text}" == replies.AUTH_INVALID
    code, text = plain(smtp, "AKIANOSUCHUSER000000", sender.creds.smtp_password)
    assert f"{code} {text}" == replies.AUTH_INVALID
    # Not logged in: still no relay.
    assert reply(*smtp.docmd("MAIL", "FROM:<app@example.com>")) == replies.AUTH_REQUIRED
    smtp.quit()


def test_secret_access_key_is_not_the_smtp_password(
    smtp_server: SmtpServer, sender: Sender
) -> None:
    smtp = smtp_server.starttls()
    code, text = plain(smtp, sender.creds.smtp_username, sender.creds.secret_access_key)
    assert f"{code} {text}" == replies.AUTH_INVALID
    smtp.quit()


def test_malformed_auth_is_refused(smtp_server: SmtpServer) -> None:
    smtp = smtp_server.starttls()
    assert reply(*smtp.docmd("AUTH", "PLAIN !!notbase64")) == replies.AUTH_BAD_BASE64
    no_nuls = base64.b64encode(b"justtext").decode()
    assert reply(*smtp.docmd("AUTH", "PLAIN " + no_nuls)) == replies.AUTH_BAD_PLAIN
    assert reply(*smtp.docmd("AUTH", "CRAM-MD5")) == replies.AUTH_MECHANISM_UNKNOWN
    assert reply(*smtp.docmd("AUTH")) == replies.AUTH_SYNTAX
    code, text = smtp.docmd("AUTH", "LOGIN")
    assert code == 334 and base64.b64decode(text) == b"Username:"
    assert reply(*smtp.docmd("*")) == replies.AUTH_ABORTED
    smtp.quit()


def test_auth_failures_throttle_by_ip(
    smtp_server: SmtpServer, sender: Sender, smtp_redis
) -> None:
    smtp = smtp_server.starttls()
    for _ in range(5):
        code, text = plain(smtp, "AKIAWRONGWRONGWRONG0", "B" + "y" * 43)
        assert f"{code} {text}" == replies.AUTH_INVALID
    # The right password no longer helps: the check is skipped entirely.
    code, text = plain(smtp, sender.creds.smtp_username, sender.creds.smtp_password)
    assert f"{code} {text}" == replies.AUTH_THROTTLED
    smtp.close()
    assert int(smtp_redis.get(f"sesame:authfail:ip:{HOST}")) == 5
    assert 0 < smtp_redis.ttl(f"sesame:authfail:ip:{HOST}") <= 600
    # A fresh connection from the same address is throttled too.
    smtp = smtp_server.implicit()
    code, text = plain(smtp, sender.creds.smtp_username, sender.creds.smtp_password)
    assert f"{code} {text}" == replies.AUTH_THROTTLED
    smtp.close()


def test_auth_failures_throttle_by_username(
    smtp_server: SmtpServer, sender: Sender, smtp_redis
) -> None:
    username = sender.creds.smtp_username
    smtp_redis.set(f"sesame:authfail:user:{username}", 5, ex=600)
    smtp = smtp_server.starttls()
    code, text = plain(smtp, username, sender.creds.smtp_password)
    assert f"{code} {text}" == replies.AUTH_THROTTLED
    other, other_creds = create_account(smtp_server.settings, "other", production=True)
    code, text = plain(smtp, other_creds.smtp_username, other_creds.smtp_password)
    assert f"{code} {text}" == replies.AUTH_SUCCESSFUL
    smtp.quit()


def test_auth_attempts_per_session_are_capped(smtp_factory, sender: Sender) -> None:
    server = smtp_factory(Limits(greetings_per_session=3, auth_failures=100))
    client = server.raw()
    client.command("EHLO client.example")
    bad = base64.b64encode(b"\0AKIAX\0nope").decode()
    for _ in range(3):
        assert client.command(f"AUTH PLAIN {bad}") == replies.AUTH_INVALID
    assert client.command(f"AUTH PLAIN {bad}") == replies.TOO_MANY_COMMANDS
    assert client.closed()


def test_auth_secrets_are_not_logged(
    smtp_server: SmtpServer, sender: Sender, caplog
) -> None:
    caplog.set_level("DEBUG")
    caplog.handler.setFormatter(KeyValueFormatter())
    smtp = smtp_server.starttls(login=sender.creds)
    assert send(smtp, message(), ["someone@example.net"]).startswith("250 ")
    smtp.quit()
    smtp = smtp_server.starttls()
    smtp.user, smtp.password = sender.creds.smtp_username, "B" + "z" * 43
    with pytest.raises(smtplib.SMTPAuthenticationError):
        smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
    smtp.close()
    text = caplog.text
    assert sender.creds.smtp_password not in text
    assert base64.b64encode(sender.creds.smtp_password.encode()).decode() not in text
    assert "z" * 43 not in text
    assert "Hello." not in text
    # Every line of the session carries its id and peer, and the account after AUTH.
    assert re.search(
        r"smtp authenticated account_id=\d{12} session_id=[0-9a-f]{16} peer=127\.0\.0\.1:\d+",
        text,
    ) or re.search(r"smtp authenticated .*session_id=[0-9a-f]{16}", text), text


# -- never an open relay ----------------------------------------------------------


def test_mail_rcpt_data_without_auth_are_refused(smtp_server: SmtpServer) -> None:
    for smtp in (smtp_server.starttls(), smtp_server.implicit()):
        for mail_from in (
            "<app@example.com>",
            "<>",
            "<postmaster@localhost>",
            "<a@[127.0.0.1]>",
        ):
            assert (
                reply(*smtp.docmd("MAIL", f"FROM:{mail_from}")) == replies.AUTH_REQUIRED
            )
        assert (
            reply(*smtp.docmd("RCPT", "TO:<victim@example.org>"))
            == replies.AUTH_REQUIRED
        )
        assert reply(*smtp.docmd("DATA")) == replies.AUTH_REQUIRED
        smtp.quit()


def test_helo_session_cannot_authenticate(
    smtp_server: SmtpServer, sender: Sender
) -> None:
    client = smtp_server.raw()
    assert client.command("HELO client.example") == "250 localhost"
    token = base64.b64encode(
        f"\0{sender.creds.smtp_username}\0{sender.creds.smtp_password}".encode()
    ).decode()
    assert client.command(f"AUTH PLAIN {token}") == replies.SEND_EHLO_FIRST
    assert client.command("MAIL FROM:<app@example.com>") == replies.AUTH_REQUIRED
    client.close()


# -- the accept path ----------------------------------------------------------------


def test_message_is_accepted_and_stored_like_ses(
    smtp_server: SmtpServer, sender: Sender
) -> None:
    smtp = smtp_server.starttls(login=sender.creds)
    msg = message(
        to="Someone <someone@example.net>",
        extra=(
            "Cc: other@example.org\r\n"
            "Message-ID: <client-chosen@client.example>\r\n"
            "Date: Tue, 01 Jul 2025 10:00:00 +0200\r\n"
            "X-SES-MESSAGE-TAGS: campaign=launch, team=growth\r\n"
            "X-SES-SOURCE-ARN: arn:aws:ses:us-east-1:123456789012:identity/example.com\r\n"
        ),
    )
    final = send(
        smtp, msg, ["someone@example.net", "other@example.org", "hidden@example.org"]
    )
    smtp.quit()
    match = ACCEPTED.match(final)
    assert match, final
    message_id = match.group(1)

    [row] = stored(smtp_server.settings, sender.account.id)
    assert row["id"] == message_id
    assert row["interface"] == "smtp"
    assert row["source"] == "app@example.com"
    assert row["from_domain"] == "example.com"
    assert row["subject"] == "Hi"
    assert row["tags"] == {"campaign": "launch", "team": "growth"}
    assert row["recipient_count"] == 3
    assert row["recipients"] == [
        ("someone@example.net", "queued"),
        ("other@example.org", "queued"),
        ("hidden@example.org", "queued"),
    ]
    raw = row["raw"]
    assert f"Message-ID: <{message_id}@localhost>\r\n".encode() in raw
    assert b"client-chosen" not in raw
    assert b"Date: Tue, 01 Jul 2025 10:00:00 +0200\r\n" in raw
    assert b"x-ses-" not in raw.lower()
    assert raw.endswith(b"\r\nHello.\r\n")


def test_date_is_added_when_missing(smtp_server: SmtpServer, sender: Sender) -> None:
    smtp = smtp_server.implicit(login=sender.creds)
    assert ACCEPTED.match(send(smtp, message(), ["someone@example.net"]))
    smtp.quit()
    [row] = stored(smtp_server.settings, sender.account.id)
    assert re.search(
        rb"\r\nDate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n",
        b"\r\n" + row["raw"],
    )


def test_several_messages_in_one_session(
    smtp_server: SmtpServer, sender: Sender
) -> None:
    smtp = smtp_server.starttls(login=sender.creds)
    ids = []
    for n in range(5):
        final = send(smtp, message(to=f"r{n}@example.net"), [f"r{n}@example.net"])
        ids.append(ACCEPTED.match(final).group(1))
        assert reply(*smtp.docmd("RSET")) == replies.OK
    smtp.quit()
    assert len(set(ids)) == 5
    assert [r["id"] for r in stored(smtp_server.settings, sender.account.id)] == ids


def test_unverified_envelope_sender_is_rejected(
    smtp_server: SmtpServer, sender: Sender
) -> None:
    smtp = smtp_server.starttls(login=sender.creds)
    final = send(
        smtp, message(), ["someone@example.net"], mail_from="bounce@elsewhere.example"
    )
    smtp.quit()
    assert final == replies.render(
        replies.MESSAGE_REJECTED,
        message="Email address is not verified. The following identities failed the"
        " check in region US-EAST-1: bounce@elsewhere.example",
    )
    assert stored(smtp_server.settings, sender.account.id) == []


def test_unverified_from_and_sender_headers_are_rejected(
    smtp_server: SmtpServer, sender: Sender
) -> None:
    smtp = smtp_server.starttls(login=sender.creds)
    final = send(
        smtp,
        message(sender="ceo@bank.example", extra="Sender: Ops <ops@other.example>\r\n"),
        ["someone@example.net"],
    )
    smtp.quit()
    assert final == (
        "554 5.7.1 Message rejected: Email address is not verified. The following"
        " identities failed the check in region US-EAST-1: App <ceo@bank.example>,"
        " Ops <ops@other.example>"
    )


def test_sandbox_requires_verified_recipients(
    smtp_server: SmtpServer, sandbox_sender: Sender
) -> None:
    smtp = smtp_server.starttls(login=sandbox_sender.creds)
    final = send(
        smtp, message(to="friend@example.net"), ["friend@example.net", "me@example.com"]
    )
    assert final == replies.render(
        replies.MESSAGE_REJECTED,
        message="Email address is not verified. The following identities failed the"
        " check in region US-EAST-1: friend@example.net",
    )
    verify_identity(
        smtp_server.settings, sandbox_sender.account.id, "friend@example.net"
    )
    time.sleep(1.1)  # the acceptor trusts its copy of verified identities for 1 s
    assert ACCEPTED.match(
        send(smtp, message(to="friend@example.net"), ["friend@example.net"])
    )
    smtp.quit()


def test_daily_quota_gives_454(smtp_server: SmtpServer, sender: Sender) -> None:
    set_account(smtp_server.settings, sender.account.id, max_24_hour_send=2)
    smtp = smtp_server.starttls(login=sender.creds)
    assert ACCEPTED.match(send(smtp, message(), ["a@example.net", "b@example.net"]))
    final = send(smtp, message(), ["c@example.net"])
    smtp.quit()
    assert final == "454 4.7.0 Throttling failure: Daily message quota exceeded."
    assert len(stored(smtp_server.settings, sender.account.id)) == 1


def test_send_rate_gives_454(smtp_server: SmtpServer, sender: Sender) -> None:
    set_account(smtp_server.settings, sender.account.id, max_send_rate=0.001)
    smtp = smtp_server.starttls(login=sender.creds)
    assert ACCEPTED.match(send(smtp, message(), ["a@example.net", "b@example.net"]))
    final = send(smtp, message(), ["c@example.net"])
    smtp.quit()
    assert final == "454 4.7.0 Throttling failure: Maximum sending rate exceeded."


def test_paused_account_is_refused(smtp_server: SmtpServer, sender: Sender) -> None:
    set_account(smtp_server.settings, sender.account.id, sending_enabled=False)
    smtp = smtp_server.starttls(login=sender.creds)
    final = send(smtp, message(), ["a@example.net"])
    smtp.quit()
    assert final == replies.render(replies.ACCOUNT_PAUSED, message="Account is paused.")


def test_configuration_set_header_is_checked(
    smtp_server: SmtpServer, sender: Sender
) -> None:
    smtp = smtp_server.starttls(login=sender.creds)
    final = send(
        smtp, message(extra="X-SES-CONFIGURATION-SET: nope\r\n"), ["a@example.net"]
    )
    smtp.quit()
    assert final == replies.render(
        replies.TRANSACTION_FAILED, message="Configuration set <nope> does not exist."
    )


def test_malformed_messages_get_554_transaction_failed(
    smtp_server: SmtpServer, sender: Sender
) -> None:
    smtp = smtp_server.starttls(login=sender.creds)
    no_from = b"To: a@example.net\r\nSubject: x\r\n\r\nbody\r\n"
    assert send(smtp, no_from, ["a@example.net"]) == replies.render(
        replies.TRANSACTION_FAILED, message="Missing required header 'From'."
    )
    boundary = "b"
    nested = "".join(
        f'Content-Type: multipart/mixed; boundary="{boundary}{i}"\r\n\r\n--{boundary}{i}\r\n'
        for i in range(40)
    )
    deep = message(
        extra="MIME-Version: 1.0\r\n" + nested.split("\r\n\r\n", 1)[0] + "\r\n",
        body=nested.split("\r\n\r\n", 1)[1] + "x\r\n",
    )
    final = send(smtp, deep, ["a@example.net"])
    assert final == replies.render(
        replies.TRANSACTION_FAILED,
        message="MIME parts are nested more than 30 levels deep.",
    )
    smtp.quit()
    assert stored(smtp_server.settings, sender.account.id) == []


def test_bad_envelope_addresses_get_553(
    smtp_server: SmtpServer, sender: Sender
) -> None:
    smtp = smtp_server.starttls(login=sender.creds)
    assert reply(*smtp.docmd("MAIL", "FROM:<no-at-sign>")) == replies.SENDER_INVALID
    assert reply(*smtp.docmd("MAIL", "FROM:<a@@b>")) == replies.SENDER_INVALID
    assert reply(*smtp.docmd("MAIL", "FROM:<app@example.com>")) == replies.SENDER_OK
    assert reply(*smtp.docmd("RCPT", "TO:<bad address@x>")) == replies.RECIPIENT_INVALID
    assert reply(*smtp.docmd("RCPT", "TO:<a@[127.0.0.1]>")) == replies.RECIPIENT_INVALID
    assert reply(*smtp.docmd("RCPT", "TO:<ok@example.net>")) == replies.RECIPIENT_OK
    smtp.quit()


def test_store_unavailable_gives_451(smtp_factory, sender: Sender) -> None:
    class Down(Acceptor):
        async def accept(self, submission: Submission) -> MessageId:
            raise StoreUnavailable("connection refused")

    server = smtp_factory(acceptor_class=Down)
    smtp = server.starttls(login=sender.creds)
    assert send(smtp, message(), ["a@example.net"]) == replies.TEMPORARY_FAILURE
    smtp.quit()


def test_redis_down_at_auth_gives_454(
    smtp_factory, smtp_settings, sender: Sender
) -> None:
    from tests.submission.conftest import start_smtp

    settings = smtp_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    server = start_smtp(settings)
    try:
        smtp = server.starttls()
        code, text = plain(smtp, sender.creds.smtp_username, sender.creds.smtp_password)
        assert f"{code} {text}" == replies.AUTH_TEMPORARY_FAILURE
        smtp.close()
    finally:
        server.stop()


# -- limits -------------------------------------------------------------------------


def test_size_is_advertised_and_enforced(smtp_factory, sender: Sender) -> None:
    server = smtp_factory(Limits(max_message_bytes=4000))
    smtp = server.starttls(login=sender.creds)
    assert smtp.esmtp_features["size"] == "4000"
    assert (
        reply(*smtp.docmd("MAIL", "FROM:<app@example.com> SIZE=4001"))
        == replies.SIZE_EXCEEDED
    )
    big = message(body=("x" * 70 + "\r\n") * 60)
    assert send(smtp, big, ["a@example.net"]) == replies.MESSAGE_TOO_LONG
    assert ACCEPTED.match(send(smtp, message(), ["a@example.net"]))
    smtp.quit()


def test_51st_recipient_gets_452(smtp_server: SmtpServer, sender: Sender) -> None:
    smtp = smtp_server.starttls(login=sender.creds)
    assert smtp.docmd("MAIL", "FROM:<app@example.com>")[0] == 250
    for n in range(50):
        assert (
            reply(*smtp.docmd("RCPT", f"TO:<r{n}@example.net>")) == replies.RECIPIENT_OK
        )
    assert (
        reply(*smtp.docmd("RCPT", "TO:<r50@example.net>"))
        == replies.TOO_MANY_RECIPIENTS
    )
    code, text = smtp.data(message())
    assert ACCEPTED.match(reply(code, text))
    smtp.quit()
    [row] = stored(smtp_server.settings, sender.account.id)
    assert row["recipient_count"] == 50


def test_long_line_in_data_is_refused(smtp_server: SmtpServer, sender: Sender) -> None:
    smtp = smtp_server.starttls(login=sender.creds)
    final = send(smtp, message(body="y" * 1200 + "\r\n"), ["a@example.net"])
    assert final == replies.LINE_TOO_LONG
    assert ACCEPTED.match(send(smtp, message(), ["a@example.net"]))
    smtp.quit()


def test_idle_client_is_disconnected(smtp_factory) -> None:
    server = smtp_factory(Limits(idle_seconds=0.5))
    client = server.raw()
    started = time.monotonic()
    assert client.read() == replies.IDLE_TIMEOUT
    assert client.closed()
    assert 0.4 < time.monotonic() - started < 3


def test_trickling_client_meets_the_session_deadline(smtp_factory) -> None:
    server = smtp_factory(Limits(idle_seconds=0.5, session_seconds=1.5))
    client = server.raw()
    started = time.monotonic()
    seen = []
    while True:
        time.sleep(0.2)
        try:
            client.send(b"NOOP\r\n")
            seen.append(client.read())
        except (EOFError, OSError):
            break
        if seen[-1] != replies.OK:
            break
    assert seen[-1] == replies.SESSION_TIMEOUT
    assert client.closed()
    assert 1.3 < time.monotonic() - started < 4


def test_slow_data_keeps_the_session_alive_until_the_deadline(
    smtp_factory, sender: Sender
) -> None:
    # Idle means no bytes at all: a body arriving slowly is not idle.
    server = smtp_factory(Limits(idle_seconds=0.5))
    client = server.raw()
    client.command("EHLO client.example")
    token = base64.b64encode(
        f"\0{sender.creds.smtp_username}\0{sender.creds.smtp_password}".encode()
    ).decode()
    assert client.command(f"AUTH PLAIN {token}") == replies.AUTH_SUCCESSFUL
    assert client.command("MAIL FROM:<app@example.com>") == replies.SENDER_OK
    assert client.command("RCPT TO:<a@example.net>") == replies.RECIPIENT_OK
    assert client.command("DATA") == replies.START_DATA
    for line in message().split(b"\r\n"):
        client.send(line + b"\r\n")
        time.sleep(0.2)
    assert ACCEPTED.match(client.command("."))
    client.close()


def test_commands_per_session_are_capped(smtp_factory) -> None:
    server = smtp_factory(Limits(commands_per_session=5))
    client = server.raw()
    for _ in range(5):
        assert client.command("NOOP") == replies.OK
    assert client.command("NOOP") == replies.TOO_MANY_COMMANDS
    assert client.closed()


def test_unknown_commands_are_not_echoed(smtp_server: SmtpServer) -> None:
    client = smtp_server.raw()
    assert client.command("XYZZY <script>") == replies.COMMAND_UNRECOGNIZED
    assert client.command("VRFY postmaster") == replies.NOT_IMPLEMENTED
    assert client.command("EXPN staff") == replies.NOT_IMPLEMENTED
    assert client.command("HELP") == replies.HELP
    client.close()


def test_connections_over_the_cap_get_421(smtp_factory) -> None:
    server = smtp_factory(Limits(max_connections=1))
    first = server.raw()
    second = server.raw()
    assert second.greeting == replies.TOO_MANY_CONNECTIONS
    assert second.closed()
    assert first.command("NOOP") == replies.OK
    first.close()
    time.sleep(0.2)
    third = server.raw()
    assert third.greeting.startswith("220 ")
    third.close()


# -- SMTP smuggling and STARTTLS injection --------------------------------------------


@pytest.mark.parametrize(
    "fake_end", [b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\n.\n", b"\r\n.\r"]
)
def test_smuggled_message_stays_content(
    smtp_server: SmtpServer, sender: Sender, fake_end: bytes
) -> None:
    client = smtp_server.raw()
    client.command("EHLO client.example")
    token = base64.b64encode(
        f"\0{sender.creds.smtp_username}\0{sender.creds.smtp_password}".encode()
    ).decode()
    assert client.command(f"AUTH PLAIN {token}") == replies.AUTH_SUCCESSFUL
    smuggled = (
        b"MAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
        b"From: ceo@example.com\r\nTo: victim@example.org\r\nSubject: smuggled\r\n\r\n"
        b"Pay now.\r\n"
    )
    client.send(b"MAIL FROM:<app@example.com>\r\n")
    assert client.read() == replies.SENDER_OK
    assert client.command("RCPT TO:<someone@example.net>") == replies.RECIPIENT_OK
    assert client.command("DATA") == replies.START_DATA
    client.send(message() + b"first" + fake_end + smuggled + b".\r\n")
    final = client.read()
    assert ACCEPTED.match(final), final
    # Nothing more was answered: the smuggled commands were never commands.
    assert client.command("NOOP") == replies.OK
    client.close()

    [row] = stored(smtp_server.settings, sender.account.id)
    assert row["recipients"] == [("someone@example.net", "queued")]
    assert b"RCPT TO:<victim@example.org>" in row["raw"]
    assert b"Pay now." in row["raw"]
    # Bare CR and LF were normalised before the message was stored (and signed).
    raw = row["raw"]
    assert raw.count(b"\r") == raw.count(b"\n") == raw.count(b"\r\n")


def test_starttls_command_injection_is_discarded(smtp_server: SmtpServer) -> None:
    client = smtp_server.raw(implicit=False)
    client.command("EHLO client.example")
    client.send(b"STARTTLS\r\nNOOP\r\n")
    assert client.read() == replies.READY_TO_START_TLS
    assert client.buffer == b""
    tls = client.context.wrap_socket(client.sock, server_hostname=HOST)
    client.sock = tls
    # The first reply in TLS answers our EHLO, not the injected NOOP.
    first = client.command("EHLO client.example")
    assert first.startswith("250-localhost"), first
    assert "AUTH LOGIN PLAIN" in first
    assert client.command("NOOP") == replies.OK
    client.close()


# -- TLS certificate ----------------------------------------------------------------


def test_self_signed_certificate_is_created_once_with_private_key(settings) -> None:
    from mta.submission import tls

    cert, key = tls.self_signed(settings.data_dir, "mail.example.test")
    assert (key.stat().st_mode & 0o777) == 0o600
    first = (cert.read_bytes(), key.read_bytes())
    again = tls.self_signed(settings.data_dir, "mail.example.test")
    assert again == (cert, key)
    assert (cert.read_bytes(), key.read_bytes()) == first
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)


def test_server_without_a_certificate_uses_a_self_signed_one(
    smtp_settings, sender: Sender
) -> None:
    from tests.submission.conftest import start_smtp

    settings = smtp_settings.model_copy(update={"tls_cert": None, "tls_key": None})
    server = start_smtp(settings)
    try:
        smtp = server.implicit(login=sender.creds)
        assert ACCEPTED.match(send(smtp, message(), ["a@example.net"]))
        smtp.quit()
        assert (settings.data_dir / "smtp-key.pem").exists()
    finally:
        server.stop()


def test_stdlib_asyncio_loop_works_too(smtp_factory, sender: Sender) -> None:
    # `sesame smtp` runs on uvloop when it is installed; this is the fallback.
    server = smtp_factory(Limits(idle_seconds=0.5), loop_factory=asyncio.new_event_loop)
    assert type(server.loop).__module__.startswith("asyncio")
    client = server.raw(implicit=False)
    client.command("EHLO client.example")
    client.send(b"STARTTLS\r\nNOOP\r\n")
    assert client.read() == replies.READY_TO_START_TLS
    client.sock = client.context.wrap_socket(client.sock, server_hostname=HOST)
    assert client.command("EHLO client.example").startswith("250-localhost")
    assert client.read() == replies.IDLE_TIMEOUT
    smtp = server.implicit(login=sender.creds)
    assert ACCEPTED.match(send(smtp, message(), ["a@example.net"]))
    smtp.quit()


# -- shutdown -------------------------------------------------------------------------


def test_close_lets_a_message_in_data_finish(smtp_factory, sender: Sender) -> None:
    server = smtp_factory()
    idle = server.raw()
    busy = server.raw()
    busy.command("EHLO client.example")
    token = base64.b64encode(
        f"\0{sender.creds.smtp_username}\0{sender.creds.smtp_password}".encode()
    ).decode()
    assert busy.command(f"AUTH PLAIN {token}") == replies.AUTH_SUCCESSFUL
    assert busy.command("MAIL FROM:<app@example.com>") == replies.SENDER_OK
    assert busy.command("RCPT TO:<a@example.net>") == replies.RECIPIENT_OK
    assert busy.command("DATA") == replies.START_DATA
    busy.send(message()[:20])
    closing = asyncio.run_coroutine_threadsafe(
        server.servers.close(grace=5), server.loop
    )
    assert idle.read() == replies.SHUTTING_DOWN
    assert idle.closed()
    busy.send(message()[20:] + b".\r\n")
    assert ACCEPTED.match(busy.read())
    assert busy.read() == replies.SHUTTING_DOWN
    assert busy.closed()
    closing.result(5)
    assert len(stored(server.settings, sender.account.id)) == 1


def test_run_serves_until_sigterm(smtp_settings, sender: Sender) -> None:
    import multiprocessing

    from mta.submission import server as submission_server
    from tests.support.api_server import free_port

    settings = smtp_settings.model_copy(
        update={"smtp_port": free_port(), "smtps_port": free_port()}
    )
    proc = multiprocessing.get_context("spawn").Process(
        target=submission_server.run, args=(settings,)
    )
    proc.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                smtp = smtplib.SMTP_SSL(
                    HOST, settings.smtps_port, timeout=10, context=_no_verify()
                )
                break
            except OSError:
                assert time.monotonic() < deadline, "sesame smtp did not start"
                time.sleep(0.1)
        smtp.ehlo("client.example")
        code, text = plain(smtp, sender.creds.smtp_username, sender.creds.smtp_password)
        assert code == 235, text
        assert ACCEPTED.match(send(smtp, message(), ["a@example.net"]))
        started = time.monotonic()
        proc.terminate()  # SIGTERM, with the session still open
        proc.join(15)
        assert proc.exitcode == 0
        assert time.monotonic() - started < 5  # nothing in DATA, so no grace wait
        # The open session was told why before the connection went away.
        assert reply(*smtp.getreply()) == replies.SHUTTING_DOWN
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()


def _no_verify() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
