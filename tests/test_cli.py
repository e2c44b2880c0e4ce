"""The ``sesame`` command line, run as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sesame import crypto


def sesame(settings, *args, check=True):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SESAME_")},
        "SESAME_DATABASE_URL": settings.database_url,
        "SESAME_REDIS_URL": settings.redis_url,
        "SESAME_DATA_DIR": str(settings.data_dir),
        "SESAME_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "sesame.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_account_lifecycle(settings):
    created = json.loads(sesame(settings, "account", "create", "shop").stdout)
    assert set(created) == {
        "AccountId",
        "AccessKeyId",
        "SecretAccessKey",
        "SmtpUsername",
        "SmtpPassword",
    }
    assert created["SmtpUsername"] == created["AccessKeyId"]
    assert created["SmtpPassword"] == crypto.smtp_password(
        created["SecretAccessKey"], "us-east-1"
    )
    account_id = created["AccountId"]

    shown = json.loads(sesame(settings, "account", "show", account_id).stdout)
    assert shown["ProductionAccessEnabled"] is False
    assert shown["SendQuota"] == {"Max24HourSend": 200.0, "MaxSendRate": 1.0}
    assert shown["EnforcementStatus"] == "HEALTHY"
    assert shown["Reputation"]["BounceRate"] is None  # too little volume to judge
    assert shown["Reputation"]["Recipients"] == 0

    granted = json.loads(
        sesame(settings, "account", "grant-production", account_id).stdout
    )
    assert granted["ProductionAccessEnabled"] is True
    assert granted["SendQuota"] == {"Max24HourSend": 1000.0, "MaxSendRate": 1.0}

    quota = json.loads(
        sesame(
            settings,
            "account",
            "set-quota",
            account_id,
            "--max-24-hour-send",
            "50000",
            "--max-send-rate",
            "20",
        ).stdout
    )
    assert quota["SendQuota"] == {"Max24HourSend": 50000.0, "MaxSendRate": 20.0}

    assert (
        json.loads(sesame(settings, "account", "pause", account_id).stdout)[
            "PausedByOperator"
        ]
        is True
    )
    assert (
        json.loads(sesame(settings, "account", "resume", account_id).stdout)[
            "PausedByOperator"
        ]
        is False
    )
    listed = json.loads(sesame(settings, "account", "list").stdout)
    assert account_id in [a["AccountId"] for a in listed]


def test_secrets_are_not_stored_in_plaintext(settings):
    import psycopg

    created = json.loads(sesame(settings, "account", "create", "secretive").stdout)
    with psycopg.connect(settings.database_url) as conn:
        dump = repr(conn.execute("select * from credentials").fetchall())
    assert created["SecretAccessKey"] not in dump
    assert created["SmtpPassword"] not in dump


@pytest.mark.parametrize(
    "args",
    [
        ("account", "show", "000000000000"),
        ("account", "pause", "000000000000"),
        ("account", "set-quota", "000000000000", "--max-send-rate", "5"),
    ],
)
def test_unknown_account_fails_with_one_line(settings, args):
    proc = sesame(settings, *args, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "000000000000" in proc.stderr


def test_migrate_is_idempotent_and_config_lists_settings(settings):
    assert json.loads(sesame(settings, "migrate").stdout) == {"Applied": []}
    out = sesame(settings, "config").stdout
    for name in (
        "SESAME_API_PORT",
        "SESAME_MAX_DELIVERY_SECONDS",
        "SESAME_RETRY_BASE_SECONDS",
    ):
        assert name in out
