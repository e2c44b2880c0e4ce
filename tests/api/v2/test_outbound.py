"""SESv2 SendEmail and SendBulkEmail: what is accepted, stored and refused."""

from __future__ import annotations

import email
import email.policy
import json

import psycopg
import pytest

from tests.api.v2.conftest import Tenant, error_of
from tests.support.api_server import verify_identity

SIMPLE = {"Simple": {"Subject": {"Data": "Hi"}, "Body": {"Text": {"Data": "Hello"}}}}


def db(settings):
    return psycopg.connect(settings.database_url, autocommit=True)


def stored(settings, message_id: str) -> tuple[email.message.EmailMessage, list[str]]:
    """Return a stored message, parsed, and its recipients."""
    with db(settings) as conn:
        (raw,) = conn.execute(
            "select raw from messages where id = %s", (message_id,)
        ).fetchone()
        recipients = [
            r[0]
            for r in conn.execute(
                "select address from recipients where message_id = %s order by id",
                (message_id,),
            )
        ]
    parsed = email.message_from_bytes(bytes(raw), policy=email.policy.default)
    return parsed, recipients


@pytest.fixture
def sender(api_server, production) -> Tenant:
    """A production account that may send from example.com, quickly."""
    verify_identity(api_server.settings, production.id, "example.com")
    with db(api_server.settings) as conn:
        conn.execute(
            "update accounts set max_send_rate = 1000 where id = %s", (production.id,)
        )
    return production


def add_template(settings, account_id: str, name: str, **parts: str) -> None:
    with db(settings) as conn:
        conn.execute(
            "insert into email_templates (account_id, name, subject, text_part,"
            " html_part) values (%s, %s, %s, %s, %s)",
            (
                account_id,
                name,
                parts.get("subject"),
                parts.get("text"),
                parts.get("html"),
            ),
        )


def test_simple_with_attachments_headers_and_tags(api_server, sender):
    pdf = bytes(range(256)) * 4
    logo = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    answer = sender.client.send_email(
        FromEmailAddress="Shop <shop@example.com>",
        Destination={
            "ToAddresses": ["a@example.net"],
            "CcAddresses": ["c@example.net"],
            "BccAddresses": ["hidden@example.net"],
        },
        ReplyToAddresses=["help@example.com"],
        Content={
            "Simple": {
                "Subject": {"Data": "Your receipt", "Charset": "UTF-8"},
                "Body": {
                    "Text": {"Data": "Thanks"},
                    "Html": {"Data": '<p>Thanks <img src="cid:logo"></p>'},
                },
                "Headers": [{"Name": "X-Custom", "Value": "1"}],
                "Attachments": [
                    {"RawContent": pdf, "FileName": "receipt.pdf"},
                    {
                        "RawContent": logo,
                        "FileName": "logo.png",
                        "ContentDisposition": "INLINE",
                        "ContentId": "logo",
                    },
                ],
            }
        },
        EmailTags=[{"Name": "campaign", "Value": "c1"}],
    )
    message_id = answer["MessageId"]
    assert message_id.startswith("0100") and message_id.endswith("-000000")

    message, recipients = stored(api_server.settings, message_id)
    assert recipients == ["a@example.net", "c@example.net", "hidden@example.net"]
    assert message["From"] == "Shop <shop@example.com>"
    assert message["To"] == "a@example.net" and message["Cc"] == "c@example.net"
    assert message["Bcc"] is None
    assert message["Reply-To"] == "help@example.com"
    assert message["X-Custom"] == "1"
    assert message["Subject"] == "Your receipt"
    assert message["Message-ID"].startswith(f"<{message_id}@")
    attachments = {p.get_filename(): p for p in message.iter_attachments()}
    assert attachments["receipt.pdf"].get_content_type() == "application/pdf"
    assert attachments["receipt.pdf"].get_content() == pdf
    inline = [p for p in message.walk() if p["Content-ID"] == "<logo>"]
    assert inline and inline[0].get_content() == logo
    assert message.get_body(("plain",)).get_content().strip() == "Thanks"

    with db(api_server.settings) as conn:
        (tags,) = conn.execute(
            "select tags from messages where id = %s", (message_id,)
        ).fetchone()
    assert tags == {"campaign": "c1"}


