"""Tests for mta.message: addresses, SendEmail building, raw parsing, finalize."""

from __future__ import annotations

import base64
import email
import email.policy
import pickle
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage, MIMEPart

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mta.message import (
    INVALID,
    MAX_MESSAGE_BYTES,
    Address,
    Attachment,
    MessageError,
    build_simple,
    finalize,
    parse_address,
    parse_address_list,
    parse_raw,
    recipients_of,
)

# The suite's autouse environment fixture is safe to share between examples.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")  # a CR or LF that is not part of CRLF
SOURCE = Address("", "sender", "verified.com")
TO = Address("", "to", "example.com")

# Line separators a header value might try to smuggle in.
INJECTIONS = ["\r\n", "\n", "\r", "\x00", "\u2028", "\u2029", "\u0085", "\x0b", "\x7f"]


def wire_lines(data: bytes) -> list[bytes]:
    """Return the lines of CRLF-delimited data."""
    assert data.endswith(b"\r\n")
    return data[:-2].split(b"\r\n")


def assert_wire_safe(data: bytes) -> None:
    """Assert CRLF-only line ends, lines within 998 octets and a final CRLF."""
    assert BARE.search(data) is None
    assert max(map(len, wire_lines(data))) <= 998


def parse(data: bytes) -> EmailMessage:
    """Parse bytes the way a receiving client built on the stdlib would."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def body(message: EmailMessage, kind: str) -> MIMEPart:
    """Return the message's text/<kind> body part."""
    part = message.get_body((kind,))
    assert part is not None
    return part


def content(part: MIMEPart) -> str:
    """Return a text part's decoded content with line breaks as LF."""
    text = part.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def simple(**overrides: object) -> bytes:
    """Build a SendEmail message with defaults for every argument."""
    arguments: dict[str, object] = {
        "source": SOURCE,
        "to": [TO],
        "cc": [],
        "reply_to": [],
        "subject": "Hello",
        "subject_charset": None,
        "text": "Hello there.\n",
        "text_charset": None,
        "html": None,
        "html_charset": None,
    }
    arguments.update(overrides)
    return build_simple(**arguments)  # type: ignore[arg-type]


def raw_message(*headers: str, body: bytes = b"Hello.\r\n") -> bytes:
    """Return a raw message with From/To defaults and the given extra headers."""
    lines = ["From: a@verified.com", "To: b@example.com", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# ------------------------------------------------------------------- addresses


def test_quoted_display_name_that_looks_like_an_address() -> None:
    address = parse_address('"a@evil.com" <a@verified.com>')
    assert address.address == "a@verified.com"
    assert address.display_name == "a@evil.com"


def test_unquoted_address_as_display_name_yields_the_angle_address() -> None:
    assert parse_address("a@verified.com <b@evil.com>").address == "b@evil.com"


@pytest.mark.parametrize(
    "text",
    [
        "a@evil.com\x00@verified.com",
        "a@evil.com,b@verified.com",
        "a@evil.com, b@verified.com",
        "a@verified.com,",
        "group: a@verified.com;",
        "group:;",
        "<@relay.com:a@verified.com>",
        "@relay.com:a@verified.com",
        "josé@verified.com",
        '"a@evil.com"@verified.com',
        '"a b"@verified.com',
        "verified.com",
        "@verified.com",
        "a@",
        "a@.",
        "",
        "   ",
        "a@[127.0.0.1]",
        "a@verified..com",
        "a@.verified.com",
        "a@-verified.com",
        "a@verified_com.com",
        ".a@verified.com",
        "a.@verified.com",
        "a..b@verified.com",
        "<a@verified.com",
        "a@verified.com>",
        "<a@verified.com> trailing",
        "<a@verified.com> <b@evil.com>",
        '"unterminated <a@verified.com>',
        "(unterminated a@verified.com",
        "a@verified.com)",
        "Name a@verified.com",
        "a @verified.com",
        "a\\@b@verified.com",
        "x" * 65 + "@verified.com",
        "a@" + ".".join(["abcdefghi"] * 30) + ".com",
        "a@xn--zz.com",
        "a@veri\u00adfied.com",
        "a@veri\u200bfied.com",
        "a@\uff56erified.com",
        "N" * 3000 + " <a@verified.com>",
    ],
)
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(MessageError) as caught:
        parse_address(text)
    assert caught.value.code == INVALID
    assert caught.value.message.endswith(".")


@pytest.mark.parametrize("bad", INJECTIONS + ["\t", "\x1b", "\x9f"])
@pytest.mark.parametrize(
    "template", ["Name{} <a@verified.com>", "a{}@verified.com", "a@verified.com{}"]
)
def test_parse_address_rejects_controls_anywhere(template: str, bad: str) -> None:
    with pytest.raises(MessageError):
        parse_address(template.format(bad))


def test_non_ascii_local_part_uses_the_ses_wording() -> None:
    with pytest.raises(MessageError) as caught:
        parse_address("jöe@verified.com")
    assert caught.value.message == "Local address contains illegal character."


def test_missing_at_uses_the_ses_wording() -> None:
    with pytest.raises(MessageError) as caught:
        parse_address("verified.com")
    assert caught.value.message == "Missing final '@domain'."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a@Verified.COM", "a@verified.com"),
        ("a@verified.com.", "a@verified.com"),
        ("a@bücher.de", "a@xn--bcher-kva.de"),
        ("a@BÜCHER.de.", "a@xn--bcher-kva.de"),
        ("a@xn--bcher-kva.de", "a@xn--bcher-kva.de"),
        ("Mixed.Case@verified.com", "Mixed.Case@verified.com"),
        ("a%b!c@verified.com", "a%b!c@verified.com"),
        ("a+tag@verified.com", "a+tag@verified.com"),
        ('"plain"@verified.com', "plain@verified.com"),
        ("  <a@verified.com>  ", "a@verified.com"),
        ("a@verified.com (a comment)", "a@verified.com"),
        ("Name (note) <a@verified.com>", "a@verified.com"),
        ("a@localhost", "a@localhost"),
    ],
)
def test_parse_address_normalises(text: str, expected: str) -> None:
    assert parse_address(text).address == expected


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("John Q. Public <j@verified.com>", "John Q. Public"),
        ('"Doe, John" <j@verified.com>', "Doe, John"),
        ('"say \\"hi\\"" <j@verified.com>', 'say "hi"'),
        ("=?utf-8?B?w4lyaWM=?= <e@verified.com>", "Éric"),
        ("=?utf-8?q?J=C3=B6rg?= =?utf-8?q?_M?= <e@verified.com>", "Jörg M"),
        ("Zoë <z@verified.com>", "Zoë"),
        ("<z@verified.com>", ""),
    ],
)
def test_display_names(text: str, name: str) -> None:
    assert parse_address(text).display_name == name


