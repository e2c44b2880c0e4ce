"""``sesame suppression``, run as an operator would run it."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.inbound.conftest import query
from tests.support.api_server import create_account


def suppression(
    settings: Any, *args: str, stdin: str | None = None, check: bool = True
):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SESAME_")},
        "SESAME_DATABASE_URL": settings.database_url,
        "SESAME_REDIS_URL": settings.redis_url,
        "SESAME_DATA_DIR": str(settings.data_dir),
        "SESAME_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "sesame.suppression_cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def account_id(settings: Any) -> str:
    account, _ = create_account(settings, "suppressions")
    return str(account.id)


def test_add_list_and_remove(settings, account_id):
    added = json.loads(
        suppression(
            settings, "add", account_id, " Jane.Doe@Example.COM ", "--reason", "bounce"
        ).stdout
    )
    assert added["EmailAddress"] == "jane.doe@example.com"
    assert added["Reason"] == "BOUNCE"
    assert added["LastUpdateTime"].endswith("Z")
    suppression(settings, "add", account_id, "x@example.org", "--reason", "COMPLAINT")

    listed = json.loads(suppression(settings, "list", account_id).stdout)
    assert {(s["EmailAddress"], s["Reason"]) for s in listed} == {
        ("jane.doe@example.com", "BOUNCE"),
        ("x@example.org", "COMPLAINT"),
    }
    complaints = json.loads(
        suppression(settings, "list", account_id, "--reason", "COMPLAINT").stdout
    )
    assert [s["EmailAddress"] for s in complaints] == ["x@example.org"]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (
        json.loads(suppression(settings, "list", account_id, "--since", future).stdout)
        == []
    )
    assert (
        len(
            json.loads(
                suppression(
                    settings, "list", account_id, "--since", "2020-01-01"
                ).stdout
            )
        )
        == 2
    )

    removed = json.loads(
        suppression(settings, "remove", account_id, "JANE.DOE@example.com").stdout
    )
    assert removed == {"EmailAddress": "jane.doe@example.com", "Removed": True}
    again = suppression(
        settings, "remove", account_id, "jane.doe@example.com", check=False
    )
    assert again.returncode == 1
    assert "not on the suppression list" in again.stderr


def test_adding_again_changes_the_reason(settings, account_id):
    suppression(settings, "add", account_id, "a@example.com", "--reason", "BOUNCE")
    suppression(settings, "add", account_id, "a@example.com", "--reason", "COMPLAINT")
    assert query(
        settings,
        "select reason from suppressions where account_id = %s",
        account_id,
    ) == [("COMPLAINT",)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["add", "{account}", "not-an-address", "--reason", "BOUNCE"],
            "invalid address",
        ),
        (["add", "{account}", "Jane <j@example.com>", "--reason", "BOUNCE"], "bare"),
        (["add", "acct-missing", "a@example.com", "--reason", "BOUNCE"], "no account"),
        (["list", "acct-missing"], "no account"),
        (["export", "acct-missing"], "no account"),
    ],
)
def test_errors_are_one_line_and_exit_1(settings, account_id, args, message):
    args = [a.replace("{account}", account_id) for a in args]
    proc = suppression(settings, *args, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("sesame: ") and message in proc.stderr
    assert proc.stdout == ""


def test_bad_arguments_are_refused_by_the_parser(settings, account_id):
    proc = suppression(
        settings, "add", account_id, "a@example.com", "--reason", "SPAM", check=False
    )
    assert proc.returncode == 2
    proc = suppression(
        settings, "list", account_id, "--since", "yesterday", check=False
    )
    assert proc.returncode == 2 and "ISO 8601" in proc.stderr


def test_import_reports_counts_and_invalid_lines(settings, account_id, tmp_path):
    suppression(settings, "add", account_id, "old@example.com", "--reason", "COMPLAINT")
    path = tmp_path / "list.csv"
    path.write_text(
        "\ufeffaddress,reason\n"
        "One@Example.com,bounce\n"
        "two@example.com,COMPLAINT\n"
        "\n"
        "not an address,BOUNCE\n"
        "three@example.com,SPAM\n"
        "four@example.com\n"
        "old@example.com,BOUNCE\n"
        "one@example.com,COMPLAINT\n"
        "five@bücher.example,BOUNCE\n",
        encoding="utf-8",
    )
    report = json.loads(suppression(settings, "import", account_id, str(path)).stdout)
    assert report["Read"] == 8
    assert report["Imported"] == 3  # one, two, five
    assert report["Updated"] == 1  # old
    assert report["Duplicates"] == 1  # one, last reason wins
    assert report["Invalid"] == 3
    assert [e["Line"] for e in report["Errors"]] == [5, 6, 7]
    rows = dict(
        query(
            settings,
            "select address, reason from suppressions where account_id = %s",
            account_id,
        )
    )
    assert rows == {
        "one@example.com": "COMPLAINT",
        "two@example.com": "COMPLAINT",
        "old@example.com": "BOUNCE",
        "five@xn--bcher-kva.example": "BOUNCE",
    }


def test_import_without_a_header_from_stdin(settings, account_id):
    report = json.loads(
        suppression(
            settings,
            "import",
            account_id,
            "-",
            stdin="a@example.com,BOUNCE\r\nb@example.com,COMPLAINT\r\n",
        ).stdout
    )
    assert (report["Imported"], report["Invalid"]) == (2, 0)


def test_import_of_a_missing_file_fails(settings, account_id, tmp_path):
    proc = suppression(
        settings, "import", account_id, str(tmp_path / "nope.csv"), check=False
    )
    assert proc.returncode == 1 and "cannot read" in proc.stderr


def test_export_round_trips_through_import(settings, account_id, tmp_path):
    lines = "".join(
        f"user{i}@example.com,{'BOUNCE' if i % 3 else 'COMPLAINT'}\n"
        for i in range(500)
    )
    (tmp_path / "in.csv").write_text(lines)
    suppression(settings, "import", account_id, str(tmp_path / "in.csv"))

    exported = suppression(settings, "export", account_id).stdout
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert len(rows) == 500
    assert set(rows[0]) == {"address", "reason", "last_update_time"}
    assert rows[0]["last_update_time"].endswith("Z")
    complaints = suppression(settings, "export", account_id, "--reason", "complaint")
    assert len(list(csv.DictReader(io.StringIO(complaints.stdout)))) == 167

    other, _ = create_account(settings, "copy")
    (tmp_path / "out.csv").write_text(exported)
    report = json.loads(
        suppression(settings, "import", str(other.id), str(tmp_path / "out.csv")).stdout
    )
    assert (report["Imported"], report["Invalid"]) == (500, 0)
    copied = csv.DictReader(
        io.StringIO(suppression(settings, "export", str(other.id)).stdout)
    )
    assert {(r["address"], r["reason"]) for r in copied} == {
        (r["address"], r["reason"]) for r in rows
    }
