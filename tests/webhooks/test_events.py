"""SES event-publishing JSON built from events rows, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mta import events
from mta.events import EventRow, MessageRow
from tests.webhooks.conftest import RAW

SENT = datetime(2024, 5, 23, 19, 58, 31, 123456, tzinfo=UTC)
LATER = SENT + timedelta(seconds=12)


def message(raw: bytes = RAW, **changes: Any) -> MessageRow:
    fields: dict[str, Any] = {
        "id": "0100018fab-abc-000000",
        "account_id": "123456789012",
        "source": "Shop <shop@example.com>",
        "from_domain": "example.com",
        "head": raw[: events.HEADER_FETCH_BYTES],
        "raw_size": len(raw),
        "configuration_set": None,
        "tags": None,
        "created_at": SENT,
        "destination": ("reader@example.net", "second@example.net"),
    }
    fields.update(changes)
    return MessageRow(**fields)


def row(event_type: str, detail: dict[str, Any] | None = None, **changes: Any):
    fields: dict[str, Any] = {
        "id": 42,
        "account_id": "123456789012",
        "message_id": "0100018fab-abc-000000",
        "recipient_id": 7,
        "event_type": event_type,
        "recipient": "reader@example.net",
        "bounce_type": None,
        "bounce_subtype": None,
        "detail": detail,
        "created_at": LATER,
    }
    fields.update(changes)
    return EventRow(**fields)


def render(event: EventRow, mail: MessageRow | None = None) -> dict[str, Any]:
    return events.render(
        event, mail if mail is not None else message(), reporting_mta="mta.test"
    )


def test_mail_object():
    record = render(row("send", {"recipients": 2}, recipient=None, recipient_id=None))
    assert record["eventType"] == "Send"
    assert record["eventId"] == "42"
    assert record["send"] == {}
    mail = record["mail"]
    assert mail["timestamp"] == "2024-05-23T19:58:31.123Z"
    assert mail["source"] == "Shop <shop@example.com>"
    assert mail["sendingAccountId"] == "123456789012"
    assert mail["messageId"] == "0100018fab-abc-000000"
    assert mail["destination"] == ["reader@example.net", "second@example.net"]
    assert mail["headersTruncated"] is False
    assert mail["headers"][:3] == [
        {"name": "Message-ID", "value": "<m1@localhost>"},
        {"name": "Date", "value": "Thu, 23 May 2024 19:58:31 +0000"},
        {"name": "From", "value": "Shop <shop@example.com>"},
    ]
    assert mail["commonHeaders"] == {
        "from": ["Shop <shop@example.com>"],
        "to": ["reader@example.net", "Second <second@example.net>"],
        "date": "Thu, 23 May 2024 19:58:31 +0000",
        "messageId": "<m1@localhost>",
        "subject": "Your order has shipped \u2713",
    }
    assert mail["tags"] == {"ses:from-domain": ["example.com"]}


def test_tags_name_the_configuration_set_and_custom_tags():
    mail = render(
        row("send"),
        message(configuration_set="cs1", tags={"campaign": "spring", "n": "1"}),
    )["mail"]
    assert mail["tags"] == {
        "ses:configuration-set": ["cs1"],
        "ses:from-domain": ["example.com"],
        "campaign": ["spring"],
        "n": ["1"],
    }


def test_folded_and_cc_headers():
    raw = (
        b"From: =?utf-8?q?J=C3=B6rg?= <j@example.com>\r\n"
        b"To: a@example.net,\r\n\tb@example.net\r\n"
        b"Cc: c@example.net\r\n"
        b"Subject: a folded\r\n subject\r\n"
        b"\r\nbody\r\n"
    )
    mail = render(row("send"), message(raw))["mail"]
    assert {"name": "To", "value": "a@example.net,\tb@example.net"} in mail["headers"]
    common = mail["commonHeaders"]
    assert common["from"] == ["Jörg <j@example.com>"]
    assert common["to"] == ["a@example.net", "b@example.net"]
    assert common["cc"] == ["c@example.net"]
    assert common["subject"] == "a folded subject"


def test_headers_are_truncated_at_10_kb():
    filler = b"".join(b"X-Filler-%04d: %s\r\n" % (n, b"x" * 80) for n in range(200))
    raw = b"From: a@example.com\r\n" + filler + b"Subject: late\r\n\r\nbody"
    mail = render(row("send"), message(raw))["mail"]
    assert mail["headersTruncated"] is True
    size = sum(len(h["name"]) + len(h["value"]) + 4 for h in mail["headers"])
    assert size <= 10 * 1024
    assert mail["headers"][0] == {"name": "From", "value": "a@example.com"}
    # commonHeaders still comes from the whole (fetched) header block.
    assert mail["commonHeaders"]["subject"] == "late"


def test_a_header_block_longer_than_the_fetch_is_truncated():
    filler = b"X-Filler: " + b"y" * 70 + b"\r\n"
    raw = filler * 1000 + b"\r\nbody"
    head = raw[: events.HEADER_FETCH_BYTES]
    headers, truncated = events.parse_headers(head, len(raw))
    assert truncated is True and headers
    headers, truncated = events.parse_headers(filler * 3, len(filler * 3))
    assert (len(headers), truncated) == (3, False)


def test_delivery():
    detail = {
        "timestamp": "2024-05-23T19:58:43.5+00:00",
        "processingTimeMillis": 12000,
        "smtpResponse": "250 2.0.0 OK",
        "reportingMTA": "mx1.example.net",
    }
    assert render(row("delivery", detail))["delivery"] == {
        "timestamp": "2024-05-23T19:58:43.500Z",
        "processingTimeMillis": 12000,
        "recipients": ["reader@example.net"],
        "smtpResponse": "250 2.0.0 OK",
        "reportingMTA": "mta.test",
    }


def test_bounce_from_a_dsn_keeps_its_reporter_and_feedback_id():
    detail = {
        "action": "failed",
        "status": "5.1.1",
        "diagnosticCode": "smtp; 550 5.1.1 user unknown",
        "reportingMTA": "dns; mx.example.net",
        "remoteMta": "dns; mx.example.net [192.0.2.9]",
        "remoteMtaIp": "192.0.2.9",
        "feedbackId": "abc123",
    }
    bounce = render(
        row("bounce", detail, bounce_type="Permanent", bounce_subtype="General")
    )["bounce"]
    assert bounce == {
        "bounceType": "Permanent",
        "bounceSubType": "General",
        "bouncedRecipients": [
            {
                "emailAddress": "reader@example.net",
                "action": "failed",
                "status": "5.1.1",
                "diagnosticCode": "smtp; 550 5.1.1 user unknown",
            }
        ],
        "timestamp": "2024-05-23T19:58:43.123Z",
        "feedbackId": "abc123",
        "reportingMTA": "dns; mx.example.net",
        "remoteMtaIp": "192.0.2.9",
    }


def test_expiry_bounce_written_by_the_sweeper():
    detail = {
        "action": "failed",
        "status": "4.4.7",
        "diagnosticCode": "delivery time expired",
    }
    bounce = render(
        row("bounce", detail, bounce_type="Transient", bounce_subtype="General")
    )["bounce"]
    assert (bounce["bounceType"], bounce["bounceSubType"]) == ("Transient", "General")
    assert bounce["bouncedRecipients"][0]["status"] == "4.4.7"
    assert bounce["feedbackId"] == "42"
    assert bounce["reportingMTA"] == "dsn; mta.test"
    assert "remoteMtaIp" not in bounce


def test_delivery_delay():
    expires = SENT + timedelta(hours=14)
    detail = {
        "delayType": "MailboxFull",
        "status": "4.2.2",
        "diagnosticCode": "smtp; 452 4.2.2 mailbox full",
        "expirationTime": expires.isoformat(),
        "nextAttemptAt": LATER.isoformat(),
    }
    assert render(row("delivery_delay", detail))["deliveryDelay"] == {
        "timestamp": "2024-05-23T19:58:43.123Z",
        "delayType": "MailboxFull",
        "expirationTime": "2024-05-24T09:58:31.123Z",
        "reportingMTA": "mta.test",
        "delayedRecipients": [
            {
                "emailAddress": "reader@example.net",
                "status": "4.2.2",
                "diagnosticCode": "smtp; 452 4.2.2 mailbox full",
            }
        ],
    }
    # A delay from a DSN has no expiry of its own: the recipient row's is used.
    delay = render(row("delivery_delay", {"status": "4.4.1"}, expires_at=expires))
    assert delay["deliveryDelay"]["expirationTime"] == "2024-05-24T09:58:31.123Z"
    assert delay["deliveryDelay"]["delayType"] == "Undetermined"


@pytest.mark.parametrize(
    ("event_type", "detail", "key", "expected"),
    [
        ("reject", None, "reject", {"reason": "Bad content"}),
        ("reject", {"reason": "Virus"}, "reject", {"reason": "Virus"}),
        (
            "rendering_failure",
            {"errorMessage": "Attribute 'name' is not present", "templateName": "T1"},
            "failure",
            {"errorMessage": "Attribute 'name' is not present", "templateName": "T1"},
        ),
    ],
)
def test_reject_and_rendering_failure(event_type, detail, key, expected):
    record = render(row(event_type, detail))
    assert record["eventType"] == events.event_type_name(event_type)
    assert record[key] == expected


def test_event_type_names():
    assert [events.event_type_name(t) for t in events.EVENT_TYPES] == [
        "Send",
        "Reject",
        "Delivery",
        "Bounce",
        "Complaint",
        "DeliveryDelay",
        "Rendering Failure",
    ]


def test_an_event_whose_message_is_gone():
    record = events.render(row("complaint", {}), None, reporting_mta="mta.test")
    assert record["mail"] == {
        "timestamp": "2024-05-23T19:58:43.123Z",
        "sendingAccountId": "123456789012",
        "messageId": "0100018fab-abc-000000",
        "destination": ["reader@example.net"],
    }
    assert record["complaint"]["complaintSubType"] is None


def test_iso():
    assert events.iso(datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02T03:04:05.000Z"
    naive_offset = "2024-01-02T03:04:05.987654+02:00"
    assert events.iso(naive_offset) == "2024-01-02T01:04:05.987Z"
    assert events.iso("not a date") == "not a date"
    assert events.iso(None) is None
