"""Accepted mail reaches loopback sinks; every outcome is recorded."""

from __future__ import annotations

import asyncio

import dkim
import dns.resolver
import psycopg
import pytest

from mta import identities
from tests.support.api_server import create_account, verify_identity
from tests.support.pipeline import rows

SEND = {
    "Destination": {"ToAddresses": ["user@dest.test"]},
    "Message": {"Subject": {"Data": "Hello"}, "Body": {"Text": {"Data": "Body text"}}},
}


@pytest.fixture
def sender(delivery_settings, redis_client):
    from tests.support.api_server import start_api

    server = start_api(delivery_settings)
    account, creds = create_account(server.settings, "sender", production=True)
    verify_identity(server.settings, account.id, "example.com")
    yield server, account, server.client(creds)
    server.server.should_exit = True
    server.thread.join(10)


def send_to(ses, address: str) -> str:
    """Send SEND to one address from sender@example.com; return the MessageId."""
    return ses.send_email(
        Source="sender@example.com",
        **{**SEND, "Destination": {"ToAddresses": [address]}},
    )["MessageId"]


def allow_send_rate(settings, account_id: str, rate: int) -> None:
    """Let the account send rate recipients a second, so a test sends quickly."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(
            "update accounts set max_send_rate = %s where id = %s", (rate, account_id)
        )


async def test_message_is_delivered_with_verp_return_path(
    sender, smtp_sink, pipeline_factory
):
    server, account, ses = sender
    mid = ses.send_email(Source="Sender <sender@example.com>", **SEND)["MessageId"]
    pipeline = await pipeline_factory(server.settings)
    await pipeline.drain()

    assert len(smtp_sink.messages) == 1
    received = smtp_sink.messages[0]
    assert received.rcpt_tos == ["user@dest.test"]
    assert received.mail_from.endswith("@localhost") and received.mail_from.startswith(
        "b-"
    )
    assert f"<{mid}@localhost>".encode() in received.data
    [(state, code)] = rows(
        server.settings,
        "select state, smtp_code from recipients where message_id = %s",
        mid,
    )
    assert (state, code) == ("delivered", 250)
    kinds = sorted(
        r[0]
        for r in rows(
            server.settings, "select event_type from events where message_id = %s", mid
        )
    )
    assert kinds == ["delivery", "send"]


async def test_dkim_signature_verifies_at_the_receiver(
    sender, smtp_sink, dns_server, pipeline_factory
):
    server, account, ses = sender
    tokens = ses.verify_domain_dkim(Domain="example.com")["DkimTokens"]
    pipeline = await pipeline_factory(server.settings)
    async with pipeline.runtime.pool.connection() as conn:
        identity = await identities.get_identity(conn, account.id, "example.com")
        for record in await identities.dns_records(conn, identity):
            dns_server.add(record.name, record.type, record.value)
    await pipeline.scheduler.recheck_identities()
    attrs = ses.get_identity_dkim_attributes(Identities=["example.com"])[
        "DkimAttributes"
    ]["example.com"]
    assert attrs["DkimVerificationStatus"] == "Success"
    assert len(tokens) == 3

    raw = (
        b"From: Sender <sender@example.com>\r\nTo: user@dest.test\r\nSubject: signed\r\n\r\n"
        b"bare LF line\nand a very long line " + b"x" * 1200 + b"\r\n"
    )
    ses.send_raw_email(RawMessage={"Data": raw})
    await pipeline.drain()
    data = smtp_sink.messages[-1].data
    assert data.startswith(b"DKIM-Signature:")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998

    def dnsfunc(name, timeout=5):
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns_server.host]
        resolver.port = dns_server.port
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(rdata.strings) for rdata in answer)

    assert dkim.verify(data, dnsfunc=dnsfunc)


async def test_permanent_failure_bounces_and_suppresses(
    sender, smtp_sink, pipeline_factory
):
    server, account, ses = sender
    smtp_sink.rcpt_replies["user@dest.test"] = "550 5.1.1 No such user"
    mid = ses.send_email(Source="sender@example.com", **SEND)["MessageId"]
    pipeline = await pipeline_factory(server.settings)
    await pipeline.drain()
    [(state, status)] = rows(
        server.settings,
        "select state, enhanced_status from recipients where message_id = %s",
        mid,
    )
    assert (state, status) == ("bounced", "5.1.1")
    [(btype, subtype)] = rows(
        server.settings,
        "select bounce_type, bounce_subtype from events where message_id = %s and event_type = 'bounce'",
        mid,
    )
    assert (btype, subtype) == ("Permanent", "NoEmail")
    assert rows(
        server.settings,
        "select reason from suppressions where account_id = %s and address = 'user@dest.test'",
        account.id,
    ) == [("BOUNCE",)]

    # The next send to the suppressed address is accepted but never attempted.
    mid2 = ses.send_email(Source="sender@example.com", **SEND)["MessageId"]
    await pipeline.drain()
    assert rows(
        server.settings, "select state from recipients where message_id = %s", mid2
    ) == [("suppressed",)]
    assert rows(
        server.settings,
        "select bounce_subtype from events where message_id = %s and event_type = 'bounce'",
        mid2,
    ) == [("OnAccountSuppressionList",)]
    assert len(smtp_sink.messages) == 0


async def test_tempfail_is_retried_then_delivered(sender, smtp_sink, pipeline_factory):
    server, account, ses = sender
    smtp_sink.rcpt_replies["user@dest.test"] = "451 4.7.1 Try again later"
    mid = ses.send_email(Source="sender@example.com", **SEND)["MessageId"]
    pipeline = await pipeline_factory(server.settings)
    await pipeline.scheduler.dispatch()
    await pipeline.run_jobs()
    [(state, attempts)] = rows(
        server.settings,
        "select state, attempts from recipients where message_id = %s",
        mid,
    )
    assert (state, attempts) == ("deferred", 1)
    smtp_sink.rcpt_replies.clear()
    await asyncio.sleep(0.3)
    await pipeline.drain()
    assert rows(
        server.settings,
        "select state, attempts from recipients where message_id = %s",
        mid,
    ) == [("delivered", 2)]
    kinds = [
        r[0]
        for r in rows(
            server.settings,
            "select event_type from events where message_id = %s order by id",
            mid,
        )
    ]
    assert kinds == ["send", "delivery_delay", "delivery"]
    assert len(smtp_sink.messages) == 1


async def test_nxdomain_and_null_mx_fail_without_connecting(
    sender, smtp_sink, dns_server, pipeline_factory
):
    server, account, ses = sender
    dns_server.null_mx("nullmx.test")
    mid = ses.send_email(
        Source="sender@example.com",
        Destination={"ToAddresses": ["a@nowhere.test", "b@nullmx.test"]},
        Message=SEND["Message"],
    )["MessageId"]
    pipeline = await pipeline_factory(server.settings)
    await pipeline.drain()
    got = dict(
        rows(
            server.settings,
            "select address, enhanced_status from recipients where message_id = %s and state = 'bounced'",
            mid,
        )
    )
    assert got == {"a@nowhere.test": "5.1.2", "b@nullmx.test": "5.1.10"}
    assert smtp_sink.messages == []


async def test_tempfail_until_give_up_bounces_exactly_once(
    sender, smtp_sink, pipeline_factory
):
    server, account, ses = sender
    smtp_sink.rcpt_replies["user@dest.test"] = "451 4.4.1 Still busy"
    mid = ses.send_email(Source="sender@example.com", **SEND)["MessageId"]
    with psycopg.connect(server.settings.database_url, autocommit=True) as conn:
        conn.execute(
            "update recipients set expires_at = now() + interval '1.5 seconds' where message_id = %s",
            (mid,),
        )
    pipeline = await pipeline_factory(server.settings)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while loop.time() < deadline:
        await pipeline.scheduler.sweep()
        await pipeline.scheduler.dispatch()
        await pipeline.run_jobs()
        if rows(
            server.settings, "select state from recipients where message_id = %s", mid
        ) == [("bounced",)]:
            break
        await asyncio.sleep(0.1)
    attempts = rows(
        server.settings,
        "select started_at from delivery_attempts da join recipients r on r.id = da.recipient_id where r.message_id = %s order by da.id",
        mid,
    )
    assert len(attempts) >= 2
    bounces = rows(
        server.settings,
        "select bounce_type from events where message_id = %s and event_type = 'bounce'",
        mid,
    )
    assert bounces == [("Transient",)]
    await asyncio.sleep(0.3)
    await pipeline.scheduler.sweep()
    assert (
        len(
            rows(
                server.settings,
                "select 1 from events where message_id = %s and event_type = 'bounce'",
                mid,
            )
        )
        == 1
    )


async def test_redis_flush_after_dispatch_loses_nothing(
    sender, smtp_sink, pipeline_factory, redis_client
):
    server, account, ses = sender
    with psycopg.connect(server.settings.database_url, autocommit=True) as conn:
        conn.execute(
            "update accounts set max_send_rate = 100 where id = %s", (account.id,)
        )
    mids = [
        ses.send_email(Source="sender@example.com", **SEND)["MessageId"]
        for _ in range(5)
    ]
    pipeline = await pipeline_factory(server.settings)
    await pipeline.scheduler.check_epoch()
    await pipeline.scheduler.dispatch()
    redis_client.flushdb()  # the queued jobs are gone with it
    assert await pipeline.run_jobs() == 0
    await pipeline.drain()
    assert smtp_sink.wait_for(5, timeout=5)
    delivered = rows(
        server.settings,
        "select count(*) from recipients where message_id = any(%s) and state = 'delivered'",
        mids,
    )
    assert delivered == [(5,)]
    assert len(smtp_sink.messages) == 5


async def test_dns_servfail_defers_without_falling_back_to_a(
    sender, smtp_sink, dns_server, pipeline_factory
):
    server, account, ses = sender
    dns_server.servfail("broken.test")
    dns_server.add("broken.test", "A", "127.0.0.2")  # must never be used
    mid = ses.send_email(
        Source="sender@example.com",
        Destination={"ToAddresses": ["a@broken.test"]},
        Message=SEND["Message"],
    )["MessageId"]
    pipeline = await pipeline_factory(server.settings)
    await pipeline.scheduler.dispatch()
    await pipeline.run_jobs()
    [(state, status)] = rows(
        server.settings,
        "select state, enhanced_status from recipients where message_id = %s",
        mid,
    )
    assert (state, status) == ("deferred", "4.4.3")
    assert smtp_sink.messages == []


async def test_first_mx_down_second_mx_delivers(
    sender, smtp_sinks, dns_server, pipeline_factory
):
    server, account, ses = sender
    dns_server.add("two.test", "MX", "10 mx1.two.test.")
    dns_server.add("two.test", "MX", "20 mx2.two.test.")
    dns_server.add("mx1.two.test", "A", "127.0.0.4")  # nothing listens there
    dns_server.add("mx2.two.test", "A", "127.0.0.5")
    backup = smtp_sinks("127.0.0.5")
    mid = ses.send_email(
        Source="sender@example.com",
        Destination={"ToAddresses": ["a@two.test"]},
        Message=SEND["Message"],
    )["MessageId"]
    pipeline = await pipeline_factory(server.settings)
    await pipeline.drain()
    assert rows(
        server.settings,
        "select state, mx_host from recipients where message_id = %s",
        mid,
    ) == [("delivered", "mx2.two.test")]
    assert len(backup.messages) == 1


def test_site_limits_override_by_suffix():
    from mta.delivery import shaping

    overrides = shaping.parse_overrides(
        '{"example.com": {"max_connections": 3, "max_message_rate": 2.5}}'
    )
    limits = shaping.limits_for("mx.mail.example.com", overrides)
    assert (limits.max_connections, limits.max_message_rate) == (3, 2.5)
    assert (
        limits.max_messages_per_connection
        == shaping.DEFAULT_LIMITS.max_messages_per_connection
    )
    assert shaping.limits_for("example.net", overrides) == shaping.DEFAULT_LIMITS
    with pytest.raises(TypeError):
        shaping.parse_overrides('{"example.com": {"max_conections": 3}}')


async def test_site_limits_are_shared_by_the_worker_processes(
    sender, smtp_sink, pipeline_factory
):
    server, account, ses = sender
    allow_send_rate(server.settings, account.id, 100)
    for n in range(12):
        send_to(ses, f"user{n}@dest.test")
    # Two worker processes share a site allowed 2 connections: one each.
    settings = server.settings.model_copy(
        update={"workers": 2, "site_limits": '{"dest.test": {"max_connections": 2}}'}
    )
    smtp_sink.greeting_delay = 0.05  # every send wants a connection at once
    pipeline = await pipeline_factory(settings)
    await pipeline.drain()
    assert len(smtp_sink.wait_for(12)) == 12
    assert smtp_sink.max_active_connections == 1


async def test_rsa_and_ed25519_signatures_both_verify(
    sender, smtp_sink, dns_server, pipeline_factory
):
    import json
    import subprocess
    import sys

    server, account, ses = sender
    ses.verify_domain_dkim(Domain="example.com")
    env = {
        "SESAME_DATABASE_URL": server.settings.database_url,
        "SESAME_REDIS_URL": server.settings.redis_url,
        "SESAME_DATA_DIR": str(server.settings.data_dir),
        "SESAME_LOG_LEVEL": "WARNING",
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sesame.cli",
            "identity",
            "add-ed25519",
            account.id,
            "example.com",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    record = json.loads(out)["DnsRecord"]
    assert "k=ed25519" in record["Value"]
    pipeline = await pipeline_factory(server.settings)
    async with pipeline.runtime.pool.connection() as conn:
        identity = await identities.get_identity(conn, account.id, "example.com")
        for rr in await identities.dns_records(conn, identity):
            dns_server.add(rr.name, rr.type, rr.value)
    await pipeline.scheduler.recheck_identities()
    ses.send_email(Source="sender@example.com", **SEND)
    await pipeline.drain()
    data = smtp_sink.messages[-1].data
    assert data.count(b"DKIM-Signature:") == 2

    def dnsfunc(name, timeout=5):
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns_server.host]
        resolver.port = dns_server.port
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(rdata.strings) for rdata in answer)

    checker = dkim.DKIM(data)
    assert checker.verify(idx=0, dnsfunc=dnsfunc) and checker.verify(
        idx=1, dnsfunc=dnsfunc
    )
    algorithms = {
        line.split(b"a=")[1].split(b";")[0]
        for line in data.split(b"\r\n")
        if b" a=" in line or line.startswith(b"DKIM-Signature: v=1; a=")
    }
    assert algorithms == {b"rsa-sha256", b"ed25519-sha256"}


async def test_outcomes_are_written_while_a_large_batch_still_runs(
    sender, smtp_sink, pipeline_factory
):
    """A killed worker can only leave a bounded number of deliveries unrecorded."""
    from mta.delivery.deliverer import RECORD_EVERY

    server, account, ses = sender
    allow_send_rate(server.settings, account.id, 1000)
    count = RECORD_EVERY + 50
    mids = [send_to(ses, f"user{n}@dest.test") for n in range(count)]
    smtp_sink.hold_data_for.add(f"user{count - 1}@dest.test")
    settings = server.settings.model_copy(update={"dispatch_batch_size": count})
    pipeline = await pipeline_factory(settings)
    await pipeline.scheduler.check_epoch()
    await pipeline.scheduler.dispatch()
    job = asyncio.ensure_future(pipeline.run_jobs())

    def delivered() -> int:
        [(n,)] = rows(
            settings,
            "select count(*) from recipients"
            " where message_id = any(%s) and state = 'delivered'",
            mids,
        )
        return int(n)

    deadline = asyncio.get_running_loop().time() + 10
    while delivered() < RECORD_EVERY:
        assert asyncio.get_running_loop().time() < deadline, delivered()
        assert not job.done()  # one message is held: the batch cannot finish
        await asyncio.sleep(0.05)
    assert not job.done()
    smtp_sink.release.set()
    assert await job == count
    assert delivered() == count


async def test_a_batch_longer_than_its_lease_keeps_it(
    sender, smtp_sink, pipeline_factory
):
    """The sweeper must not hand a running batch's rows to another attempt."""
    server, account, ses = sender
    held = "slow@dest.test"
    mid = send_to(ses, held)
    smtp_sink.hold_data_for.add(held)
    settings = server.settings.model_copy(update={"lease_seconds": 1})
    pipeline = await pipeline_factory(settings)
    await pipeline.scheduler.check_epoch()
    await pipeline.scheduler.dispatch()
    job = asyncio.ensure_future(pipeline.run_jobs())

    # Three leases long: the worker extends it, so sweeps release nothing.
    for _ in range(15):
        await asyncio.sleep(0.2)
        await pipeline.scheduler.sweep()
        [(state,)] = rows(
            settings, "select state from recipients where message_id = %s", mid
        )
        assert state == "sending"
    smtp_sink.release.set()
    assert await job == 1
    await pipeline.drain()

    [(state,)] = rows(
        settings, "select state from recipients where message_id = %s", mid
    )
    assert state == "delivered"
    assert [m.rcpt_tos for m in smtp_sink.messages] == [[held]]