def test_raw_content_takes_recipients_from_headers(api_server, sender):
    raw = (
        b"From: Shop <shop@example.com>\r\n"
        b"To: a@example.net, b@example.net\r\n"
        b"Subject: Raw\r\n\r\nbody\r\n"
    )
    answer = sender.client.send_email(Content={"Raw": {"Data": raw}})
    message, recipients = stored(api_server.settings, answer["MessageId"])
    assert recipients == ["a@example.net", "b@example.net"]
    assert message["Subject"] == "Raw"
    assert message["Message-ID"].startswith(f"<{answer['MessageId']}@")

    answer = sender.client.send_email(
        FromEmailAddress="shop@example.com",
        Destination={"ToAddresses": ["only@example.net"]},
        Content={"Raw": {"Data": raw}},
    )
    assert stored(api_server.settings, answer["MessageId"])[1] == ["only@example.net"]


def test_unverified_sender_is_rejected(sender):
    with pytest.raises(sender.client.exceptions.MessageRejected) as excinfo:
        sender.client.send_email(
            FromEmailAddress="someone@elsewhere.example",
            Destination={"ToAddresses": ["a@example.net"]},
            Content=SIMPLE,
        )
    code, message, status = error_of(excinfo)
    assert (code, status) == ("MessageRejected", 400)
    assert "someone@elsewhere.example" in message


def test_sandbox_recipients_must_be_verified(api_server, sandbox):
    verify_identity(api_server.settings, sandbox.id, "example.com")
    with pytest.raises(sandbox.client.exceptions.MessageRejected):
        sandbox.client.send_email(
            FromEmailAddress="me@example.com",
            Destination={"ToAddresses": ["stranger@example.net"]},
            Content=SIMPLE,
        )


def test_daily_quota_is_too_many_requests(api_server, sender):
    with db(api_server.settings) as conn:
        conn.execute(
            "update accounts set max_24_hour_send = 1 where id = %s", (sender.id,)
        )
    with pytest.raises(sender.client.exceptions.TooManyRequestsException) as excinfo:
        sender.client.send_email(
            FromEmailAddress="me@example.com",
            Destination={"ToAddresses": ["a@example.net", "b@example.net"]},
            Content=SIMPLE,
        )
    code, message, status = error_of(excinfo)
    assert (code, message, status) == (
        "TooManyRequestsException",
        "Daily message quota exceeded.",
        429,
    )


def test_configuration_sets(api_server, sender):
    client = sender.client
    with pytest.raises(client.exceptions.NotFoundException):
        client.send_email(
            FromEmailAddress="me@example.com",
            Destination={"ToAddresses": ["a@example.net"]},
            Content=SIMPLE,
            ConfigurationSetName="missing",
        )
    with db(api_server.settings) as conn:
        conn.execute(
            "insert into configuration_sets (account_id, name) values (%s, 'cs1'),"
            " (%s, 'off')",
            (sender.id, sender.id),
        )
        conn.execute(
            "update configuration_sets set sending_enabled = false where name = 'off'"
        )
    answer = client.send_email(
        FromEmailAddress="me@example.com",
        Destination={"ToAddresses": ["a@example.net"]},
        Content=SIMPLE,
        ConfigurationSetName="cs1",
    )
    with db(api_server.settings) as conn:
        (name,) = conn.execute(
            "select configuration_set from messages where id = %s",
            (answer["MessageId"],),
        ).fetchone()
    assert name == "cs1"
    with pytest.raises(client.exceptions.SendingPausedException):
        client.send_email(
            FromEmailAddress="me@example.com",
            Destination={"ToAddresses": ["a@example.net"]},
            Content=SIMPLE,
            ConfigurationSetName="off",
        )


