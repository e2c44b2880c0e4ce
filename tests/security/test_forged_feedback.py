"""Forged bounces and complaints at the inbound MX record nothing.

A report is attributed only through a return path whose MAC Sesame made. A
changed MAC, a MAC moved to another recipient id, another domain, a report that
names a real message only by Message-ID or address: all get the same 250 as a
real report (validity is not observable) and write no event, state or
suppression. A genuine report, sent twice, is recorded once.
"""

from __future__ import annotations

import pytest

from mta import verp
from sesame import crypto
from tests.inbound import conftest as inbound
from tests.inbound.conftest import DOMAIN, FBL_ADDRESS, corpus, forge, query

# The inbound suite's fixtures: an MX in a thread and recipient rows with tokens.
mx_settings = inbound.mx_settings
mx_factory = inbound.mx_factory
mx = inbound.mx
account = inbound.account
make_row = inbound.make_row


def recorded(settings, account_id: str) -> tuple[int, int, list[str]]:
    events = query(
        settings,
        "select count(*) from events where account_id = %s"
        " and event_type in ('bounce', 'complaint', 'delivery_delay')",
        account_id,
    )[0][0]
    suppressions = query(
        settings, "select count(*) from suppressions where account_id = %s", account_id
    )[0][0]
    states = [
        r[0]
        for r in query(
            settings,
            "select state from recipients where account_id = %s order by id",
            account_id,
        )
    ]
    return events, suppressions, states


def other_ids_mac(row, other) -> str:
    """Row's id with another row's MAC: a token cut and pasted together."""
    mine = row.token.partition("@")[0].split("-")
    theirs = other.token.partition("@")[0].split("-")
    return f"b-{mine[1]}-{theirs[2]}@{DOMAIN}"


def forgeries(row, other, settings) -> dict[str, str]:
    key = verp.verp_key(
        crypto.load_or_create_key(settings.secret_key, settings.data_dir)
    )
    wrong_key = verp.verp_key(b"\x01" * 32)
    return {
        "one MAC character changed": forge(row.token),
        "MAC truncated": row.token.partition("@")[0][:-4] + "@" + DOMAIN,
        "MAC of another recipient": other_ids_mac(row, other),
        "MAC under another key": verp.return_path(row.recipient_id, DOMAIN, wrong_key),
        "MAC for another domain": verp.return_path(
            row.recipient_id, "evil.test", key
        ).replace("evil.test", DOMAIN),
        "right MAC, other domain": verp.return_path(row.recipient_id, "evil.test", key),
        "no token, the address itself": row.address,
        "leading zero digit": row.token.replace("b-", "b-a", 1),
    }


@pytest.mark.parametrize(
    "report", ["postfix_user_unknown.eml", "gmail_no_such_user.eml", "arf_abuse.eml"]
)
def test_forged_reports_record_nothing(mx, make_row, mx_settings, report):
    row = make_row("reader@example.net")
    other = make_row("other@example.net")
    before = recorded(mx_settings, row.account_id)
    for name, token in forgeries(row, other, mx_settings).items():
        rcpt = token if token.endswith("@" + DOMAIN) else FBL_ADDRESS
        code, reply = mx.send(corpus(report, token), rcpt=rcpt)
        assert (code, reply) == (250, b"2.0.0 Ok: report received"), name
        assert recorded(mx_settings, row.account_id) == before, name


def test_a_report_naming_a_real_message_without_a_token_is_ignored(
    mx, make_row, mx_settings
):
    row = make_row("reader@example.net")
    before = recorded(mx_settings, row.account_id)
    data = corpus("postfix_user_unknown.eml", "postmaster@elsewhere.example")
    data = data.replace(
        b"Subject:", f"Message-ID: <{row.message_id}@localhost>\r\nSubject:".encode(), 1
    )
    data = data.replace(b"nobody@example.net", row.address.encode())
    assert mx.send(data)[0] == 250
    assert recorded(mx_settings, row.account_id) == before


def test_a_genuine_report_is_recorded_once(mx, make_row, mx_settings):
    row = make_row("gone@example.net")
    data = corpus("postfix_user_unknown.eml", row.token)
    assert mx.send(data, rcpt=row.token)[0] == 250
    assert mx.send(data, rcpt=row.token)[0] == 250
    events, suppressions, states = recorded(mx_settings, row.account_id)
    assert (events, states) == (1, ["bounced"])
