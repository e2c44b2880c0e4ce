"""Classification of SMTP replies (RFC 5321) and RFC 3463 statuses in SES terms."""

from __future__ import annotations

import pytest

from mta.delivery.outcome import (
    AttemptOutcome,
    classify_reply,
    classify_status,
    connection_failure,
    dns_failure,
    parse_enhanced_status,
    session_refused,
)

GMAIL_SPAM = (
    "5.7.1 [192.0.2.1] Our system has detected that this message is\n"
    "5.7.1 likely unsolicited mail. To reduce the amount of spam sent to Gmail,\n"
    "5.7.1 this message has been blocked. For more information, go to\n"
    "5.7.1  https://support.google.com/mail/?p=UnsolicitedMessageError"
)
GMAIL_NO_USER = (
    "5.1.1 The email account that you tried to reach does not exist. Please try\n"
    "5.1.1 double-checking the recipient's email address for typos or\n"
    "5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser"
)


@pytest.mark.parametrize(
    ("code", "text", "bounce_type", "subtype", "suppressible"),
    [
        (550, "5.1.1 No such user", "Permanent", "NoEmail", True),
        (550, GMAIL_NO_USER, "Permanent", "NoEmail", True),
        (550, "5.1.10 Recipient domain has a null MX", "Permanent", "NoEmail", True),
        (550, "5.1.0 Address rejected", "Permanent", "NoEmail", True),
        (550, "5.1.0 Sender address rejected", "Permanent", "General", False),
        (553, "5.1.3 Bad recipient address syntax", "Permanent", "General", True),
        (550, "5.1.8 Bad sender's system address", "Permanent", "General", False),
        (550, "No such user here", "Permanent", "NoEmail", True),
        (550, "Requested action not taken", "Permanent", "General", False),
        (552, "5.2.2 Mailbox full", "Transient", "MailboxFull", False),
        (
            552,
            "5.3.4 Message size exceeds fixed limit",
            "Transient",
            "MessageTooLarge",
            False,
        ),
        (552, "Message too large", "Transient", "MessageTooLarge", False),
        (550, GMAIL_SPAM, "Transient", "ContentRejected", False),
        (550, "5.7.1 IP 192.0.2.1 has poor reputation", "Permanent", "General", False),
        (
            554,
            "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using "
            "zen.spamhaus.org",
            "Permanent",
            "General",
            False,
        ),
        (550, "5.7.1 Relaying denied: not authorized", "Permanent", "General", False),
        (554, "5.7.1 Rejected", "Permanent", "General", False),
        (
            550,
            "5.7.1 Message contains a banned attachment",
            "Transient",
            "AttachmentRejected",
            False,
        ),
        (550, "5.7.1 user unknown", "Permanent", "General", False),
        (
            550,
            "5.4.1 Recipient address rejected: Access denied",
            "Permanent",
            "General",
            False,
        ),
    ],
)
def test_permanent_failures(
    code: int, text: str, bounce_type: str, subtype: str, suppressible: bool
) -> None:
    result = classify_reply(code, text, "mx.example.test")
    assert result.outcome is AttemptOutcome.FAILED
    assert (result.bounce_type, result.bounce_subtype) == (bounce_type, subtype)
    assert result.suppressible is suppressible
    assert result.delay_type is None
    assert result.smtp_code == code
    assert result.mx_host == "mx.example.test"


@pytest.mark.parametrize(
    ("code", "text", "delay_type"),
    [
        (452, "4.2.2 Mailbox full", "MailboxFull"),
        (452, "Mailbox is over quota", "MailboxFull"),
        (451, "4.7.1 Try later", "IPFailure"),
        (451, "4.7.1 Greylisted, please try again in 300 seconds", "General"),
        (421, "4.7.0 [192.0.2.1] Our system has detected an unusual rate", "IPFailure"),
        (450, "4.7.1 Message looks like spam, deferred", "SpamDetected"),
        (
            421,
            "Service not available, closing transmission channel",
            "TransientCommunicationFailure",
        ),
        (421, "4.4.2 Connection dropped", "TransientCommunicationFailure"),
        (451, "4.3.0 Local error in processing", "RecipientServerError"),
        (451, "Local error in processing", "RecipientServerError"),
        (450, "Mailbox busy", "General"),
    ],
)
def test_deferrals(code: int, text: str, delay_type: str) -> None:
    result = classify_reply(code, text)
    assert result.outcome is AttemptOutcome.DEFERRED
    assert result.delay_type == delay_type
    assert result.bounce_type is None and result.bounce_subtype is None
    assert not result.suppressible


def test_delivered() -> None:
    result = classify_reply(250, "2.0.0 OK: queued as 4Z7ABC", "mx.example.test")
    assert result.outcome is AttemptOutcome.DELIVERED
    assert result.enhanced_status == "2.0.0"
    assert result.response == "2.0.0 OK: queued as 4Z7ABC"
    assert result.bounce_type is None and result.delay_type is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("4.7.1 Please try again in 120 seconds", 120.0),
        ("4.2.0 Greylisted, please try again in 300 seconds", 300.0),
        ("4.7.0 Too many messages, retry in 5 minutes", 300.0),
        ("4.3.2 Try again later in 2 hours", 7200.0),
        ("4.7.1 Greylisted for 60s", 60.0),
        ("4.7.0 Try again later, closing connection", None),
    ],
)
def test_retry_after(text: str, seconds: float | None) -> None:
    assert classify_reply(451, text).retry_after == seconds