@pytest.mark.parametrize(
    "request_body",
    [
        {"Content": {**SIMPLE, "Raw": {"Data": "eA=="}}},
        {"Content": SIMPLE, "Destination": {"ToAddresses": ["a@example.net"]}},
        {"FromEmailAddress": "me@example.com", "Content": {"Raw": {"Data": "%%%"}}},
        {
            "FromEmailAddress": "me@example.com",
            "Destination": {"ToAddresses": ["a@example.net"]},
            "Content": {"Simple": {"Subject": {"Data": "x"}, "Body": {}}},
        },
        {
            "FromEmailAddress": "me@example.com",
            "Destination": {"ToAddresses": ["a@example.net"]},
            "Content": {
                "Simple": {
                    **SIMPLE["Simple"],
                    "Headers": [{"Name": "Bad Name", "Value": "1"}],
                }
            },
        },
        {
            "FromEmailAddress": "me@example.com",
            "Destination": {"ToAddresses": ["a@example.net"]},
            "Content": {
                "Simple": {
                    **SIMPLE["Simple"],
                    "Headers": [{"Name": "From", "Value": "x"}],
                }
            },
        },
        {"FromEmailAddress": "me@example.com", "Content": SIMPLE},
        {"Content": "not an object"},
    ],
    ids=[
        "two-contents",
        "no-from",
        "bad-base64",
        "no-body",
        "bad-header-name",
        "reserved-header",
        "no-recipients",
        "wrong-type",
    ],
)
def test_bad_requests(sender, request_body):
    status, headers, body = sender.request(
        "POST", "/v2/email/outbound-emails", request_body
    )
    assert status == 400, body
    assert headers["x-amzn-errortype"] == "BadRequestException"
    assert body["message"]


def test_template_content(api_server, sender):
    add_template(
        api_server.settings,
        sender.id,
        "T1",
        subject="Hi {{name}}",
        text="Dear {{name}}",
        html="<p>Dear {{name}}</p>",
    )
    answer = sender.client.send_email(
        FromEmailAddress="me@example.com",
        Destination={"ToAddresses": ["bob@example.net"]},
        Content={
            "Template": {
                "TemplateName": "T1",
                "TemplateData": json.dumps({"name": "Bob"}),
                "Headers": [{"Name": "X-Campaign", "Value": "spring"}],
            }
        },
    )
    message, recipients = stored(api_server.settings, answer["MessageId"])
    assert recipients == ["bob@example.net"]
    assert message["Subject"] == "Hi Bob"
    assert message["X-Campaign"] == "spring"
    assert message.get_body(("plain",)).get_content().strip() == "Dear Bob"

    by_arn = sender.client.send_email(
        FromEmailAddress="me@example.com",
        Destination={"ToAddresses": ["bob@example.net"]},
        Content={
            "Template": {
                "TemplateArn": f"arn:aws:ses:us-east-1:{sender.id}:template/T1",
                "TemplateData": '{"name": "Ann"}',
            }
        },
    )
    assert stored(api_server.settings, by_arn["MessageId"])[0]["Subject"] == "Hi Ann"

    inline = sender.client.send_email(
        FromEmailAddress="me@example.com",
        Destination={"ToAddresses": ["bob@example.net"]},
        Content={
            "Template": {
                "TemplateContent": {"Subject": "Inline {{x}}", "Text": "t"},
                "TemplateData": '{"x": 1}',
            }
        },
    )
    assert stored(api_server.settings, inline["MessageId"])[0]["Subject"] == "Inline 1"