def test_encoded_word_cannot_smuggle_a_line_break_into_a_display_name() -> None:
    text = "=?utf-8?q?Bob=0D=0ABcc=3A_x=40evil=2Ecom?= <a@verified.com>"
    address = parse_address(text)
    assert address.display_name == "Bob\ufffd\ufffdBcc: x@evil.com"
    assert address.address == "a@verified.com"
    # RFC 2047 §5: structure is parsed before decoding, so raw specials in an
    # encoded-word are specials (here a group colon) and the address is refused.
    with pytest.raises(MessageError):
        parse_address("=?utf-8?q?Bob=0D=0ABcc:_x@evil.com?= <a@verified.com>")


def test_parse_address_list() -> None:
    found = parse_address_list(["a@verified.com", "B <b@Example.com>"])
    assert [a.address for a in found] == ["a@verified.com", "b@example.com"]


@pytest.mark.parametrize(
    ("display", "local", "domain"),
    [
        ("Bad\r\nBcc: x@evil.com", "a", "verified.com"),
        ("", "a b", "verified.com"),
        ("", "a\r\n", "verified.com"),
        ("", "a", "Verified.com"),
        ("", "a", "evil.com\r\nBcc: x@evil.com"),
    ],
)
def test_address_refuses_unsafe_values_when_built_directly(
    display: str, local: str, domain: str
) -> None:
    with pytest.raises(MessageError):
        Address(display, local, domain)


@pytest.mark.parametrize(
    "name",
    [
        "Plain Name",
        "Doe, John",
        'quote " and \\ backslash',
        "=?utf-8?q?not_an_encoded_word?=",
        "Ünïcödé ñame 名前",
        "x" * 200,
        "a  b",
        "a@evil.com",
    ],
)
def test_formatted_round_trips(name: str) -> None:
    address = Address(name, "a", "verified.com")
    again = parse_address(address.formatted())
    assert again == address
    stdlib = parse(f"From: {address.formatted()}\r\n\r\n".encode())["From"]
    assert stdlib.addresses[0].display_name == name
    assert stdlib.addresses[0].addr_spec == "a@verified.com"


def test_message_error_pickles() -> None:
    error = pickle.loads(pickle.dumps(MessageError(INVALID, "Bad thing.")))
    assert (error.code, error.message, str(error)) == (
        INVALID,
        "Bad thing.",
        "Bad thing.",
    )


# ----------------------------------------------------------------- build_simple


def test_build_simple_text_only() -> None:
    data = simple(
        cc=[Address("Carol", "c", "example.com")],
        reply_to=[Address("", "r", "verified.com")],
    )
    assert_wire_safe(data)
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head == (
        b"From: sender@verified.com\r\n"
        b"To: to@example.com\r\n"
        b"Cc: Carol <c@example.com>\r\n"
        b"Reply-To: r@verified.com\r\n"
        b"Subject: Hello\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=UTF-8\r\n"
        b"Content-Transfer-Encoding: 7bit"
    )
    assert data.endswith(b"\r\n\r\nHello there.\r\n")
    for absent in (b"Bcc", b"Message-ID", b"Date:"):
        assert absent not in data


