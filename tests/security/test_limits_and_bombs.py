"""MIME bombs, oversize messages and overlong lines: refused quickly, or made safe.

Over the API (SendRawEmail, SendEmail, the request body itself), SMTP submission
and the inbound MX. A refusal carries SES's error and writes nothing; a
refusal or an acceptance comes within seconds; every server keeps serving.
"""

from __future__ import annotations

import time

import httpx
import pytest
from botocore.exceptions import ClientError

from mta import message
from mta.submission import Limits
from tests.security.conftest import messages_of, rows, send_signed, start_smtp

HEAD = b"From: sender@alice.example\r\nTo: someone@dest.test\r\nSubject: bomb\r\n"


def nested(depth: int) -> bytes:
    """multipart/mixed inside multipart/mixed, depth levels deep."""
    body = b"Content-Type: text/plain\r\n\r\ninnermost\r\n"
    for level in range(depth):
        boundary = f"b{level}".encode()
        body = (
            b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n"
            b"--" + boundary + b"\r\n" + body + b"\r\n--" + boundary + b"--\r\n"
        )
    return HEAD + b"MIME-Version: 1.0\r\n" + body


def rfc822_chain(depth: int) -> bytes:
    body = b"Subject: innermost\r\n\r\nhello\r\n"
    for _ in range(depth):
        body = b"Content-Type: message/rfc822\r\n\r\n" + body
    return HEAD + b"MIME-Version: 1.0\r\n" + body


def many_parts(count: int) -> bytes:
    part = b"--p\r\nContent-Type: text/plain\r\n\r\nx\r\n"
    return (
        HEAD
        + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=p\r\n\r\n"
        + part * count
        + b"--p--\r\n"
    )


BOMBS = {
    f"nested {message.MAX_MIME_DEPTH + 1} deep": nested(message.MAX_MIME_DEPTH + 1),
    "nested 5000 deep": nested(5000),
    "message/rfc822 chain 200 deep": rfc822_chain(200),
    f"{message.MAX_MIME_PARTS + 1} parts": many_parts(message.MAX_MIME_PARTS + 1),
    "100000 parts": many_parts(100_000),
    "1 MiB header field": HEAD + b"X-Big: " + b"a" * (1 << 20) + b"\r\n\r\nb\r\n",
    "1 MiB folded header": HEAD
    + b"X-Big: a\r\n"
    + (b" " + b"b" * 900 + b"\r\n") * 1200
    + b"\r\nbody\r\n",
    "5000 header fields": HEAD + b"X-N: 1\r\n" * 5000 + b"\r\nbody\r\n",
    "NUL in header": HEAD.replace(b"bomb", b"bo\x00mb") + b"\r\nbody\r\n",
    "10000 false boundaries": (
        HEAD
        + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=p\r\n\r\n"
        + b"--p\r\n\r\n"
        + b"--pX\r\n" * 20000
        + b"--p--\r\n"
    ),
}


@pytest.mark.parametrize("name", BOMBS)
def test_mime_bombs_over_the_api_are_refused_quickly(alice, name):
    started = time.monotonic()
    with pytest.raises(ClientError) as excinfo:
        alice.ses.send_raw_email(RawMessage={"Data": BOMBS[name]})
    assert time.monotonic() - started < 10
    assert excinfo.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert messages_of(alice.server.settings, alice.id) == 0
    # The API still answers promptly afterwards.
    alice.ses.get_send_quota()


def test_nesting_and_parts_up_to_the_caps_are_accepted(alice):
    alice.ses.send_raw_email(RawMessage={"Data": nested(message.MAX_MIME_DEPTH - 1)})
    alice.ses.send_raw_email(RawMessage={"Data": many_parts(message.MAX_MIME_PARTS)})
    assert messages_of(alice.server.settings, alice.id) == 2


