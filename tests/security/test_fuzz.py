"""Property-based fuzzing of input parsers and of a live SMTP submission server.

Bounded under ``make test`` (profile ``default``); ``make fuzz`` runs the same
properties with many more examples (HYPOTHESIS_PROFILE=long).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from api.errors import ApiError
from api.query import Params
from sesame.settings import Settings
from tests.security.conftest import SmtpServer, start_smtp
from tests.support.api_server import create_account, verify_identity

# The long profile runs for minutes; the default one must stay within the suite's
# per-test timeout.
_LONG = os.environ.get("HYPOTHESIS_PROFILE", "default") != "default"
pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(3600 if _LONG else 120)]

# -- the SES Query parser ------------------------------------------------------------

FIELD_NAMES = st.sampled_from(
    [
        "Action",
        "Source",
        "Destination.ToAddresses.member.1",
        "Destination.ToAddresses.member.",
        "Tags.member.1.Name",
        "Tags.member.01.Value",
        "Tags.member.x",
        "RawMessage.Data",
        "Enabled",
        "MaxItems",
    ]
)
QUERY_TEXT = st.lists(
    st.tuples(
        st.one_of(FIELD_NAMES, st.text(max_size=20)),
        st.text(max_size=30),
    ),
    max_size=12,
).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))


@given(
    body=st.one_of(st.binary(max_size=2000), QUERY_TEXT.map(str.encode)),
    query=st.one_of(st.binary(max_size=200), QUERY_TEXT.map(str.encode)),
)
@example(body=b"\xff\xfe", query=b"")
@example(body=b"a=%ff%fe", query=b"")
@example(body=b"&".join(b"k%d=v" % i for i in range(5000)), query=b"")
@example(body=b"Action=%00%0d%0a", query=b"%")
def test_query_parser_raises_only_api_errors(body: bytes, query: bytes) -> None:
    try:
        params = Params.parse(body, query)
    except ApiError as exc:
        assert 400 <= exc.status < 500
        return
    # The typed accessors a handler uses either answer or raise ApiError.
    for name in list(params.fields)[:20] + ["Enabled", "MaxItems", "Source"]:
        for accessor in (params.flag, params.integer):
            try:
                accessor(name)
            except ApiError:
                pass
        params.get(name)
    for prefix in ("Destination.ToAddresses", "Tags", "Destinations", ""):
        params.members(prefix)
        params.structs(prefix)


# -- SMTP submission over a real connection ------------------------------------------


class ErrorLog(logging.Handler):
    """Collects ERROR records: an unexpected exception in a session logs one."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def fuzz_smtp(
    request: pytest.FixtureRequest, api_settings: Settings
) -> Iterator[tuple[SmtpServer, Any, ErrorLog]]:
    """A submission server on `sesame smtp`'s loop (uvloop) and on asyncio's own."""
    account, creds = create_account(api_settings, "fuzz", production=True)
    verify_identity(api_settings, account.id, "fuzz.example")
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    server = start_smtp(api_settings, uvloop=request.param == "uvloop")
    yield server, creds, errors
    server.stop()
    logging.getLogger().removeHandler(errors)


VERBS = [
    "EHLO",
    "HELO",
    "MAIL FROM:",
    "RCPT TO:",
    "DATA",
    "RSET",
    "NOOP",
    "QUIT",
    "VRFY",
    "EXPN",
    "HELP",
    "STARTTLS",
    "AUTH PLAIN",
    "AUTH LOGIN",
    "AUTH CRAM-MD5",
    "BDAT",
    "MAIL FROM:<sender@fuzz.example>",
    "MAIL FROM:<sender@fuzz.example> SIZE=100 BODY=8BITMIME SMTPUTF8",
    "RCPT TO:<someone@dest.test>",
    "RCPT TO:<someone@dest.test> NOTIFY=NEVER",
    "*",
    ".",
    "",
]
LINE = st.one_of(
    st.sampled_from(VERBS),
    st.tuples(st.sampled_from(VERBS), st.text(max_size=80)).map(" ".join),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=1100),
).map(lambda line: line.replace("\r", "").replace("\n", ""))

REPLY = re.compile(rb"[2-5]\d\d[ -]")


def converse(server: SmtpServer, lines: list[bytes], deadline: float) -> list[bytes]:
    """Send lines, end any state we may be in, and read until the server closes."""
    client = server.raw()
    sock = client.sock
    tail = b"\r\n.\r\n*\r\nQUIT\r\n"
    sock.sendall(b"".join(line + b"\r\n" for line in lines) + tail)
    data = client.buffer
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except (ConnectionError, OSError):
            break
        if not chunk:
            break
        data += chunk
    client.close()
    return [line for line in data.split(b"\r\n") if line]


@given(
    login=st.booleans(),
    lines=st.lists(LINE, max_size=15),
)
@example(
    login=True,
    lines=[
        "MAIL FROM:<sender@fuzz.example>",
        "RCPT TO:<a@dest.test>",
        "DATA",
        "x\x00y",
        "\x85",
    ],
)
@example(login=False, lines=["AUTH LOGIN", "\xff\xfe", "=", "*"])
@example(login=True, lines=["BDAT 10 LAST", "RCPT TO:<" + "a" * 3000 + "@x>"])
def test_arbitrary_command_lines_never_crash_the_submission_server(
    fuzz_smtp: tuple[SmtpServer, Any, ErrorLog], login: bool, lines: list[str]
) -> None:
    server, creds, errors = fuzz_smtp
    errors.records.clear()

    wire = [line.encode("utf-8", "surrogateescape") for line in lines]
    if login:
        token = base64.b64encode(
            f"\0{creds.smtp_username}\0{creds.smtp_password}".encode()
        ).decode()
        wire = [b"EHLO fuzz.example", f"AUTH PLAIN {token}".encode(), *wire]
    replies = converse(server, wire, time.monotonic() + 10)

    assert replies, "no greeting"
    for reply in replies:
        assert REPLY.match(reply), reply
        assert b"Traceback" not in reply and b"Error: (" not in reply, reply
    assert [r.getMessage() for r in errors.records] == []
    # The server still serves a new client.
    with socket.create_connection(("127.0.0.1", server.port), 5) as sock:
        sock.settimeout(5)
        assert sock.recv(1024).startswith(b"220 ")
        sock.sendall(b"NOOP\r\n")
        assert sock.recv(1024).startswith(b"250 ")
