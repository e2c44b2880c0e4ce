"""No API string field can add or split a header of the message Sesame builds.

CR, LF, NUL, other C0/C1 controls, U+2028/2029 and NEL in Source (display
name), Subject, ReplyToAddresses, ReturnPath, tags, Destination addresses,
template data and SESv2 custom headers are refused with InvalidParameterValue
(v1) or BadRequestException (v2), and no message is written. Lookalikes that
are plain text (encoded words, "%0d%0a") may be accepted, but then the stored
message has exactly the header fields Sesame writes.
"""

from __future__ import annotations

import email
import email.policy
import json

import pytest
from botocore.exceptions import ClientError

from tests.security.conftest import messages_of, rows

INJECTED = "Bcc: victim@evil.test"
BREAKS = {
    "crlf": "\r\n",
    "lf": "\n",
    "cr": "\r",
    "nul": "\x00",
    "crlf-space": "\r\n ",
    "u2028": "\u2028",
    "u2029": "\u2029",
    "nel": "\u0085",
    "vt": "\x0b",
    "ff": "\x0c",
    "esc": "\x1b",
}
SUBJECT = {"Data": "Hello"}
BODY = {"Text": {"Data": "Body"}}


def send_kwargs(field: str, bad: str) -> dict:
    """SendEmail parameters with one field carrying the injection."""
    kwargs: dict = {
        "Source": "Sender <sender@alice.example>",
        "Destination": {"ToAddresses": ["someone@dest.test"]},
        "Message": {"Subject": dict(SUBJECT), "Body": BODY},
    }
    if field == "source-name":
        kwargs["Source"] = f'"Sender{bad}" <sender@alice.example>'
    elif field == "source-address":
        kwargs["Source"] = f"sender{bad}@alice.example"
    elif field == "subject":
        kwargs["Message"]["Subject"]["Data"] = f"Hello{bad}"
    elif field == "subject-charset":
        # The charset is used (and checked) only for a subject that needs one.
        kwargs["Message"]["Subject"] = {"Data": "Grüße", "Charset": f"UTF-8{bad}"}
    elif field == "reply-to":
        kwargs["ReplyToAddresses"] = [f"Reply{bad} <reply@alice.example>"]
    elif field == "return-path":
        kwargs["ReturnPath"] = f"bounce{bad}@alice.example"
    elif field == "to":
        kwargs["Destination"]["ToAddresses"] = [f"Someone{bad} <someone@dest.test>"]
    elif field == "cc":
        kwargs["Destination"]["CcAddresses"] = [f"cc{bad}@dest.test"]
    elif field == "bcc":
        kwargs["Destination"]["BccAddresses"] = [f"bcc@dest.test{bad}"]
    elif field == "tag-name":
        kwargs["Tags"] = [{"Name": f"campaign{bad}", "Value": "c1"}]
    elif field == "tag-value":
        kwargs["Tags"] = [{"Name": "campaign", "Value": f"c1{bad}"}]
    else:  # pragma: no cover
        raise AssertionError(field)
    return kwargs


FIELDS = [
    "source-name",
    "source-address",
    "subject",
    "subject-charset",
    "reply-to",
    "return-path",
    "to",
    "cc",
    "bcc",
    "tag-name",
    "tag-value",
]


@pytest.mark.parametrize("brk", BREAKS)
@pytest.mark.parametrize("field", FIELDS)
def test_control_characters_in_send_email_fields_are_refused(alice, field, brk):
    bad = BREAKS[brk] + INJECTED
    with pytest.raises(ClientError) as excinfo:
        alice.ses.send_email(**send_kwargs(field, bad))
    assert excinfo.value.response["Error"]["Code"] in (
        "InvalidParameterValue",
        "MessageRejected",
    )
    assert messages_of(alice.server.settings, alice.id) == 0


def stored_message(settings, account_id) -> email.message.Message:
    [(raw,)] = rows(
        settings, "select raw from messages where account_id = %s", account_id
    )
    return email.message_from_bytes(bytes(raw), policy=email.policy.default)


LOOKALIKES = [
    "=?utf-8?q?a=0D=0ABcc:_victim@evil.test?=",
    "=?utf-8?b?YQ0KQmNjOiB2aWN0aW1AZXZpbC50ZXN0?=",
    "%0d%0aBcc: victim@evil.test",
    "\\r\\nBcc: victim@evil.test",
    "a\tBcc: victim@evil.test",
    "Ünïcödé " * 30 + "Bcc: victim@evil.test",
]


