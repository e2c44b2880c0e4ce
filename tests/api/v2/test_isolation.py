"""No account can see or change another account's objects through any v2 route."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.api.v2.conftest import Tenant
from tests.support.api_server import verify_identity

SIMPLE = {"Simple": {"Subject": {"Data": "Hi"}, "Body": {"Text": {"Data": "Hello"}}}}


@pytest.fixture
def owner(api_server, production) -> Tenant:
    """An account with a domain, an address, a suppression, a template, a set."""
    settings = api_server.settings
    client = production.client
    client.create_email_identity(EmailIdentity="owned.example")
    verify_identity(settings, production.id, "owned.example")
    client.create_email_identity(EmailIdentity="me+1@owned.example")
    client.put_suppressed_destination(EmailAddress="s@example.net", Reason="BOUNCE")
    client.put_account_details(MailType="MARKETING", WebsiteURL="https://owned.example")
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(
            "insert into email_templates (account_id, name, subject, text_part)"
            " values (%s, 'mine', 's', 't')",
            (production.id,),
        )
        conn.execute(
            "insert into configuration_sets (account_id, name) values (%s, 'mine')",
            (production.id,),
        )
    return production


def test_identities_are_private(owner, other):
    client = other.client
    for name in ("owned.example", "me+1@owned.example"):
        with pytest.raises(client.exceptions.NotFoundException):
            client.get_email_identity(EmailIdentity=name)
        with pytest.raises(client.exceptions.NotFoundException):
            client.delete_email_identity(EmailIdentity=name)
        with pytest.raises(client.exceptions.NotFoundException):
            client.put_email_identity_mail_from_attributes(
                EmailIdentity=name, MailFromDomain="m.owned.example"
            )
        with pytest.raises(client.exceptions.NotFoundException):
            client.put_email_identity_dkim_signing_attributes(
                EmailIdentity=name, SigningAttributesOrigin="AWS_SES"
            )
        with pytest.raises(client.exceptions.BadRequestException):
            client.put_email_identity_dkim_attributes(
                EmailIdentity=name, SigningEnabled=False
            )
    status, _, _ = other.request(
        "PUT",
        "/v1/email/identities/owned.example/dkim/signing",
        {"SigningAttributesOrigin": "AWS_SES"},
    )
    assert status == 404
    assert client.list_email_identities()["EmailIdentities"] == []
    status, _, body = other.request("GET", "/v2/email/identities")
    assert status == 200 and body["EmailIdentities"] == []

    # The names are per account: the other account may create its own.
    assert client.create_email_identity(EmailIdentity="owned.example")
    client.delete_email_identity(EmailIdentity="owned.example")

    got = owner.client.get_email_identity(EmailIdentity="owned.example")
    assert got["DkimAttributes"]["SigningEnabled"] is True
    assert got["DkimAttributes"]["SigningAttributesOrigin"] == "AWS_SES"
    assert "MailFromDomain" not in got["MailFromAttributes"]
    assert owner.client.get_email_identity(EmailIdentity="me+1@owned.example")


def test_suppression_list_is_private(owner, other):
    client = other.client
    with pytest.raises(client.exceptions.NotFoundException):
        client.get_suppressed_destination(EmailAddress="s@example.net")
    with pytest.raises(client.exceptions.NotFoundException):
        client.delete_suppressed_destination(EmailAddress="s@example.net")
    assert client.list_suppressed_destinations()["SuppressedDestinationSummaries"] == []
    client.put_suppressed_destination(EmailAddress="s@example.net", Reason="COMPLAINT")
    got = owner.client.get_suppressed_destination(EmailAddress="s@example.net")
    assert got["SuppressedDestination"]["Reason"] == "BOUNCE"


def test_account_settings_are_private(owner, other):
    client = other.client
    assert "Details" not in client.get_account()
    client.put_account_sending_attributes(SendingEnabled=False)
    client.put_account_suppression_attributes(SuppressedReasons=[])
    client.put_account_details(MailType="TRANSACTIONAL", WebsiteURL="https://o.example")
    account = owner.client.get_account()
    assert account["SendingEnabled"] is True
    assert account["SuppressionAttributes"]["SuppressedReasons"] == [
        "BOUNCE",
        "COMPLAINT",
    ]
    assert account["Details"]["WebsiteURL"] == "https://owned.example"


def test_sending_uses_only_own_identities_templates_and_sets(owner, other):
    client = other.client
    with pytest.raises(client.exceptions.MessageRejected):
        client.send_email(
            FromEmailAddress="me@owned.example",
            Destination={"ToAddresses": ["a@example.net"]},
            Content=SIMPLE,
        )
    verify_identity(other.server.settings, other.id, "theirs.example")
    with pytest.raises(client.exceptions.NotFoundException):
        client.send_email(
            FromEmailAddress="me@theirs.example",
            Destination={"ToAddresses": ["a@example.net"]},
            Content={"Template": {"TemplateName": "mine", "TemplateData": "{}"}},
        )
    with pytest.raises(client.exceptions.NotFoundException):
        client.send_email(
            FromEmailAddress="me@theirs.example",
            Destination={"ToAddresses": ["a@example.net"]},
            Content=SIMPLE,
            ConfigurationSetName="mine",
        )
    with pytest.raises(client.exceptions.NotFoundException):
        client.send_bulk_email(
            FromEmailAddress="me@theirs.example",
            DefaultContent={"Template": {"TemplateName": "mine", "TemplateData": "{}"}},
            BulkEmailEntries=[{"Destination": {"ToAddresses": ["a@example.net"]}}],
        )


def test_metrics_are_private(api_server, owner, other):
    day = datetime(2026, 2, 1, tzinfo=UTC)
    with psycopg.connect(api_server.settings.database_url, autocommit=True) as conn:
        message_id = f"m-{uuid.uuid4()}"
        conn.execute(
            "insert into messages (id, account_id, source, from_domain, raw,"
            " recipient_count, interface) values (%s, %s, 'me@owned.example',"
            " 'owned.example', 'x', 1, 'api')",
            (message_id, owner.id),
        )
        conn.execute(
            "insert into events (account_id, message_id, event_type, created_at)"
            " values (%s, %s, 'delivery', %s)",
            (owner.id, message_id, day + timedelta(hours=1)),
        )
    queries = [
        {
            "Id": "q",
            "Namespace": "VDM",
            "Metric": "DELIVERY",
            "StartDate": day,
            "EndDate": day + timedelta(days=1),
        }
    ]
    mine = owner.client.batch_get_metric_data(Queries=queries)
    theirs = other.client.batch_get_metric_data(Queries=queries)
    assert mine["Results"][0]["Values"] == [1]
    assert theirs["Results"][0]["Values"] == [0]