def test_build_simple_alternative_mixed_and_related() -> None:
    data = simple(
        text="plain body",
        html='<p>html body <img src="cid:logo"></p>',
        attachments=[
            Attachment("logo.png", "image/png", b"\x89PNG" * 50, "inline", "logo"),
            Attachment("report.pdf", "application/pdf", bytes(range(256)) * 4),
        ],
    )
    assert_wire_safe(data)
    message = parse(data)
    types = [part.get_content_type() for part in message.walk()]
    assert types == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/png",
        "application/pdf",
    ]
    assert content(body(message, "plain")) == "plain body"
    assert "cid:logo" in content(body(message, "html"))
    parts = {part.get_content_type(): part for part in message.walk()}
    assert parts["image/png"]["Content-ID"] == "<logo>"
    assert parts["image/png"].get_content_disposition() == "inline"
    pdf = parts["application/pdf"]
    assert pdf.get_filename() == "report.pdf"
    assert pdf.get_content() == bytes(range(256)) * 4


def test_html_only_and_attachment_only() -> None:
    message = parse(simple(text=None, html="<b>x</b>"))
    assert message.get_content_type() == "text/html"
    data = simple(text=None, attachments=[Attachment("a.txt", "text/plain", b"x")])
    message = parse(data)
    assert [p.get_content_type() for p in message.walk()] == [
        "multipart/mixed",
        "text/plain",
    ]
    assert [p.get_filename() for p in message.iter_attachments()] == ["a.txt"]


def test_non_ascii_and_long_attachment_file_names() -> None:
    names = ["résumé.pdf", "名前" * 40 + ".txt", "x" * 200 + ".bin", 'q"uote\\.txt']
    attachments = [Attachment(n, "application/octet-stream", b"data") for n in names]
    data = simple(attachments=attachments)
    assert_wire_safe(data)
    assert max(map(len, wire_lines(data))) <= 78
    found = [part.get_filename() for part in parse(data).iter_attachments()]
    assert found == names


@pytest.mark.parametrize("bad", INJECTIONS)
def test_control_characters_are_refused_in_every_header_input(bad: str) -> None:
    attempts: list[dict[str, object]] = [
        {"subject": f"Hi{bad}Bcc: x@evil.com"},
        {"headers": [("X-Custom", f"v{bad}Bcc: x@evil.com")]},
        {"headers": [(f"X-Custom{bad}", "v")]},
        {"attachments": [Attachment(f"a{bad}.txt", "text/plain", b"")]},
        {"attachments": [Attachment("a.txt", f"text/plain{bad}", b"")]},
        {"attachments": [Attachment("a.txt", "text/plain", b"", "inline", f"c{bad}")]},
    ]
    for attempt in attempts:
        with pytest.raises(MessageError) as caught:
            simple(**attempt)
        assert caught.value.code == INVALID
    with pytest.raises(MessageError):
        simple(source=Address(f"N{bad}", "a", "verified.com"))


def test_encoded_word_hiding_crlf_in_subject_stays_literal() -> None:
    subject = "=?utf-8?q?a=0D=0ABcc:_x@evil?="
    data = simple(subject=subject)
    assert_wire_safe(data)
    message = parse(data)
    assert message["Subject"] == subject
    assert message.keys() == [
        "From",
        "To",
        "Subject",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
    ]


def test_long_subject_is_folded() -> None:
    subject = " ".join(["word"] * 100)
    data = simple(subject=subject)
    assert max(map(len, wire_lines(data))) <= 78
    assert parse(data)["Subject"] == subject
    unbroken = "x" * 3000
    data = simple(subject=unbroken)
    assert_wire_safe(data)
    assert parse(data)["Subject"] == unbroken


@pytest.mark.parametrize(
    "name",
    [
        "From",
        "to",
        "CC",
        "Bcc",
        "Reply-To",
        "Subject",
        "Message-ID",
        "Date",
        "MIME-Version",
        "Content-Type",
        "content-transfer-encoding",
        "DKIM-Signature",
        "Return-Path",
        "X-SES-CONFIGURATION-SET",
        "x-ses-message-tags",
    ],
)
def test_reserved_custom_headers_are_refused(name: str) -> None:
    with pytest.raises(MessageError):
        simple(headers=[(name, "x")])


@pytest.mark.parametrize("name", ["", "Has Space", "Colon:", "Ünï", "x" * 77])
def test_invalid_custom_header_names_are_refused(name: str) -> None:
    with pytest.raises(MessageError):
        simple(headers=[(name, "x")])


