"""``sesame queue`` over rows put in place directly: counts, shapes, safety rules."""

from __future__ import annotations

import json

import pytest

from mta import queue
from tests.operator.conftest import add_message, sql

SUMMARY_FIELDS = {
    "Queued",
    "Deferred",
    "Sending",
    "Due",
    "OldestDueSeconds",
    "OldestSeconds",
}


def test_summary_by_domain_account_and_state(cli, settings, account):
    add_message(
        settings,
        account,
        [
            ("a@one.test", "queued"),
            ("b@one.test", "deferred"),
            ("c@two.test", "sending"),
            ("d@two.test", "delivered"),
            ("e@two.test", "bounced"),
        ],
        due_in="-5 minutes",
    )

    by_domain = cli.json("queue", "summary", "--account", account)
    assert by_domain["By"] == "domain"
    assert by_domain["Groups"] == [
        {
            "Domain": "one.test",
            "Queued": 1,
            "Deferred": 1,
            "Sending": 0,
            "Due": 1,
            "OldestDueSeconds": pytest.approx(300, abs=30),
            "OldestSeconds": pytest.approx(0, abs=30),
            "Suspended": False,
        },
        {
            "Domain": "two.test",
            "Queued": 0,
            "Deferred": 0,
            "Sending": 1,
            "Due": 0,
            "OldestDueSeconds": None,
            "OldestSeconds": pytest.approx(0, abs=30),
            "Suspended": False,
        },
    ]
    assert set(by_domain["Total"]) == SUMMARY_FIELDS
    assert by_domain["Total"]["Queued"] + by_domain["Total"]["Sending"] == 2
    assert by_domain["Suspensions"] == []

    by_account = cli.json("queue", "summary", "--by", "account", "--account", account)
    [group] = by_account["Groups"]
    assert group["AccountId"] == account
    assert (group["Queued"], group["Deferred"], group["Sending"]) == (1, 1, 1)

    by_state = cli.json("queue", "summary", "--by", "state", "--account", account)
    assert {g["State"]: g["Due"] for g in by_state["Groups"]} == {
        "queued": 1,
        "deferred": 0,
        "sending": 0,
    }
    assert all("Suspended" not in g for g in by_state["Groups"])

    table = cli.run("queue", "summary", "--account", account).stdout
    assert "one.test" in table and "two.test" in table and "total" in table
    assert "5m" in table  # the oldest due recipient's wait


