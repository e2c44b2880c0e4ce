"""A message submitted over SMTP is delivered to a sink, DKIM-signed, as stored."""

from __future__ import annotations

import re
from typing import Any

import dkim
import dns.resolver
import pytest

from mta import identities
from tests.submission.conftest import start_smtp
from tests.support.api_server import create_account, verify_identity


@pytest.fixture
def e2e(smtp_settings: Any, dns_server: Any, delivery_port: int) -> tuple[Any, ...]:
    dns_server.add("dest.test", "MX", "10 mx1.dest.test.")
    dns_server.add("mx1.dest.test", "A", "127.0.0.2")
    settings = smtp_settings.model_copy(
        update={
            "dns_nameservers": dns_server.nameservers,
            "delivery_port": delivery_port,
            "dns_timeout_seconds": 1.0,
        }
    )
    account, creds = create_account(settings, "e2e", production=True)
    verify_identity(settings, account.id, "example.com")
    return settings, account, creds


async def test_smtp_submission_is_delivered_signed(
    e2e: tuple[Any, ...], dns_server: Any, smtp_sink: Any, pipeline_factory: Any
) -> None:
    settings, account, creds = e2e
    pipeline = await pipeline_factory(settings)
    async with pipeline.runtime.pool.connection() as conn:
        identity = await identities.get_identity(conn, account.id, "example.com")
        assert identity is not None
        await identities.enable_easy_dkim(conn, pipeline.runtime.box, identity)
        identity = await identities.get_identity(conn, account.id, "example.com")
        assert identity is not None
        for record in await identities.dns_records(conn, identity):
            dns_server.add(record.name, record.type, record.value)
    await pipeline.scheduler.recheck_identities()

    server = start_smtp(settings)
    try:
        smtp = server.starttls(login=creds)
        smtp.mail("app@example.com")
        smtp.rcpt("user@dest.test")
        code, text = smtp.data(
            b"From: App <app@example.com>\r\nTo: user@dest.test\r\nSubject: e2e\r\n"
            b"Message-ID: <mine@client.example>\r\n"
            b"X-SES-MESSAGE-TAGS: kind=e2e\r\n\r\n"
            b"bare LF line\nthen a line\r\n"
        )
        smtp.quit()
    finally:
        server.stop()
    assert code == 250
    match = re.fullmatch(r"2\.0\.0 Ok (\S+)", text.decode())
    assert match
    message_id = match.group(1)

    await pipeline.drain()
    [received] = smtp_sink.messages
    assert received.rcpt_tos == ["user@dest.test"]
    data = received.data
    assert data.startswith(b"DKIM-Signature:")
    assert f"Message-ID: <{message_id}@localhost>".encode() in data
    assert b"mine@client.example" not in data
    assert b"x-ses-" not in data.lower()
    assert b"\n" not in data.replace(b"\r\n", b"")

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns_server.host]
        resolver.port = dns_server.port
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(rdata.strings) for rdata in answer)

    assert dkim.verify(data, dnsfunc=dnsfunc)
