"""SESv2 email templates and configuration sets, driven by boto3's ``sesv2`` client."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from botocore.exceptions import ClientError

from tests.api.v2.conftest import signed_request
from tests.support.api_server import create_account, verify_identity

CONTENT = {
    "Subject": "Order {{order.id}}",
    "Text": "{{#each order.items}}{{@index}}. {{name}}\n{{/each}}",
    "Html": "<b>{{customer}}</b>",
}


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, str, int]:
    err = excinfo.value.response
    return (
        err["Error"]["Code"],
        err["Error"]["Message"],
        err["ResponseMetadata"]["HTTPStatusCode"],
    )


def rows(settings, sql: str, *params):
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def tenant(api_server):
    account, creds = create_account(api_server.settings, "v2", production=True)
    verify_identity(api_server.settings, account.id, "example.com")
    return account, api_server.client(creds, service="sesv2")


def test_email_template_lifecycle(tenant):
    _, ses = tenant
    ses.create_email_template(TemplateName="order", TemplateContent=CONTENT)
    got = ses.get_email_template(TemplateName="order")
    assert got["TemplateName"] == "order"
    assert got["TemplateContent"] == CONTENT
    assert got["Tags"] == []

    with pytest.raises(ses.exceptions.AlreadyExistsException):
        ses.create_email_template(TemplateName="order", TemplateContent=CONTENT)

    ses.update_email_template(TemplateName="order", TemplateContent={"Text": "new"})
    assert ses.get_email_template(TemplateName="order")["TemplateContent"] == {
        "Text": "new"
    }

    ses.delete_email_template(TemplateName="order")
    with pytest.raises(ses.exceptions.NotFoundException) as excinfo:
        ses.get_email_template(TemplateName="order")
    assert error_of(excinfo) == (
        "NotFoundException",
        "Template order does not exist.",
        404,
    )
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.update_email_template(TemplateName="order", TemplateContent={"Text": "x"})
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.delete_email_template(TemplateName="order")


def test_invalid_templates_are_bad_requests(tenant):
    _, ses = tenant
    with pytest.raises(ses.exceptions.BadRequestException) as excinfo:
        ses.create_email_template(
            TemplateName="bad", TemplateContent={"Html": "{{#with a b}}{{/with}}"}
        )
    assert error_of(excinfo)[1] == "Template contains unsupported operations."
    with pytest.raises(ses.exceptions.BadRequestException):
        ses.create_email_template(
            TemplateName="bad", TemplateContent={"Html": "{{/if}}"}
        )


def test_list_email_templates_pages(tenant):
    _, ses = tenant
    for name in ("c", "a", "b"):
        ses.create_email_template(TemplateName=name, TemplateContent={"Text": "x"})
    first = ses.list_email_templates(PageSize=2)
    assert [t["TemplateName"] for t in first["TemplatesMetadata"]] == ["a", "b"]
    created = first["TemplatesMetadata"][0]["CreatedTimestamp"]
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=1)
    rest = ses.list_email_templates(PageSize=2, NextToken=first["NextToken"])
    assert [t["TemplateName"] for t in rest["TemplatesMetadata"]] == ["c"]
    assert "NextToken" not in rest


def test_test_render_email_template(tenant):
    _, ses = tenant
    ses.create_email_template(TemplateName="order", TemplateContent=CONTENT)
    data = {"order": {"id": 7, "items": [{"name": "pen"}, {"name": "ink"}]}}
    rendered = ses.test_render_email_template(
        TemplateName="order", TemplateData=json.dumps({**data, "customer": "A&B"})
    )["RenderedTemplate"]
    assert "Subject: Order 7\r\n" in rendered
    assert "0. pen\r\n1. ink\r\n" in rendered
    assert "<b>A&amp;B</b>" in rendered

    with pytest.raises(ses.exceptions.BadRequestException) as excinfo:
        ses.test_render_email_template(TemplateName="order", TemplateData="{}")
    assert error_of(excinfo)[1] == (
        "Attribute 'order.id' is not present in the rendering data."
    )
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.test_render_email_template(TemplateName="none", TemplateData="{}")


def test_configuration_set_lifecycle(tenant):
    _, ses = tenant
    ses.create_configuration_set(
        ConfigurationSetName="cs",
        DeliveryOptions={"TlsPolicy": "REQUIRE", "MaxDeliverySeconds": 600},
        SendingOptions={"SendingEnabled": True},
        SuppressionOptions={"SuppressedReasons": ["COMPLAINT"]},
        TrackingOptions={"CustomRedirectDomain": "t.example.com"},
        Tags=[{"Key": "team", "Value": "mail"}],
    )
    got = ses.get_configuration_set(ConfigurationSetName="cs")
    assert got["ConfigurationSetName"] == "cs"
    assert got["DeliveryOptions"] == {"TlsPolicy": "REQUIRE", "MaxDeliverySeconds": 600}
    assert got["SendingOptions"] == {"SendingEnabled": True}
    assert got["SuppressionOptions"] == {"SuppressedReasons": ["COMPLAINT"]}
    assert got["TrackingOptions"] == {"CustomRedirectDomain": "t.example.com"}
    assert got["ReputationOptions"] == {"ReputationMetricsEnabled": False}
    assert got["Tags"] == [{"Key": "team", "Value": "mail"}]

    with pytest.raises(ses.exceptions.AlreadyExistsException):
        ses.create_configuration_set(ConfigurationSetName="cs")
    ses.create_configuration_set(ConfigurationSetName="another")
    assert ses.list_configuration_sets()["ConfigurationSets"] == ["another", "cs"]
    page = ses.list_configuration_sets(PageSize=1)
    assert page["ConfigurationSets"] == ["another"]
    page = ses.list_configuration_sets(PageSize=1, NextToken=page["NextToken"])
    assert page["ConfigurationSets"] == ["cs"]

    ses.put_configuration_set_delivery_options(
        ConfigurationSetName="cs", TlsPolicy="OPTIONAL"
    )
    ses.put_configuration_set_sending_options(
        ConfigurationSetName="cs", SendingEnabled=False
    )
    ses.put_configuration_set_suppression_options(
        ConfigurationSetName="cs", SuppressedReasons=[]
    )
    ses.put_configuration_set_reputation_options(
        ConfigurationSetName="cs", ReputationMetricsEnabled=True
    )
    got = ses.get_configuration_set(ConfigurationSetName="cs")
    assert got["DeliveryOptions"] == {"TlsPolicy": "OPTIONAL"}
    assert got["SendingOptions"] == {"SendingEnabled": False}
    assert got["SuppressionOptions"] == {"SuppressedReasons": []}
    assert got["ReputationOptions"] == {"ReputationMetricsEnabled": True}

    ses.delete_configuration_set(ConfigurationSetName="cs")
    with pytest.raises(ses.exceptions.NotFoundException) as excinfo:
        ses.get_configuration_set(ConfigurationSetName="cs")
    assert error_of(excinfo)[2] == 404
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.delete_configuration_set(ConfigurationSetName="cs")
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.put_configuration_set_sending_options(
            ConfigurationSetName="cs", SendingEnabled=True
        )


def test_out_of_range_options_are_bad_requests(api_server):
    """boto3 checks ranges itself, so these go through raw signed requests."""
    _, creds = create_account(api_server.settings, "raw", production=True)

    def call(method, path, body=None):
        return signed_request(api_server, creds, method, path, body)

    assert (
        call("POST", "/v2/email/configuration-sets", {"ConfigurationSetName": "cs"})[0]
        == 200
    )
    status, headers, body = call(
        "PUT",
        "/v2/email/configuration-sets/cs/delivery-options",
        {"MaxDeliverySeconds": 60},
    )
    assert (status, headers["x-amzn-errortype"]) == (400, "BadRequestException")
    status, headers, _ = call(
        "POST", "/v2/email/configuration-sets", {"ConfigurationSetName": "not valid!"}
    )
    assert (status, headers["x-amzn-errortype"]) == (400, "BadRequestException")
    # The route of botocore releases before 1.43.105 lists too.
    status, _, body = call("GET", "/v2/email/configuration-sets?PageSize=5")
    assert (status, body["ConfigurationSets"]) == (200, ["cs"])


def test_event_destinations(api_server, tenant):
    account, ses = tenant
    ses.create_configuration_set(ConfigurationSetName="cs")
    ses.create_configuration_set_event_destination(
        ConfigurationSetName="cs",
        EventDestinationName="sns-hook",
        EventDestination={
            "Enabled": True,
            "MatchingEventTypes": ["SEND", "DELIVERY", "RENDERING_FAILURE"],
            "SnsDestination": {"TopicArn": "https://hooks.example.com/sns"},
        },
    )
    ses.create_configuration_set_event_destination(
        ConfigurationSetName="cs",
        EventDestinationName="bus-hook",
        EventDestination={
            "MatchingEventTypes": ["BOUNCE", "DELIVERY_DELAY"],
            "EventBridgeDestination": {"EventBusArn": "http://127.0.0.1:9/bus"},
        },
    )
    found = ses.get_configuration_set_event_destinations(ConfigurationSetName="cs")
    assert found["EventDestinations"] == [
        {
            "Name": "bus-hook",
            "Enabled": False,
            "MatchingEventTypes": ["BOUNCE", "DELIVERY_DELAY"],
            "EventBridgeDestination": {"EventBusArn": "http://127.0.0.1:9/bus"},
        },
        {
            "Name": "sns-hook",
            "Enabled": True,
            "MatchingEventTypes": ["SEND", "DELIVERY", "RENDERING_FAILURE"],
            "SnsDestination": {"TopicArn": "https://hooks.example.com/sns"},
        },
    ]
    assert sorted(
        rows(
            api_server.settings,
            "select name, matching_event_types, envelope from event_destinations"
            " where account_id = %s",
            account.id,
        )
    ) == [
        ("bus-hook", ["bounce", "delivery_delay"], "none"),
        ("sns-hook", ["send", "delivery", "rendering_failure"], "sns"),
    ]

    with pytest.raises(ses.exceptions.AlreadyExistsException):
        ses.create_configuration_set_event_destination(
            ConfigurationSetName="cs",
            EventDestinationName="sns-hook",
            EventDestination={
                "MatchingEventTypes": ["SEND"],
                "SnsDestination": {"TopicArn": "https://x.example.com/"},
            },
        )
    for bad in (
        {"SnsDestination": {"TopicArn": "arn:aws:sns:us-east-1:123:t"}},
        {"CloudWatchDestination": {"DimensionConfigurations": []}},
        {},
    ):
        with pytest.raises(ses.exceptions.BadRequestException):
            ses.create_configuration_set_event_destination(
                ConfigurationSetName="cs",
                EventDestinationName="bad",
                EventDestination={"MatchingEventTypes": ["SEND"], **bad},
            )

    ses.update_configuration_set_event_destination(
        ConfigurationSetName="cs",
        EventDestinationName="bus-hook",
        EventDestination={
            "Enabled": True,
            "MatchingEventTypes": ["COMPLAINT"],
            "SnsDestination": {"TopicArn": "https://hooks.example.com/c"},
        },
    )
    found = ses.get_configuration_set_event_destinations(ConfigurationSetName="cs")
    assert found["EventDestinations"][0] == {
        "Name": "bus-hook",
        "Enabled": True,
        "MatchingEventTypes": ["COMPLAINT"],
        "SnsDestination": {"TopicArn": "https://hooks.example.com/c"},
    }
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.update_configuration_set_event_destination(
            ConfigurationSetName="cs",
            EventDestinationName="missing",
            EventDestination={
                "MatchingEventTypes": ["SEND"],
                "SnsDestination": {"TopicArn": "https://x.example.com/"},
            },
        )
    ses.delete_configuration_set_event_destination(
        ConfigurationSetName="cs", EventDestinationName="bus-hook"
    )
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.delete_configuration_set_event_destination(
            ConfigurationSetName="cs", EventDestinationName="bus-hook"
        )
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.get_configuration_set_event_destinations(ConfigurationSetName="nope")


def test_v2_send_applies_the_configuration_set(api_server, tenant):
    account, ses = tenant
    send = {
        "FromEmailAddress": "sender@example.com",
        "Destination": {"ToAddresses": ["a@example.net"]},
        "Content": {
            "Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "t"}}}
        },
    }
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.send_email(ConfigurationSetName="cs", **send)

    ses.create_configuration_set(
        ConfigurationSetName="cs", DeliveryOptions={"MaxDeliverySeconds": 900}
    )
    before = datetime.now(UTC)
    mid = ses.send_email(ConfigurationSetName="cs", **send)["MessageId"]
    [(expires_at,)] = rows(
        api_server.settings,
        "select expires_at from recipients where message_id = %s",
        mid,
    )
    assert before + timedelta(seconds=890) < expires_at
    assert expires_at < datetime.now(UTC) + timedelta(seconds=910)

    ses.put_configuration_set_sending_options(
        ConfigurationSetName="cs", SendingEnabled=False
    )
    with pytest.raises(ses.exceptions.SendingPausedException):
        ses.send_email(ConfigurationSetName="cs", **send)


def test_nul_characters_are_refused_not_stored(api_server):
    """PostgreSQL stores no NUL; such names are unknown and such values invalid."""
    _, creds = create_account(api_server.settings, "nul", production=True)

    def call(method, path, body=None):
        status, headers, _ = signed_request(api_server, creds, method, path, body)
        return status, headers.get("x-amzn-errortype")

    assert call("GET", "/v2/email/templates/a%00b") == (404, "NotFoundException")
    assert call("DELETE", "/v2/email/templates/a%00b") == (404, "NotFoundException")
    assert call(
        "POST",
        "/v2/email/templates",
        {"TemplateName": "t", "TemplateContent": {"Text": "a\x00b"}},
    ) == (400, "BadRequestException")
    assert call("GET", "/v2/email/configuration-sets/a%00b") == (
        404,
        "NotFoundException",
    )
    assert call(
        "DELETE", "/v2/email/configuration-sets/a%00b/event-destinations/x%00y"
    ) == (404, "NotFoundException")
    assert call(
        "POST",
        "/v2/email/configuration-sets",
        {"ConfigurationSetName": "cs", "Tags": [{"Key": "k", "Value": "\x00"}]},
    ) == (400, "BadRequestException")
    assert call(
        "POST",
        "/v2/email/configuration-sets/a%00b/event-destinations",
        {
            "EventDestinationName": "d",
            "EventDestination": {
                "MatchingEventTypes": ["SEND"],
                "SnsDestination": {"TopicArn": "https://h.example.com/\x00"},
            },
        },
    ) == (400, "BadRequestException")