def test_retry_after_only_on_deferrals() -> None:
    assert classify_reply(550, "5.7.1 try again in 120 seconds").retry_after is None


def test_multiline_reply_with_raw_prefixes() -> None:
    raw = "550-5.1.1 The email account that you tried to reach does not exist.\n"
    raw += "550 5.1.1 https://support.google.com/mail/?p=NoSuchUser"
    result = classify_reply(550, raw)
    assert result.enhanced_status == "5.1.1"
    assert result.bounce_subtype == "NoEmail"
    assert result.response == (
        "5.1.1 The email account that you tried to reach does not exist. "
        "https://support.google.com/mail/?p=NoSuchUser"
    )


def test_multiline_reply_as_aiosmtplib_gives_it() -> None:
    result = classify_reply(550, GMAIL_SPAM)
    assert result.enhanced_status == "5.7.1"
    assert result.response.startswith("5.7.1 [192.0.2.1] Our system")
    assert "\n" not in result.response
    # Continuation lines lose their repeated status.
    assert result.response.count("5.7.1") == 1


@pytest.mark.parametrize(
    ("code", "text", "status"),
    [
        (550, "No such user", "5.0.0"),
        (451, "Try later", "4.0.0"),
        (550, "5.1 not a status", "5.0.0"),
        (550, "5.1.1234 too long a detail", "5.0.0"),
        (550, "", "5.0.0"),
        (250, "OK", "2.0.0"),
        (550, "4.2.2 class disagrees with the code", "5.2.2"),
        (550, "5.01.001 leading zeros", "5.1.1"),
    ],
)
def test_missing_or_bad_enhanced_status(code: int, text: str, status: str) -> None:
    assert classify_reply(code, text).enhanced_status == status


def test_parse_enhanced_status() -> None:
    assert parse_enhanced_status("5.7.26 Unauthenticated email") == "5.7.26"
    assert parse_enhanced_status("4.7.650 The mail server has been rate limited") == (
        "4.7.650"
    )
    assert parse_enhanced_status("OK") is None
    assert parse_enhanced_status("") is None


def test_odd_codes_defer() -> None:
    result = classify_reply(354, "Start mail input")
    assert result.outcome is AttemptOutcome.DEFERRED
    assert result.delay_type == "Undetermined"


@pytest.mark.parametrize(
    ("status", "diagnostic", "expected"),
    [
        ("5.1.1", "", ("Permanent", "NoEmail")),
        ("5.2.2", "", ("Transient", "MailboxFull")),
        ("5.3.4", "", ("Transient", "MessageTooLarge")),
        ("5.7.1", "message rejected as spam", ("Transient", "ContentRejected")),
        ("5.7.1", "blocked using bl.spamcop.net", ("Permanent", "General")),
        ("5.0.0", "User unknown", ("Permanent", "NoEmail")),
        ("4.4.7", "Delivery time expired", ("Transient", "General")),
        ("4.2.2", "", ("Transient", "MailboxFull")),
        ("nonsense", "", ("Undetermined", "Undetermined")),
        ("2.0.0", "", ("Undetermined", "Undetermined")),
    ],
)
def test_classify_status(
    status: str, diagnostic: str, expected: tuple[str, str]
) -> None:
    assert classify_status(status, diagnostic) == expected


def test_connection_failure() -> None:
    result = connection_failure("connection refused", "mx.example.test")
    assert result.outcome is AttemptOutcome.DEFERRED
    assert result.enhanced_status == "4.4.1"
    assert result.delay_type == "TransientCommunicationFailure"
    assert result.smtp_code is None
    assert result.response == "connection refused"


def test_dns_failures() -> None:
    nxdomain = dns_failure(True, "5.1.2", "example.invalid does not exist")
    assert nxdomain.outcome is AttemptOutcome.FAILED
    assert (nxdomain.bounce_type, nxdomain.bounce_subtype) == ("Permanent", "NoEmail")
    assert nxdomain.suppressible
    servfail = dns_failure(False, "4.4.3", "SERVFAIL for example.test")
    assert servfail.outcome is AttemptOutcome.DEFERRED
    assert servfail.delay_type == "RecipientServerError"
    assert servfail.bounce_type is None


def test_refused_session_is_a_deferral() -> None:
    # RFC 5321 3.1: a 554 greeting is "no service here", not a verdict on anyone.
    no_service = session_refused(554, "5.7.1 No SMTP service here", "mx.example.test")
    assert no_service.outcome is AttemptOutcome.DEFERRED
    assert no_service.enhanced_status == "4.3.2"
    assert no_service.smtp_code == 554
    assert no_service.bounce_type is None
    busy = session_refused(421, "4.3.2 Too busy", "mx.example.test")
    assert busy.outcome is AttemptOutcome.DEFERRED
    assert busy.enhanced_status == "4.3.2"