def test_a_job_rq_times_out_stops_sending(sender, smtp_sink, redis_client):
    """RQ's job timeout interrupts the worker's wait; the batch must stop too."""
    from redis import Redis as SyncRedis
    from rq import Queue, SimpleWorker

    from tests.support.pipeline import open_pipeline
    from workers import DELIVERY_QUEUE
    from workers import deliver as worker

    server, account, ses = sender
    held = "held@dest.test"
    mid = send_to(ses, held)
    smtp_sink.hold_data_for.add(held)
    # A one-second lease: RQ gives the job six, then stops it.
    settings = server.settings.model_copy(update={"lease_seconds": 1})

    async def dispatch() -> None:
        pipeline = await open_pipeline(settings)
        try:
            await pipeline.scheduler.check_epoch()
            assert await pipeline.scheduler.dispatch() == 1
        finally:
            await pipeline.deliverer.close()
            await pipeline.runtime.close()

    asyncio.run(dispatch())
    worker._settings = settings
    try:
        connection = SyncRedis.from_url(settings.redis_url)
        queue = Queue(DELIVERY_QUEUE, connection=connection)
        SimpleWorker([queue], connection=connection).work(
            burst=True, logging_level="WARNING", with_scheduler=False
        )
        assert queue.failed_job_registry.count == 1
        # Had the batch gone on, the held message would now be delivered.
        smtp_sink.release.set()
        smtp_sink.wait_until(lambda: smtp_sink.active_connections == 0)
        assert smtp_sink.messages == []
    finally:
        loop, deliverer = worker._loop, worker._deliverer
        if loop is not None and deliverer is not None:

            async def close() -> None:
                await deliverer.close()
                await deliverer.runtime.close()

            asyncio.run_coroutine_threadsafe(close(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        worker._settings = worker._loop = worker._deliverer = None
    [(state,)] = rows(
        settings, "select state from recipients where message_id = %s", mid
    )
    assert state == "sending"  # until its lease ends; then the sweeper retries it
