"""The inbound MX end to end: reports over SMTP become events, states and suppressions."""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.inbound.conftest import DOMAIN, FBL_ADDRESS, corpus, forge, query


def reports(kind: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "sesame_mx_reports_total", {"kind": kind, "result": result}
    )
    return value or 0.0


def events(settings: Any, recipient_id: int) -> list[tuple[Any, ...]]:
    return query(
        settings,
        "select event_type, bounce_type, bounce_subtype, detail, feedback_id,"
        " recipient, message_id, account_id from events where recipient_id = %s"
        " order by id",
        recipient_id,
    )


def state(settings: Any, recipient_id: int) -> str:
    return str(
        query(settings, "select state from recipients where id = %s", recipient_id)[0][
            0
        ]
    )


def suppression(settings: Any, account_id: str, address: str) -> tuple[Any, ...] | None:
    rows = query(
        settings,
        "select reason, message_id, feedback_id from suppressions"
        " where account_id = %s and address = %s",
        account_id,
        address,
    )
    return rows[0] if rows else None


# file, recipient address, bounce type and subtype, suppressed
DSNS = [
    ("postfix_user_unknown.eml", "nobody@example.net", "Permanent", "NoEmail", True),
    ("gmail_no_such_user.eml", "gone.away@example.net", "Permanent", "NoEmail", True),
    (
        "exim_mailbox_full.eml",
        "full.box@example.org",
        "Transient",
        "MailboxFull",
        False,
    ),
    (
        "exchange_access_denied.eml",
        "pat@corp.example.org",
        "Permanent",
        "General",
        False,
    ),
    # 5.7.1 and 5.7.26: policy and authentication blocks say nothing of the address.
    (
        "exchange_access_denied.eml",
        "lee@corp.example.org",
        "Permanent",
        "General",
        False,
    ),
    ("gmail_unauthenticated.eml", "sam@example.net", "Permanent", "General", False),
    ("multi_recipient.eml", "ann@example.org", "Permanent", "NoEmail", True),
    # Names josé@, not the row's address: one VERP token means one recipient.
    ("global_dsn.eml", "jose@intl.example.org", "Permanent", "NoEmail", True),
    ("text_plain_status.eml", "closed@old.example.net", "Permanent", "General", False),
]


@pytest.mark.parametrize(("name", "address", "kind", "subtype", "suppressed"), DSNS)
def test_dsn_to_the_verp_address_records_a_bounce(
    mx, make_row, mx_settings, name, address, kind, subtype, suppressed
):
    row = make_row(address, state="delivered")
    before = reports("dsn", "attributed")

    code, reply = mx.send(corpus(name, row.token), rcpt=row.token)

    assert (code, reply) == (250, b"2.0.0 Ok: report received")
    [(event_type, bounce_type, bounce_subtype, detail, feedback_id, *rest)] = events(
        mx_settings, row.recipient_id
    )
    assert (event_type, bounce_type, bounce_subtype) == ("bounce", kind, subtype)
    assert rest == [address, row.message_id, row.account_id]
    assert detail["action"] == "failed"
    assert detail["feedbackId"] == feedback_id and len(feedback_id) == 32
    assert detail["status"].startswith("5.")
    assert detail["diagnosticCode"]
    assert detail["reportingMTA"].startswith("dns;")
    assert state(mx_settings, row.recipient_id) == "bounced"
    found = suppression(mx_settings, row.account_id, address)
    if suppressed:
        assert found == ("BOUNCE", row.message_id, feedback_id)
    else:
        assert found is None
    assert reports("dsn", "attributed") == before + 1


def test_bounce_detail_matches_the_dsn(mx, make_row, mx_settings):
    row = make_row("gone.away@example.net")
    mx.send(corpus("gmail_no_such_user.eml", row.token), rcpt=row.token)
    [(_, _, _, detail, feedback_id, *_)] = events(mx_settings, row.recipient_id)
    assert detail == {
        "action": "failed",
        "status": "5.1.1",
        "diagnosticCode": detail["diagnosticCode"],
        "reportingMTA": "dns; mx.example.net",
        "remoteMta": "dns; mx.example.net. (192.0.2.80, the server for the domain"
        " example.net.)",
        "remoteMtaIp": "192.0.2.80",
        "feedbackId": feedback_id,
    }
    assert detail["diagnosticCode"].startswith("smtp; 550-5.1.1 The email account")


