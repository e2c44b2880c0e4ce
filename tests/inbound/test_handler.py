"""MX handler faults: a store outage asks for a retry, a Redis outage fails open."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from aiosmtpd.smtp import Envelope, Session
from redis.asyncio import Redis

from mta.feedback.record import Recorded, ReportKind, Result
from mta.inbound import Limits, replies
from mta.inbound.handler import MxHandler, client_key
from tests.inbound.conftest import DOMAIN, FBL_ADDRESS


class BrokenRecorder:
    async def process(self, data: bytes, rcpt: Sequence[str] = ()) -> Recorded:
        raise psycopg.OperationalError("connection refused")


class NullRecorder:
    async def process(self, data: bytes, rcpt: Sequence[str] = ()) -> Recorded:
        return Recorded(ReportKind.UNKNOWN, Result.UNPARSEABLE, "not_a_report")


def handler(recorder: Any, redis: Redis) -> MxHandler:
    return MxHandler(DOMAIN, recorder, redis, Limits())


def session() -> Session:
    s = Session(loop=None)  # type: ignore[arg-type]
    s.peer = ("192.0.2.1", 40000)
    return s


async def test_store_outage_asks_for_a_retry(redis_url):
    redis = Redis.from_url(redis_url)
    envelope = Envelope()
    envelope.rcpt_tos = [FBL_ADDRESS]
    envelope.original_content = b"Subject: x\r\n\r\nbody\r\n"
    try:
        reply = await handler(BrokenRecorder(), redis).handle_DATA(
            None,  # type: ignore[arg-type]
            session(),
            envelope,
        )
    finally:
        await redis.aclose()
    assert reply == replies.TEMPORARY_FAILURE
    assert reply.startswith("451 4.3.0")


async def test_redis_outage_fails_open():
    # Nothing listens on port 1: every rate check fails to connect.
    redis = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    mx = handler(NullRecorder(), redis)
    try:
        assert await mx.admit_connection(("192.0.2.1", 40000)) is None
        envelope = Envelope()
        reply = await mx.handle_MAIL(
            None,  # type: ignore[arg-type]
            session(),
            envelope,
            "<>",
            [],
        )
    finally:
        await redis.aclose()
    assert reply == replies.SENDER_OK
    assert envelope.mail_from == "<>"


def test_clients_are_counted_by_address_or_ipv6_slash_64():
    assert client_key(("192.0.2.7", 25)) == "192.0.2.7"
    assert client_key(("2001:db8:1:2:aaaa::1", 25, 0, 0)) == "2001:db8:1:2::/64"
    assert client_key(("::ffff:192.0.2.7", 25, 0, 0)) == "192.0.2.7"
    assert client_key("unix-socket") == "unix-socket"
