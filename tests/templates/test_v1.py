"""SES v1 templates, templated sends, configuration sets and identity notifications."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import psycopg
import pytest
from botocore.exceptions import ClientError

from tests.support.api_server import create_account, verify_identity

WELCOME = {
    "TemplateName": "welcome",
    "SubjectPart": "Hello {{name}}",
    "TextPart": "Hi {{name}}, you have {{items.length}} items.",
    "HtmlPart": "<p>Hi {{name}}</p>{{#each items}}<li>{{this}}</li>{{/each}}",
}


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    err = excinfo.value.response["Error"]
    return err["Code"], err["Message"]


def rows(settings, sql: str, *params):
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def sender(api_server):
    account, creds = create_account(api_server.settings, "templates", production=True)
    verify_identity(api_server.settings, account.id, "example.com")
    return account, api_server.client(creds)


def test_template_lifecycle(sender):
    _, ses = sender
    ses.create_template(Template=WELCOME)
    got = ses.get_template(TemplateName="welcome")["Template"]
    assert got == WELCOME

    with pytest.raises(ClientError) as excinfo:
        ses.create_template(Template=WELCOME)
    assert excinfo.value.response["Error"]["Code"] == "AlreadyExists"
    assert isinstance(excinfo.value, ses.exceptions.AlreadyExistsException)

    ses.update_template(Template={"TemplateName": "welcome", "SubjectPart": "Yo"})
    assert ses.get_template(TemplateName="welcome")["Template"] == {
        "TemplateName": "welcome",
        "SubjectPart": "Yo",
    }

    ses.delete_template(TemplateName="welcome")
    with pytest.raises(ses.exceptions.TemplateDoesNotExistException):
        ses.get_template(TemplateName="welcome")
    with pytest.raises(ses.exceptions.TemplateDoesNotExistException):
        ses.update_template(Template=WELCOME)
    ses.delete_template(TemplateName="welcome")  # SES: no error for a missing one


def test_invalid_templates_are_refused_at_creation(sender):
    _, ses = sender
    with pytest.raises(ses.exceptions.InvalidTemplateException) as excinfo:
        ses.create_template(
            Template={"TemplateName": "bad", "HtmlPart": "{{#if x}}never closed"}
        )
    assert "never closed" in error_of(excinfo)[1]
    with pytest.raises(ses.exceptions.InvalidTemplateException) as excinfo:
        ses.create_template(Template={"TemplateName": "bad", "TextPart": "{{up x}}"})
    assert error_of(excinfo)[1] == "Template contains unsupported operations."
    with pytest.raises(ClientError) as excinfo:
        ses.create_template(Template={"TemplateName": "bad name!", "TextPart": "x"})
    assert error_of(excinfo)[0] == "InvalidParameterValue"


def test_list_templates_pages(sender):
    _, ses = sender
    for i in range(5):
        ses.create_template(Template={"TemplateName": f"t{i}", "TextPart": "x"})
    first = ses.list_templates(MaxItems=3)
    assert [t["Name"] for t in first["TemplatesMetadata"]] == ["t0", "t1", "t2"]
    assert isinstance(first["TemplatesMetadata"][0]["CreatedTimestamp"], datetime)
    rest = ses.list_templates(MaxItems=3, NextToken=first["NextToken"])
    assert [t["Name"] for t in rest["TemplatesMetadata"]] == ["t3", "t4"]
    assert "NextToken" not in rest


def test_templates_belong_to_their_account(api_server, sender):
    _, ses = sender
    ses.create_template(Template=WELCOME)
    _, creds = create_account(api_server.settings, "neighbour")
    other = api_server.client(creds)
    with pytest.raises(other.exceptions.TemplateDoesNotExistException):
        other.get_template(TemplateName="welcome")


def test_test_render_template(sender):
    _, ses = sender
    ses.create_template(Template=WELCOME)
    rendered = ses.test_render_template(
        TemplateName="welcome",
        TemplateData=json.dumps({"name": "<Ann>", "items": ["a&b", "c"]}),
    )["RenderedTemplate"]
    assert "Subject: Hello <Ann>" in rendered
    assert "Hi <Ann>, you have 2 items." in rendered
    assert "<p>Hi &lt;Ann&gt;</p><li>a&amp;b</li><li>c</li>" in rendered
    assert "From:" not in rendered and rendered.startswith("Date: ")

    with pytest.raises(ses.exceptions.MissingRenderingAttributeException) as excinfo:
        ses.test_render_template(TemplateName="welcome", TemplateData="{}")
    assert error_of(excinfo)[1] == (
        "Attribute 'name' is not present in the rendering data."
    )
    with pytest.raises(ses.exceptions.InvalidRenderingParameterException):
        ses.test_render_template(TemplateName="welcome", TemplateData="{nope")
    with pytest.raises(ses.exceptions.TemplateDoesNotExistException):
        ses.test_render_template(TemplateName="nope", TemplateData="{}")


def test_send_templated_email_renders_and_accepts(api_server, sender):
    account, ses = sender
    ses.create_template(Template=WELCOME)
    mid = ses.send_templated_email(
        Source="Sender <sender@example.com>",
        Destination={"ToAddresses": ["a@example.net"], "BccAddresses": ["b@ex.org"]},
        Template="welcome",
        TemplateData=json.dumps({"name": "Zoë", "items": ["x"]}),
        Tags=[{"Name": "campaign", "Value": "spring"}],
    )["MessageId"]
    [(raw, subject, count, tags)] = rows(
        api_server.settings,
        "select raw, subject, recipient_count, tags from messages where id = %s",
        mid,
    )
    assert count == 2 and tags == {"campaign": "spring"}
    assert subject == "Hello Zoë"
    assert b"Subject: =?UTF-8?" in bytes(raw)
    assert rows(
        api_server.settings,
        "select event_type from events where message_id = %s",
        mid,
    ) == [("send",)]


def test_send_templated_email_with_missing_attribute_records_a_rendering_failure(
    api_server, sender
):
    account, ses = sender
    ses.create_template(Template=WELCOME)
    mid = ses.send_templated_email(
        Source="sender@example.com",
        Destination={"ToAddresses": ["a@example.net"]},
        Template="welcome",
        TemplateData="{}",
    )["MessageId"]
    assert rows(
        api_server.settings,
        "select count(*) from recipients where message_id = %s",
        mid,
    ) == [(0,)]
    [(kind, detail)] = rows(
        api_server.settings,
        "select event_type, detail from events where message_id = %s",
        mid,
    )
    assert kind == "rendering_failure"
    assert detail["templateName"] == "welcome"
    assert detail["errorMessage"] == (
        "Attribute 'name' is not present in the rendering data."
    )


def test_send_templated_email_errors(sender):
    _, ses = sender
    send = {
        "Source": "sender@example.com",
        "Destination": {"ToAddresses": ["a@example.net"]},
        "TemplateData": "{}",
    }
    with pytest.raises(ses.exceptions.TemplateDoesNotExistException):
        ses.send_templated_email(Template="nope", **send)
    ses.create_template(Template=WELCOME)
    with pytest.raises(ses.exceptions.ConfigurationSetDoesNotExistException):
        ses.send_templated_email(Template="welcome", ConfigurationSetName="x", **send)
    with pytest.raises(ClientError) as excinfo:
        ses.send_templated_email(
            Template="welcome", **{**send, "Source": "who@unverified.test"}
        )
    assert error_of(excinfo)[0] == "MessageRejected"


def test_send_bulk_templated_email_reports_each_destination(api_server):
    account, creds = create_account(api_server.settings, "bulk")  # sandbox
    verify_identity(api_server.settings, account.id, "example.com")
    ses = api_server.client(creds)
    ses.create_template(Template=WELCOME)
    result = ses.send_bulk_templated_email(
        Source="sender@example.com",
        Template="welcome",
        DefaultTemplateData=json.dumps({"name": "friend", "items": []}),
        DefaultTags=[{"Name": "batch", "Value": "b1"}],
        Destinations=[
            {
                "Destination": {"ToAddresses": ["one@example.com"]},
                "ReplacementTemplateData": json.dumps({"name": "One"}),
                "ReplacementTags": [{"Name": "who", "Value": "one"}],
            },
            {"Destination": {"ToAddresses": ["stranger@example.net"]}},
            {
                "Destination": {"ToAddresses": ["two@example.com"]},
                "ReplacementTemplateData": json.dumps({"name": {"x": 1}}),
            },
        ],
    )["Status"]
    assert [s["Status"] for s in result] == ["Success", "MessageRejected", "Success"]
    assert "not verified" in result[1]["Error"]
    first, _, third = result
    [(subject, tags)] = rows(
        api_server.settings,
        "select subject, tags from messages where id = %s",
        first["MessageId"],
    )
    assert subject == "Hello One" and tags == {"batch": "b1", "who": "one"}
    assert rows(
        api_server.settings,
        "select event_type from events where message_id = %s",
        third["MessageId"],
    ) == [("send",)]


def test_bulk_rendering_failure_is_success_with_an_event(api_server, sender):
    account, ses = sender
    ses.create_template(
        Template={"TemplateName": "t", "SubjectPart": "{{greeting}} {{name}}"}
    )
    result = ses.send_bulk_templated_email(
        Source="sender@example.com",
        Template="t",
        DefaultTemplateData=json.dumps({"greeting": "Hi"}),
        Destinations=[
            {"Destination": {"ToAddresses": ["a@example.net"]}},
            {
                "Destination": {"ToAddresses": ["b@example.net"]},
                "ReplacementTemplateData": json.dumps({"name": "B"}),
            },
        ],
    )["Status"]
    assert [s["Status"] for s in result] == ["Success", "Success"]
    kinds = {
        r["MessageId"]: rows(
            api_server.settings,
            "select event_type from events where message_id = %s",
            r["MessageId"],
        )
        for r in result
    }
    assert kinds[result[0]["MessageId"]] == [("rendering_failure",)]
    assert kinds[result[1]["MessageId"]] == [("send",)]


# -- configuration sets -------------------------------------------------------


def test_configuration_set_lifecycle(sender):
    _, ses = sender
    ses.create_configuration_set(ConfigurationSet={"Name": "cs1"})
    with pytest.raises(ses.exceptions.ConfigurationSetAlreadyExistsException):
        ses.create_configuration_set(ConfigurationSet={"Name": "cs1"})
    ses.create_configuration_set(ConfigurationSet={"Name": "cs0"})
    assert [c["Name"] for c in ses.list_configuration_sets()["ConfigurationSets"]] == [
        "cs0",
        "cs1",
    ]
    page = ses.list_configuration_sets(MaxItems=1)
    assert [c["Name"] for c in page["ConfigurationSets"]] == ["cs0"]
    page = ses.list_configuration_sets(MaxItems=1, NextToken=page["NextToken"])
    assert [c["Name"] for c in page["ConfigurationSets"]] == ["cs1"]

    ses.put_configuration_set_delivery_options(
        ConfigurationSetName="cs1", DeliveryOptions={"TlsPolicy": "Require"}
    )
    ses.update_configuration_set_sending_enabled(
        ConfigurationSetName="cs1", Enabled=False
    )
    ses.create_configuration_set_event_destination(
        ConfigurationSetName="cs1",
        EventDestination={
            "Name": "hook",
            "Enabled": True,
            "MatchingEventTypes": ["send", "bounce", "renderingFailure"],
            "SNSDestination": {"TopicARN": "https://hooks.example.com/ses"},
        },
    )
    described = ses.describe_configuration_set(
        ConfigurationSetName="cs1",
        ConfigurationSetAttributeNames=[
            "eventDestinations",
            "deliveryOptions",
            "reputationOptions",
        ],
    )
    assert described["ConfigurationSet"] == {"Name": "cs1"}
    assert described["DeliveryOptions"] == {"TlsPolicy": "Require"}
    assert described["ReputationOptions"]["SendingEnabled"] is False
    assert described["EventDestinations"] == [
        {
            "Name": "hook",
            "Enabled": True,
            "MatchingEventTypes": ["send", "bounce", "renderingFailure"],
            "SNSDestination": {"TopicARN": "https://hooks.example.com/ses"},
        }
    ]

    ses.delete_configuration_set(ConfigurationSetName="cs1")
    with pytest.raises(ses.exceptions.ConfigurationSetDoesNotExistException):
        ses.describe_configuration_set(ConfigurationSetName="cs1")
    with pytest.raises(ses.exceptions.ConfigurationSetDoesNotExistException):
        ses.delete_configuration_set(ConfigurationSetName="cs1")


def test_event_destination_errors(sender):
    _, ses = sender
    ses.create_configuration_set(ConfigurationSet={"Name": "cs"})
    hook = {
        "Name": "hook",
        "MatchingEventTypes": ["delivery"],
        "SNSDestination": {"TopicARN": "http://127.0.0.1:9/hook"},
    }
    ses.create_configuration_set_event_destination(
        ConfigurationSetName="cs", EventDestination=hook
    )
    with pytest.raises(ses.exceptions.EventDestinationAlreadyExistsException):
        ses.create_configuration_set_event_destination(
            ConfigurationSetName="cs", EventDestination=hook
        )
    with pytest.raises(ses.exceptions.ConfigurationSetDoesNotExistException):
        ses.create_configuration_set_event_destination(
            ConfigurationSetName="nope", EventDestination=hook
        )
    with pytest.raises(ses.exceptions.InvalidSNSDestinationException):
        ses.create_configuration_set_event_destination(
            ConfigurationSetName="cs",
            EventDestination={
                **hook,
                "Name": "sns",
                "SNSDestination": {"TopicARN": "arn:aws:sns:us-east-1:1:topic"},
            },
        )
    with pytest.raises(ses.exceptions.InvalidCloudWatchDestinationException):
        ses.create_configuration_set_event_destination(
            ConfigurationSetName="cs",
            EventDestination={
                "Name": "cw",
                "MatchingEventTypes": ["send"],
                "CloudWatchDestination": {
                    "DimensionConfigurations": [
                        {
                            "DimensionName": "d",
                            "DimensionValueSource": "messageTag",
                            "DefaultDimensionValue": "v",
                        }
                    ]
                },
            },
        )
    ses.update_configuration_set_event_destination(
        ConfigurationSetName="cs",
        EventDestination={**hook, "MatchingEventTypes": ["send", "complaint"]},
    )
    with pytest.raises(ses.exceptions.EventDestinationDoesNotExistException):
        ses.update_configuration_set_event_destination(
            ConfigurationSetName="cs", EventDestination={**hook, "Name": "other"}
        )
    ses.delete_configuration_set_event_destination(
        ConfigurationSetName="cs", EventDestinationName="hook"
    )
    with pytest.raises(ses.exceptions.EventDestinationDoesNotExistException):
        ses.delete_configuration_set_event_destination(
            ConfigurationSetName="cs", EventDestinationName="hook"
        )


def test_sends_honour_the_configuration_set(api_server, sender):
    account, ses = sender
    send = {
        "Source": "sender@example.com",
        "Destination": {"ToAddresses": ["a@example.net"]},
        "Message": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "t"}}},
    }
    with pytest.raises(ses.exceptions.ConfigurationSetDoesNotExistException) as excinfo:
        ses.send_email(ConfigurationSetName="cs", **send)
    assert error_of(excinfo)[1] == "Configuration set <cs> does not exist."

    ses.create_configuration_set(ConfigurationSet={"Name": "cs"})
    ses.create_configuration_set_event_destination(
        ConfigurationSetName="cs",
        EventDestination={
            "Name": "hook",
            "Enabled": True,
            "MatchingEventTypes": ["send"],
            "SNSDestination": {"TopicARN": "https://hooks.example.com/ses"},
        },
    )
    mid = ses.send_email(ConfigurationSetName="cs", **send)["MessageId"]
    [(configuration_set,)] = rows(
        api_server.settings,
        "select configuration_set from messages where id = %s",
        mid,
    )
    assert configuration_set == "cs"
    # The trigger fanned the send event out to the destination's outbox.
    assert rows(
        api_server.settings,
        "select d.name, w.state from webhook_deliveries w"
        " join events e on e.id = w.event_id"
        " join event_destinations d on d.id = w.destination_id"
        " where e.message_id = %s",
        mid,
    ) == [("hook", "pending")]
    # A send without the set does not reach the set's destination.
    plain = ses.send_email(**send)["MessageId"]
    assert rows(
        api_server.settings,
        "select count(*) from webhook_deliveries w join events e on e.id = w.event_id"
        " where e.message_id = %s",
        plain,
    ) == [(0,)]

    ses.update_configuration_set_sending_enabled(
        ConfigurationSetName="cs", Enabled=False
    )
    with pytest.raises(ses.exceptions.ConfigurationSetSendingPausedException):
        ses.send_email(ConfigurationSetName="cs", **send)
    raw = b"X-SES-CONFIGURATION-SET: cs\r\nFrom: sender@example.com\r\nTo: a@example.net\r\n\r\nx\r\n"
    with pytest.raises(ses.exceptions.ConfigurationSetSendingPausedException):
        ses.send_raw_email(RawMessage={"Data": raw})


def test_rendering_failure_reaches_the_configuration_sets_destination(
    api_server, sender
):
    _, ses = sender
    ses.create_template(Template=WELCOME)
    ses.create_configuration_set(ConfigurationSet={"Name": "cs"})
    ses.create_configuration_set_event_destination(
        ConfigurationSetName="cs",
        EventDestination={
            "Name": "failures",
            "Enabled": True,
            "MatchingEventTypes": ["renderingFailure"],
            "SNSDestination": {"TopicARN": "https://hooks.example.com/f"},
        },
    )
    mid = ses.send_templated_email(
        Source="sender@example.com",
        Destination={"ToAddresses": ["a@example.net"]},
        Template="welcome",
        TemplateData="{}",
        ConfigurationSetName="cs",
    )["MessageId"]
    assert rows(
        api_server.settings,
        "select e.event_type from webhook_deliveries w"
        " join events e on e.id = w.event_id where e.message_id = %s",
        mid,
    ) == [("rendering_failure",)]


# -- identity notifications ---------------------------------------------------


def test_identity_notification_topics(api_server, sender):
    account, ses = sender
    ses.set_identity_notification_topic(
        Identity="example.com",
        NotificationType="Bounce",
        SnsTopic="https://hooks.example.com/bounces",
    )
    ses.set_identity_notification_topic(
        Identity="example.com",
        NotificationType="Delivery",
        SnsTopic="https://hooks.example.com/deliveries",
    )
    attrs = ses.get_identity_notification_attributes(
        Identities=["example.com", "unknown.example"]
    )["NotificationAttributes"]
    assert list(attrs) == ["example.com"]
    assert attrs["example.com"]["BounceTopic"] == "https://hooks.example.com/bounces"
    assert attrs["example.com"]["DeliveryTopic"] == (
        "https://hooks.example.com/deliveries"
    )
    assert "ComplaintTopic" not in attrs["example.com"]
    assert attrs["example.com"]["ForwardingEnabled"] is True
    [(types, cs, envelope)] = rows(
        api_server.settings,
        "select matching_event_types, configuration_set, envelope"
        " from event_destinations where account_id = %s and url like %s",
        account.id,
        "%bounces",
    )
    assert (types, cs, envelope) == (["bounce"], None, "sns")

    ses.set_identity_notification_topic(
        Identity="example.com", NotificationType="Bounce"
    )
    attrs = ses.get_identity_notification_attributes(Identities=["example.com"])
    assert "BounceTopic" not in attrs["NotificationAttributes"]["example.com"]

    with pytest.raises(ClientError) as excinfo:
        ses.set_identity_notification_topic(
            Identity="example.com",
            NotificationType="Complaint",
            SnsTopic="arn:aws:sns:us-east-1:123456789012:topic",
        )
    assert error_of(excinfo)[0] == "InvalidSnsTopic"


def test_created_timestamps_are_recent(sender):
    _, ses = sender
    ses.create_template(Template=WELCOME)
    [meta] = ses.list_templates()["TemplatesMetadata"]
    assert abs((datetime.now(UTC) - meta["CreatedTimestamp"]).total_seconds()) < 60