def test_custom_headers() -> None:
    data = simple(
        headers=[
            ("List-Unsubscribe", "<https://verified.com/u?id=1>"),
            ("X-Note", "Grüße"),
            ("X-Long", " ".join(["token"] * 60)),
        ]
    )
    assert_wire_safe(data)
    message = parse(data)
    assert message["List-Unsubscribe"] == "<https://verified.com/u?id=1>"
    assert message["X-Note"] == "Grüße"
    assert message["X-Long"] == " ".join(["token"] * 60)
    with pytest.raises(MessageError):
        simple(headers=[("X-Long", "x" * 2000)])


@pytest.mark.parametrize("length", [998, 999, 2000, 20000])
def test_long_body_lines_are_encoded(length: int) -> None:
    text = "a" * length + "\nshort\n" + "é" * length
    data = simple(text=text, html=text)
    assert_wire_safe(data)
    message = parse(data)
    assert content(body(message, "plain")) == text
    assert content(body(message, "html")) == text
    single = parse(simple(text=text))
    assert content(single) == text


def test_line_endings_and_from_lines_in_bodies() -> None:
    text = "From me\r\nline\rnext\nFrom you\n.\n"
    data = simple(text=text)
    assert_wire_safe(data)
    assert b"\r\nFrom " not in data
    assert content(parse(data)) == "From me\nline\nnext\nFrom you\n.\n"


def test_nul_in_body_is_quoted_printable() -> None:
    data = simple(text="a\x00b")
    assert b"Content-Transfer-Encoding: quoted-printable" in data
    assert parse(data).get_content() == "a\x00b"


@pytest.mark.parametrize(
    "charset", ["ISO-8859-1", "windows-1252", "Shift_JIS", "ISO-2022-JP", "utf-8"]
)
def test_charsets(charset: str) -> None:
    text = "日本語のテキスト" if "J" in charset or "utf" in charset else "café olé"
    subject = "件名のテスト" * 10 if "J" in charset else "Café " * 30
    data = simple(
        subject=subject,
        subject_charset=charset,
        text=text,
        text_charset=charset,
        html=text,
        html_charset=charset,
    )
    assert_wire_safe(data)
    message = parse(data)
    assert message["Subject"] == subject
    assert body(message, "plain").get_content_charset() == charset.lower()
    assert content(body(message, "plain")) == text


@pytest.mark.parametrize(
    "charset", ["utf-16", "utf-7", "base64", "nope", "a b", "x\r\n"]
)
def test_unusable_charsets_are_refused(charset: str) -> None:
    with pytest.raises(MessageError):
        simple(text_charset=charset)
    with pytest.raises(MessageError):
        simple(subject="ü", subject_charset=charset)


def test_text_outside_its_charset_is_refused() -> None:
    with pytest.raises(MessageError):
        simple(text="€", text_charset="ISO-8859-1")
    with pytest.raises(MessageError):
        simple(subject="日本", subject_charset="ISO-8859-1")


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(MessageError):
        simple(subject="a\ud800")
    with pytest.raises(MessageError):
        simple(text="a\ud800")


@pytest.mark.parametrize(
    "attachment",
    [
        Attachment("a", "text", b""),
        Attachment("a", "multipart/mixed", b""),
        Attachment("a", "message/rfc822", b""),
        Attachment("a", "text/plain", b"", "sideways"),
        Attachment("a", "text/plain", b"", "inline", "<a>b>"),
        Attachment("x" * 256, "text/plain", b""),
    ],
)
def test_invalid_attachments_are_refused(attachment: Attachment) -> None:
    with pytest.raises(MessageError):
        simple(attachments=[attachment])


CHARSETS = st.sampled_from([None, "UTF-8", "ISO-8859-1", "Shift_JIS", "ISO-2022-JP"])


@FUZZ
@given(
    subject=st.text(max_size=300),
    subject_charset=CHARSETS,
    text=st.none() | st.text(max_size=3000),
    text_charset=CHARSETS,
    html=st.none() | st.text(max_size=3000),
    display=st.text(max_size=120),
)
def test_build_simple_property(
    subject: str,
    subject_charset: str | None,
    text: str | None,
    text_charset: str | None,
    html: str | None,
    display: str,
) -> None:
    try:
        source = Address(display, "sender", "verified.com")
        data = simple(
            source=source,
            subject=subject,
            subject_charset=subject_charset,
            text=text,
            text_charset=text_charset,
            html=html,
        )
    except MessageError as error:
        assert error.code == INVALID
        return
    assert_wire_safe(data)
    message = parse(data)
    expected = ["From", "To", "Subject", "MIME-Version", "Content-Type"]
    if text is None or html is None:
        expected.append("Content-Transfer-Encoding")
    assert message.keys() == expected
    shown = message["From"].addresses[0].display_name
    if source.formatted().count("=?") > 1:
        # The stdlib keeps the space between adjacent encoded-words in a
        # phrase, which RFC 2047 §6.2 says to drop; compare without spaces.
        assert re.sub(r"\s", "", shown) == re.sub(r"\s", "", display)
    else:
        assert shown == display.strip(" ")
    assert parse_address(source.formatted()) == source
    assert message["Subject"].lstrip(" \t") == subject.lstrip(" \t")
    single = text is None or html is None
    for kind, value in (("plain", text), ("html", html)):
        if value is not None:
            lines = re.sub(r"\r\n|\r", "\n", value)
            found = content(body(message, kind))
            assert found == lines or (single and found == lines + "\n")