@pytest.mark.parametrize("initial", ["delivered", "sending", "deferred"])
def test_async_bounce_ends_a_recipient_in_any_sent_state(
    mx, make_row, mx_settings, initial
):
    row = make_row("nobody@example.net", state=initial)
    mx.send(corpus("postfix_user_unknown.eml", row.token), rcpt=row.token)
    [(st, lease)] = query(
        mx_settings,
        "select state, lease_token from recipients where id = %s",
        row.recipient_id,
    )
    assert (st, lease) == ("bounced", None)


def test_delayed_dsn_records_a_delay_and_keeps_the_state(mx, make_row, mx_settings):
    row = make_row("slow@example.org", state="delivered")
    before = reports("dsn", "attributed")

    code, _ = mx.send(corpus("delayed_447.eml", row.token), rcpt=row.token)

    assert code == 250
    [(event_type, bounce_type, _, detail, feedback_id, *_)] = events(
        mx_settings, row.recipient_id
    )
    assert (event_type, bounce_type) == ("delivery_delay", None)
    assert detail["delayType"] == "TransientCommunicationFailure"
    assert detail["status"] == "4.4.7"
    assert detail["reportingMTA"] == "dns; queue.example.org"
    assert detail["feedbackId"] == feedback_id
    assert state(mx_settings, row.recipient_id) == "delivered"
    assert suppression(mx_settings, row.account_id, "slow@example.org") is None
    assert reports("dsn", "attributed") == before + 1


def test_success_notification_is_ignored(mx, make_row, mx_settings):
    row = make_row("bob@example.org")
    before = reports("dsn", "ignored")
    code, _ = mx.send(corpus("multi_recipient.eml", row.token), rcpt=row.token)
    assert code == 250
    assert events(mx_settings, row.recipient_id) == []
    assert state(mx_settings, row.recipient_id) == "delivered"
    assert reports("dsn", "ignored") == before + 1


def test_abuse_report_records_a_complaint_and_suppresses(mx, make_row, mx_settings):
    row = make_row("reader@example.net")
    before = reports("arf", "attributed")

    # Sent to a feedback-loop address: attributed through Original-Mail-From.
    code, _ = mx.send(
        corpus("arf_abuse.eml", row.token), rcpt=FBL_ADDRESS, mail_from="fbl@isp.test"
    )

    assert code == 250
    [(event_type, bounce_type, _, detail, feedback_id, *_)] = events(
        mx_settings, row.recipient_id
    )
    assert (event_type, bounce_type) == ("complaint", None)
    assert detail == {
        "complaintFeedbackType": "abuse",
        "userAgent": "ExampleNet-Feedback/2.0",
        "arrivalDate": "2024-05-23T19:58:31.000+00:00",
        "feedbackId": feedback_id,
    }
    assert suppression(mx_settings, row.account_id, "reader@example.net") == (
        "COMPLAINT",
        row.message_id,
        feedback_id,
    )
    assert state(mx_settings, row.recipient_id) == "delivered"
    assert reports("arf", "attributed") == before + 1


def test_not_spam_report_records_without_suppressing(mx, make_row, mx_settings):
    row = make_row("fan@example.net")
    code, _ = mx.send(corpus("arf_not_spam.eml", row.token), rcpt=row.token)
    assert code == 250
    [(event_type, _, _, detail, *_)] = events(mx_settings, row.recipient_id)
    assert event_type == "complaint"
    assert detail["complaintFeedbackType"] == "not-spam"
    assert suppression(mx_settings, row.account_id, "fan@example.net") is None


def test_account_without_complaint_suppression_keeps_the_address(
    mx, make_row, mx_settings, account
):
    query(
        mx_settings,
        "update accounts set suppressed_reasons = '{BOUNCE}' where id = %s"
        " returning id",
        account,
    )
    complained = make_row("reader@example.net")
    bounced = make_row("nobody@example.net")

    mx.send(corpus("arf_abuse.eml", complained.token))
    mx.send(corpus("postfix_user_unknown.eml", bounced.token), rcpt=bounced.token)

    assert [e[0] for e in events(mx_settings, complained.recipient_id)] == ["complaint"]
    assert suppression(mx_settings, account, "reader@example.net") is None
    assert suppression(mx_settings, account, "nobody@example.net")[0] == "BOUNCE"


