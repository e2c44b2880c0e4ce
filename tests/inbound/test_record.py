"""Recording reports without SMTP: attribution, idempotency, states and suppressions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mta import verp
from mta.feedback.record import (
    FeedbackRecorder,
    ReportKind,
    Result,
    attribute,
    parse_report,
)
from sesame.runtime import Runtime
from tests.inbound.conftest import DOMAIN, FBL_ADDRESS, corpus, crlf, forge, query

KEY = verp.verp_key(bytes(32))


@pytest_asyncio.fixture
async def recorder(mx_settings: Any) -> AsyncIterator[FeedbackRecorder]:
    runtime = Runtime.create(mx_settings, pool_size=4)
    await runtime.open()
    yield FeedbackRecorder(runtime.pool, DOMAIN, verp.verp_key(runtime.key))
    await runtime.close()


# -- attribution ----------------------------------------------------------------


def test_the_envelope_recipient_comes_first():
    ours, other = verp.return_path(7, DOMAIN, KEY), verp.return_path(8, DOMAIN, KEY)
    assert attribute([ours], [other], DOMAIN, KEY).recipient_ids == (7,)


def test_the_report_names_the_recipient_when_the_envelope_does_not():
    found = attribute([FBL_ADDRESS], [verp.return_path(8, DOMAIN, KEY)], DOMAIN, KEY)
    assert (found.recipient_ids, found.forged) == ((8,), False)


def test_every_envelope_token_counts_once():
    seven = verp.return_path(7, DOMAIN, KEY)
    found = attribute(
        [seven, seven.upper(), verp.return_path(9, DOMAIN, KEY)], [], DOMAIN, KEY
    )
    assert found.recipient_ids == (7, 9)


def test_a_forged_token_is_told_apart_from_a_foreign_address():
    forged = forge(verp.return_path(7, DOMAIN, KEY))
    assert attribute([forged], [], DOMAIN, KEY) == attribute([], [forged], DOMAIN, KEY)
    assert attribute([forged], [], DOMAIN, KEY).forged is True
    assert attribute([FBL_ADDRESS], ["shop@example.com"], DOMAIN, KEY).forged is False


def test_a_token_for_another_domain_is_not_ours():
    elsewhere = verp.return_path(7, "bounces.other.test", KEY)
    swapped = elsewhere.replace("bounces.other.test", DOMAIN)
    found = attribute([elsewhere, swapped], [], DOMAIN, KEY)
    assert (found.recipient_ids, found.forged) == ((), True)


# -- parsing and the feedback id --------------------------------------------------


def test_feedback_id_survives_transport():
    data = corpus("postfix_user_unknown.eml", verp.return_path(7, DOMAIN, KEY))
    first = parse_report(data)
    assert first is not None and first.kind is ReportKind.DSN
    relayed = b"Received: from a by b; now\r\nX-Spam: no\r\n" + crlf(data)
    again = parse_report(relayed)
    assert again is not None and again.feedback_id == first.feedback_id


def test_feedback_id_tells_reports_apart():
    data = corpus("delayed_447.eml", verp.return_path(7, DOMAIN, KEY))
    later = data.replace(b"14:00:00 +0000 (UTC)\nAuto", b"18:00:00 +0000 (UTC)\nAuto")
    assert later != data
    first, second = parse_report(data), parse_report(later)
    assert first is not None and second is not None
    assert first.feedback_id != second.feedback_id


def test_reports_are_recognised_by_kind():
    token = verp.return_path(7, DOMAIN, KEY)
    arf = parse_report(corpus("arf_abuse.eml", token))
    assert arf is not None and arf.kind is ReportKind.ARF
    assert arf.return_paths == (token, token)
    assert parse_report(b"Subject: hello\r\n\r\nnot a report\r\n") is None
    assert parse_report(corpus("malformed_report_part_missing.eml", token)) is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_raise(data: bytes):
    report = parse_report(data)
    if report is not None:
        assert len(report.feedback_id) == 32


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_damaged_token_never_names_another_recipient(data: st.DataObject):
    token = verp.return_path(12345, DOMAIN, KEY)
    local = token.partition("@")[0]
    position = data.draw(st.integers(0, len(local) - 1))
    char = data.draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz234567-"))
    damaged = local[:position] + char + local[position + 1 :] + "@" + DOMAIN
    found = attribute([damaged], [], DOMAIN, KEY)
    assert found.recipient_ids in ((), (12345,))
    if found.recipient_ids:
        assert damaged.lower() == token


# -- recording --------------------------------------------------------------------


def recipient(settings: Any, recipient_id: int) -> tuple[Any, ...]:
    return query(
        settings,
        "select state, (select count(*) from events where recipient_id = r.id)"
        " from recipients r where id = %s",
        recipient_id,
    )[0]


@pytest.mark.parametrize("initial", ["queued", "suppressed", "bounced"])
async def test_a_bounce_for_an_unsent_or_ended_recipient_keeps_its_state(
    recorder, make_row, mx_settings, initial
):
    row = make_row("nobody@example.net", state=initial)
    done = await recorder.process(
        corpus("postfix_user_unknown.eml", row.token), [row.token]
    )
    assert done.result is Result.ATTRIBUTED
    assert done.recipients[0].state_changed is False
    assert recipient(mx_settings, row.recipient_id) == (initial, 1)


async def test_a_transient_failure_given_up_on_is_a_transient_bounce(
    recorder, make_row, mx_settings
):
    row = make_row("slow@example.org", state="deferred")
    data = (
        corpus("delayed_447.eml", row.token)
        .replace(b"Action: delayed", b"Action: failed")
        .replace(b"Will-Retry-Until", b"X-Was-Until")
    )
    done = await recorder.process(data, [row.token])
    [outcome] = done.recipients
    assert (outcome.event_type, outcome.bounce_type, outcome.bounce_subtype) == (
        "bounce",
        "Transient",
        "General",
    )
    assert outcome.suppressed is None and outcome.state_changed is True
    assert recipient(mx_settings, row.recipient_id) == ("bounced", 1)


async def test_concurrent_copies_of_a_report_record_once(
    recorder, make_row, mx_settings
):
    row = make_row("nobody@example.net")
    data = corpus("postfix_user_unknown.eml", row.token)
    results = await asyncio.gather(
        *(recorder.process(data, [row.token]) for _ in range(6))
    )
    assert sorted(r.result.value for r in results) == ["attributed"] + ["ignored"] * 5
    assert {r.reason for r in results if r.result is Result.IGNORED} == {"duplicate"}
    assert recipient(mx_settings, row.recipient_id) == ("bounced", 1)


async def test_a_complaint_after_a_bounce_changes_the_reason(
    recorder, make_row, mx_settings
):
    bounced = make_row("reader@example.net")
    complained = make_row("reader@example.net")
    await recorder.process(
        corpus("postfix_user_unknown.eml", bounced.token), [bounced.token]
    )
    assert query(
        mx_settings,
        "select reason from suppressions where account_id = %s and address = %s",
        bounced.account_id,
        "reader@example.net",
    ) == [("BOUNCE",)]
    done = await recorder.process(corpus("arf_abuse.eml", complained.token))
    assert done.recipients[0].suppressed == "COMPLAINT"
    assert query(
        mx_settings,
        "select reason, message_id from suppressions where account_id = %s",
        bounced.account_id,
    ) == [("COMPLAINT", complained.message_id)]


async def test_mixed_case_addresses_are_suppressed_lower_cased(
    recorder, make_row, mx_settings
):
    row = make_row("Nobody@example.net")
    await recorder.process(corpus("postfix_user_unknown.eml", row.token), [row.token])
    assert query(
        mx_settings,
        "select address from suppressions where account_id = %s",
        row.account_id,
    ) == [("nobody@example.net",)]


async def test_one_report_to_two_tokens_records_for_both(
    recorder, make_row, mx_settings
):
    first, second = make_row("a@example.net"), make_row("b@example.net")
    done = await recorder.process(
        corpus("delayed_447.eml", first.token), [first.token, second.token]
    )
    assert done.result is Result.ATTRIBUTED
    assert [o.recipient_id for o in done.recipients] == [
        first.recipient_id,
        second.recipient_id,
    ]
    assert recipient(mx_settings, second.recipient_id) == ("delivered", 1)


async def test_unparseable_and_unknown_write_nothing(recorder, mx_settings):
    total = query(mx_settings, "select count(*) from events")[0][0]
    assert (await recorder.process(b"")).result is Result.UNPARSEABLE
    foreign = corpus("arf_abuse.eml", "shop@example.com")
    done = await recorder.process(foreign, [FBL_ADDRESS])
    assert (done.kind, done.result, done.reason) == (
        ReportKind.ARF,
        Result.UNKNOWN,
        "no_token",
    )
    assert query(mx_settings, "select count(*) from events")[0][0] == total