# ------------------------------------------------------------------- parse_raw


def test_parse_raw_fields() -> None:
    data = raw_message(
        "Cc: C <c@example.com>, d@example.com",
        "Bcc: hidden@example.com",
        "Reply-To: r@verified.com",
        "Sender: s@verified.com",
        "Return-Path: <bounce@verified.com>",
        "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= again",
        "Message-ID: <id@verified.com>",
        "X-SES-CONFIGURATION-SET: my-set",
        "x-ses-message-tags: campaign=spring, kind=promo",
        "X-SES-MESSAGE-TAGS: extra=1",
    )
    parsed = parse_raw(data, max_bytes=MAX_MESSAGE_BYTES)
    assert [a.address for a in parsed.from_] == ["a@verified.com"]
    assert [a.address for a in parsed.to] == ["b@example.com"]
    assert [a.display_name for a in parsed.cc] == ["C", ""]
    assert [a.address for a in parsed.bcc] == ["hidden@example.com"]
    assert parsed.reply_to[0].address == "r@verified.com"
    assert parsed.sender is not None and parsed.sender.address == "s@verified.com"
    assert parsed.return_path is not None
    assert parsed.return_path.address == "bounce@verified.com"
    assert parsed.subject == "Grüße again"
    assert parsed.header_message_id == "<id@verified.com>"
    assert parsed.configuration_set == "my-set"
    assert parsed.tags == {"campaign": "spring", "kind": "promo", "extra": "1"}
    assert parsed.raw == data


def test_parse_raw_groups_folding_and_lf_endings() -> None:
    data = (
        b"From: =?utf-8?b?w4lyaWM=?= <a@verified.com>\n"
        b"To: undisclosed-recipients:;\n"
        b"Cc: team: x@example.com,\n\t y@example.com;, z@example.com\n"
        b"\n"
        b"body\n"
    )
    parsed = parse_raw(data, max_bytes=MAX_MESSAGE_BYTES)
    assert parsed.from_[0].display_name == "Éric"
    assert parsed.to == []
    assert [a.local for a in parsed.cc] == ["x", "y", "z"]
    assert parsed.raw == data.replace(b"\n", b"\r\n")
    assert parsed.subject is None and parsed.return_path is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"To: b@example.com\r\n\r\nx", "Missing required header 'From'."),
        (b"\r\nFrom: a@verified.com\r\n\r\nx", "Missing required header 'From'."),
        (raw_message("From: c@verified.com"), "Duplicate header 'From'."),
        (
            raw_message("Sender: a@x.com", "Sender: b@x.com"),
            "Duplicate header 'Sender'.",
        ),
        (raw_message("X-Bad\x00: x"), "Header section contains a NUL character."),
        (raw_message("X-Bad: a\x00b"), "Header section contains a NUL character."),
    ],
)
def test_parse_raw_rejects_headers(data: bytes, message: str) -> None:
    with pytest.raises(MessageError) as caught:
        parse_raw(data, max_bytes=MAX_MESSAGE_BYTES)
    assert caught.value.code == INVALID
    assert caught.value.message == message


@pytest.mark.parametrize(
    "data",
    [
        b" folded: start\r\nFrom: a@verified.com\r\n\r\n",
        raw_message("Not a header line"),
        raw_message("Subject : spaced name"),
        raw_message("From : c@evil.com"),
        b"From: a@verified.com, b@evil.com\r\nFrom: x\r\n\r\n",
        b"From: group: a@verified.com;\r\n\r\n",
        b"From: \r\n\r\n",
        raw_message("To: a@evil.com\x00"),
        raw_message("To: josé@example.com"),
        raw_message("Cc: <a@example.com"),
        raw_message("Sender: a@x.com, b@x.com"),
        raw_message("Return-Path: <not an address>"),
        raw_message("X-SES-MESSAGE-TAGS: novalue"),
        raw_message("X-SES-MESSAGE-TAGS: a=1, a=2"),
        raw_message("X-SES-MESSAGE-TAGS: bad name=1"),
        raw_message("X-SES-CONFIGURATION-SET: a", "X-SES-CONFIGURATION-SET: b"),
        raw_message("Content-Transfer-Encoding: binary", body=b"a\nb\n"),
    ],
)
def test_parse_raw_rejects(data: bytes) -> None:
    with pytest.raises(MessageError) as caught:
        parse_raw(data, max_bytes=MAX_MESSAGE_BYTES)
    assert caught.value.code == INVALID


