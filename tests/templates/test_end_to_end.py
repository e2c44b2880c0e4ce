"""Configuration sets applied from the send to the destination MX, and templates sent."""

from __future__ import annotations

import asyncio
import json
import smtplib
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import trustme

from tests.submission.conftest import plain, start_smtp
from tests.support.api_server import create_account, start_api, verify_identity
from tests.support.pipeline import rows

SIMPLE = {
    "Source": "sender@example.com",
    "Destination": {"ToAddresses": ["user@dest.test"]},
    "Message": {"Subject": {"Data": "Hello"}, "Body": {"Text": {"Data": "Body"}}},
}
# Mail to a domain that routes nowhere: what a test does not deliver itself must
# not reach the sink of a later test (every test shares the database).
NOWHERE = {"ToAddresses": ["user@nowhere.test"]}


@pytest.fixture
def sender(delivery_settings, redis_client):
    server = start_api(delivery_settings)
    account, creds = create_account(server.settings, "cs-sender", production=True)
    verify_identity(server.settings, account.id, "example.com")
    yield (
        server,
        account,
        server.client(creds),
        server.client(creds, service="sesv2"),
        creds,
    )
    server.server.should_exit = True
    server.thread.join(10)


async def test_tls_require_never_delivers_in_clear(sender, smtp_sink, pipeline_factory):
    server, _, ses, _, _ = sender
    ses.create_configuration_set(ConfigurationSet={"Name": "secure"})
    ses.put_configuration_set_delivery_options(
        ConfigurationSetName="secure", DeliveryOptions={"TlsPolicy": "Require"}
    )
    assert smtp_sink.starttls is False
    mid = ses.send_email(ConfigurationSetName="secure", **SIMPLE)["MessageId"]
    plain_mid = ses.send_email(**SIMPLE)["MessageId"]
    pipeline = await pipeline_factory(server.settings)
    await pipeline.scheduler.dispatch()
    await pipeline.run_jobs()

    [(state, status, response)] = rows(
        server.settings,
        "select state, enhanced_status, response from recipients where message_id = %s",
        mid,
    )
    assert (state, status) == ("deferred", "4.7.4")
    assert "TLS is required" in response
    # The message without the set went in clear; the other one never did.
    received = smtp_sink.wait_for(1)
    assert len(received) == 1 and f"<{plain_mid}@".encode() in received[0].data
    assert received[0].tls is False

    smtp_sink.starttls = True
    deadline = time.monotonic() + 10
    state = "deferred"
    while state != "delivered" and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # until the retry is due
        await pipeline.drain()
        [(state,)] = rows(
            server.settings, "select state from recipients where message_id = %s", mid
        )
    assert state == "delivered"
    secure = [m for m in smtp_sink.messages if f"<{mid}@".encode() in m.data]
    assert len(secure) == 1 and secure[0].tls is True


async def test_configuration_set_suppressed_reasons_override_the_accounts(
    sender, smtp_sink, pipeline_factory
):
    server, account, ses, sesv2, _ = sender
    with psycopg.connect(server.settings.database_url, autocommit=True) as conn:
        conn.execute(
            "insert into suppressions (account_id, address, reason)"
            " values (%s, 'user@dest.test', 'COMPLAINT')",
            (account.id,),
        )
    sesv2.create_configuration_set(
        ConfigurationSetName="bounces-only",
        SuppressionOptions={"SuppressedReasons": ["BOUNCE"]},
    )
    suppressed = ses.send_email(**SIMPLE)["MessageId"]
    delivered = ses.send_email(ConfigurationSetName="bounces-only", **SIMPLE)[
        "MessageId"
    ]
    pipeline = await pipeline_factory(server.settings)
    await pipeline.drain()
    states = dict(
        rows(
            server.settings,
            "select message_id, state from recipients where message_id = any(%s)",
            [suppressed, delivered],
        )
    )
    assert states == {suppressed: "suppressed", delivered: "delivered"}
    assert len(smtp_sink.messages) == 1