def test_configuration_set_suppression_reasons_replace_the_account_s(
    mx, make_row, mx_settings, account
):
    # The account suppresses on both reasons; the set on neither.
    query(
        mx_settings,
        "insert into configuration_sets (account_id, name, suppressed_reasons)"
        " values (%s, 'transactional', '{}') returning name",
        account,
    )
    complained = make_row("reader@example.net")
    query(
        mx_settings,
        "update messages set configuration_set = 'transactional' where id = %s"
        " returning id",
        complained.message_id,
    )
    mx.send(corpus("arf_abuse.eml", complained.token))
    assert [e[0] for e in events(mx_settings, complained.recipient_id)] == ["complaint"]
    assert suppression(mx_settings, account, "reader@example.net") is None


def test_account_without_bounce_suppression_keeps_the_address(
    mx, make_row, mx_settings, account
):
    query(
        mx_settings,
        "update accounts set suppressed_reasons = '{}' where id = %s returning id",
        account,
    )
    row = make_row("nobody@example.net")
    mx.send(corpus("postfix_user_unknown.eml", row.token), rcpt=row.token)
    assert [e[0] for e in events(mx_settings, row.recipient_id)] == ["bounce"]
    assert state(mx_settings, row.recipient_id) == "bounced"
    assert suppression(mx_settings, account, "nobody@example.net") is None


def test_forged_token_is_dropped_and_counted(mx, make_row, mx_settings):
    row = make_row("nobody@example.net")
    forged = forge(row.token)
    before = reports("dsn", "forged")

    code, reply = mx.send(corpus("postfix_user_unknown.eml", forged), rcpt=forged)

    # The same reply as a recorded report: a token's validity is not observable.
    assert (code, reply) == (250, b"2.0.0 Ok: report received")
    assert events(mx_settings, row.recipient_id) == []
    assert state(mx_settings, row.recipient_id) == "delivered"
    assert suppression(mx_settings, row.account_id, "nobody@example.net") is None
    assert reports("dsn", "forged") == before + 1


def test_forged_complaint_is_dropped(mx, make_row, mx_settings):
    row = make_row("reader@example.net")
    before = reports("arf", "forged")
    mx.send(corpus("arf_abuse.eml", forge(row.token)))
    assert events(mx_settings, row.recipient_id) == []
    assert suppression(mx_settings, row.account_id, "reader@example.net") is None
    assert reports("arf", "forged") == before + 1


def test_report_without_our_token_is_unknown(mx, mx_settings):
    before = reports("dsn", "unknown")
    total = query(mx_settings, "select count(*) from events")[0][0]
    data = corpus("postfix_user_unknown.eml", "newsletter@elsewhere.example")
    code, _ = mx.send(data)
    assert code == 250
    assert query(mx_settings, "select count(*) from events")[0][0] == total
    assert reports("dsn", "unknown") == before + 1


def test_token_of_a_deleted_recipient_is_unknown(mx, make_row, mx_settings):
    row = make_row("nobody@example.net")
    query(
        mx_settings,
        "delete from messages where id = %s returning id",
        row.message_id,
    )
    before = reports("dsn", "unknown")
    code, _ = mx.send(corpus("postfix_user_unknown.eml", row.token), rcpt=row.token)
    assert code == 250
    assert events(mx_settings, row.recipient_id) == []
    assert reports("dsn", "unknown") == before + 1


def test_the_same_report_twice_records_once(mx, make_row, mx_settings):
    row = make_row("nobody@example.net")
    data = corpus("postfix_user_unknown.eml", row.token)
    before = reports("dsn", "ignored")

    assert mx.send(data, rcpt=row.token)[0] == 250
    # The retry went another way: a hop added its trace field on top.
    again = b"Received: from relay2.example.net by mx.sesame.test; now\r\n" + data
    assert mx.send(again, rcpt=row.token)[0] == 250

    assert len(events(mx_settings, row.recipient_id)) == 1
    assert query(
        mx_settings,
        "select count(*) from suppressions where account_id = %s",
        row.account_id,
    ) == [(1,)]
    assert reports("dsn", "ignored") == before + 1