def test_address_errors_name_the_header() -> None:
    with pytest.raises(MessageError) as caught:
        parse_raw(raw_message("Cc: nobody"), max_bytes=MAX_MESSAGE_BYTES)
    assert caught.value.message == "Missing final '@domain' in header 'Cc'."


def test_header_section_limits() -> None:
    many = [f"X-N{i}: v" for i in range(1000)]
    parse_raw(raw_message(*many[:998]), max_bytes=MAX_MESSAGE_BYTES)
    with pytest.raises(MessageError, match="1000 header fields"):
        parse_raw(raw_message(*many), max_bytes=MAX_MESSAGE_BYTES)
    big = ["X-Big: " + "y " * 600] * 900
    with pytest.raises(MessageError, match="Header section is larger"):
        parse_raw(raw_message(*big), max_bytes=MAX_MESSAGE_BYTES)


def test_size_limit_boundary() -> None:
    head = raw_message("Content-Type: application/octet-stream", body=b"")
    line = b"A" * 76 + b"\r\n"
    body = line * ((MAX_MESSAGE_BYTES - len(head)) // len(line))
    body += b"A" * (MAX_MESSAGE_BYTES - len(head) - len(body) - 2) + b"\r\n"
    data = head + body
    assert len(data) == MAX_MESSAGE_BYTES
    assert parse_raw(data, max_bytes=MAX_MESSAGE_BYTES).raw == data
    with pytest.raises(MessageError) as caught:
        parse_raw(data + b"A", max_bytes=MAX_MESSAGE_BYTES)
    assert caught.value.code == INVALID
    assert caught.value.message == (
        "Message length is more than 10485760 bytes long: '10485761'."
    )


def nested(depth: int) -> bytes:
    """Return a message whose text leaf sits inside `depth` nested multiparts."""
    entity = b"Content-Type: text/plain\r\n\r\nleaf\r\n"
    for level in range(depth):
        marker = f"level{level:03d}".encode()
        entity = (
            b'Content-Type: multipart/mixed; boundary="' + marker + b'"\r\n\r\n'
            b"--" + marker + b"\r\n" + entity + b"\r\n--" + marker + b"--\r\n"
        )
    return b"From: a@verified.com\r\nTo: b@example.com\r\n" + entity


def wide(parts: int) -> bytes:
    """Return a multipart/mixed message with `parts` text children."""
    child = b"--edge\r\nContent-Type: text/plain\r\n\r\nx\r\n"
    return (
        b"From: a@verified.com\r\nContent-Type: multipart/mixed; boundary=edge\r\n\r\n"
        + child * parts
        + b"--edge--\r\n"
    )


def test_mime_depth_cap() -> None:
    parse_raw(nested(30), max_bytes=MAX_MESSAGE_BYTES)
    with pytest.raises(MessageError, match="nested more than 30") as caught:
        parse_raw(nested(31), max_bytes=MAX_MESSAGE_BYTES)
    assert caught.value.code == INVALID


def test_mime_part_cap() -> None:
    parse_raw(wide(500), max_bytes=MAX_MESSAGE_BYTES)
    with pytest.raises(MessageError, match="more than 500 MIME parts") as caught:
        parse_raw(wide(501), max_bytes=MAX_MESSAGE_BYTES)
    assert caught.value.code == INVALID


def test_embedded_messages_count_towards_the_caps() -> None:
    inner = nested(29)
    outer = (
        b"From: a@verified.com\r\nContent-Type: multipart/mixed; boundary=o\r\n\r\n"
        b"--o\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--o--\r\n"
    )
    with pytest.raises(MessageError, match="nested"):
        parse_raw(outer, max_bytes=MAX_MESSAGE_BYTES)


def test_recipients_of() -> None:
    data = raw_message(
        "Cc: c@example.com, B@Example.com", "Bcc: hidden@example.com, c@example.com"
    )
    parsed = parse_raw(data, max_bytes=MAX_MESSAGE_BYTES)
    found = [a.address for a in recipients_of(parsed)]
    assert found == ["b@example.com", "c@example.com", "hidden@example.com"]


def test_recipients_of_empty_and_many() -> None:
    none = parse_raw(b"From: a@verified.com\r\n\r\nx", max_bytes=MAX_MESSAGE_BYTES)
    assert recipients_of(none) == []
    many = ", ".join(f"r{i}@example.com" for i in range(60))
    parsed = parse_raw(raw_message(f"Cc: {many}"), max_bytes=MAX_MESSAGE_BYTES)
    assert len(recipients_of(parsed)) == 61  # the caller applies its limit


# -------------------------------------------------------------------- finalize


def final(data: bytes, **overrides: object) -> bytes:
    """Run finalize with no Message-ID or Date unless given."""
    arguments: dict[str, object] = {"message_id_header": None, "date": None}
    arguments.update(overrides)
    out = finalize(data, **arguments)  # type: ignore[arg-type]
    assert_wire_safe(out)
    return out


def test_finalize_strips_control_headers_and_bcc() -> None:
    data = raw_message(
        "Bcc: hidden@example.com",
        "X-SES-CONFIGURATION-SET: set",
        "x-ses-message-tags: a=1",
        "X-Ses-Source-Arn: arn:aws:ses:x",
        "X-SES-FROM-ARN: arn",
        "X-SES-RETURN-PATH-ARN: arn",
        "X-SES-LIST-MANAGEMENT-OPTIONS: list; topic=t",
        "X-SES-ANYTHING-NEW: y",
        "Return-Path: <b@verified.com>",
        "DKIM-Signature: v=1; d=verified.com; b=abc",
        "X-SESSION: kept",
    )
    out = final(data)
    message = parse(out)
    assert message.keys() == ["From", "To", "DKIM-Signature", "X-SESSION"]
    assert b"hidden" not in out
    kept = final(data, remove_bcc=False)
    assert parse(kept)["Bcc"] == "hidden@example.com"


def test_finalize_sets_message_id_and_date() -> None:
    data = raw_message("Message-ID: <old@x>", "Date: Mon, 1 Jan 2001 00:00:00 +0000")
    when = datetime(2024, 2, 29, 13, 5, 9, tzinfo=timezone(timedelta(hours=-5)))
    out = final(data, message_id_header="<new@verified.com>", date=when)
    message = parse(out)
    assert message.get_all("Message-ID") == ["<new@verified.com>"]
    assert message.get_all("Date") == ["Thu, 29 Feb 2024 13:05:09 -0500"]
    assert message["Date"].datetime == when
    out = final(raw_message(), message_id_header="bare@verified.com", date=None)
    assert parse(out)["Message-ID"] == "<bare@verified.com>"
    naive = final(raw_message(), date=datetime(2024, 1, 2, 3, 4, 5))
    assert parse(naive)["Date"].datetime == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    kept = final(data)
    assert parse(kept)["Message-ID"] == "<old@x>"
    with pytest.raises(MessageError):
        final(data, message_id_header="<a b@c>")


def test_finalize_adds_mime_version_and_final_crlf() -> None:
    out = final(b"From: a@verified.com\r\nContent-Type: text/plain\r\n\r\nno newline")
    assert parse(out)["MIME-Version"] == "1.0"
    assert out.endswith(b"no newline\r\n")
    assert b"MIME-Version" not in final(raw_message())
    assert final(b"From: a@verified.com") == b"From: a@verified.com\r\n\r\n"


@pytest.mark.parametrize(
    "body",
    [
        b"line\n.\r\nQUIT\r\n",
        b"line\r.\rQUIT\r\n",
        b"line\r\n.\nQUIT\r\n",
        b"line\n.\nQUIT",
        b"line\r\n.\r\r\nMAIL FROM:<x@evil>\r\n",
        b"\r\r\n\n\r\n\r\r",
    ],
)
def test_finalize_normalises_smuggling_line_endings(body: bytes) -> None:
    out = final(raw_message(body=body))
    # Every remaining "\r\n.\r\n" is now a real one-dot line, which the SMTP
    # client dot-stuffs; nothing else can end the DATA phase.
    for match in re.finditer(rb"\r\n\.\r\n", out):
        assert out[match.start() + 2 : match.end()] == b".\r\n"


@FUZZ
@given(body=st.binary(max_size=4000), head=st.sampled_from([b"", b"X-A: 1\n"]))
def test_finalize_property(body: bytes, head: bytes) -> None:
    data = b"From: a@verified.com\r\n" + head + b"\r\n" + body
    try:
        out = final(data)
    except MessageError as error:
        assert error.code == INVALID
        return
    assert out.startswith(b"From: a@verified.com\r\n")


@FUZZ
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=3000))
def test_finalize_keeps_built_messages_unchanged(text: str) -> None:
    data = simple(text=text, html=text)
    assert finalize(data, message_id_header=None, date=None) == data


