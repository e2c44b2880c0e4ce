"""Every submission reply carries an RFC 3463 code; aiosmtpd's own are all translated."""

from __future__ import annotations

import ast
import inspect
import re

import aiosmtpd.smtp
import pytest
from prometheus_client import REGISTRY

from mta.submission import replies
from tests.submission.conftest import Sender, SmtpServer, plain

_CODED = re.compile(r"([245])\d\d \1\.\d{1,3}\.\d{1,3} \S")
# RFC 2034 3: no enhanced code on the greeting; 3xx replies have none at all.
_UNCODED = {"GREETING_IDENT", "START_DATA"}


def _constants() -> dict[str, str]:
    return {
        name: value
        for name, value in vars(replies).items()
        if name.isupper() and isinstance(value, str) and name not in _UNCODED
    }


@pytest.mark.parametrize("name", sorted(_constants()))
def test_reply_constant_has_a_matching_enhanced_code(name: str) -> None:
    value = _constants()[name]
    assert _CODED.match(value), value
    assert len(value) <= replies.MAX_REPLY_LINE


def _aiosmtpd_literals() -> list[str]:
    """Every string literal aiosmtpd's SMTP class pushes or returns as a status."""
    tree = ast.parse(inspect.getsource(aiosmtpd.smtp))
    found: set[str] = set()
    inside_fstrings = {
        id(part)
        for node in ast.walk(tree)
        if isinstance(node, ast.JoinedStr)
        for part in node.values
    }
    for node in ast.walk(tree):
        if id(node) in inside_fstrings:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.match(r"[2-5]\d\d[ -]", node.value):
                found.add(node.value)
        elif isinstance(node, ast.JoinedStr):
            parts = [
                v.value if isinstance(v, ast.Constant) else "X" for v in node.values
            ]
            text = "".join(str(p) for p in parts)
            if re.match(r"[2-5]\d\d ", text):
                found.add(text)
    return sorted(found)


def test_every_aiosmtpd_reply_is_translated() -> None:
    # Greeting/EHLO/HELO forms and 3xx/'250-' lines are sent as they are.
    unknown = []
    for text in _aiosmtpd_literals():
        if text.startswith(("250-", "3", "220 {}", "250 {}")):
            continue
        if text in ("250 HELP", "250 Syntax: "):
            continue  # EHLO's last line (replaced) and HELP (overridden)
        if text.startswith(("252 ", "502 Could not VRFY", "501 Syntax: VRFY")):
            continue  # VRFY is overridden
        translated, known = replies.translate(text)
        if not known:
            unknown.append(text)
        assert _CODED.match(translated), (text, translated)
    assert unknown == []


def test_syntax_error_variants_are_translated() -> None:
    for text in (
        "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]",
        "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]",
        '500 Error: command "XYZZY" not recognized',
        "421 4.7.0 NOOP sent too many times",
        "503 Error: send HELO first",
    ):
        assert replies.translate(text)[1], text


def test_unknown_reply_keeps_its_class_and_gets_a_generic_code() -> None:
    assert replies.translate("451 Something new") == ("451 4.0.0 Something new", False)


def test_render_strips_controls_and_bounds_the_line() -> None:
    text = replies.render(replies.MESSAGE_REJECTED, message="a\r\nMAIL FROM:<x>\x00")
    assert "\r" not in text and "\n" not in text and "\x00" not in text
    long = replies.render(replies.MESSAGE_REJECTED, message="x" * 2000)
    assert len(long) == replies.MAX_REPLY_LINE and long.endswith("...")


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_count_sessions_auth_and_outcomes(
    smtp_server: SmtpServer, sender: Sender
) -> None:
    before = {
        "connections": _sample("sesame_smtp_connections_total"),
        "success": _sample("sesame_smtp_auth_total", result="success"),
        "invalid": _sample("sesame_smtp_auth_total", result="invalid"),
        "accepted": _sample("sesame_smtp_messages_accepted_total"),
        "auth_required": _sample(
            "sesame_smtp_rejections_total", reason="auth_required"
        ),
    }
    smtp = smtp_server.starttls()
    smtp.docmd("MAIL", "FROM:<app@example.com>")
    plain(smtp, sender.creds.smtp_username, "wrong")
    plain(smtp, sender.creds.smtp_username, sender.creds.smtp_password)
    smtp.sendmail(
        "app@example.com",
        ["a@example.net"],
        b"From: app@example.com\r\nTo: a@example.net\r\nSubject: m\r\n\r\nx\r\n",
    )
    smtp.quit()
    assert _sample("sesame_smtp_connections_total") == before["connections"] + 1
    assert _sample("sesame_smtp_auth_total", result="success") == before["success"] + 1
    assert _sample("sesame_smtp_auth_total", result="invalid") == before["invalid"] + 1
    assert _sample("sesame_smtp_messages_accepted_total") == before["accepted"] + 1
    assert (
        _sample("sesame_smtp_rejections_total", reason="auth_required")
        == before["auth_required"] + 1
    )
    assert _sample("sesame_smtp_accept_seconds_count") >= 1