def test_summary_of_an_unknown_account_fails_with_one_line(cli):
    proc = cli.run("queue", "summary", "--account", "000000000000", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "sesame: no account 000000000000"


def test_suspend_list_and_resume(cli, settings, account):
    add_message(settings, account, [("a@hold.test", "queued")])

    domain = cli.json(
        "queue", "suspend", "--domain", "HOLD.test.", "--reason", "TS04 [deferrals]"
    )
    assert domain["Kind"] == "domain" and domain["Value"] == "hold.test"
    assert domain["Reason"] == "TS04 [deferrals]" and domain["Until"] is None
    assert domain["Waiting"] == 1

    until = cli.json("queue", "suspend", "--account", account, "--until", "2h")
    assert until["Kind"] == "account" and until["Until"] is not None

    listed = cli.json("queue", "suspensions")
    assert {(s["Kind"], s["Value"]) for s in listed} >= {
        ("domain", "hold.test"),
        ("account", account),
    }
    table = cli.run("queue", "suspensions").stdout
    assert "TS04 [deferrals]" in table  # printed as text, not read as markup

    summary = cli.json("queue", "summary", "--account", account)
    assert summary["Groups"][0]["Suspended"] is True

    resumed = cli.json("queue", "resume", "--domain", "hold.test")
    assert resumed["Resumed"] is True and resumed["Waiting"] == 1
    again = cli.run("queue", "resume", "--domain", "hold.test", check=False)
    assert again.returncode == 1
    assert again.stderr.strip() == "sesame: domain hold.test is not suspended"

    # A lapsed suspension is no longer listed (nor honoured by the scheduler).
    sql(settings, "update delivery_suspensions set until = now() - interval '1 second'")
    assert cli.json("queue", "suspensions") == []


def test_suspend_refuses_bad_input(cli):
    unknown = cli.run("queue", "suspend", "--account", "000000000000", check=False)
    assert unknown.stderr.strip() == "sesame: no account 000000000000"
    past = cli.run(
        "queue",
        "suspend",
        "--domain",
        "x.test",
        "--until",
        "2000-01-01T00:00:00",
        check=False,
    )
    assert past.returncode == 1 and "in the past" in past.stderr
    both = cli.run(
        "queue", "suspend", "--domain", "x.test", "--account", "1", check=False
    )
    assert both.returncode == 2  # argparse: one target only
    bad = cli.run("queue", "suspend", "--domain", "a b.test", check=False)
    assert bad.stderr.strip() == "sesame: invalid domain 'a b.test'"


def test_retry_makes_only_matching_deferred_recipients_due(cli, settings, account):
    mid, ids = add_message(
        settings,
        account,
        [
            ("a@one.test", "deferred"),
            ("b@two.test", "deferred"),
            ("c@one.test", "sending"),
        ],
    )
    before = dict(
        sql(
            settings,
            "select address, next_attempt_at from recipients where message_id = %s",
            mid,
        )
    )
    assert cli.json("queue", "retry", "--account", account, "--domain", "one.test") == {
        "Retried": 1,
        "StillSuspended": [],
    }
    after = dict(
        sql(
            settings,
            "select address, next_attempt_at from recipients where message_id = %s",
            mid,
        )
    )
    assert after["a@one.test"] < before["a@one.test"]  # due now, not in 30 min
    assert after["b@two.test"] == before["b@two.test"]  # another domain
    assert after["c@one.test"] == before["c@one.test"]  # claimed: left alone
    assert sql(
        settings, "select state from recipients where id = %s", ids["c@one.test"]
    ) == [("sending",)]

    out = cli.run("queue", "retry", "--message", mid).stdout
    assert "1 recipient due now." in out
    unknown = cli.run("queue", "retry", "--message", "nope", check=False)
    assert unknown.stderr.strip() == "sesame: no message nope"


def _snapshot(settings, message_id):
    return sql(
        settings,
        "select id, state, attempts, next_attempt_at, lease_until, response"
        " from recipients where message_id = %s order by id",
        message_id,
    ), sql(settings, "select count(*) from events where message_id = %s", message_id)


@pytest.mark.parametrize("mode", [(), ("--dry-run",)])
@pytest.mark.parametrize("action", ["bounce", "purge"])
def test_dry_runs_change_nothing(cli, settings, account, action, mode):
    mid, _ = add_message(
        settings,
        account,
        [
            ("a@one.test", "queued"),
            ("b@one.test", "deferred"),
            ("c@one.test", "sending"),
            ("d@one.test", "delivered"),
        ],
    )
    before = _snapshot(settings, mid)
    proc = cli.run("queue", action, "--message", mid, *mode, "--json")
    plan = json.loads(proc.stdout)
    assert plan["Action"] == action and plan["DryRun"] is True
    assert plan["Matched"] == 2 and plan["SkippedSending"] == 1
    assert plan["Bounced" if action == "bounce" else "Purged"] == 0
    assert plan["Groups"] == [
        {"AccountId": account, "Domain": "one.test", "State": s, "Recipients": 1}
        for s in ("deferred", "queued")
    ]
    assert [r["Address"] for r in plan["Sample"]] == ["a@one.test", "b@one.test"]
    assert set(plan["Sample"][0]) == {
        "RecipientId",
        "MessageId",
        "AccountId",
        "Address",
        "State",
        "Attempts",
        "NextAttemptAt",
    }
    if not mode:
        assert "add --yes" in proc.stderr
    table = cli.run("queue", action, "--message", mid, *mode).stdout
    assert f"Would {action} 2 recipients" in table
    assert "Skipped 1 recipient being delivered now" in table
    assert _snapshot(settings, mid) == before


def test_bounce_tells_the_sender_and_spares_final_and_leased_rows(
    cli, settings, account
):
    mid, ids = add_message(
        settings,
        account,
        [
            ("a@one.test", "queued"),
            ("b@one.test", "deferred"),
            ("c@one.test", "sending"),
            ("d@one.test", "delivered"),
            ("e@two.test", "queued"),
        ],
    )
    done = cli.json(
        "queue", "bounce", "--domain", "one.test", "--account", account,
        "--reason", "blocklisted", "--yes",
    )  # fmt: skip
    assert (done["DryRun"], done["Matched"], done["Bounced"]) == (False, 2, 2)
    assert done["SkippedSending"] == 1
    states = dict(
        sql(
            settings, "select address, state from recipients where message_id = %s", mid
        )
    )
    assert states == {
        "a@one.test": "bounced",
        "b@one.test": "bounced",
        "c@one.test": "sending",
        "d@one.test": "delivered",
        "e@two.test": "queued",
    }
    events = sql(
        settings,
        "select recipient_id, bounce_type, bounce_subtype, detail from events"
        " where message_id = %s and event_type = 'bounce' order by recipient_id",
        mid,
    )
    assert [e[0] for e in events] == [ids["a@one.test"], ids["b@one.test"]]
    for _, btype, subtype, detail in events:
        assert (btype, subtype) == (
            queue.OPERATOR_BOUNCE_TYPE,
            queue.OPERATOR_BOUNCE_SUBTYPE,
        )
        assert detail["status"] == "5.0.0"
        assert detail["diagnosticCode"] == "Bounced by the operator: blocklisted"
    # Not the recipient's fault: no suppression.
    assert sql(
        settings, "select count(*) from suppressions where account_id = %s", account
    ) == [(0,)]


def test_purge_by_state_deletes_silently(cli, settings, account):
    mid, ids = add_message(
        settings,
        account,
        [
            ("a@one.test", "queued"),
            ("b@one.test", "deferred"),
            ("c@one.test", "sending"),
        ],
    )
    events_before = sql(
        settings, "select count(*) from events where message_id = %s", mid
    )
    out = cli.run(
        "queue", "purge", "--message", mid, "--state", "deferred", "--yes"
    ).stdout
    assert "Purged 1 of 1 matching recipient." in out
    assert "Skipped 1 recipient being delivered now" in out
    assert sql(
        settings,
        "select address from recipients where message_id = %s order by id",
        mid,
    ) == [("a@one.test",), ("c@one.test",)]
    assert (
        sql(settings, "select count(*) from events where message_id = %s", mid)
        == events_before
    )


def test_bulk_actions_need_a_filter_or_all(cli, settings, account):
    add_message(settings, account, [("a@one.test", "queued")])
    for action in ("bounce", "purge"):
        proc = cli.run("queue", action, "--yes", check=False)
        assert proc.returncode == 1
        assert proc.stderr.strip() == (
            "sesame: give --domain, --account or --message, or --all for the whole queue"
        )
    whole = cli.json("queue", "purge", "--all")
    assert whole["DryRun"] is True and whole["Matched"] >= 1
    both = cli.run("queue", "purge", "--all", "--dry-run", "--yes", check=False)
    assert both.returncode == 2


def test_selector_and_domain_rules():
    with pytest.raises(queue.QueueError):
        queue.Selector(states=("delivered",))
    with pytest.raises(queue.QueueError):
        queue.Selector(states=())
    assert queue.normalize_domain(" Bücher.Example. ") == "xn--bcher-kva.example"
    assert queue.normalize_domain("MX.Example.COM") == "mx.example.com"
    for bad in ("", "a@b.test", "a b.test"):
        with pytest.raises(queue.QueueError):
            queue.normalize_domain(bad)
