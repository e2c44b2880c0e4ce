"""``sesame webhook``, run as an operator would run it."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from sesame.webhook_cli import parse_event_types
from tests.webhooks.conftest import insert_message, query
from workers import webhooks


def webhook(settings: Any, *args: str, check: bool = True):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SESAME_")},
        "SESAME_DATABASE_URL": settings.database_url,
        "SESAME_REDIS_URL": settings.redis_url,
        "SESAME_DATA_DIR": str(settings.data_dir),
        "SESAME_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "sesame.webhook_cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


async def test_add_list_deliveries_and_remove(runtime, settings, account_id, consumer):
    added = json.loads(
        webhook(
            settings,
            "add",
            account_id,
            consumer.url,
            "--events",
            "send,DELIVERY,delivery-delay",
            "--sns",
            "--name",
            "ops",
        ).stdout
    )
    secret = added.pop("SigningSecret")
    assert secret.startswith("whsec_")
    assert added == {
        "Name": "ops",
        "ConfigurationSetName": None,
        "Url": consumer.url,
        "Envelope": "SNS",
        "MatchingEventTypes": ["SEND", "DELIVERY", "DELIVERY_DELAY"],
        "Enabled": True,
        "Signed": True,
        "CreatedTimestamp": added["CreatedTimestamp"],
        "Deliveries": {"pending": 0, "delivered": 0, "failed": 0},
        "SignatureHeader": "X-Sesame-Signature",
    }
    # The secret printed once is the one the relay signs with.
    insert_message(settings, account_id, ["a@example.net"])
    await webhooks.relay_due(runtime)
    [request] = consumer.requests
    assert webhooks.verify_signature(
        secret, request.headers["x-sesame-signature"], request.body
    )

    second = json.loads(webhook(settings, "add", account_id, consumer.url).stdout)
    assert second["Name"] == "webhook-1"
    assert second["Envelope"] == "NONE"
    assert len(second["MatchingEventTypes"]) == 7

    listed = json.loads(webhook(settings, "list", account_id).stdout)
    assert [d["Name"] for d in listed] == ["ops", "webhook-1"]
    assert listed[0]["Deliveries"] == {"pending": 0, "delivered": 1, "failed": 0}
    assert "whsec_" not in json.dumps(listed)

    [delivery] = json.loads(webhook(settings, "deliveries", account_id).stdout)
    assert delivery["State"] == "DELIVERED"
    assert delivery["EventType"] == "Send"
    assert delivery["Destination"] == "ops"
    assert delivery["Attempts"] == 1 and delivery["LastStatus"] == 200
    assert delivery["NextAttemptTime"] is None
    assert (
        json.loads(
            webhook(settings, "deliveries", account_id, "--state", "failed").stdout
        )
        == []
    )

    removed = json.loads(webhook(settings, "remove", account_id, "ops").stdout)
    assert removed["Removed"] is True
    assert query(settings, "select count(*) from webhook_deliveries") == [(0,)]
    gone = webhook(settings, "remove", account_id, "ops", check=False)
    assert gone.returncode == 1 and "no destination named ops" in gone.stderr


def test_add_refuses_bad_input(settings, account_id):
    proc = webhook(
        settings, "add", account_id, "http://169.254.169.254/latest", check=False
    )
    assert proc.returncode == 1 and "link-local" in proc.stderr
    proc = webhook(
        settings,
        "add",
        account_id,
        "http://127.0.0.1/x",
        "--configuration-set",
        "nope",
        check=False,
    )
    assert proc.returncode == 1 and "no configuration set nope" in proc.stderr
    webhook(settings, "add", account_id, "http://127.0.0.1/x", "--name", "dup")
    proc = webhook(
        settings, "add", account_id, "http://127.0.0.1/y", "--name", "dup", check=False
    )
    assert proc.returncode == 1 and "already exists" in proc.stderr
    proc = webhook(settings, "list", "999999999999", check=False)
    assert proc.returncode == 1 and "no account" in proc.stderr


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"url": "ftp://example.com/x"}, "only http and https"),
        ({"url": "http://[fe80::1]/x"}, "link-local"),
        ({"name": "bad name"}, "names are"),
        ({"name": "x" * 65}, "names are"),
        ({"event_types": []}, "event types"),
        ({"event_types": ["open"]}, "event types"),
        ({"envelope": "eventbridge"}, "envelope"),
    ],
)
async def test_create_destination_validates(runtime, account_id, changes, message):
    fields = {
        "account_id": account_id,
        "name": "ok",
        "url": "http://127.0.0.1/x",
        "event_types": ["send"],
        **changes,
    }
    async with runtime.pool.connection() as conn:
        with pytest.raises(ValueError, match=message):
            await webhooks.create_destination(conn, runtime.box, **fields)


def test_configuration_set_destinations(settings, account_id):
    query(
        settings,
        "insert into configuration_sets (account_id, name) values (%s, 'cs1')",
        account_id,
    )
    webhook(settings, "add", account_id, "http://127.0.0.1/a", "--name", "a")
    added = json.loads(
        webhook(
            settings,
            "add",
            account_id,
            "http://127.0.0.1/b",
            "--name",
            "a",
            "--configuration-set",
            "cs1",
        ).stdout
    )
    assert added["ConfigurationSetName"] == "cs1"
    webhook(settings, "remove", account_id, "a", "--configuration-set", "cs1")
    [left] = json.loads(webhook(settings, "list", account_id).stdout)
    assert left["ConfigurationSetName"] is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("send,bounce", ["send", "bounce"]),
        ("DELIVERY_DELAY, Rendering Failure", ["delivery_delay", "rendering_failure"]),
        ("deliveryDelay,send,send", ["delivery_delay", "send"]),
        (
            "all",
            [
                "send",
                "reject",
                "delivery",
                "bounce",
                "complaint",
                "delivery_delay",
                "rendering_failure",
            ],
        ),
    ],
)
def test_parse_event_types(text, expected):
    assert parse_event_types(text) == expected


@pytest.mark.parametrize("text", ["open", "send,click", "", ","])
def test_parse_event_types_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_event_types(text)
