"""Events from real sends, bounces and complaints reach a loopback webhook consumer."""

from __future__ import annotations

from pathlib import Path

import pytest

from mta import verp
from mta.feedback.record import FeedbackRecorder
from tests.support.api_server import create_account, start_api, verify_identity
from tests.webhooks.conftest import add_destination, insert_message, query
from workers import webhooks

SEND = {
    "Destination": {"ToAddresses": ["user@dest.test"]},
    "Message": {"Subject": {"Data": "Hello"}, "Body": {"Text": {"Data": "Body text"}}},
}
CORPUS = Path(__file__).parent.parent / "mta" / "feedback_corpus"
PLACEHOLDER = b"b-aaaa-bbbb@bounces.example.test"

# The keys of SES's examples (ses-api.md §7.1-7.4) that Sesame has values for.
MAIL_KEYS = {
    "timestamp",
    "source",
    "sendingAccountId",
    "messageId",
    "destination",
    "headersTruncated",
    "headers",
    "commonHeaders",
    "tags",
}
BOUNCE_KEYS = {
    "bounceType",
    "bounceSubType",
    "bouncedRecipients",
    "timestamp",
    "feedbackId",
    "reportingMTA",
}


@pytest.fixture
def delivery_settings(settings, dns_server, delivery_port):
    dns_server.add("dest.test", "MX", "10 mx1.dest.test.")
    dns_server.add("mx1.dest.test", "A", "127.0.0.2")
    return settings.model_copy(
        update={
            "dns_nameservers": dns_server.nameservers,
            "delivery_port": delivery_port,
            "dns_timeout_seconds": 1.0,
            "hostname": "mta.sesame.test",
        }
    )


@pytest.fixture
def sender(delivery_settings, redis_client):
    server = start_api(delivery_settings)
    account, creds = create_account(server.settings, "sender", production=True)
    verify_identity(server.settings, account.id, "example.com")
    yield server, str(account.id), server.client(creds)
    server.server.should_exit = True
    server.thread.join(10)


async def test_send_and_delivery_reach_an_account_destination(
    sender, smtp_sink, pipeline_factory, consumer
):
    server, account_id, ses = sender
    pipeline = await pipeline_factory(server.settings)
    _, secret = await add_destination(
        pipeline.runtime, account_id, consumer.url, ["send", "delivery"]
    )
    mid = ses.send_email(Source="Sender <sender@example.com>", **SEND)["MessageId"]
    await pipeline.drain()
    # The scheduler's tick runs the relay, as in production.
    await pipeline.scheduler.tick()

    assert sorted(e["eventType"] for e in consumer.events()) == ["Delivery", "Send"]
    for request in consumer.requests:
        assert request.path == "/hooks/ses"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-sesame-delivery-attempt"] == "1"
        assert request.event_id == request.json()["eventId"]
        assert webhooks.verify_signature(
            secret, request.headers["x-sesame-signature"], request.body
        )

    [send] = consumer.of_type("Send")
    assert send["send"] == {}
    mail = send["mail"]
    assert set(mail) == MAIL_KEYS
    assert mail["messageId"] == mid
    assert mail["source"] == "Sender <sender@example.com>"
    assert mail["sendingAccountId"] == account_id
    assert mail["destination"] == ["user@dest.test"]
    assert mail["timestamp"].endswith("Z") and len(mail["timestamp"]) == 24
    assert mail["headersTruncated"] is False
    names = [h["name"].lower() for h in mail["headers"]]
    assert {"from", "to", "subject", "message-id", "date"} <= set(names)
    common = mail["commonHeaders"]
    assert common["from"] == ["Sender <sender@example.com>"]
    assert common["to"] == ["user@dest.test"]
    assert common["subject"] == "Hello"
    assert common["messageId"] == f"<{mid}@mta.sesame.test>"
    assert mail["tags"] == {"ses:from-domain": ["example.com"]}

    [delivery] = consumer.of_type("Delivery")
    assert delivery["mail"] == mail
    body = delivery["delivery"]
    assert set(body) == {
        "timestamp",
        "processingTimeMillis",
        "recipients",
        "smtpResponse",
        "reportingMTA",
    }
    assert body["recipients"] == ["user@dest.test"]
    assert body["smtpResponse"].startswith("250")
    assert isinstance(body["processingTimeMillis"], int)
    assert body["reportingMTA"] == "mta.sesame.test"
    assert body["timestamp"].endswith("Z")

    assert (
        query(
            server.settings,
            "select state, attempts, last_status from webhook_deliveries",
        )
        == [("delivered", 1, 200)] * 2
    )


