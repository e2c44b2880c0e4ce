"""A message sent through the API, delivered, bounced later, and then suppressed."""

from __future__ import annotations

import asyncio

import pytest

from tests.inbound.conftest import DOMAIN, MxThread, corpus, query
from tests.support.api_server import create_account, start_api, verify_identity

SEND = {
    "Source": "Shop <shop@example.com>",
    "Destination": {"ToAddresses": ["user@dest.test"]},
    "Message": {"Subject": {"Data": "Order"}, "Body": {"Text": {"Data": "Shipped"}}},
}


@pytest.fixture
def stack(mx_settings, dns_server, delivery_port, redis_client):
    dns_server.add("dest.test", "MX", "10 mx1.dest.test.")
    dns_server.add("mx1.dest.test", "A", "127.0.0.2")
    settings = mx_settings.model_copy(
        update={
            "dns_nameservers": dns_server.nameservers,
            "delivery_port": delivery_port,
            "dns_timeout_seconds": 1.0,
        }
    )
    api = start_api(settings)
    mx = MxThread(settings).start()
    account, creds = create_account(api.settings, "shop", production=True)
    verify_identity(api.settings, account.id, "example.com")
    yield api.settings, mx, api.client(creds)
    mx.stop()
    api.server.should_exit = True
    api.thread.join(10)


async def test_async_bounce_after_delivery_suppresses_the_next_send(
    stack, smtp_sink, pipeline_factory
):
    settings, mx, ses = stack
    first = ses.send_email(**SEND)["MessageId"]
    pipeline = await pipeline_factory(settings)
    await pipeline.drain()
    [received] = smtp_sink.messages
    token = received.mail_from
    assert token.endswith("@" + DOMAIN)
    assert query(
        settings, "select state from recipients where message_id = %s", first
    ) == [("delivered",)]

    # The receiving MTA took the message, then found no such mailbox.
    code, _ = await asyncio.to_thread(
        mx.send, corpus("postfix_user_unknown.eml", token), token
    )

    assert code == 250
    assert query(
        settings, "select state from recipients where message_id = %s", first
    ) == [("bounced",)]
    kinds = query(
        settings,
        "select event_type, bounce_subtype from events where message_id = %s"
        " order by id",
        first,
    )
    assert kinds == [("send", None), ("delivery", None), ("bounce", "NoEmail")]
    assert query(
        settings,
        "select reason, message_id from suppressions where address = %s"
        " and message_id = %s",
        "user@dest.test",
        first,
    ) == [("BOUNCE", first)]

    second = ses.send_email(**SEND)["MessageId"]
    await pipeline.drain()
    assert query(
        settings, "select state from recipients where message_id = %s", second
    ) == [("suppressed",)]
    assert len(smtp_sink.messages) == 1