@pytest.mark.parametrize("length", [998, 999, 2000])
def test_long_lines_in_a_text_body_are_reencoded(length: int) -> None:
    line = ("é" * length).encode()[:length]
    if len(line) != length:
        line = line[:-1] + b"a"
    body = b"start\r\n" + line + b"\r\nend\r\n"
    data = raw_message(
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        body=body,
    )
    out = final(data)
    message = parse(out)
    if length <= 998:
        assert out == data
    else:
        assert message["Content-Transfer-Encoding"] == "quoted-printable"
        assert message.get_all("Content-Transfer-Encoding") == ["quoted-printable"]
    assert message.get_payload(decode=True) == body


def test_long_line_in_a_body_without_mime_headers() -> None:
    body = b"x" * 5000 + b"\r\n"
    out = final(raw_message(body=body))
    message = parse(out)
    assert message["MIME-Version"] == "1.0"
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert message.get_payload(decode=True) == body


def test_long_lines_in_multipart_leaves_are_reencoded() -> None:
    text = b"t" * 2000
    binary = bytes(range(256)) * 10
    one_line_b64 = base64.b64encode(binary)
    qp_long = b"q" * 1500 + b"=3D"
    data = (
        b"From: a@verified.com\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"preamble " + b"p" * 1200 + b"\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\n" + text + b"\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + one_line_b64 + b"\r\n"
        b"--b\r\nContent-Type: text/html\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + qp_long + b"\r\n"
        b"--b\r\nContent-Type: application/x-thing\r\n\r\n" + b"z" * 1000 + b"\r\n"
        b"--b\r\nContent-Type: text/plain\r\nX-Long: " + b"w " * 600 + b"\r\n\r\nok\r\n"
        b"--b--\r\n"
    )
    out = final(data)
    parts = list(parse(out).iter_parts())
    assert parts[0].get_payload(decode=True) == text
    assert parts[0]["Content-Transfer-Encoding"] == "quoted-printable"
    assert parts[1].get_payload(decode=True) == binary
    assert parts[2].get_payload(decode=True) == b"q" * 1500 + b"="
    assert parts[3]["Content-Transfer-Encoding"] == "base64"
    assert parts[3].get_payload(decode=True) == b"z" * 1000
    assert parts[4]["X-Long"].strip() == ("w " * 600).strip()
    assert parts[4].get_payload(decode=True) == b"ok"


