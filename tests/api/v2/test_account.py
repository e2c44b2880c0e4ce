"""SESv2 account operations: GetAccount, production access and the switches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest

from tests.api.v2.conftest import error_of
from tests.support.api_server import verify_identity

DETAILS = {
    "MailType": "TRANSACTIONAL",
    "WebsiteURL": "https://shop.example",
    "ContactLanguage": "EN",
    "UseCaseDescription": "Receipts and password resets.",
    "AdditionalContactEmailAddresses": ["ops@shop.example"],
    "ProductionAccessEnabled": True,
}


def grant_production(settings, account_id: str) -> dict:
    """Run ``sesame account grant-production`` as an operator would."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SESAME_")},
        "SESAME_DATABASE_URL": settings.database_url,
        "SESAME_REDIS_URL": settings.redis_url,
        "SESAME_DATA_DIR": str(settings.data_dir),
        "SESAME_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "sesame.cli", "account", "grant-production", account_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(proc.stdout)


def test_get_account_of_a_sandbox_account(sandbox):
    account = sandbox.client.get_account()
    assert account["SendQuota"] == {
        "Max24HourSend": 200.0,
        "MaxSendRate": 1.0,
        "SentLast24Hours": 0.0,
    }
    assert account["ProductionAccessEnabled"] is False
    assert account["EnforcementStatus"] == "HEALTHY"
    assert account["SendingEnabled"] is True
    assert account["DedicatedIpAutoWarmupEnabled"] is False
    assert account["SuppressionAttributes"] == {
        "SuppressedReasons": ["BOUNCE", "COMPLAINT"]
    }
    assert "Details" not in account


def test_sent_last_24_hours_counts_recipients(api_server, production):
    verify_identity(api_server.settings, production.id, "example.com")
    production.client.send_email(
        FromEmailAddress="me@example.com",
        Destination={"ToAddresses": ["a@example.net", "b@example.net"]},
        Content={
            "Simple": {"Subject": {"Data": "Hi"}, "Body": {"Text": {"Data": "x"}}}
        },
    )
    assert production.client.get_account()["SendQuota"]["SentLast24Hours"] == 2.0


def test_production_access_request_and_grant(api_server, sandbox):
    client = sandbox.client
    client.put_account_details(**DETAILS)
    details = client.get_account()["Details"]
    review = details.pop("ReviewDetails")
    assert review["Status"] == "PENDING" and review["CaseId"].isdigit()
    assert details == {
        k: v for k, v in DETAILS.items() if k != "ProductionAccessEnabled"
    }

    with pytest.raises(client.exceptions.ConflictException) as excinfo:
        client.put_account_details(**DETAILS)
    assert error_of(excinfo)[2] == 409

    granted = grant_production(api_server.settings, sandbox.id)
    assert granted["ProductionAccessEnabled"] is True
    account = client.get_account()
    assert account["ProductionAccessEnabled"] is True
    assert account["Details"]["ReviewDetails"] == {
        "Status": "GRANTED",
        "CaseId": review["CaseId"],
    }
    assert account["SendQuota"]["Max24HourSend"] == 1000.0

    # Once granted, details may change without a new review.
    client.put_account_details(**{**DETAILS, "WebsiteURL": "https://new.example"})
    account = client.get_account()
    assert account["Details"]["WebsiteURL"] == "https://new.example"
    assert account["Details"]["ReviewDetails"]["Status"] == "GRANTED"


def test_account_details_are_validated(sandbox):
    with pytest.raises(sandbox.client.exceptions.BadRequestException):
        sandbox.client.put_account_details(
            **{**DETAILS, "AdditionalContactEmailAddresses": ["nobody"]}
        )
    with pytest.raises(sandbox.client.exceptions.BadRequestException):
        sandbox.client.put_account_details(**{**DETAILS, "MailType": "SPAM"})


def test_sending_switch_pauses_sends(api_server, production):
    client = production.client
    verify_identity(api_server.settings, production.id, "example.com")
    client.put_account_sending_attributes(SendingEnabled=False)
    assert client.get_account()["SendingEnabled"] is False
    with pytest.raises(client.exceptions.SendingPausedException) as excinfo:
        client.send_email(
            FromEmailAddress="me@example.com",
            Destination={"ToAddresses": ["a@example.net"]},
            Content={
                "Simple": {"Subject": {"Data": "Hi"}, "Body": {"Text": {"Data": "x"}}}
            },
        )
    assert error_of(excinfo)[2] == 400
    client.put_account_sending_attributes(SendingEnabled=True)
    assert client.get_account()["SendingEnabled"] is True


def test_operator_pause_shows_as_sending_disabled(api_server, production):
    with psycopg.connect(api_server.settings.database_url, autocommit=True) as conn:
        conn.execute(
            "update accounts set enforcement_status = 'shutdown' where id = %s",
            (production.id,),
        )
    account = production.client.get_account()
    assert account["EnforcementStatus"] == "SHUTDOWN"
    assert account["SendingEnabled"] is False


def test_suppression_attributes(sandbox):
    client = sandbox.client
    client.put_account_suppression_attributes(SuppressedReasons=["COMPLAINT"])
    assert client.get_account()["SuppressionAttributes"] == {
        "SuppressedReasons": ["COMPLAINT"]
    }
    client.put_account_suppression_attributes(SuppressedReasons=[])
    assert client.get_account()["SuppressionAttributes"] == {"SuppressedReasons": []}
    with pytest.raises(client.exceptions.BadRequestException):
        client.put_account_suppression_attributes(SuppressedReasons=["SPAM"])
