"""Operator tools against a real queue: mail accepted by the API, delivered by the
scheduler and a deliverer to loopback MX hosts."""

from __future__ import annotations

from tests.operator.conftest import sql


def _states(settings, *message_ids):
    return dict(
        sql(
            settings,
            "select address, state from recipients where message_id = any(%s)",
            list(message_ids),
        )
    )


async def _dispatch_and_run(pipeline):
    await pipeline.scheduler.dispatch()
    await pipeline.run_jobs()


async def test_suspended_domain_waits_and_is_delivered_after_resume(
    cli, sender, smtp_sink, pipeline_factory
):
    settings = sender.settings
    held = sender.send("a@dest.test")
    free = sender.send("b@other.test")
    cli.run("queue", "suspend", "--domain", "dest.test", "--reason", "test")
    pipeline = await pipeline_factory(settings)

    await _dispatch_and_run(pipeline)
    await _dispatch_and_run(pipeline)
    assert _states(settings, held, free) == {
        "a@dest.test": "queued",
        "b@other.test": "delivered",
    }
    assert [m.rcpt_tos for m in smtp_sink.messages] == [["b@other.test"]]
    summary = cli.json("queue", "summary", "--account", sender.account_id)
    [group] = summary["Groups"]
    assert (group["Domain"], group["Queued"], group["Due"], group["Suspended"]) == (
        "dest.test",
        1,
        1,
        True,
    )

    cli.run("queue", "resume", "--domain", "dest.test")
    await pipeline.drain()
    assert _states(settings, held)["a@dest.test"] == "delivered"
    assert sorted(m.rcpt_tos[0] for m in smtp_sink.messages) == [
        "a@dest.test",
        "b@other.test",
    ]


async def test_suspended_account_waits_until_its_suspension_lapses(
    cli, sender, smtp_sink, pipeline_factory
):
    settings = sender.settings
    mid = sender.send("a@dest.test", "b@other.test")
    cli.run("queue", "suspend", "--account", sender.account_id, "--until", "1h")
    pipeline = await pipeline_factory(settings)
    await _dispatch_and_run(pipeline)
    assert set(_states(settings, mid).values()) == {"queued"}
    assert smtp_sink.messages == []

    sql(settings, "update delivery_suspensions set until = now() - interval '1 second'")
    await pipeline.drain()
    assert set(_states(settings, mid).values()) == {"delivered"}


async def test_in_flight_recipients_finish_after_a_suspension(
    cli, sender, smtp_sink, pipeline_factory
):
    settings = sender.settings
    mid = sender.send("a@dest.test")
    pipeline = await pipeline_factory(settings)
    await pipeline.scheduler.dispatch()  # claimed: a job waits in Redis
    assert _states(settings, mid) == {"a@dest.test": "sending"}

    cli.run("queue", "suspend", "--domain", "dest.test")
    plan = cli.json("queue", "purge", "--domain", "dest.test", "--yes")
    assert (plan["Purged"], plan["SkippedSending"]) == (0, 1)

    await pipeline.run_jobs()
    assert _states(settings, mid) == {"a@dest.test": "delivered"}
    assert len(smtp_sink.messages) == 1


async def test_retry_now_delivers_a_deferred_recipient(
    cli, sender, smtp_sink, pipeline_factory
):
    settings = sender.settings
    smtp_sink.rcpt_replies["a@dest.test"] = "451 4.7.1 Try again later"
    mid = sender.send("a@dest.test")
    pipeline = await pipeline_factory(settings)
    await _dispatch_and_run(pipeline)
    [(state, later)] = sql(
        settings,
        "select state, next_attempt_at > now() + interval '30 minutes'"
        " from recipients where message_id = %s",
        mid,
    )
    assert (state, later) == ("deferred", True)  # retry_base_seconds is an hour

    smtp_sink.rcpt_replies.clear()
    await _dispatch_and_run(pipeline)
    assert _states(settings, mid) == {"a@dest.test": "deferred"}  # not due yet

    assert cli.json("queue", "retry", "--message", mid)["Retried"] == 1
    await pipeline.drain()
    assert _states(settings, mid) == {"a@dest.test": "delivered"}
    assert len(smtp_sink.messages) == 1


async def test_message_show_tells_the_whole_story(
    cli, sender, smtp_sink, pipeline_factory
):
    settings = sender.settings
    smtp_sink.rcpt_replies["a@dest.test"] = "451 4.7.1 Greylisted [try later]"
    mid = sender.send("a@dest.test", "b@other.test")
    pipeline = await pipeline_factory(settings)
    await _dispatch_and_run(pipeline)
    smtp_sink.rcpt_replies.clear()
    cli.run("queue", "retry", "--message", mid)
    await pipeline.drain()

    shown = cli.json("message", "show", mid)
    message = shown["Message"]
    assert message["MessageId"] == mid
    assert message["AccountId"] == sender.account_id
    assert message["Source"] == "sender@example.com"
    assert message["Subject"] == "Queue test"
    assert message["SizeBytes"] > 100 and message["RecipientCount"] == 2
    assert message["Interface"] == "api" and message["CreatedAt"].endswith("Z")

    recipients = {r["Address"]: r for r in shown["Recipients"]}
    assert recipients["a@dest.test"]["State"] == "delivered"
    assert recipients["a@dest.test"]["Attempts"] == 2
    assert recipients["a@dest.test"]["NextAttemptAt"] is None  # final
    assert recipients["b@other.test"]["SmtpCode"] == 250

    history = shown["History"]
    times = [h["Time"] for h in history]
    assert times == sorted(times)
    story = [
        (h["Kind"], h["Name"]) for h in history if h["Address"] in (None, "a@dest.test")
    ]
    assert story == [
        ("event", "send"),
        ("attempt", "deferred"),
        ("event", "delivery_delay"),
        ("attempt", "delivered"),
        ("event", "delivery"),
    ]
    deferred = next(h for h in history if h["Name"] == "deferred")
    assert deferred["SmtpCode"] == 451 and deferred["EnhancedStatus"] == "4.7.1"
    assert deferred["MxHost"] == "mx.dest.test" and deferred["Attempt"] == 1
    assert "Greylisted" in deferred["Reply"]

    table = cli.run("message", "show", mid).stdout
    for text in (mid, "attempt 1: deferred", "mx.dest.test", "[try later]"):
        assert text in table
    missing = cli.run("message", "show", "nope", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "sesame: no message nope"


def test_config_lists_every_setting_as_table_and_json(cli, settings):
    from sesame.settings import Settings

    rows = cli.json("config")
    assert [r["Setting"] for r in rows] == list(Settings.model_fields)
    by_name = {r["Setting"]: r for r in rows}
    assert by_name["lease_seconds"] == {
        "Setting": "lease_seconds",
        "EnvVar": "SESAME_LEASE_SECONDS",
        "Default": 600,
        "Unit": "seconds",
        "Value": 600,
        "Description": "how long a claimed recipient stays claimed",
    }
    assert by_name["redis_url"]["Value"] == settings.redis_url
    table = cli.run("config").stdout
    assert "SESAME_RETRY_BASE_SECONDS" in table and "recipients per second" in table


def test_config_hides_secrets(settings):
    from sesame.operator_cli import config_rows

    shown = {
        r["Setting"]: r["Value"]
        for r in config_rows(
            settings.model_copy(
                update={
                    "secret_key": "c2VjcmV0",
                    "database_url": "postgresql://u:pw@db:5432/x?password=pw2",
                }
            )
        )
    }
    assert shown["secret_key"] == "(set)"
    assert shown["database_url"] == "postgresql://u:***@db:5432/x?password=***"