def test_a_different_report_for_the_same_recipient_records_again(
    mx, make_row, mx_settings
):
    row = make_row("slow@example.org", state="deferred")
    first = corpus("delayed_447.eml", row.token)
    second = first.replace(
        b"Date: Sun, 19 May 2024 14:00:00", b"Date: Sun, 19 May 2024 18:00:00"
    )
    mx.send(first, rcpt=row.token)
    mx.send(second, rcpt=row.token)
    assert [e[0] for e in events(mx_settings, row.recipient_id)] == [
        "delivery_delay",
        "delivery_delay",
    ]


def _nested(depth: int) -> bytes:
    head = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
        for i in range(depth)
    )
    return (
        b"From: x@example.net\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b0\r\n"
        b"\r\n" + head + b"Content-Type: message/delivery-status\r\n\r\n"
        b"Final-Recipient: rfc822; a@example.net\r\nAction: failed\r\n"
        b"Status: 5.1.1\r\n"
    )


def _many_parts(count: int) -> bytes:
    part = (
        b"--p\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Final-Recipient: rfc822; a@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    )
    return (
        b"From: x@example.net\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=p\r\n"
        b"\r\n" + part * count + b"--p--\r\n"
    )


HOSTILE = {
    "empty": b"",
    "garbage": bytes(range(256)) * 64,
    "plain mail": b"Subject: Out of office\r\n\r\nI am away until Monday.\r\n",
    "deep nesting": _nested(10_000),
    "many parts": _many_parts(60_000),
    "folded 4 MB header": (
        b"X-Long: a\r\n" + (b" " + b"b" * 900 + b"\r\n") * 5000 + b"\r\nbody\r\n"
    ),
    "no recipients": (
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=q\r\n"
        b"\r\n--q\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; x\r\n\r\n--q--\r\n"
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_gets_a_clean_reply_and_changes_nothing(
    mx, make_row, mx_settings, name
):
    row = make_row("a@example.net")
    # The hostile body still carries a valid token, which must not help it.
    data = HOSTILE[name].replace(b"x@example.net", row.token.encode())
    total = query(mx_settings, "select count(*) from events")[0][0]
    before = reports("unknown", "unparseable")

    started = time.monotonic()
    code, reply = mx.send(data, rcpt=row.token)

    assert time.monotonic() - started < 10
    assert (code, reply) == (250, b"2.0.0 Ok: report received")
    assert query(mx_settings, "select count(*) from events")[0][0] == total
    assert state(mx_settings, row.recipient_id) == "delivered"
    assert reports("unknown", "unparseable") == before + 1


def test_overlong_line_is_refused_cleanly(mx, mx_settings):
    code, reply = mx.send(b"Subject: x\r\n\r\n" + b"a" * 5000 + b"\r\n")
    assert code == 500
    assert reply.startswith(b"5.5.2 Line too long")


def test_message_over_the_size_limit_is_refused(mx_factory):
    mx = mx_factory(max_message_bytes=64 * 1024)
    body = (b"x" * 998 + b"\r\n") * 80
    with mx.client() as smtp:
        smtp.ehlo("reporter.example.net")
        assert smtp.esmtp_features["size"] == str(64 * 1024)
        # Declared with SIZE (RFC 1870): refused at MAIL.
        code, reply = smtp.mail("", [f"SIZE={len(body)}"])
        assert (code, reply[:5]) == (552, b"5.3.4")
        # Undeclared: read to the end, then refused.
        assert smtp.mail("")[0] == 250
        assert smtp.rcpt(FBL_ADDRESS)[0] == 250
        code, reply = smtp.data(body)
        assert (code, reply[:5]) == (552, b"5.3.4")
        assert smtp.noop()[0] == 250  # the session goes on


@pytest.mark.parametrize(
    "address",
    [
        "someone@example.com",
        f"someone@sub.{DOMAIN}",
        f"someone@{DOMAIN}.evil.test",
        f"user%example.com@{DOMAIN}",
        f"user!example.com@{DOMAIN}",
        f'"user@example.com"@{DOMAIN}',
        "@relay.example.com:user@example.com",
        "postmaster",
    ],
)
def test_mail_for_other_domains_is_not_relayed(mx, address):
    with mx.client() as smtp:
        smtp.ehlo("relay-test.example.net")
        assert smtp.mail("spammer@example.com")[0] == 250
        code, reply = smtp.rcpt(address)
    assert code in (550, 553), reply
    if code == 550:
        assert reply == b"5.7.1 Relaying denied"


def test_recipients_at_the_return_path_domain_are_taken(mx):
    with mx.client() as smtp:
        smtp.ehlo("reporter.example.net")
        assert smtp.mail("") == (250, b"2.1.0 Ok")
        for address in (FBL_ADDRESS, f"Postmaster@{DOMAIN.upper()}", f"b-x-y@{DOMAIN}"):
            assert smtp.rcpt(address) == (250, b"2.1.5 Ok"), address


def test_recipient_limit(mx):
    with mx.client() as smtp:
        smtp.ehlo("reporter.example.net")
        smtp.mail("")
        for i in range(10):
            assert smtp.rcpt(f"r{i}@{DOMAIN}")[0] == 250
        assert smtp.rcpt(f"r10@{DOMAIN}") == (452, b"4.5.3 Too many recipients")


def test_no_auth_and_opportunistic_starttls(mx):
    with mx.client() as smtp:
        code, _ = smtp.ehlo("reporter.example.net")
        assert code == 250
        assert "auth" not in smtp.esmtp_features
        assert "starttls" in smtp.esmtp_features
        assert "enhancedstatuscodes" in smtp.esmtp_features
        assert smtp.docmd("AUTH", "PLAIN AGFiYwBkZWY=")[0] == 502
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        smtp.starttls(context=context)
        smtp.ehlo("reporter.example.net")
        assert "auth" not in smtp.esmtp_features
        assert smtp.docmd("AUTH", "LOGIN")[0] == 502
        assert smtp.mail("")[0] == 250
        assert smtp.rcpt(FBL_ADDRESS)[0] == 250
        assert smtp.data(b"Subject: hi\r\n\r\nnot a report\r\n")[0] == 250


def test_vrfy_and_expn_reveal_nothing(mx):
    with mx.client() as smtp:
        smtp.ehlo("reporter.example.net")
        assert smtp.docmd("VRFY", f"fbl@{DOMAIN}") == (
            502,
            b"5.5.1 Command not implemented",
        )
        assert smtp.docmd("EXPN", "staff")[0] == 502


def test_connection_rate_per_client(mx_factory, redis_client):
    mx = mx_factory(connections_per_window=3)
    for _ in range(3):
        with mx.client() as smtp:
            assert smtp.noop()[0] == 250
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        mx.client()
    assert refused.value.smtp_code == 421
    assert refused.value.smtp_error.startswith(b"4.7.0 Too many connections")
    ttl = redis_client.ttl("sesame:mx:rate:conn:127.0.0.1")
    assert 0 < ttl <= 60


def test_message_rate_per_client(mx_factory):
    mx = mx_factory(messages_per_window=2)
    with mx.client() as smtp:
        smtp.ehlo("reporter.example.net")
        for _ in range(2):
            assert smtp.mail("")[0] == 250
            smtp.rset()
        code, reply = smtp.mail("")
    assert (code, reply[:5]) == (450, b"4.7.0")


def test_concurrent_connections_per_client(mx_factory):
    mx = mx_factory(max_connections_per_ip=2)
    first, second = mx.client(), mx.client()
    try:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            mx.client()
        assert refused.value.smtp_code == 421
    finally:
        first.close()
        second.close()


def test_idle_client_is_disconnected(mx_factory):
    mx = mx_factory(idle_seconds=0.3)
    with socket.create_connection(("127.0.0.1", mx.port), timeout=5) as sock:
        data = b""
        while chunk := sock.recv(4096):  # until the server closes
            data += chunk
    assert b"421 4.4.2" in data


def test_session_deadline(mx_factory):
    mx = mx_factory(idle_seconds=5, session_seconds=0.6)
    with mx.client() as smtp:
        deadline = time.monotonic() + 5
        with pytest.raises(smtplib.SMTPServerDisconnected):
            while time.monotonic() < deadline:
                smtp.noop()
                time.sleep(0.1)


def test_a_json_detail_is_stored_as_json(mx, make_row, mx_settings):
    row = make_row("nobody@example.net")
    mx.send(corpus("postfix_user_unknown.eml", row.token), rcpt=row.token)
    [(kind,)] = query(
        mx_settings,
        "select jsonb_typeof(detail) from events where recipient_id = %s",
        row.recipient_id,
    )
    assert kind == "object"
    assert (
        json.loads(
            query(
                mx_settings,
                "select detail::text from events where recipient_id = %s",
                row.recipient_id,
            )[0][0]
        )["status"]
        == "5.1.1"
    )