def test_message_over_the_size_limit_is_refused(alice):
    limit = alice.server.settings.max_message_bytes
    data = HEAD + b"\r\n" + (b"a" * 76 + b"\r\n") * (limit // 78 + 10)
    assert len(data) > limit
    with pytest.raises(ClientError) as excinfo:
        alice.ses.send_raw_email(RawMessage={"Data": data})
    assert excinfo.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert "Message length" in excinfo.value.response["Error"]["Message"]
    assert messages_of(alice.server.settings, alice.id) == 0


def test_request_body_over_twenty_megabytes_is_refused_unread(alice):
    from api.app import MAX_BODY_BYTES

    body = b"Action=GetSendQuota&Pad=" + b"a" * (MAX_BODY_BYTES + 1)
    response = send_signed(alice.server.url, alice.creds, "POST", "/", body)
    assert response.status_code == 413
    assert alice.ses.get_send_quota()["SentLast24Hours"] == 0.0


def lines_of(settings, account_id) -> list[bytes]:
    [(raw,)] = rows(
        settings, "select raw from messages where account_id = %s", account_id
    )
    return bytes(raw).split(b"\r\n")


def test_overlong_lines_are_re_encoded_not_sent_as_is(alice):
    long_line = "word " * 400 + "x" * 3000  # 5000 characters, one of them unbroken
    alice.ses.send_email(
        Source="sender@alice.example",
        Destination={"ToAddresses": ["someone@dest.test"]},
        Message={"Subject": {"Data": "s"}, "Body": {"Text": {"Data": long_line}}},
    )
    assert max(map(len, lines_of(alice.server.settings, alice.id))) <= 998


@pytest.mark.parametrize("length", [998, 999, 1000, 1001, 5000, 100_000])
def test_overlong_lines_in_raw_messages_are_re_encoded(api, length):
    from tests.security.conftest import new_tenant

    tenant = new_tenant(api, f"long{length}", "alice.example")
    tenant.ses.send_raw_email(
        RawMessage={"Data": HEAD + b"\r\n" + b"y" * length + b"\r\n"}
    )
    assert max(map(len, lines_of(api.settings, tenant.id))) <= 998


def test_overlong_header_line_is_folded_or_refused(alice):
    data = HEAD + b"X-Long: " + b"z" * 2000 + b"\r\n\r\nbody\r\n"
    try:
        alice.ses.send_raw_email(RawMessage={"Data": data})
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "InvalidParameterValue"
        return
    assert max(map(len, lines_of(alice.server.settings, alice.id))) <= 998


# -- SMTP submission ---------------------------------------------------------------------


def test_smtp_line_over_1000_octets_is_refused_and_nothing_is_stored(api, alice):
    server = start_smtp(api.settings)
    try:
        client = server.raw()
        assert client.command("EHLO client.example").startswith("250")
        import base64

        token = base64.b64encode(
            f"\0{alice.creds.smtp_username}\0{alice.creds.smtp_password}".encode()
        ).decode()
        assert client.command(f"AUTH PLAIN {token}").startswith("235")
        assert client.command("MAIL FROM:<sender@alice.example>").startswith("250")
        assert client.command("RCPT TO:<someone@dest.test>").startswith("250")
        assert client.command("DATA").startswith("354")
        client.send(HEAD + b"\r\n" + b"q" * 1100 + b"\r\nend\r\n.\r\n")
        assert client.read().startswith("500")
        # A command line over the limit is refused too, and the session goes on.
        assert client.command("NOOP " + "n" * 2000).startswith("500")
        assert client.command("NOOP").startswith("250")
        client.close()
    finally:
        server.stop()
    assert messages_of(api.settings, alice.id) == 0


def test_smtp_size_over_the_limit_is_refused_at_mail_and_at_data(api, alice):
    server = start_smtp(api.settings, Limits(max_message_bytes=50_000))
    try:
        client = server.implicit(login=alice.creds)
        assert client.docmd("MAIL", "FROM:<sender@alice.example> SIZE=50001")[0] == 552
        client.docmd("RSET")
        assert client.docmd("MAIL", "FROM:<sender@alice.example>")[0] == 250
        assert client.docmd("RCPT", "TO:<someone@dest.test>")[0] == 250
        code, _ = client.data(HEAD + b"\r\n" + (b"a" * 70 + b"\r\n") * 1000)
        assert code == 552
        assert client.noop()[0] == 250
        client.close()
    finally:
        server.stop()
    assert messages_of(api.settings, alice.id) == 0


@pytest.mark.parametrize("name", ["nested 5000 deep", "100000 parts"])
def test_smtp_mime_bombs_are_refused(api, alice, name):
    server = start_smtp(api.settings)
    try:
        client = server.implicit(login=alice.creds)
        client.docmd("MAIL", "FROM:<sender@alice.example>")
        client.docmd("RCPT", "TO:<someone@dest.test>")
        started = time.monotonic()
        code, _ = client.data(BOMBS[name])
        assert time.monotonic() - started < 10
        assert code == 554
        assert client.noop()[0] == 250
        client.close()
    finally:
        server.stop()
    assert messages_of(api.settings, alice.id) == 0


# -- the inbound MX ----------------------------------------------------------------------


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


def dsn_wrapped(depth: int) -> bytes:
    """A delivery report buried inside depth levels of multipart."""
    report = (
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=r\r\n"
        b"\r\n--r\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.dest.test\r\n\r\nFinal-Recipient: rfc822; a@dest.test\r\n"
        b"Action: failed\r\nStatus: 5.1.1\r\n\r\n--r--\r\n"
    )
    body = report
    for level in range(depth):
        boundary = f"w{level}".encode()
        body = (
            b"Content-Type: multipart/mixed; boundary="
            + boundary
            + b"\r\n\r\n--"
            + boundary
            + b"\r\n"
            + body
            + b"\r\n--"
            + boundary
            + b"--\r\n"
        )
    return b"From: MAILER-DAEMON@dest.test\r\nSubject: failure\r\n" + body


@pytest.mark.parametrize(
    "data",
    [dsn_wrapped(20_000), many_parts(100_000), nested(20_000)],
    ids=["report-under-20000-levels", "100000-parts", "nested-20000"],
)
def test_mx_mime_bombs_record_nothing_and_the_mx_keeps_serving(mx, data):
    from tests.inbound.conftest import FBL_ADDRESS

    events = rows(mx.settings, "select count(*) from events")[0][0]
    started = time.monotonic()
    code, _ = mx.send(data, rcpt=FBL_ADDRESS)
    assert time.monotonic() - started < 15
    assert code in (250, 552, 554)
    assert rows(mx.settings, "select count(*) from events")[0][0] == events
    with mx.client() as client:
        assert client.noop()[0] == 250


def test_api_answers_other_clients_while_a_bomb_is_parsed(alice, bob):
    """A big hostile message must not stall the API's event loop for long."""
    import threading

    done = threading.Event()

    def bomb() -> None:
        try:
            alice.ses.send_raw_email(RawMessage={"Data": many_parts(100_000)})
        except ClientError:
            pass
        done.set()

    worker = threading.Thread(target=bomb)
    worker.start()
    slowest = 0.0
    while not done.is_set():
        started = time.monotonic()
        response = httpx.get(bob.server.url + "/healthz", timeout=30)
        assert response.status_code == 200
        slowest = max(slowest, time.monotonic() - started)
    worker.join()
    assert slowest < 5.0
