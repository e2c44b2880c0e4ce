"""SESv2 BatchGetMetricData: daily counts of an account's events."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

DAY = datetime(2026, 3, 1, tzinfo=UTC)


def add_message(conn, account_id, message_id, source, from_domain, cs=None):
    conn.execute(
        "insert into messages (id, account_id, source, from_domain, raw,"
        " recipient_count, interface, configuration_set)"
        " values (%s, %s, %s, %s, 'x', 2, 'api', %s)",
        (message_id, account_id, source, from_domain, cs),
    )


def add_event(conn, account_id, message_id, kind, at, bounce_type=None, detail=None):
    conn.execute(
        "insert into events (account_id, message_id, event_type, bounce_type,"
        " detail, created_at) values (%s, %s, %s, %s, %s, %s)",
        (
            account_id,
            message_id,
            kind,
            bounce_type,
            json.dumps(detail) if detail else None,
            at,
        ),
    )


@pytest.fixture
def history(api_server, sandbox, other):
    """Two days of events for the sandbox account, and noise from another."""
    m1, m2, m3 = (f"m-{uuid.uuid4()}" for _ in range(3))
    with psycopg.connect(api_server.settings.database_url, autocommit=True) as conn:
        add_message(
            conn, sandbox.id, m1, "Shop <shop@example.com>", "example.com", "cs1"
        )
        add_message(conn, sandbox.id, m2, "news@mail.example.org", "mail.example.org")
        add_message(conn, other.id, m3, "x@example.com", "example.com")
        noon = DAY + timedelta(hours=12)
        add_event(conn, sandbox.id, m1, "send", noon, detail={"recipients": 2})
        add_event(conn, sandbox.id, m1, "delivery", noon)
        add_event(conn, sandbox.id, m1, "bounce", noon, "Permanent")
        add_event(
            conn,
            sandbox.id,
            m2,
            "send",
            noon + timedelta(days=1),
            detail={"recipients": 2},
        )
        add_event(conn, sandbox.id, m2, "delivery", noon + timedelta(days=1))
        add_event(conn, sandbox.id, m2, "bounce", noon + timedelta(days=1), "Transient")
        add_event(conn, sandbox.id, m2, "complaint", noon + timedelta(days=1))
        add_event(conn, other.id, m3, "send", noon, detail={"recipients": 2})
    return sandbox


def query(id_, metric, start=DAY, end=DAY + timedelta(days=2), **dimensions):
    q = {
        "Id": id_,
        "Namespace": "VDM",
        "Metric": metric,
        "StartDate": start,
        "EndDate": end,
    }
    if dimensions:
        q["Dimensions"] = dimensions
    return q


def test_daily_counts(history):
    answer = history.client.batch_get_metric_data(
        Queries=[
            query("send", "SEND"),
            query("delivery", "DELIVERY"),
            query("permanent", "PERMANENT_BOUNCE"),
            query("transient", "TRANSIENT_BOUNCE"),
            query("complaint", "COMPLAINT"),
            query("open", "OPEN"),
        ]
    )
    assert answer["Errors"] == []
    results = {r["Id"]: r for r in answer["Results"]}
    assert results["send"]["Timestamps"] == [DAY, DAY + timedelta(days=1)]
    assert results["send"]["Values"] == [2, 2]
    assert results["delivery"]["Values"] == [1, 1]
    assert results["permanent"]["Values"] == [1, 0]
    assert results["transient"]["Values"] == [0, 1]
    assert results["complaint"]["Values"] == [0, 1]
    assert results["open"]["Values"] == [0, 0]


def test_dimensions(history):
    answer = history.client.batch_get_metric_data(
        Queries=[
            query("cs", "SEND", CONFIGURATION_SET="cs1"),
            query("address", "SEND", EMAIL_IDENTITY="shop@example.com"),
            query("domain", "SEND", EMAIL_IDENTITY="example.org"),
            query("none", "SEND", EMAIL_IDENTITY="other.example"),
        ]
    )
    values = {r["Id"]: r["Values"] for r in answer["Results"]}
    assert values == {
        "cs": [2, 0],
        "address": [2, 0],
        "domain": [0, 2],
        "none": [0, 0],
    }


def test_partial_days_and_bad_ranges(history):
    client = history.client
    answer = client.batch_get_metric_data(
        Queries=[
            query("q", "SEND", DAY + timedelta(hours=13), DAY + timedelta(hours=37))
        ]
    )
    # 13:00 on day one excludes its noon send; the range ends at 13:00 of day two.
    assert answer["Results"][0]["Values"] == [0, 2]
    for bad in (
        query("q", "SEND", DAY, DAY),
        query("q", "SEND", DAY, DAY + timedelta(days=400)),
        query("q", "SEND", ISP="Gmail"),
    ):
        with pytest.raises(client.exceptions.BadRequestException):
            client.batch_get_metric_data(Queries=[bad])
