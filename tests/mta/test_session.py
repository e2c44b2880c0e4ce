"""Outbound SMTP sessions (RFC 5321, STARTTLS per RFC 3207) against loopback sinks."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trustme

from mta.delivery.outcome import AttemptOutcome
from mta.delivery.session import SessionPool
from mta.delivery.shaping import DEFAULT_LIMITS, SiteLimits, limits_for, site_key
from tests.support.smtp_sink import SmtpSink

MX1 = ("mx1.example.test", "127.0.0.2")
MX2 = ("mx2.example.test", "127.0.0.3")
MESSAGE = (
    b"From: sender@sesame.test\r\n"
    b"To: rcpt@example.test\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b".a line starting with a dot\r\n"
)

PoolFactory = Callable[..., SessionPool]
COMMANDS = (b"EHLO", b"HELO", b"STARTTLS", b"RSET", b"MAIL", b"RCPT", b"DATA", b"QUIT")


@pytest.fixture(params=[True, False], ids=["pipelining", "lockstep"])
def pipelining(request: pytest.FixtureRequest) -> bool:
    """Every test here runs against sinks with and without PIPELINING."""
    return bool(request.param)


@pytest.fixture
def sink_knobs(pipelining: bool) -> dict[str, Any]:
    return {"pipelining": pipelining}


def command_groups(sink: SmtpSink) -> list[list[bytes]]:
    """The commands of each read the sink made, by verb; content reads left out."""
    groups = []
    for chunk in sink.chunks:
        verbs = [line[:4].upper() for line in chunk.split(b"\r\n") if line]
        if verbs and all(verb in COMMANDS for verb in verbs):
            groups.append(verbs)
    return groups


def limits(**changes: Any) -> Callable[[str], SiteLimits]:
    """Return a limits function giving the defaults with some changes."""
    fields = {
        "max_connections": DEFAULT_LIMITS.max_connections,
        "max_messages_per_connection": DEFAULT_LIMITS.max_messages_per_connection,
        "max_message_rate": DEFAULT_LIMITS.max_message_rate,
        "idle_timeout": DEFAULT_LIMITS.idle_timeout,
        **changes,
    }
    return lambda _name: SiteLimits(**fields)


@pytest.fixture
async def make_pool(delivery_port: int) -> AsyncIterator[PoolFactory]:
    """A factory for pools on delivery_port, all closed at teardown."""
    pools: list[SessionPool] = []

    def make(**options: Any) -> SessionPool:
        settings: dict[str, Any] = {
            "local_hostname": "sesame.test",
            "port": delivery_port,
            "connect_timeout": 2.0,
            "command_timeout": 5.0,
            **options,
        }
        pool = SessionPool(**settings)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


@pytest.fixture
def pool(make_pool: PoolFactory) -> SessionPool:
    return make_pool()


async def send(
    pool: SessionPool,
    rcpt_to: list[str],
    hosts: list[tuple[str, str]] | None = None,
    **options: Any,
) -> list[Any]:
    return await pool.send(
        hosts=hosts or [MX1],
        mail_from="bounce@sesame.test",
        rcpt_to=rcpt_to,
        data=MESSAGE,
        **options,
    )


async def test_delivered(pool: SessionPool, smtp_sink: SmtpSink) -> None:
    [result] = await send(pool, ["rcpt@example.test"])
    assert result.outcome is AttemptOutcome.DELIVERED
    assert result.smtp_code == 250
    assert result.enhanced_status == "2.0.0"
    assert result.mx_host == "mx1.example.test"
    [message] = smtp_sink.wait_for(1)
    assert message.mail_from == "bounce@sesame.test"
    assert message.rcpt_tos == ["rcpt@example.test"]
    assert message.data == MESSAGE  # dot-stuffed on the wire, unstuffed by the sink
    assert message.tls is False


async def test_null_reverse_path(pool: SessionPool, smtp_sink: SmtpSink) -> None:
    results = await pool.send(
        hosts=[MX1], mail_from="", rcpt_to=["rcpt@example.test"], data=MESSAGE
    )
    assert results[0].outcome is AttemptOutcome.DELIVERED
    assert smtp_sink.wait_for(1)[0].mail_from == "<>"


async def test_one_of_two_recipients_unknown(
    pool: SessionPool, smtp_sink: SmtpSink
) -> None:
    smtp_sink.rcpt_replies["nobody@example.test"] = "550 5.1.1 No such user"
    good, bad = await send(pool, ["rcpt@example.test", "nobody@example.test"])
    assert good.outcome is AttemptOutcome.DELIVERED
    assert bad.outcome is AttemptOutcome.FAILED
    assert (bad.bounce_type, bad.bounce_subtype) == ("Permanent", "NoEmail")
    assert bad.suppressible
    assert bad.response == "5.1.1 No such user"
    [message] = smtp_sink.wait_for(1)
    assert message.rcpt_tos == ["rcpt@example.test"]


async def test_rcpt_451_deferred_and_no_data(
    pool: SessionPool, smtp_sink: SmtpSink, pipelining: bool
) -> None:
    smtp_sink.rcpt_replies["rcpt@example.test"] = "451 4.7.1 Try later"
    [result] = await send(pool, ["rcpt@example.test"])
    assert result.outcome is AttemptOutcome.DEFERRED
    assert result.smtp_code == 451
    assert result.enhanced_status == "4.7.1"
    assert smtp_sink.messages == []
    # Pipelined, DATA went out with RCPT and the sink refused it (no valid
    # recipient); in lockstep it is never sent.
    sent_data = any(b"DATA" in group for group in command_groups(smtp_sink))
    assert sent_data is pipelining
    # The next transaction on the same connection starts clean with RSET.
    del smtp_sink.rcpt_replies["rcpt@example.test"]
    [result] = await send(pool, ["rcpt@example.test"])
    assert result.outcome is AttemptOutcome.DELIVERED
    assert smtp_sink.rsets == 1
    assert smtp_sink.connections == 1


@pytest.mark.parametrize(
    ("reply", "outcome", "detail"),
    [
        ("554 5.7.1 Rejected", AttemptOutcome.FAILED, "General"),
        ("452 4.2.2 Mailbox full", AttemptOutcome.DEFERRED, "MailboxFull"),
    ],
)
async def test_reply_at_data_applies_to_every_accepted_recipient(
    pool: SessionPool,
    smtp_sink: SmtpSink,
    reply: str,
    outcome: AttemptOutcome,
    detail: str,
) -> None:
    smtp_sink.data_reply = reply
    smtp_sink.rcpt_replies["nobody@example.test"] = "550 5.1.1 No such user"
    results = await send(
        pool, ["a@example.test", "nobody@example.test", "b@example.test"]
    )
    assert [r.outcome for r in results] == [outcome, AttemptOutcome.FAILED, outcome]
    assert results[1].bounce_subtype == "NoEmail"
    for result in (results[0], results[2]):
        assert detail in (result.bounce_subtype, result.delay_type)
        assert not result.suppressible


async def test_mail_from_rejected(pool: SessionPool, smtp_sink: SmtpSink) -> None:
    smtp_sink.mail_reply = "550 5.7.1 Sender blocked by policy"
    results = await send(pool, ["a@example.test", "b@example.test"])
    assert [r.outcome for r in results] == [AttemptOutcome.FAILED] * 2
    assert not any(r.suppressible for r in results)
    smtp_sink.mail_reply = "451 4.3.0 Temporary failure"
    results = await send(pool, ["a@example.test"])
    assert results[0].outcome is AttemptOutcome.DEFERRED
    assert smtp_sink.messages == []


async def test_disconnect_in_data_is_deferred(
    pool: SessionPool, smtp_sink: SmtpSink
) -> None:
    smtp_sink.disconnect_in_data = True
    [result] = await send(pool, ["rcpt@example.test"])
    assert result.outcome is AttemptOutcome.DEFERRED
    assert result.enhanced_status == "4.4.2"
    assert "may have been delivered" in result.response
    assert pool.stats()["open_connections"] == 0
    smtp_sink.disconnect_in_data = False
    [result] = await send(pool, ["rcpt@example.test"])
    assert result.outcome is AttemptOutcome.DELIVERED
    assert pool.stats()["new_connections"] == 2


async def test_first_mx_refuses_second_accepts(
    pool: SessionPool, smtp_sinks: Callable[..., SmtpSink]
) -> None:
    # Nothing listens on 127.0.0.2 in this test.
    second = smtp_sinks("127.0.0.3")
    [result] = await send(pool, ["rcpt@example.test"], hosts=[MX1, MX2])
    assert result.outcome is AttemptOutcome.DELIVERED
    assert result.mx_host == "mx2.example.test"
    assert len(second.wait_for(1)) == 1


async def test_421_greeting_then_next_host(
    pool: SessionPool, smtp_sink: SmtpSink, smtp_sinks: Callable[..., SmtpSink]
) -> None:
    smtp_sink.fail_next_connections = 1
    second = smtp_sinks("127.0.0.3")
    [result] = await send(pool, ["rcpt@example.test"], hosts=[MX1, MX2])
    assert result.outcome is AttemptOutcome.DELIVERED
    assert result.mx_host == "mx2.example.test"
    assert smtp_sink.refused_connections == 1
    assert smtp_sink.messages == []
    assert len(second.wait_for(1)) == 1


async def test_every_host_failing_defers_every_recipient(pool: SessionPool) -> None:
    hosts = [("mx1.example.test", "127.0.0.4"), ("mx2.example.test", "127.0.0.5")]
    results = await send(pool, ["a@example.test", "b@example.test"], hosts=hosts)
    for result in results:
        assert result.outcome is AttemptOutcome.DEFERRED
        assert result.delay_type == "TransientCommunicationFailure"
        assert result.mx_host == "mx2.example.test"


async def test_421_greeting_on_the_only_host(
    pool: SessionPool, smtp_sink: SmtpSink
) -> None:
    smtp_sink.fail_next_connections = 1
    [result] = await send(pool, ["rcpt@example.test"])
    assert result.outcome is AttemptOutcome.DEFERRED
    assert result.smtp_code == 421
    assert result.delay_type == "TransientCommunicationFailure"


async def test_starttls_used_when_offered(
    pool: SessionPool, smtp_sink: SmtpSink
) -> None:
    smtp_sink.starttls = True
    [result] = await send(pool, ["rcpt@example.test"])
    assert result.outcome is AttemptOutcome.DELIVERED
    assert smtp_sink.wait_for(1)[0].tls is True


async def test_server_requiring_tls(pool: SessionPool, smtp_sink: SmtpSink) -> None:
    smtp_sink.starttls = True
    smtp_sink.require_tls = True
    [result] = await send(pool, ["rcpt@example.test"], tls_required=True)
    assert result.outcome is AttemptOutcome.DELIVERED
    assert smtp_sink.wait_for(1)[0].tls is True


async def test_tls_required_without_starttls_is_deferred(
    pool: SessionPool, smtp_sink: SmtpSink
) -> None:
    [result] = await send(pool, ["rcpt@example.test"], tls_required=True)
    assert result.outcome is AttemptOutcome.DEFERRED
    assert result.enhanced_status == "4.7.4"
    assert smtp_sink.messages == []
    assert pool.stats()["open_connections"] == 0


async def test_tls_required_moves_on_to_a_host_with_starttls(
    pool: SessionPool, smtp_sink: SmtpSink, smtp_sinks: Callable[..., SmtpSink]
) -> None:
    second = smtp_sinks("127.0.0.3", starttls=True)
    [result] = await send(
        pool, ["rcpt@example.test"], hosts=[MX1, MX2], tls_required=True
    )
    assert result.outcome is AttemptOutcome.DELIVERED
    assert result.mx_host == "mx2.example.test"
    assert smtp_sink.messages == []
    assert second.wait_for(1)[0].tls is True


async def test_verified_tls_with_a_context_factory(
    make_pool: PoolFactory, smtp_sink: SmtpSink, tls_ca: trustme.CA
) -> None:
    seen: list[str] = []

    def verifying(mx_host: str) -> ssl.SSLContext:
        seen.append(mx_host)
        context = ssl.create_default_context()
        tls_ca.configure_trust(context)
        return context

    pool = make_pool(tls_context_factory=verifying)
    smtp_sink.starttls = True
    [result] = await send(pool, ["rcpt@example.test"], tls_required=True)
    assert result.outcome is AttemptOutcome.DELIVERED
    assert seen == ["mx1.example.test"]  # also the SNI and the name checked


async def test_failed_handshake_falls_back_to_clear_unless_required(
    make_pool: PoolFactory, smtp_sink: SmtpSink
) -> None:
    # A context that trusts nothing makes every handshake fail.
    pool = make_pool(tls_context_factory=lambda _name: ssl.create_default_context())
    smtp_sink.starttls = True
    [required] = await send(pool, ["rcpt@example.test"], tls_required=True)
    assert required.outcome is AttemptOutcome.DEFERRED
    assert required.enhanced_status == "4.7.5"
    assert smtp_sink.messages == []
    [opportunistic] = await send(pool, ["rcpt@example.test"])
    assert opportunistic.outcome is AttemptOutcome.DELIVERED
    assert smtp_sink.wait_for(1)[0].tls is False


async def test_sequential_sends_reuse_one_connection(
    pool: SessionPool, smtp_sink: SmtpSink, pipelining: bool
) -> None:
    for n in range(20):
        [result] = await send(pool, [f"rcpt{n}@example.test"])
        assert result.outcome is AttemptOutcome.DELIVERED
    stats = pool.stats()
    assert stats["new_connections"] == 1
    assert stats["reused_transactions"] == 19
    assert stats["transactions"] == 20
    assert stats["pipelined_transactions"] == (20 if pipelining else 0)
    assert stats["open_connections"] == stats["idle_connections"] == 1
    assert smtp_sink.connections == 1
    assert smtp_sink.rsets == 19  # RSET between transactions
    assert len(smtp_sink.wait_for(20)) == 20
    transactions = [g for g in command_groups(smtp_sink) if g not in ([b"EHLO"],)]
    if pipelining:
        # RFC 2920: one write per transaction up to DATA, RSET leading it.
        first, *rest = transactions
        assert first == [b"MAIL", b"RCPT", b"DATA"]
        assert rest == [[b"RSET", b"MAIL", b"RCPT", b"DATA"]] * 19
    else:
        # Without PIPELINING every command waits for the reply to the last.
        assert all(len(group) == 1 for group in transactions)
        assert len(transactions) == 3 + 19 * 4


async def test_multi_recipient_transaction_is_one_group(
    pool: SessionPool, smtp_sink: SmtpSink, pipelining: bool
) -> None:
    smtp_sink.rcpt_replies["b@example.test"] = "550 5.1.1 No such user"
    results = await send(pool, ["a@example.test", "b@example.test", "c@example.test"])
    assert [r.outcome for r in results] == [
        AttemptOutcome.DELIVERED,
        AttemptOutcome.FAILED,
        AttemptOutcome.DELIVERED,
    ]
    [message] = smtp_sink.wait_for(1)
    assert message.rcpt_tos == ["a@example.test", "c@example.test"]
    if pipelining:
        expected = [b"MAIL", b"RCPT", b"RCPT", b"RCPT", b"DATA"]
        assert expected in command_groups(smtp_sink)


async def test_max_messages_per_connection(
    make_pool: PoolFactory, smtp_sink: SmtpSink
) -> None:
    pool = make_pool(limits=limits(max_messages_per_connection=5))
    for n in range(20):
        [result] = await send(pool, [f"rcpt{n}@example.test"])
        assert result.outcome is AttemptOutcome.DELIVERED
    assert pool.stats()["new_connections"] == 4
    assert smtp_sink.connections == 4


async def test_max_connections_per_site(
    make_pool: PoolFactory, smtp_sink: SmtpSink
) -> None:
    pool = make_pool(limits=limits(max_connections=2))
    # A slow greeting makes all ten sends want a connection at the same time.
    smtp_sink.greeting_delay = 0.05
    results = await asyncio.gather(
        *(send(pool, [f"rcpt{n}@example.test"]) for n in range(10))
    )
    assert all(r.outcome is AttemptOutcome.DELIVERED for [r] in results)
    assert smtp_sink.max_active_connections == 2
    assert smtp_sink.connections == 2
    assert pool.stats()["new_connections"] == 2
    assert len(smtp_sink.wait_for(10)) == 10


async def test_site_limit_spans_mx_hosts(
    make_pool: PoolFactory, smtp_sink: SmtpSink, smtp_sinks: Callable[..., SmtpSink]
) -> None:
    pool = make_pool(limits=limits(max_connections=1))
    second = smtp_sinks("127.0.0.3")
    [first] = await send(pool, ["a@example.test"], hosts=[MX1, MX2])
    # Same site (same MX set), other preference order: the idle connection to
    # mx1 is closed to free the site's only slot.
    [other] = await send(pool, ["b@example.test"], hosts=[MX2, MX1])
    assert first.mx_host == "mx1.example.test"
    assert other.mx_host == "mx2.example.test"
    assert pool.stats()["open_connections"] == 1
    await smtp_sink.wait_until_async(lambda: smtp_sink.active_connections == 0)
    assert len(second.wait_for(1)) == 1


async def test_idle_connections_close_after_idle_timeout(
    make_pool: PoolFactory, smtp_sink: SmtpSink
) -> None:
    pool = make_pool(limits=limits(idle_timeout=0.1))
    await send(pool, ["rcpt@example.test"])
    assert smtp_sink.active_connections == 1
    # Both ends see the close, each in its own time.
    await smtp_sink.wait_until_async(
        lambda: smtp_sink.active_connections == pool.stats()["open_connections"] == 0
    )
    [result] = await send(pool, ["rcpt@example.test"])
    assert result.outcome is AttemptOutcome.DELIVERED
    assert smtp_sink.connections == 2


async def test_dead_idle_connection_is_replaced(
    pool: SessionPool, delivery_port: int, tls_ca: trustme.CA, pipelining: bool
) -> None:
    with SmtpSink("127.0.0.2", delivery_port, ca=tls_ca, pipelining=pipelining):
        await send(pool, ["rcpt@example.test"])
    # The server went away under our idle connection; RSET fails, so reconnect.
    with SmtpSink(
        "127.0.0.2", delivery_port, ca=tls_ca, pipelining=pipelining
    ) as restarted:
        [result] = await send(pool, ["rcpt@example.test"])
        assert result.outcome is AttemptOutcome.DELIVERED
        assert restarted.connections == 1
        assert pool.stats()["new_connections"] == 2


async def test_connection_refusing_rset_is_replaced(
    pool: SessionPool, smtp_sink: SmtpSink
) -> None:
    [first] = await send(pool, ["a@example.test"])
    # A server going down answers 421 to the RSET that opens the next
    # transaction: nothing is delivered on that connection, a new one is used.
    smtp_sink.rset_reply = "421 4.3.2 Shutting down"
    [second] = await send(pool, ["b@example.test"])
    assert first.outcome is second.outcome is AttemptOutcome.DELIVERED
    assert pool.stats()["new_connections"] == 2
    await smtp_sink.wait_until_async(lambda: smtp_sink.active_connections == 1)
    messages = smtp_sink.wait_for(2)
    assert [m.rcpt_tos for m in messages] == [["a@example.test"], ["b@example.test"]]


async def test_close_quits_idle_connections(
    make_pool: PoolFactory, smtp_sink: SmtpSink
) -> None:
    pool = make_pool()
    await send(pool, ["rcpt@example.test"])
    await pool.close()
    assert pool.stats()["open_connections"] == 0
    await smtp_sink.wait_until_async(lambda: smtp_sink.active_connections == 0)
    with pytest.raises(RuntimeError):
        await send(pool, ["rcpt@example.test"])


async def test_message_rate_paces_sends(
    make_pool: PoolFactory, smtp_sink: SmtpSink
) -> None:
    pool = make_pool(limits=limits(max_message_rate=20.0))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(send(pool, [f"r{n}@example.test"]) for n in range(5)))
    # Five messages at 20/s: the last may start 4 x 50 ms after the first.
    assert loop.time() - started >= 0.2 - 0.01
    assert len(smtp_sink.wait_for(5)) == 5


async def test_utf8_address_needs_smtputf8(
    pool: SessionPool, smtp_sink: SmtpSink
) -> None:
    [result] = await send(pool, ["josé@example.test"])
    assert result.outcome is AttemptOutcome.DELIVERED  # the sink offers SMTPUTF8
    assert smtp_sink.wait_for(1)[0].rcpt_tos == ["josé@example.test"]


async def test_no_recipients_and_no_hosts(pool: SessionPool) -> None:
    assert await send(pool, []) == []
    results = await pool.send(
        hosts=[], mail_from="b@sesame.test", rcpt_to=["a@example.test"], data=MESSAGE
    )
    assert results[0].outcome is AttemptOutcome.DEFERRED


def test_limits_for_known_providers() -> None:
    assert limits_for("gmail.com").max_connections == 20
    assert limits_for("alt1.aspmx.l.google.com.").max_messages_per_connection == 100
    assert limits_for("contoso-com.mail.protection.outlook.com").max_connections == 10
    assert limits_for("hotmail.com").max_messages_per_connection == 50
    assert limits_for("mta5.am0.yahoodns.net").max_messages_per_connection == 20
    assert limits_for("aol.com").max_connections == 10
    assert limits_for("example.test") == DEFAULT_LIMITS
    assert limits_for("notgmail.com") == DEFAULT_LIMITS
    assert all(
        limits_for(name).max_message_rate is None
        for name in ("gmail.com", "outlook.com", "yahoo.com", "example.test")
    )


def test_limits_for_overrides_longest_suffix_wins() -> None:
    slow = SiteLimits(1, 1, 0.5, 10.0)
    slower = SiteLimits(1, 1, 0.1, 10.0)
    overrides = {"example.test": slow, "mx.example.test": slower}
    assert limits_for("a.mx.example.test", overrides) == slower
    assert limits_for("example.test", overrides) == slow
    assert limits_for("gmail.com", overrides).max_connections == 20


def test_limits_shared_by_processes() -> None:
    google = limits_for("gmail.com")
    assert google.share(1) is google
    assert google.share(2) == SiteLimits(10, 100, None, google.idle_timeout)
    paced = SiteLimits(10, 50, 3.0, 30.0)
    assert paced.share(4) == SiteLimits(2, 50, 0.75, 30.0)
    # Never below one connection, even with more processes than connections.
    assert SiteLimits(1, 20, None, 30.0).share(8).max_connections == 1


def test_site_key() -> None:
    assert site_key(["gmail-smtp-in.l.google.com", "alt1.aspmx.l.google.com"]) == (
        "google"
    )
    assert site_key(["MX2.example.test.", "mx1.example.test"]) == site_key(
        ["mx1.example.test", "mx2.example.test"]
    )
    assert site_key(["mx1.example.test"]) != site_key(["mx1.other.test"])