def test_template_errors(api_server, sender):
    client = sender.client
    add_template(api_server.settings, sender.id, "T2", subject="Hi {{name}}", text="x")
    base = {
        "FromEmailAddress": "me@example.com",
        "Destination": {"ToAddresses": ["bob@example.net"]},
    }
    with pytest.raises(client.exceptions.NotFoundException):
        client.send_email(
            **base, Content={"Template": {"TemplateName": "nope", "TemplateData": "{}"}}
        )
    with pytest.raises(client.exceptions.BadRequestException):
        client.send_email(
            **base, Content={"Template": {"TemplateName": "T2", "TemplateData": "{"}}
        )
    with pytest.raises(client.exceptions.BadRequestException):
        client.send_email(
            **base,
            Content={
                "Template": {
                    "TemplateContent": {"Subject": "{{#if}}", "Text": "x"},
                    "TemplateData": "{}",
                }
            },
        )

    # As in SES, a template that cannot be rendered is accepted, not delivered,
    # and a Rendering Failure event says why.
    answer = client.send_email(
        **base, Content={"Template": {"TemplateName": "T2", "TemplateData": "{}"}}
    )
    with db(api_server.settings) as conn:
        events = conn.execute(
            "select event_type, detail from events where message_id = %s",
            (answer["MessageId"],),
        ).fetchall()
        (recipients,) = conn.execute(
            "select count(*) from recipients where message_id = %s",
            (answer["MessageId"],),
        ).fetchone()
    assert [e[0] for e in events] == ["rendering_failure"]
    assert events[0][1]["templateName"] == "T2"
    assert recipients == 0


def test_bulk_email(api_server, sender):
    add_template(
        api_server.settings,
        sender.id,
        "B1",
        subject="Hi {{name}}",
        text="From {{shop}}",
    )
    answer = sender.client.send_bulk_email(
        FromEmailAddress="me@example.com",
        DefaultContent={
            "Template": {
                "TemplateName": "B1",
                "TemplateData": '{"name": "friend", "shop": "Shop"}',
                "Headers": [
                    {"Name": "X-List", "Value": "default"},
                    {"Name": "X-Keep", "Value": "yes"},
                ],
            }
        },
        DefaultEmailTags=[{"Name": "campaign", "Value": "c1"}],
        BulkEmailEntries=[
            {"Destination": {"ToAddresses": ["a@example.net"]}},
            {
                "Destination": {"ToAddresses": ["b@example.net"]},
                "ReplacementEmailContent": {
                    "ReplacementTemplate": {
                        "ReplacementTemplateData": '{"name": "Bea"}'
                    }
                },
                "ReplacementTags": [{"Name": "campaign", "Value": "c2"}],
                "ReplacementHeaders": [{"Name": "x-list", "Value": "mine"}],
            },
            {"Destination": {"ToAddresses": ["not an address"]}},
        ],
    )
    results = answer["BulkEmailEntryResults"]
    assert [r["Status"] for r in results] == ["SUCCESS", "SUCCESS", "INVALID_PARAMETER"]
    assert results[2]["Error"] and "MessageId" not in results[2]

    first, _ = stored(api_server.settings, results[0]["MessageId"])
    second, recipients = stored(api_server.settings, results[1]["MessageId"])
    assert first["Subject"] == "Hi friend" and first["X-List"] == "default"
    assert second["Subject"] == "Hi Bea" and recipients == ["b@example.net"]
    assert second["X-List"] == "mine" and second["X-Keep"] == "yes"
    assert second.get_body(("plain",)).get_content().strip() == "From Shop"
    with db(api_server.settings) as conn:
        (tags,) = conn.execute(
            "select tags from messages where id = %s", (results[1]["MessageId"],)
        ).fetchone()
    assert tags == {"campaign": "c2"}


def test_bulk_email_refusals(api_server, sandbox):
    verify_identity(api_server.settings, sandbox.id, "example.com")
    add_template(api_server.settings, sandbox.id, "B2", subject="s", text="t")
    client = sandbox.client
    with pytest.raises(client.exceptions.NotFoundException):
        client.send_bulk_email(
            FromEmailAddress="me@example.com",
            DefaultContent={"Template": {"TemplateName": "nope", "TemplateData": "{}"}},
            BulkEmailEntries=[{"Destination": {"ToAddresses": ["a@example.com"]}}],
        )
    answer = client.send_bulk_email(
        FromEmailAddress="me@example.com",
        DefaultContent={"Template": {"TemplateName": "B2", "TemplateData": "{}"}},
        BulkEmailEntries=[
            {"Destination": {"ToAddresses": ["stranger@example.net"]}},
            {"Destination": {"ToAddresses": ["friend@example.com"]}},
        ],
    )
    statuses = [r["Status"] for r in answer["BulkEmailEntryResults"]]
    assert statuses == ["MESSAGE_REJECTED", "SUCCESS"]