async def test_bounce_at_rcpt_has_ses_keys_and_types_filter(
    sender, smtp_sink, pipeline_factory, consumer
):
    server, account_id, ses = sender
    pipeline = await pipeline_factory(server.settings)
    await add_destination(pipeline.runtime, account_id, consumer.url, ["bounce"])
    await add_destination(
        pipeline.runtime,
        account_id,
        consumer.url + "/deliveries",
        ["delivery"],
        name="deliveries",
    )
    smtp_sink.rcpt_replies["user@dest.test"] = "550 5.1.1 No such user"
    mid = ses.send_email(Source="sender@example.com", **SEND)["MessageId"]
    await pipeline.drain()
    assert await webhooks.relay_due(pipeline.runtime) == 1

    [request] = consumer.requests
    assert request.path == "/hooks/ses"
    record = request.json()
    assert set(record) == {"eventType", "eventId", "mail", "bounce"}
    assert record["eventType"] == "Bounce"
    assert record["mail"]["messageId"] == mid
    bounce = record["bounce"]
    assert set(bounce) == BOUNCE_KEYS
    assert (bounce["bounceType"], bounce["bounceSubType"]) == ("Permanent", "NoEmail")
    assert bounce["bouncedRecipients"] == [
        {
            "emailAddress": "user@dest.test",
            "action": "failed",
            "status": "5.1.1",
            "diagnosticCode": "smtp; 550 5.1.1 No such user",
        }
    ]
    assert bounce["reportingMTA"] == "dsn; mta.sesame.test"
    assert bounce["feedbackId"] == record["eventId"]
    assert bounce["timestamp"].endswith("Z")


async def test_complaint_from_an_arf_report(runtime, settings, account_id, consumer):
    _, secret = await add_destination(runtime, account_id, consumer.url, ["complaint"])
    message_id, [recipient_id] = insert_message(
        settings, account_id, ["reader@example.net"]
    )
    domain = settings.return_path_domain
    key = verp.verp_key(runtime.key)
    token = verp.return_path(recipient_id, domain, key)
    report = (
        (CORPUS / "arf_abuse.eml").read_bytes().replace(PLACEHOLDER, token.encode())
    )
    recorder = FeedbackRecorder(runtime.pool, domain, key)
    recorded = await recorder.process(report.replace(b"\n", b"\r\n"), [token])
    assert recorded.result == "attributed"

    assert await webhooks.relay_due(runtime) == 1
    [record] = consumer.events()
    assert record["eventType"] == "Complaint"
    assert record["mail"]["messageId"] == message_id
    assert record["mail"]["destination"] == ["reader@example.net"]
    complaint = record["complaint"]
    assert complaint == {
        "complainedRecipients": [{"emailAddress": "reader@example.net"}],
        "timestamp": complaint["timestamp"],
        "feedbackId": recorded.feedback_id,
        "complaintSubType": None,
        "userAgent": "ExampleNet-Feedback/2.0",
        "complaintFeedbackType": "abuse",
        "arrivalDate": "2024-05-23T19:58:31.000+00:00",
    }
    assert webhooks.verify_signature(
        secret,
        consumer.requests[0].headers["x-sesame-signature"],
        consumer.requests[0].body,
    )
