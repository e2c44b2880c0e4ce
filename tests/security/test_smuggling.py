"""Outbound SMTP smuggling: hostile line endings arrive as one intact, signed message.

Content with bare LF, bare CR and an embedded "<LF>.<CR><LF>MAIL FROM:..." goes in
through the API (SendEmail, SendRawEmail) and SMTP submission. At the receiving
sink it must be exactly one transaction to the intended recipient, with no
stray CR or LF, no line over 998 octets, and a DKIM signature that verifies.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from typing import Any

import dkim
import dns.resolver
import pytest
import pytest_asyncio

from mta import identities
from tests.faults.harness import ADMIN_URL, fresh_database
from tests.security.conftest import Tenant, new_tenant, start_smtp
from tests.support.api_server import start_api

SMUGGLED = (
    "first line\n"
    "bare LF above, bare CR here\r"
    "and the classic:\n.\r\n"
    "MAIL FROM:<ceo@alice.example>\r\n"
    "RCPT TO:<victim@evil.test>\r\n"
    "DATA\r\n"
    "From: ceo@alice.example\r\nTo: victim@evil.test\r\nSubject: smuggled\r\n\r\n"
    "smuggled body\r\n"
    "\r\n.\n"
    "\n.\r"
    "\r\r\n.\r\r\n"
    "QUIT\r\n"
    "..leading dot\r\n"
    "last line"
)


@pytest.fixture(scope="module")
def own_database() -> Iterator[str]:
    """A database of this module's own: the pipeline drains every due row."""
    with fresh_database(ADMIN_URL) as url:
        yield url


@pytest.fixture
def smuggler(
    settings: Any,
    own_database: str,
    dns_server: Any,
    delivery_port: int,
    redis_client: Any,
) -> Iterator[Tenant]:
    """A tenant whose domain has Easy DKIM keys, on an API of its own."""
    dns_server.add("dest.test", "MX", "10 mx1.dest.test.")
    dns_server.add("mx1.dest.test", "A", "127.0.0.2")
    mta_settings = settings.model_copy(
        update={
            "database_url": own_database,
            "dns_nameservers": dns_server.nameservers,
            "delivery_port": delivery_port,
            "dns_timeout_seconds": 1.0,
        }
    )
    server = start_api(mta_settings)
    tenant = new_tenant(server, "smuggler", "alice.example")
    tenant.ses.verify_domain_dkim(Domain="alice.example")
    yield tenant
    server.server.should_exit = True
    server.thread.join(10)


@pytest_asyncio.fixture
async def signing_sender(
    smuggler: Tenant, dns_server: Any, pipeline_factory: Any
) -> AsyncIterator[tuple[Tenant, Any]]:
    """The tenant with its DKIM records published, and a pipeline to deliver."""
    pipeline = await pipeline_factory(smuggler.server.settings)
    async with pipeline.runtime.pool.connection() as conn:
        identity = await identities.get_identity(conn, smuggler.id, "alice.example")
        assert identity is not None
        for record in await identities.dns_records(conn, identity):
            dns_server.add(record.name, record.type, record.value)
    await pipeline.scheduler.recheck_identities()
    yield smuggler, pipeline


def verify_dkim(data: bytes, dns_server: Any) -> bool:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns_server.host]
        resolver.port = dns_server.port
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(rdata.strings) for rdata in answer)

    return bool(dkim.verify(data, dnsfunc=dnsfunc))


def assert_one_clean_signed_message(sink: Any, dns_server: Any, rcpt: str) -> bytes:
    [received] = sink.messages
    assert received.rcpt_tos == [rcpt]
    data = received.data
    assert b"\r" not in data.replace(b"\r\n", b""), "stray CR on the wire"
    assert b"\n" not in data.replace(b"\r\n", b""), "stray LF on the wire"
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert data.startswith(b"DKIM-Signature:")
    assert verify_dkim(data, dns_server)
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\r\nsubject: smuggled" not in head
    assert all(b"victim@evil.test" not in r.encode() for r in received.rcpt_tos)
    return data


async def test_send_email_body_cannot_smuggle_a_second_message(
    signing_sender, smtp_sink, dns_server
):
    tenant, pipeline = signing_sender
    tenant.ses.send_email(
        Source="sender@alice.example",
        Destination={"ToAddresses": ["user@dest.test"]},
        Message={
            "Subject": {"Data": "Quarterly report"},
            "Body": {"Text": {"Data": SMUGGLED}, "Html": {"Data": SMUGGLED}},
        },
    )
    await pipeline.drain()
    assert_one_clean_signed_message(smtp_sink, dns_server, "user@dest.test")


async def test_send_raw_email_body_cannot_smuggle_a_second_message(
    signing_sender, smtp_sink, dns_server
):
    tenant, pipeline = signing_sender
    raw = (
        b"From: sender@alice.example\r\nTo: user@dest.test\r\n"
        b"Subject: Quarterly report\r\n\r\n" + SMUGGLED.encode() + b"\r\n"
    )
    tenant.ses.send_raw_email(RawMessage={"Data": raw})
    await pipeline.drain()
    data = assert_one_clean_signed_message(smtp_sink, dns_server, "user@dest.test")
    # The lone "." is content, sent dot-stuffed and restored by the receiver.
    assert b"\r\n.\r\nMAIL FROM:<ceo@alice.example>\r\n" in data


async def test_smtp_submission_cannot_smuggle_a_second_message(
    signing_sender, smtp_sink, dns_server
):
    tenant, pipeline = signing_sender
    server = start_smtp(tenant.server.settings)
    try:
        client = server.raw()
        assert client.command("EHLO client.example").startswith("250")
        token = base64.b64encode(
            f"\0{tenant.creds.smtp_username}\0{tenant.creds.smtp_password}".encode()
        ).decode()
        assert client.command(f"AUTH PLAIN {token}").startswith("235")
        assert client.command("MAIL FROM:<sender@alice.example>").startswith("250")
        assert client.command("RCPT TO:<user@dest.test>").startswith("250")
        assert client.command("DATA").startswith("354")
        client.send(
            b"From: sender@alice.example\r\nTo: user@dest.test\r\n"
            b"Subject: Quarterly report\r\n\r\n" + SMUGGLED.encode() + b"\r\n.\r\n"
        )
        final = client.read()
        # Whatever was smuggled is content: no second transaction is answered.
        assert final.startswith("250"), final
        assert client.command("NOOP").startswith("250")
        client.close()
    finally:
        server.stop()
    await pipeline.drain()
    assert_one_clean_signed_message(smtp_sink, dns_server, "user@dest.test")