@pytest.mark.parametrize("subject", LOOKALIKES)
def test_text_that_only_looks_like_a_header_stays_in_the_subject(alice, subject):
    try:
        alice.ses.send_email(
            Source="sender@alice.example",
            Destination={"ToAddresses": ["someone@dest.test"]},
            Message={"Subject": {"Data": subject, "Charset": "UTF-8"}, "Body": BODY},
        )
    except ClientError as exc:  # refusing is also fine
        assert exc.response["Error"]["Code"] == "InvalidParameterValue"
        return
    msg = stored_message(alice.server.settings, alice.id)
    assert msg.get_all("Bcc") is None
    assert sorted(set(msg.keys())) == sorted(
        {"Message-ID", "Date", "From", "To", "Subject", "MIME-Version"}
        | {"Content-Type", "Content-Transfer-Encoding"}
    )
    raw = bytes(
        rows(
            alice.server.settings,
            "select raw from messages where account_id = %s",
            alice.id,
        )[0][0]
    )
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"\n" not in head.replace(b"\r\n", b"")
    assert all(not line.lower().startswith(b"bcc:") for line in head.split(b"\r\n"))


@pytest.mark.parametrize("brk", ["crlf", "lf", "nul", "u2028"])
def test_template_data_cannot_inject_headers(alice, brk):
    alice.ses.create_template(
        Template={
            "TemplateName": "greeting",
            "SubjectPart": "Hello {{name}}",
            "TextPart": "Dear {{name}}",
        }
    )
    data = json.dumps({"name": "Eve" + BREAKS[brk] + INJECTED})
    try:
        alice.ses.send_templated_email(
            Source="sender@alice.example",
            Destination={"ToAddresses": ["someone@dest.test"]},
            Template="greeting",
            TemplateData=data,
        )
    except ClientError:
        assert messages_of(alice.server.settings, alice.id) == 0
        return
    # Accepted (SES accepts it and reports a rendering failure, or the value
    # was encoded): whatever was stored has no injected field.
    if messages_of(alice.server.settings, alice.id):
        msg = stored_message(alice.server.settings, alice.id)
        assert msg.get_all("Bcc") is None
        assert len(msg.get_all("Subject")) == 1


# -- SESv2 SendEmail, including its custom Headers ------------------------------------


@pytest.mark.parametrize("brk", ["crlf", "lf", "nul", "u2028", "nel"])
@pytest.mark.parametrize(
    "where", ["subject", "from-name", "reply-to", "header-value", "header-name"]
)
def test_sesv2_fields_with_control_characters_are_refused(alice, where, brk):
    bad = BREAKS[brk] + INJECTED
    simple: dict = {"Subject": {"Data": "Hi"}, "Body": BODY}
    kwargs: dict = {
        "FromEmailAddress": "sender@alice.example",
        "Destination": {"ToAddresses": ["someone@dest.test"]},
    }
    if where == "subject":
        simple["Subject"]["Data"] = "Hi" + bad
    elif where == "from-name":
        kwargs["FromEmailAddress"] = f'"Sender{bad}" <sender@alice.example>'
    elif where == "reply-to":
        kwargs["ReplyToAddresses"] = [f"r{bad}@alice.example"]
    elif where == "header-value":
        simple["Headers"] = [{"Name": "X-Campaign", "Value": "c1" + bad}]
    else:
        simple["Headers"] = [{"Name": "X-Campaign" + bad, "Value": "c1"}]
    kwargs["Content"] = {"Simple": simple}
    with pytest.raises(ClientError) as excinfo:
        alice.sesv2.send_email(**kwargs)
    assert excinfo.value.response["Error"]["Code"] in (
        "BadRequestException",
        "MessageRejected",
    )
    assert messages_of(alice.server.settings, alice.id) == 0


@pytest.mark.parametrize(
    "name", ["From", "To", "Bcc", "Subject", "Return-Path", "DKIM-Signature", "Date"]
)
def test_sesv2_custom_headers_cannot_replace_the_ones_sesame_writes(alice, name):
    with pytest.raises(ClientError):
        alice.sesv2.send_email(
            FromEmailAddress="sender@alice.example",
            Destination={"ToAddresses": ["someone@dest.test"]},
            Content={
                "Simple": {
                    "Subject": {"Data": "Hi"},
                    "Body": BODY,
                    "Headers": [{"Name": name, "Value": "x@evil.test"}],
                }
            },
        )
    assert messages_of(alice.server.settings, alice.id) == 0


@pytest.mark.parametrize("name", ["Sender", "Resent-From", "Resent-Sender"])
def test_sesv2_custom_headers_cannot_name_an_unverified_sender(alice, name):
    """A Sender header is checked like SendRawEmail's: it must be an own identity."""
    with pytest.raises(ClientError) as excinfo:
        alice.sesv2.send_email(
            FromEmailAddress="sender@alice.example",
            Destination={"ToAddresses": ["someone@dest.test"]},
            Content={
                "Simple": {
                    "Subject": {"Data": "Hi"},
                    "Body": BODY,
                    "Headers": [{"Name": name, "Value": "ceo@evil.test"}],
                }
            },
        )
    assert excinfo.value.response["Error"]["Code"] in (
        "MessageRejected",
        "BadRequestException",
    )
    assert messages_of(alice.server.settings, alice.id) == 0
