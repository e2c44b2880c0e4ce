"""SESv2 suppression list through boto3's ``sesv2`` client."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.api.v2.conftest import error_of


def test_put_get_delete(sandbox):
    client = sandbox.client
    before = datetime.now(UTC) - timedelta(seconds=5)
    client.put_suppressed_destination(EmailAddress="Bad+X@Example.com", Reason="BOUNCE")
    got = client.get_suppressed_destination(EmailAddress="bad+x@example.com")
    entry = got["SuppressedDestination"]
    assert entry["EmailAddress"] == "bad+x@example.com"
    assert entry["Reason"] == "BOUNCE"
    assert entry["LastUpdateTime"] >= before
    assert "Attributes" not in entry

    client.put_suppressed_destination(
        EmailAddress="bad+x@example.com", Reason="COMPLAINT"
    )
    got = client.get_suppressed_destination(EmailAddress="bad+x@example.com")
    assert got["SuppressedDestination"]["Reason"] == "COMPLAINT"

    client.delete_suppressed_destination(EmailAddress="bad+x@example.com")
    with pytest.raises(client.exceptions.NotFoundException) as excinfo:
        client.get_suppressed_destination(EmailAddress="bad+x@example.com")
    assert error_of(excinfo)[2] == 404
    with pytest.raises(client.exceptions.NotFoundException):
        client.delete_suppressed_destination(EmailAddress="bad+x@example.com")


def test_feedback_attributes_are_shown(api_server, sandbox):
    with psycopg.connect(api_server.settings.database_url, autocommit=True) as conn:
        conn.execute(
            "insert into suppressions (account_id, address, reason, message_id,"
            " feedback_id) values (%s, 'auto@example.com', 'BOUNCE', 'm-1', 'f-1')",
            (sandbox.id,),
        )
    got = sandbox.client.get_suppressed_destination(EmailAddress="auto@example.com")
    assert got["SuppressedDestination"]["Attributes"] == {
        "MessageId": "m-1",
        "FeedbackId": "f-1",
    }


def test_invalid_address_and_reason(sandbox):
    with pytest.raises(sandbox.client.exceptions.BadRequestException):
        sandbox.client.put_suppressed_destination(
            EmailAddress="nobody", Reason="BOUNCE"
        )
    with pytest.raises(sandbox.client.exceptions.BadRequestException):
        sandbox.client.put_suppressed_destination(
            EmailAddress="a@example.com", Reason="SPAM"
        )


def test_list_filters_and_pages(api_server, sandbox):
    old = datetime(2024, 1, 1, tzinfo=UTC)
    with psycopg.connect(api_server.settings.database_url, autocommit=True) as conn:
        for n in range(5):
            conn.execute(
                "insert into suppressions (account_id, address, reason, updated_at)"
                " values (%s, %s, %s, %s)",
                (
                    sandbox.id,
                    f"u{n}@example.com",
                    "BOUNCE" if n % 2 else "COMPLAINT",
                    old + timedelta(days=n),
                ),
            )
    client = sandbox.client

    def listed(**kwargs):
        answer = client.list_suppressed_destinations(**kwargs)
        return [s["EmailAddress"] for s in answer["SuppressedDestinationSummaries"]]

    assert listed() == [f"u{n}@example.com" for n in (4, 3, 2, 1, 0)]
    assert listed(Reasons=["BOUNCE"]) == ["u3@example.com", "u1@example.com"]
    assert listed(Reasons=["BOUNCE", "COMPLAINT"], PageSize=50) == listed()
    assert listed(StartDate=old + timedelta(days=3)) == [
        "u4@example.com",
        "u3@example.com",
    ]
    assert listed(EndDate=old + timedelta(days=1)) == ["u0@example.com"]

    first = client.list_suppressed_destinations(PageSize=2)
    summary = first["SuppressedDestinationSummaries"][0]
    assert summary["Reason"] == "COMPLAINT"
    assert summary["LastUpdateTime"] == old + timedelta(days=4)
    seen = [s["EmailAddress"] for s in first["SuppressedDestinationSummaries"]]
    token = first["NextToken"]
    while token:
        page = client.list_suppressed_destinations(PageSize=2, NextToken=token)
        seen += [s["EmailAddress"] for s in page["SuppressedDestinationSummaries"]]
        token = page.get("NextToken")
    assert seen == listed()

    with pytest.raises(client.exceptions.InvalidNextTokenException):
        client.list_suppressed_destinations(NextToken="bm9wZQ==")


def test_list_with_a_signed_request_and_repeated_reasons(api_server, sandbox):
    sandbox.client.put_suppressed_destination(
        EmailAddress="a@example.com", Reason="BOUNCE"
    )
    sandbox.client.put_suppressed_destination(
        EmailAddress="b@example.com", Reason="COMPLAINT"
    )
    status, _, body = sandbox.request(
        "GET",
        "/v2/email/suppression/addresses?Reason=BOUNCE&Reason=COMPLAINT"
        "&StartDate=2024-01-01T00%3A00%3A00Z&PageSize=5",
    )
    assert status == 200
    assert {s["EmailAddress"] for s in body["SuppressedDestinationSummaries"]} == {
        "a@example.com",
        "b@example.com",
    }
