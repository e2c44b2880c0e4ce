"""DSN and ARF parsing: a hand-written corpus, hostile shapes and fuzzing."""

from __future__ import annotations

import base64
import string
import time
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mta.feedback.arf import FeedbackReport, parse_arf
from mta.feedback.dsn import DeliveryReport, DsnRecipient, parse_dsn
from mta.verp import recipient_id_from, return_path, verp_key

CORPUS = Path(__file__).parent / "feedback_corpus"
PLACEHOLDER = "b-aaaa-bbbb@bounces.example.test"
# Generous wall-clock budget for the bomb tests; they take milliseconds.
FAST = 2.0


def load(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def header(report: DeliveryReport | FeedbackReport, name: str) -> str | None:
    return next(
        (v for k, v in report.original_headers if k.lower() == name.lower()), None
    )


# file -> (reporting_mta, arrival_date, message_id, recipients as
# (final, original, action, status, remote_mta))
DSN_EXPECTED: dict[
    str,
    tuple[
        str | None,
        str | None,
        str | None,
        list[tuple[str | None, str | None, str, str, str | None]],
    ],
] = {
    "postfix_user_unknown.eml": (
        "dns; mx1.example.net",
        "Tue, 14 May 2024 09:12:01 +0000 (UTC)",
        "<0100018f76a1b2c3-1f2e3d4c-5b6a-4987-8899-aabbccddeeff-000000@example.com>",
        [
            (
                "nobody@example.net",
                "nobody@example.net",
                "failed",
                "5.1.1",
                "dns; store.example.net",
            )
        ],
    ),
    "exim_mailbox_full.eml": (
        "dns; relay.example.org",
        None,
        "<digest-2024-20.7781@example.com>",
        # Status says 5.0.0; the remote server's 5.2.2 is more specific.
        [
            (
                "full.box@example.org",
                None,
                "failed",
                "5.2.2",
                "dns; mailstore.example.org",
            )
        ],
    ),
    "exchange_access_denied.eml": (
        "dns;EXHUB01.corp.example.org",
        "Thu, 16 May 2024 08:03:09 +0000",
        "<newsletter-55102@example.com>",
        [
            (
                "pat@corp.example.org",
                "pat@corp.example.org",
                "failed",
                "5.4.1",
                "dns;EXEDGE02.corp.example.org",
            ),
            ("lee@corp.example.org", "lee@corp.example.org", "failed", "5.7.1", None),
        ],
    ),
    "gmail_unauthenticated.eml": (
        "dns; mx.example.net",
        "Fri, 17 May 2024 11:20:44 -0700 (PDT)",
        "<promo-88@example.com>",
        [
            (
                "sam@example.net",
                None,
                "failed",
                "5.7.26",
                "dns; mx.example.net. (192.0.2.80, the server for the domain "
                "example.net.)",
            )
        ],
    ),
    "gmail_no_such_user.eml": (
        "dns; mx.example.net",
        "Sat, 18 May 2024 06:02:12 -0700 (PDT)",
        "<confirm-12@example.com>",
        [
            (
                "gone.away@example.net",
                None,
                "failed",
                "5.1.1",
                "dns; mx.example.net. (192.0.2.80, the server for the domain "
                "example.net.)",
            )
        ],
    ),
    "delayed_447.eml": (
        "dns; queue.example.org",
        "Sun, 19 May 2024 10:00:00 +0000 (UTC)",
        "<invoice-20240519@example.com>",
        [
            (
                "slow@example.org",
                "slow@example.org",
                "delayed",
                "4.4.7",
                "dns; in.example.org",
            )
        ],
    ),
    "multi_recipient.eml": (
        "dns; gw.example.org",
        "Mon, 20 May 2024 07:29:58 +0000",
        "<notes-4410@example.com>",
        [
            ("ann@example.org", None, "failed", "5.1.2", "dns; nowhere.example.org"),
            (
                "bob@example.org",
                "Bob@example.org",
                "delivered",
                "2.0.0",
                "dns; store.example.org",
            ),
        ],
    ),
    "text_plain_status.eml": (
        "dns; old.example.net",
        "Tue, 21 May 2024 03:14:58 +0000",
        "<ticket-311@example.com>",
        [("closed@old.example.net", None, "failed", "5.2.1", None)],
    ),
    "lowercase_status_in_diagnostic.eml": (
        "dns; tiny.example.net",
        None,
        "<welcome-1@example.com>",
        [("quota@tiny.example.net", None, "failed", "5.2.2", None)],
    ),
    "global_dsn.eml": (
        "dns; intl.example.org",
        None,
        "<resa-5@example.com>",
        [
            (
                "jos\u00e9@intl.example.org",
                "jos\u00e9@intl.example.org",
                "failed",
                "5.1.1",
                None,
            )
        ],
    ),
}

ARF_EXPECTED: dict[str, dict[str, object]] = {
    "arf_abuse.eml": {
        "feedback_type": "abuse",
        "user_agent": "ExampleNet-Feedback/2.0",
        "version": "0.1",
        "arrival_date": "Thu, 23 May 2024 19:58:31 +0000",
        "source_ip": "198.51.100.7",
        "original_rcpt_to": ("reader@example.net",),
        "original_mail_from": PLACEHOLDER,
        "reported_domain": "example.com",
        "original_message_id": (
            "<0100018fa7c0ffee-aaaabbbb-cccc-4ddd-8eee-ffff00001111-000000@example.com>"
        ),
    },
    "arf_jmrp.eml": {
        "feedback_type": "abuse",
        "user_agent": "ExampleMail FBL",
        "version": "0.1",
        "arrival_date": "Fri, 24 May 2024 00:51:47 -0700",
        "source_ip": "198.51.100.7",
        "original_rcpt_to": ("user@example.org",),
        "original_mail_from": None,
        "reported_domain": None,
        "original_message_id": "<club-offer-0524@example.com>",
    },
    "arf_headers_only.eml": {
        "feedback_type": "fraud",
        "user_agent": "IspReporter/1.3",
        "version": "1",
        "arrival_date": "Sat, 25 May 2024 08:41:00 +0000",
        "source_ip": "198.51.100.7",
        "original_rcpt_to": ("one@isp.example.net", "two@isp.example.net"),
        "original_mail_from": PLACEHOLDER,
        "reported_domain": "example.com",
        "original_message_id": "<verify-99@example.com>",
    },
    "arf_not_spam.eml": {
        "feedback_type": "not-spam",
        "user_agent": "ExampleWebmail/5.1",
        "version": "1",
        "arrival_date": "Sun, 26 May 2024 16:20:00 +0000",
        "source_ip": None,
        "original_rcpt_to": ("fan@example.net",),
        "original_mail_from": PLACEHOLDER,
        "reported_domain": "example.com",
        "original_message_id": "<may-highlights@example.com>",
    },
}

MALFORMED = [
    "malformed_truncated.eml",
    "malformed_missing_boundary.eml",
    "malformed_report_part_missing.eml",
    "malformed_garbage_status.eml",
    "malformed_arf_no_feedback_type.eml",
]


def test_corpus_is_fully_covered() -> None:
    names = {path.name for path in CORPUS.glob("*.eml")}
    assert names == set(DSN_EXPECTED) | set(ARF_EXPECTED) | set(MALFORMED)


@pytest.mark.parametrize("name", sorted(DSN_EXPECTED))
@pytest.mark.parametrize("line_ending", ["lf", "crlf"])
def test_dsn_corpus(name: str, line_ending: str) -> None:
    data = load(name)
    if line_ending == "crlf":
        data = crlf(data)
    report = parse_dsn(data)
    assert report is not None
    reporting_mta, arrival_date, message_id, recipients = DSN_EXPECTED[name]
    assert report.reporting_mta == reporting_mta
    assert report.arrival_date == arrival_date
    assert report.original_return_path == PLACEHOLDER
    assert report.original_message_id == message_id
    assert header(report, "Message-ID") == message_id
    got = [
        (r.final_recipient, r.original_recipient, r.action, r.status, r.remote_mta)
        for r in report.recipients
    ]
    assert got == recipients
    assert parse_arf(data) is None


def test_postfix_details() -> None:
    report = parse_dsn(load("postfix_user_unknown.eml"))
    assert report is not None
    (recipient,) = report.recipients
    assert recipient.diagnostic_code == (
        "smtp; 550 5.1.1 <nobody@example.net>: Recipient address rejected: "
        "no such user here"
    )
    assert header(report, "X-SES-Outgoing") == "2024.05.14-198.51.100.7"
    # Folded header values are unfolded with one space per fold.
    received = header(report, "Received")
    assert received is not None and "\n" not in received
    assert received.startswith("from sesame.example.com (sesame.example.com ")


def test_gmail_multiline_diagnostic_is_unfolded() -> None:
    report = parse_dsn(load("gmail_no_such_user.eml"))
    assert report is not None
    diagnostic = report.recipients[0].diagnostic_code
    assert diagnostic is not None
    assert diagnostic.startswith(
        "smtp; 550-5.1.1 The email account that you tried to reach does not exist."
    )
    assert diagnostic.endswith("9a8b-20020a17.41 - gsmtp")
    assert "\n" not in diagnostic and "\r" not in diagnostic


def test_exim_returned_body_is_not_read_as_a_report() -> None:
    report = parse_dsn(load("exim_mailbox_full.eml"))
    assert report is not None
    assert [r.final_recipient for r in report.recipients] == ["full.box@example.org"]
    assert header(report, "Subject") == "Weekly digest"
    assert header(report, "Final-Recipient") is None


def test_exchange_extra_fields_are_tolerated() -> None:
    report = parse_dsn(load("exchange_access_denied.eml"))
    assert report is not None
    assert report.recipients[0].diagnostic_code == (
        "smtp;550 5.4.1 Recipient address rejected: Access denied. "
        "[EXEDGE02.corp.example.org 2024-05-16T08:03:11.000Z 08DC75A1B2C3D4E5]"
    )
    assert header(report, "X-SES-Configuration-Set") == "newsletters"


def test_gmail_nested_human_part_and_message_rfc822() -> None:
    report = parse_dsn(load("gmail_unauthenticated.eml"))
    assert report is not None
    diagnostic = report.recipients[0].diagnostic_code
    assert diagnostic is not None and "DMARC policy." in diagnostic
    assert header(report, "Subject") == "50% off today only"


@pytest.mark.parametrize("name", sorted(ARF_EXPECTED))
@pytest.mark.parametrize("line_ending", ["lf", "crlf"])
def test_arf_corpus(name: str, line_ending: str) -> None:
    data = load(name)
    if line_ending == "crlf":
        data = crlf(data)
    report = parse_arf(data)
    assert report is not None
    for field, expected in ARF_EXPECTED[name].items():
        assert getattr(report, field) == expected, field
    assert report.original_return_path == PLACEHOLDER
    assert header(report, "Message-ID") == report.original_message_id
    assert parse_dsn(data) is None


def test_arf_keeps_original_headers_in_order() -> None:
    report = parse_arf(load("arf_jmrp.eml"))
    assert report is not None
    names = [name for name, _ in report.original_headers]
    assert names[:3] == ["X-HmXmrOriginalRecipient", "X-Reporter-Ip", "Received"]
    assert header(report, "Return-Path") == PLACEHOLDER


@pytest.mark.parametrize("name", MALFORMED)
@pytest.mark.parametrize("line_ending", ["lf", "crlf"])
def test_malformed_corpus(name: str, line_ending: str) -> None:
    data = load(name)
    if line_ending == "crlf":
        data = crlf(data)
    dsn = parse_dsn(data)
    assert dsn is None or dsn.recipients == ()
    assert parse_arf(data) is None


def test_garbage_status_keeps_the_report_but_no_recipients() -> None:
    report = parse_dsn(load("malformed_garbage_status.eml"))
    assert report is not None
    assert report.reporting_mta == "dns; broken.example.net"
    assert report.recipients == ()


# --- Shapes built in the test ------------------------------------------------


def dsn(
    status_block: str,
    *,
    status_type: str = "message/delivery-status",
    original: str = "Return-Path: <b-aaaa-bbbb@bounces.example.test>\n",
    encoding: str | None = None,
) -> bytes:
    """Build a three-part DSN around a delivery-status body."""
    cte = f"Content-Transfer-Encoding: {encoding}\n" if encoding else ""
    return (
        "From: MAILER-DAEMON@mx.example.net\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n'
        "\n"
        "--B\n"
        "Content-Type: text/plain\n"
        "\n"
        "Delivery failed.\n"
        "--B\n"
        f"Content-Type: {status_type}\n"
        f"{cte}"
        "\n"
        f"{status_block}"
        "--B\n"
        "Content-Type: text/rfc822-headers\n"
        "\n"
        f"{original}"
        "--B--\n"
    ).encode()


def test_real_verp_token_round_trips_through_a_bounce() -> None:
    key = verp_key(bytes(range(32)))
    address = return_path(987654321, "bounces.example.test", key)
    data = dsn(
        "Reporting-MTA: dns; mx.example.net\n\n"
        "Final-Recipient: rfc822; x@example.net\nAction: failed\nStatus: 5.1.1\n",
        original=f"Return-Path: <{address}>\nMessage-ID: <m1@example.com>\n",
    )
    report = parse_dsn(data)
    assert report is not None and report.original_return_path == address
    found = recipient_id_from(report.original_return_path, "bounces.example.test", key)
    assert found == 987654321


def test_action_inferred_and_status_normalised() -> None:
    report = parse_dsn(
        dsn(
            "Reporting-MTA: dns; mx.example.net\n\n"
            "Final-Recipient: rfc822; <a@example.net>\nStatus: 4.04.007 (busy)\n\n"
            "Final-Recipient: b@example.net\nAction: Relayed\nStatus: 2.0.0\n\n"
            "Final-Recipient: rfc822; c@example.net\nAction: failed\n"
            "Diagnostic-Code: smtp; 554 transaction failed\n"
        )
    )
    assert report is not None
    assert [(r.final_recipient, r.action, r.status) for r in report.recipients] == [
        ("a@example.net", "delayed", "4.4.7"),
        ("b@example.net", "relayed", "2.0.0"),
        ("c@example.net", "failed", "5.0.0"),
    ]


def test_missing_blank_line_between_recipients_is_tolerated() -> None:
    report = parse_dsn(
        dsn(
            "Reporting-MTA: dns; mx.example.net\n"
            "Final-Recipient: rfc822; a@example.net\nAction: failed\nStatus: 5.1.1\n"
            "Final-Recipient: rfc822; b@example.net\nAction: failed\nStatus: 5.2.2\n"
        )
    )
    assert report is not None
    assert report.reporting_mta == "dns; mx.example.net"
    assert [(r.final_recipient, r.status) for r in report.recipients] == [
        ("a@example.net", "5.1.1"),
        ("b@example.net", "5.2.2"),
    ]


def test_base64_status_part_and_global_type() -> None:
    block = (
        "Reporting-MTA: dns; mx.example.net\n\n"
        "Final-Recipient: utf-8; \u00fc@example.net\nAction: failed\nStatus: 5.1.1\n"
    )
    encoded = base64.encodebytes(block.encode()).decode()
    report = parse_dsn(
        dsn(encoded, status_type="message/global-delivery-status", encoding="base64")
    )
    assert report is not None
    assert report.recipients[0].final_recipient == "\u00fc@example.net"
    bad = parse_dsn(dsn("!!!not base64=\n", encoding="base64"))
    assert bad is not None and bad.recipients == ()


def test_recipients_are_capped_at_100() -> None:
    block = "Reporting-MTA: dns; mx.example.net\n\n" + "".join(
        f"Final-Recipient: rfc822; r{i}@example.net\nAction: failed\nStatus: 5.1.1\n\n"
        for i in range(150)
    )
    report = parse_dsn(dsn(block))
    assert report is not None
    assert len(report.recipients) == 100
    assert report.recipients[-1].final_recipient == "r99@example.net"


def test_hostile_values_come_out_storable() -> None:
    report = parse_dsn(
        dsn(
            "Final-Recipient: rfc822; a\x00b@example.net\nAction: failed\n"
            "Status: 5.1.1\nDiagnostic-Code: smtp; 550 INVALID-UTF8\n",
            original="Return-Path: <>\nMessage-ID: \n",
        ).replace(b"INVALID-UTF8", b"\xff\xfe")
    )
    assert report is not None
    (recipient,) = report.recipients
    assert recipient.final_recipient == "a\ufffdb@example.net"
    assert recipient.diagnostic_code == "smtp; 550 \ufffd\ufffd"
    assert report.original_return_path is None
    assert report.original_message_id is None
    for value in (recipient.final_recipient, recipient.diagnostic_code):
        value.encode("utf-8")


def nested(depth: int) -> bytes:
    """A multipart/report whose first part nests `depth` multiparts deep."""
    head = b""
    tail = b""
    for level in range(depth):
        head += f'Content-Type: multipart/mixed; boundary="n{level}"\n\n--n{level}\n'.encode()
        tail = f"\n--n{level}--\n".encode() + tail
    status = (
        b"Content-Type: message/delivery-status\n\n"
        b"Final-Recipient: rfc822; deep@example.net\nAction: failed\nStatus: 5.1.1\n"
    )
    return head + status + tail


def test_depth_limit_is_exactly_ten() -> None:
    ok = parse_dsn(nested(9))
    assert ok is not None and ok.recipients[0].final_recipient == "deep@example.net"
    assert parse_dsn(nested(10)) is None


def test_part_limit_is_exactly_one_hundred() -> None:
    def report(parts: int) -> bytes:
        filler = b"--P\nContent-Type: text/plain\n\nfiller\n" * (parts - 1)
        return (
            b'Content-Type: multipart/report; boundary="P"\n\n'
            + filler
            + b"--P\nContent-Type: message/delivery-status\n\n"
            b"Final-Recipient: rfc822; x@example.net\nAction: failed\nStatus: 5.1.1\n"
            b"--P--\n"
        )

    assert parse_dsn(report(100)) is not None
    assert parse_dsn(report(101)) is None


# --- Bombs -------------------------------------------------------------------


def timed(data: bytes) -> tuple[DeliveryReport | None, FeedbackReport | None]:
    start = time.perf_counter()
    result = parse_dsn(data), parse_arf(data)
    assert time.perf_counter() - start < FAST
    return result


def test_bomb_depth_1000() -> None:
    assert timed(nested(1000)) == (None, None)


def test_bomb_100k_parts() -> None:
    data = (
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="x"\n\n'
        + b"--x\n\n" * 100_000
        + b"--x--\n"
    )
    assert timed(data) == (None, None)


def test_bomb_100k_parts_under_a_nested_multipart() -> None:
    data = (
        b'Content-Type: multipart/mixed; boundary="o"\n\n--o\n'
        b'Content-Type: multipart/mixed; boundary="i"\n\n'
        + b"--i\nContent-Type: text/plain\n\nx\n" * 100_000
        + b"--i--\n--o--\n"
    )
    assert timed(data) == (None, None)


@pytest.mark.parametrize(
    "line",
    [
        b"X-Junk: " + b"a" * 1_000_000,
        b"Content-Type: multipart/report; boundary=" + b"b" * 1_000_000,
        b'Content-Type: multipart/report; boundary="' + b"\\" * 1_000_000,
        b"Content-Type: multipart/report" + b";" * 1_000_000,
        b"Content-Type: multipart/report; a=b" * 30_000,
        b"Content-Type: " + b"a/" * 4_000 + b"\x01",
        b"X" * 1_000_000,
        b"X" * 1_000_000 + b":",
    ],
    ids=[
        "value",
        "boundary",
        "escapes",
        "semicolons",
        "params",
        "slashes",
        "no-colon",
        "name",
    ],
)
def test_bomb_one_megabyte_header_line(line: bytes) -> None:
    assert timed(line + b"\n\nbody\n") == (None, None)


def test_bomb_megabyte_line_inside_report_parts() -> None:
    long_value = b"a" * 1_000_000
    data = dsn(
        "Reporting-MTA: dns; mx.example.net\n\n"
        "Final-Recipient: rfc822; x@example.net\nAction: failed\nStatus: 5.1.1\n"
        "Diagnostic-Code: smtp; 550 " + "5." * 300_000 + "\n",
        original="X-Long: " + long_value.decode() + "\n" + " fold\n" * 10_000,
    )
    report, _ = timed(data)
    assert report is not None and report.recipients[0].status == "5.1.1"


def test_bomb_ten_megabytes_of_lines() -> None:
    status = "Final-Recipient: rfc822; x@example.net\nAction: failed\nStatus: 5.1.1\n"
    data = dsn(status + "a: b\n" * 2_000_000)
    assert len(data) > 10_000_000 - 100_000
    report, _ = timed(data[: 10 * 1024 * 1024])
    assert report is not None and len(report.recipients) == 1
    assert timed(data + b"x" * (10 * 1024 * 1024)) == (None, None)


def test_bomb_many_delimiter_lookalikes() -> None:
    body = b"--B-not-a-delimiter\n--Bx\n -- B\n" * 200_000
    data = b'Content-Type: multipart/report; boundary="B"\n\n' + body
    assert timed(data) == (None, None)


def test_bomb_non_line_start_delimiters() -> None:
    data = b'Content-Type: multipart/report; boundary="-"\n\n' + b"x---" * 2_500_000
    assert timed(data) == (None, None)


# --- Fuzzing -----------------------------------------------------------------

FUZZ = settings(
    max_examples=200,
    deadline=timedelta(milliseconds=500),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

FIELD_NAMES = [
    "Content-Type",
    "Content-Transfer-Encoding",
    "Reporting-MTA",
    "Arrival-Date",
    "Final-Recipient",
    "Original-Recipient",
    "Action",
    "Status",
    "Diagnostic-Code",
    "Remote-MTA",
    "Feedback-Type",
    "Original-Rcpt-To",
    "Original-Mail-From",
    "Return-Path",
    "Message-ID",
    "X-Junk",
]
MEDIA_TYPES = [
    "multipart/report",
    "multipart/mixed",
    "multipart/alternative",
    "message/delivery-status",
    "message/global-delivery-status",
    "message/feedback-report",
    "message/rfc822",
    "text/rfc822-headers",
    "text/plain",
    "application/octet-stream",
]
boundary_text = st.text(
    alphabet=string.ascii_letters + string.digits + "'()+_,-./:=? \"\\;", max_size=80
)
line_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\n"), max_size=60
)
field_value = st.one_of(
    line_text,
    st.sampled_from(
        [
            "rfc822; a@example.net",
            "failed",
            "delayed",
            "5.1.1",
            "4.4.7",
            "9.9",
            "smtp; 550 5.1.1 no",
            "abuse",
            "<b-aaaa-bbbb@bounces.example.test>",
            "base64",
            "quoted-printable",
        ]
    ),
)
fields = st.lists(
    st.tuples(st.one_of(st.sampled_from(FIELD_NAMES), line_text), field_value),
    max_size=8,
)


def render_fields(pairs: list[tuple[str, str]], fold: bool) -> str:
    out = []
    for name, value in pairs:
        if fold and " " in value:
            value = value.replace(" ", "\n ", 1)
        out.append(f"{name}: {value}\n")
    return "".join(out)


# Fields that make a group parse as a recipient or a feedback report, so the
# generated trees reach the report parsers and not only the MIME walker.
plausible = st.lists(
    st.sampled_from(
        [
            ("Final-Recipient", "rfc822; a@example.net"),
            ("Original-Recipient", "rfc822;<b@example.net>"),
            ("Action", "failed"),
            ("Action", "Delayed (retrying)"),
            ("Status", "5.1.1"),
            ("Status", "4.4.7"),
            ("Diagnostic-Code", "smtp; 550-5.7.26 rejected"),
            ("Remote-MTA", "dns; mx.example.net"),
            ("Reporting-MTA", "dns; mx.example.net"),
            ("Feedback-Type", "abuse"),
            ("Original-Rcpt-To", "<c@example.net>"),
        ]
    ),
    min_size=1,
    max_size=6,
)


@st.composite
def leaf(draw: st.DrawFn) -> str:
    media_type = draw(st.sampled_from(MEDIA_TYPES[3:]))
    extra = render_fields(draw(fields), draw(st.booleans()))
    groups = draw(st.lists(st.one_of(plausible, fields), max_size=4))
    body = "\n".join(render_fields(g, draw(st.booleans())) for g in groups)
    if draw(st.booleans()):
        body += draw(st.text(max_size=100))
    return f"Content-Type: {media_type}\n{extra}\n{body}"


@st.composite
def multipart(draw: st.DrawFn, children: st.SearchStrategy[list[str]]) -> str:
    media_type = draw(st.sampled_from(MEDIA_TYPES[:3]))
    boundary = draw(boundary_text)
    report_type = draw(
        st.sampled_from(
            ["delivery-status", "feedback-report", "global-delivery-status"]
        )
    )
    quoted = draw(st.booleans())
    param = f'"{boundary}"' if quoted else boundary
    parts = draw(children)
    closing = draw(st.booleans())
    ending = draw(st.sampled_from(["\n", "\r\n", "  \n", "--\n"]))
    body = "".join(f"--{boundary}{ending}{part}\n" for part in parts)
    if closing:
        body += f"--{boundary}--\n"
    return (
        f"Content-Type: {media_type}; report-type={report_type}; boundary={param}\n"
        f"{render_fields(draw(fields), False)}\n"
        f"{draw(line_text)}\n{body}{draw(line_text)}"
    )


mime_trees = st.recursive(
    leaf(),
    lambda children: multipart(st.lists(children, max_size=5)),
    max_leaves=15,
)


@FUZZ
@given(data=st.binary(max_size=4096))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    parse_dsn(data)
    parse_arf(data)


@FUZZ
@given(tree=mime_trees, line_ending=st.sampled_from(["\n", "\r\n"]))
def test_generated_mime_trees_never_raise(tree: str, line_ending: str) -> None:
    data = tree.replace("\n", line_ending).encode("utf-8", "surrogatepass")
    dsn_report = parse_dsn(data)
    arf_report = parse_arf(data)
    if dsn_report is not None:
        assert len(dsn_report.recipients) <= 100
        for recipient in dsn_report.recipients:
            assert isinstance(recipient, DsnRecipient)
            assert recipient.action in {
                "failed",
                "delayed",
                "delivered",
                "relayed",
                "expanded",
            }
            assert recipient.status[0] in "245"
    if arf_report is not None:
        assert arf_report.feedback_type in {
            "abuse",
            "auth-failure",
            "fraud",
            "not-spam",
            "other",
            "virus",
        }


@FUZZ
@given(
    name=st.sampled_from(sorted(DSN_EXPECTED) + sorted(ARF_EXPECTED) + MALFORMED),
    edits=st.lists(
        st.tuples(st.floats(0, 1), st.integers(0, 3), st.binary(max_size=8)),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_corpus_never_raises(
    name: str, edits: list[tuple[float, int, bytes]]
) -> None:
    data = bytearray(load(name))
    for where, kind, blob in edits:
        at = int(where * len(data))
        if kind == 0:
            del data[at:]  # truncate
        elif kind == 1:
            data[at:at] = blob  # insert
        elif kind == 2:
            del data[at : at + len(blob) + 1]  # delete
        else:
            data[at : at + len(blob)] = blob  # overwrite
    parse_dsn(bytes(data))
    parse_arf(bytes(data))