def test_long_header_lines_are_folded_or_refused() -> None:
    value = " ".join(["word"] * 400)
    out = final(raw_message(f"X-Long: {value}"))
    assert parse(out)["X-Long"] == value
    with pytest.raises(MessageError) as caught:
        final(raw_message("X-Long: " + "x" * 1200))
    assert caught.value.code == INVALID


def test_unknown_encoding_with_long_lines_is_refused() -> None:
    data = raw_message("Content-Transfer-Encoding: x-uuencode", body=b"u" * 1200)
    with pytest.raises(MessageError):
        final(data)


def test_parse_then_finalize_of_a_stdlib_message() -> None:
    message = EmailMessage()
    message["From"] = "Ann <a@verified.com>"
    message["To"] = "b@example.com"
    message["Bcc"] = "c@example.com"
    message["Subject"] = "Ünïcode subject"
    message["X-SES-MESSAGE-TAGS"] = "k=v"
    message.set_content("plain " * 200)
    message.add_alternative("<p>" + "html " * 200 + "</p>", subtype="html")
    message.add_attachment(b"\x00\x01" * 500, maintype="application", subtype="zip")
    parsed = parse_raw(message.as_bytes(), max_bytes=MAX_MESSAGE_BYTES)
    assert parsed.subject == "Ünïcode subject"
    assert parsed.tags == {"k": "v"}
    assert [a.address for a in recipients_of(parsed)] == [
        "b@example.com",
        "c@example.com",
    ]
    out = final(
        parsed.raw, message_id_header="<m@verified.com>", date=datetime.now(UTC)
    )
    again = parse(out)
    assert again["Bcc"] is None and again["X-SES-MESSAGE-TAGS"] is None
    assert [p.get_content_type() for p in again.walk()] == [
        p.get_content_type() for p in message.walk()
    ]


# --------------------------------------------------------------------- timings


def test_print_timings() -> None:
    """Print per-call costs (run with -s to see them); nothing is asserted."""
    text = ("The quick brown fox jumps over the lazy dog. " * 2 + "\n") * 28
    html = "<p>" + text.replace("\n", "</p>\n<p>") + "</p>"

    def send_email() -> bytes:
        built = build_simple(
            source=SOURCE,
            to=[TO],
            cc=[],
            reply_to=[],
            subject="Your weekly report",
            subject_charset=None,
            text=text,
            text_charset=None,
            html=html,
            html_charset=None,
        )
        return finalize(built, message_id_header="<x@verified.com>", date=None)

    raw = send_email()

    def send_raw() -> bytes:
        parsed = parse_raw(raw, max_bytes=MAX_MESSAGE_BYTES)
        return finalize(parsed.raw, message_id_header="<y@verified.com>", date=None)

    for name, call in (
        ("build_simple+finalize", send_email),
        ("parse_raw+finalize", send_raw),
    ):
        call()
        rounds = 2000
        start = time.perf_counter()
        for _ in range(rounds):
            call()
        per_call = (time.perf_counter() - start) / rounds * 1e6
        print(f"{name}: {per_call:.1f} µs for a {len(raw)}-byte message")