async def test_max_delivery_seconds_bounds_retries(sender, smtp_sink, pipeline_factory):
    server, _, ses, sesv2, _ = sender
    sesv2.create_configuration_set(
        ConfigurationSetName="short", DeliveryOptions={"MaxDeliverySeconds": 300}
    )
    before = datetime.now(UTC)
    mid = ses.send_email(
        ConfigurationSetName="short", **{**SIMPLE, "Destination": NOWHERE}
    )["MessageId"]
    [(expires_at,)] = rows(
        server.settings, "select expires_at from recipients where message_id = %s", mid
    )
    assert before + timedelta(seconds=299) <= expires_at
    assert expires_at <= datetime.now(UTC) + timedelta(seconds=301)


async def test_templated_message_arrives_rendered(sender, smtp_sink, pipeline_factory):
    server, _, ses, _, _ = sender
    ses.create_template(
        Template={
            "TemplateName": "receipt",
            "SubjectPart": "Receipt for {{name}}",
            "TextPart": "{{#each lines}}{{this}};{{/each}}",
            "HtmlPart": "<p>{{name}}</p>",
        }
    )
    mid = ses.send_templated_email(
        Source="sender@example.com",
        Destination={"ToAddresses": ["user@dest.test"]},
        Template="receipt",
        TemplateData=json.dumps({"name": "R&D", "lines": ["a", "b"]}),
    )["MessageId"]
    pipeline = await pipeline_factory(server.settings)
    await pipeline.drain()
    [received] = [m for m in smtp_sink.messages if f"<{mid}@".encode() in m.data]
    assert b"Subject: Receipt for R&D" in received.data
    assert b"a;b;" in received.data
    assert b"<p>R&amp;D</p>" in received.data


def test_smtp_configuration_set_header(sender, smtp_ca_settings):
    server, account, ses, sesv2, creds = sender
    sesv2.create_configuration_set(
        ConfigurationSetName="smtp-set", DeliveryOptions={"MaxDeliverySeconds": 600}
    )
    smtp_server = start_smtp(smtp_ca_settings(server.settings))
    try:

        def submit(header: str) -> tuple[int, bytes]:
            smtp = smtplib.SMTP("127.0.0.1", smtp_server.port, timeout=10)
            try:
                smtp.ehlo("client.example")
                smtp.starttls(context=smtp_server.client_context)
                smtp.ehlo("client.example")
                assert plain(smtp, creds.smtp_username, creds.smtp_password)[0] == 235
                smtp.mail("sender@example.com")
                smtp.rcpt("user@nowhere.test")
                return smtp.data(
                    f"From: sender@example.com\r\nTo: user@nowhere.test\r\n"
                    f"Subject: s\r\n{header}\r\nbody\r\n".encode()
                )
            finally:
                smtp.quit()

        code, text = submit("X-SES-CONFIGURATION-SET: smtp-set\r\n")
        assert code == 250, text
        [(configuration_set, seconds)] = rows(
            server.settings,
            "select m.configuration_set,"
            " extract(epoch from r.expires_at - m.created_at)"
            " from messages m join recipients r on r.message_id = m.id"
            " where m.account_id = %s and m.interface = 'smtp'",
            account.id,
        )
        assert configuration_set == "smtp-set"
        assert 595 < seconds < 605

        code, text = submit("X-SES-CONFIGURATION-SET: missing\r\n")
        assert code == 554 and b"Configuration set <missing> does not exist" in text
        sesv2.put_configuration_set_sending_options(
            ConfigurationSetName="smtp-set", SendingEnabled=False
        )
        code, text = submit("X-SES-CONFIGURATION-SET: smtp-set\r\n")
        assert code == 554 and b"paused" in text
    finally:
        smtp_server.stop()


@pytest.fixture
def smtp_ca_settings(tmp_path):
    """Return a function giving settings for a submission server with a certificate."""
    ca = trustme.CA()

    def make(settings):
        cert = ca.issue_cert("localhost", "127.0.0.1")
        cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
        cert.private_key_pem.write_to_path(str(key_path))
        return settings.model_copy(
            update={
                "smtp_host": "127.0.0.1",
                "smtp_port": 0,
                "smtps_port": 0,
                "hostname": "localhost",
                "tls_cert": cert_path,
                "tls_key": key_path,
            }
        )

    return make
