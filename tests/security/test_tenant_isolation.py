"""One tenant cannot read or change another's data through any API action (BOLA).

Bob owns identities (with DKIM keys and a pending token), a configuration set
with an event destination, a template, a suppression and a notification topic,
and has sent mail. Alice then calls every SES v1 action and every SESv2 route
with Bob's names. Each answer must be "not found" (or act on Alice's own
namespace), no answer may carry Bob's data, and Bob's rows, all of them, must be
exactly as before. New actions or routes fail the completeness check until a
probe is added here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from botocore.exceptions import ClientError

from api import v1
from tests.security.conftest import Tenant
from tests.support.api_server import verify_identity

BOB_SUBJECT = "Bob's private subject 7f3a"
BOB_TOPIC = "https://hooks.bob.example/private-7f3a"
BOB_SUPPRESSED = "bob-suppressed@dest.test"
BOB_EMAIL = "owner@bob.example"
BOB_PENDING = "pending.bob.example"
SET, DEST, TEMPLATE = "bob-set", "bob-destination", "bob-template"
BOB_NAMES = ["bob.example", BOB_EMAIL, BOB_PENDING, BOB_SUPPRESSED, SET, TEMPLATE]
BODY = {"Subject": {"Data": "Hi"}, "Body": {"Text": {"Data": "Hello"}}}


@dataclass
class BobsWorld:
    markers: list[str]  # strings that only Bob's data contains


def bobs_world(bob: Tenant) -> BobsWorld:
    verify_identity(bob.server.settings, bob.id, BOB_EMAIL)
    ses, sesv2 = bob.ses, bob.sesv2
    dkim = ses.verify_domain_dkim(Domain="bob.example")["DkimTokens"]
    token = ses.verify_domain_identity(Domain=BOB_PENDING)["VerificationToken"]
    ses.create_configuration_set(ConfigurationSet={"Name": SET})
    ses.create_configuration_set_event_destination(
        ConfigurationSetName=SET,
        EventDestination={
            "Name": DEST,
            "Enabled": True,
            "MatchingEventTypes": ["bounce"],
            "SNSDestination": {"TopicARN": BOB_TOPIC},
        },
    )
    ses.create_template(
        Template={
            "TemplateName": TEMPLATE,
            "SubjectPart": BOB_SUBJECT,
            "TextPart": "Hello {{name}}",
        }
    )
    ses.set_identity_notification_topic(
        Identity="bob.example", NotificationType="Bounce", SnsTopic=BOB_TOPIC
    )
    sesv2.put_suppressed_destination(EmailAddress=BOB_SUPPRESSED, Reason="BOUNCE")
    ses.send_email(
        Source=BOB_EMAIL, Destination={"ToAddresses": ["a@dest.test"]}, Message=BODY
    )
    # Names Alice herself sends (Bob's address, set, template) come back in her
    # own "not found" answers, so only values she cannot know are markers.
    return BobsWorld([*dkim, token, BOB_SUBJECT, BOB_TOPIC])


def snapshot(settings: Any, account_id: str) -> dict[str, list[Any]]:
    """Every row of every table that belongs to the account, as text."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "select table_name from information_schema.columns"
                " where table_schema = 'public' and column_name = 'account_id'"
                " order by 1"
            )
        ]
        found: dict[str, list[Any]] = {}
        for table in tables:
            found[table] = [
                repr(r)
                for r in conn.execute(
                    f'select * from "{table}" where account_id = %s order by 1',
                    (account_id,),
                )
            ]
        found["accounts"] = [
            repr(r)
            for r in conn.execute("select * from accounts where id = %s", (account_id,))
        ]
        for table in ("dkim_keys", "verification_tokens"):
            found[table] = [
                repr(r)
                for r in conn.execute(
                    f"select t.* from {table} t join identities i"
                    " on i.id = t.identity_id where i.account_id = %s order by 1",
                    (account_id,),
                )
            ]
    return found


def call(client: Any, operation: str, **params: Any) -> tuple[str, str]:
    """Call a boto3 operation; return (error code or "ok", the answer as text)."""
    try:
        answer = getattr(client, operation)(**params)
    except ClientError as exc:
        return exc.response["Error"]["Code"], json.dumps(exc.response, default=str)
    answer.pop("ResponseMetadata", None)
    return "ok", json.dumps(answer, default=str)


NOT_FOUND = "not found"  # an error code naming a missing resource
ERROR = "error"  # any refusal
OK = "ok"
ANY = "any"  # success or refusal, as long as nothing of Bob's is touched or shown

# (v1 action, boto3 parameters, expectation). Reads come first, then writes to
# Bob's names, then creations in Alice's own namespace (which may reuse them).
V1_PROBES: list[tuple[str, dict[str, Any], str]] = [
    (
        "GetIdentityVerificationAttributes",
        {"Identities": ["bob.example", BOB_PENDING, BOB_EMAIL]},
        OK,
    ),
    ("GetIdentityDkimAttributes", {"Identities": ["bob.example", BOB_PENDING]}, OK),
    ("GetIdentityNotificationAttributes", {"Identities": ["bob.example"]}, OK),
    ("ListIdentities", {}, OK),
    ("ListVerifiedEmailAddresses", {}, OK),
    ("ListConfigurationSets", {}, OK),
    (
        "DescribeConfigurationSet",
        {
            "ConfigurationSetName": SET,
            "ConfigurationSetAttributeNames": ["eventDestinations", "deliveryOptions"],
        },
        NOT_FOUND,
    ),
    ("ListTemplates", {}, OK),
    ("GetTemplate", {"TemplateName": TEMPLATE}, NOT_FOUND),
    ("TestRenderTemplate", {"TemplateName": TEMPLATE, "TemplateData": "{}"}, NOT_FOUND),
    ("GetSendQuota", {}, OK),
    ("GetSendStatistics", {}, OK),
    ("GetAccountSendingEnabled", {}, OK),
    (
        "SendEmail",
        {
            "Source": BOB_EMAIL,
            "Destination": {"ToAddresses": ["a@dest.test"]},
            "Message": BODY,
        },
        ERROR,
    ),
    (
        "SendEmail",
        {
            "Source": "sender@alice.example",
            "Destination": {"ToAddresses": ["a@dest.test"]},
            "Message": BODY,
            "ConfigurationSetName": SET,
        },
        NOT_FOUND,
    ),
    (
        "SendRawEmail",
        {
            "RawMessage": {
                "Data": f"From: {BOB_EMAIL}\r\nTo: a@dest.test\r\nSubject: s\r\n\r\nb\r\n".encode()
            }
        },
        ERROR,
    ),
    (
        "SendTemplatedEmail",
        {
            "Source": "sender@alice.example",
            "Destination": {"ToAddresses": ["a@dest.test"]},
            "Template": TEMPLATE,
            "TemplateData": "{}",
        },
        NOT_FOUND,
    ),
    (
        "SendBulkTemplatedEmail",
        {
            "Source": "sender@alice.example",
            "Template": TEMPLATE,
            "DefaultTemplateData": "{}",
            "Destinations": [{"Destination": {"ToAddresses": ["a@dest.test"]}}],
        },
        NOT_FOUND,
    ),
    (
        "UpdateTemplate",
        {"Template": {"TemplateName": TEMPLATE, "SubjectPart": "x", "TextPart": "x"}},
        NOT_FOUND,
    ),
    ("DeleteTemplate", {"TemplateName": TEMPLATE}, ANY),
    (
        "PutConfigurationSetDeliveryOptions",
        {"ConfigurationSetName": SET, "DeliveryOptions": {"TlsPolicy": "Require"}},
        NOT_FOUND,
    ),
    (
        "UpdateConfigurationSetSendingEnabled",
        {"ConfigurationSetName": SET, "Enabled": False},
        NOT_FOUND,
    ),
    (
        "CreateConfigurationSetEventDestination",
        {
            "ConfigurationSetName": SET,
            "EventDestination": {
                "Name": "alice-dest",
                "Enabled": True,
                "MatchingEventTypes": ["send"],
                "SNSDestination": {"TopicARN": "https://hooks.alice.example/a"},
            },
        },
        NOT_FOUND,
    ),
    (
        "UpdateConfigurationSetEventDestination",
        {
            "ConfigurationSetName": SET,
            "EventDestination": {
                "Name": DEST,
                "Enabled": False,
                "MatchingEventTypes": ["send"],
                "SNSDestination": {"TopicARN": "https://hooks.alice.example/a"},
            },
        },
        NOT_FOUND,
    ),
    (
        "DeleteConfigurationSetEventDestination",
        {"ConfigurationSetName": SET, "EventDestinationName": DEST},
        NOT_FOUND,
    ),
    ("DeleteConfigurationSet", {"ConfigurationSetName": SET}, NOT_FOUND),
    (
        "SetIdentityNotificationTopic",
        {
            "Identity": "bob.example",
            "NotificationType": "Bounce",
            "SnsTopic": "https://hooks.alice.example/a",
        },
        ERROR,
    ),
    ("DeleteIdentity", {"Identity": "bob.example"}, ANY),
    ("DeleteIdentity", {"Identity": BOB_PENDING}, ANY),
    ("DeleteVerifiedEmailAddress", {"EmailAddress": BOB_EMAIL}, ANY),
    ("UpdateAccountSendingEnabled", {"Enabled": False}, OK),
    ("UpdateAccountSendingEnabled", {"Enabled": True}, OK),
    ("CreateConfigurationSet", {"ConfigurationSet": {"Name": SET}}, OK),
    (
        "CreateTemplate",
        {
            "Template": {
                "TemplateName": TEMPLATE,
                "SubjectPart": "mine",
                "TextPart": "mine",
            }
        },
        OK,
    ),
    ("VerifyDomainIdentity", {"Domain": "bob.example"}, OK),
    ("VerifyDomainDkim", {"Domain": "bob.example"}, OK),
    ("VerifyEmailIdentity", {"EmailAddress": BOB_EMAIL}, OK),
    ("VerifyEmailAddress", {"EmailAddress": BOB_EMAIL}, OK),
]


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def check(expectation: str, outcome: str, where: str) -> None:
    if expectation == OK:
        assert outcome == "ok", where
    elif expectation == ERROR:
        assert outcome != "ok", where
    elif expectation == NOT_FOUND:
        assert outcome != "ok" and ("NotExist" in outcome or "NotFound" in outcome), (
            where
        )


def test_every_v1_action_is_probed():
    probed = {action for action, _, _ in V1_PROBES}
    assert set(v1.ACTIONS) - probed == set(), "add a cross-account probe"


def test_no_v1_action_reaches_another_tenants_data(alice, bob):
    world = bobs_world(bob)
    before = snapshot(bob.server.settings, bob.id)
    failures = []
    for action, params, expectation in V1_PROBES:
        outcome, text = call(alice.ses, _snake(action), **params)
        where = f"{action}: {outcome} {text[:300]}"
        try:
            check(expectation, outcome, where)
        except AssertionError:
            failures.append(where)
        leaked = [m for m in world.markers if m in text]
        if action.startswith("List"):  # Alice has not made these names yet
            leaked += [n for n in BOB_NAMES if n in text]
        if leaked:
            failures.append(f"{action} showed Bob's {leaked}")
    assert failures == [], "\n".join(failures)
    assert snapshot(bob.server.settings, bob.id) == before


def test_alice_sees_only_her_own_quota_and_sends(alice, bob):
    bobs_world(bob)
    assert alice.ses.get_send_quota()["SentLast24Hours"] == 0.0
    assert bob.ses.get_send_quota()["SentLast24Hours"] == 1.0
    assert alice.sesv2.get_account()["SendQuota"]["SentLast24Hours"] == 0.0


# -- SESv2 ----------------------------------------------------------------------------


def v2_routes() -> set[str]:
    """The operation name of every route the v2 router serves."""
    from api.v2 import router

    names: set[str] = set()

    def walk(node: Any) -> None:
        for route in node.routes:
            if hasattr(route, "methods"):
                names.add(route.name)
            elif hasattr(route, "original_router"):
                walk(route.original_router)
            elif hasattr(route, "routes"):
                walk(route)

    walk(router)
    return names


RAW_FROM_BOB = f"From: {BOB_EMAIL}\r\nTo: a@dest.test\r\nSubject: s\r\n\r\nb\r\n"

V2_PROBES: list[tuple[str, dict[str, Any], str]] = [
    ("GetEmailIdentity", {"EmailIdentity": "bob.example"}, NOT_FOUND),
    ("GetEmailIdentity", {"EmailIdentity": BOB_PENDING}, NOT_FOUND),
    ("GetEmailIdentity", {"EmailIdentity": BOB_EMAIL}, NOT_FOUND),
    ("ListEmailIdentities", {}, OK),
    ("ListConfigurationSets", {}, OK),
    ("GetConfigurationSet", {"ConfigurationSetName": SET}, NOT_FOUND),
    ("GetConfigurationSetEventDestinations", {"ConfigurationSetName": SET}, NOT_FOUND),
    ("GetSuppressedDestination", {"EmailAddress": BOB_SUPPRESSED}, NOT_FOUND),
    ("ListSuppressedDestinations", {}, OK),
    ("GetAccount", {}, OK),
    ("ListEmailTemplates", {}, OK),
    ("GetEmailTemplate", {"TemplateName": TEMPLATE}, NOT_FOUND),
    (
        "TestRenderEmailTemplate",
        {"TemplateName": TEMPLATE, "TemplateData": "{}"},
        NOT_FOUND,
    ),
    (
        "BatchGetMetricData",
        {
            "Queries": [
                {
                    "Id": "q1",
                    "Namespace": "VDM",
                    "Metric": "SEND",
                    "StartDate": "2020-01-01",
                    "EndDate": "2030-01-01",
                }
            ]
        },
        ANY,
    ),
    (
        "SendEmail",
        {
            "FromEmailAddress": BOB_EMAIL,
            "Destination": {"ToAddresses": ["a@dest.test"]},
            "Content": {"Simple": BODY},
        },
        ERROR,
    ),
    (
        "SendEmail",
        {
            "Destination": {"ToAddresses": ["a@dest.test"]},
            "Content": {"Raw": {"Data": RAW_FROM_BOB.encode()}},
        },
        ERROR,
    ),
    (
        "SendEmail",
        {
            "FromEmailAddress": "sender@alice.example",
            "Destination": {"ToAddresses": ["a@dest.test"]},
            "Content": {"Template": {"TemplateName": TEMPLATE, "TemplateData": "{}"}},
        },
        NOT_FOUND,
    ),
    (
        "SendBulkEmail",
        {
            "FromEmailAddress": "sender@alice.example",
            "DefaultContent": {
                "Template": {"TemplateName": TEMPLATE, "TemplateData": "{}"}
            },
            "BulkEmailEntries": [{"Destination": {"ToAddresses": ["a@dest.test"]}}],
        },
        NOT_FOUND,
    ),
    (
        "UpdateEmailTemplate",
        {"TemplateName": TEMPLATE, "TemplateContent": {"Subject": "x", "Text": "x"}},
        NOT_FOUND,
    ),
    ("DeleteEmailTemplate", {"TemplateName": TEMPLATE}, NOT_FOUND),
    # SES's own answer here is "Domain ... is not verified for DKIM signing."
    (
        "PutEmailIdentityDkimAttributes",
        {"EmailIdentity": "bob.example", "SigningEnabled": False},
        ERROR,
    ),
    (
        "PutEmailIdentityDkimSigningAttributes",
        {"EmailIdentity": "bob.example", "SigningAttributesOrigin": "AWS_SES"},
        NOT_FOUND,
    ),
    (
        "PutEmailIdentityMailFromAttributes",
        {"EmailIdentity": "bob.example", "MailFromDomain": "mail.bob.example"},
        NOT_FOUND,
    ),
    (
        "PutConfigurationSetDeliveryOptions",
        {"ConfigurationSetName": SET, "TlsPolicy": "REQUIRE"},
        NOT_FOUND,
    ),
    (
        "PutConfigurationSetReputationOptions",
        {"ConfigurationSetName": SET, "ReputationMetricsEnabled": True},
        NOT_FOUND,
    ),
    (
        "PutConfigurationSetSendingOptions",
        {"ConfigurationSetName": SET, "SendingEnabled": False},
        NOT_FOUND,
    ),
    (
        "PutConfigurationSetSuppressionOptions",
        {"ConfigurationSetName": SET, "SuppressedReasons": []},
        NOT_FOUND,
    ),
    (
        "CreateConfigurationSetEventDestination",
        {
            "ConfigurationSetName": SET,
            "EventDestinationName": "alice-dest",
            "EventDestination": {
                "Enabled": True,
                "MatchingEventTypes": ["SEND"],
                "SnsDestination": {"TopicArn": "https://hooks.alice.example/a"},
            },
        },
        NOT_FOUND,
    ),
    (
        "UpdateConfigurationSetEventDestination",
        {
            "ConfigurationSetName": SET,
            "EventDestinationName": DEST,
            "EventDestination": {
                "Enabled": False,
                "MatchingEventTypes": ["SEND"],
                "SnsDestination": {"TopicArn": "https://hooks.alice.example/a"},
            },
        },
        NOT_FOUND,
    ),
    (
        "DeleteConfigurationSetEventDestination",
        {"ConfigurationSetName": SET, "EventDestinationName": DEST},
        NOT_FOUND,
    ),
    ("DeleteConfigurationSet", {"ConfigurationSetName": SET}, NOT_FOUND),
    ("DeleteSuppressedDestination", {"EmailAddress": BOB_SUPPRESSED}, NOT_FOUND),
    ("DeleteEmailIdentity", {"EmailIdentity": "bob.example"}, NOT_FOUND),
    ("DeleteEmailIdentity", {"EmailIdentity": BOB_EMAIL}, NOT_FOUND),
    (
        "PutAccountDetails",
        {
            "MailType": "TRANSACTIONAL",
            "WebsiteURL": "https://alice.example",
            "UseCaseDescription": "alice's mail",
        },
        ANY,
    ),
    ("PutAccountSendingAttributes", {"SendingEnabled": True}, OK),
    ("PutAccountSuppressionAttributes", {"SuppressedReasons": ["COMPLAINT"]}, OK),
    (
        "PutSuppressedDestination",
        {"EmailAddress": BOB_SUPPRESSED, "Reason": "COMPLAINT"},
        OK,
    ),
    (
        "CreateEmailTemplate",
        {
            "TemplateName": TEMPLATE,
            "TemplateContent": {"Subject": "mine", "Text": "mine"},
        },
        OK,
    ),
    ("CreateConfigurationSet", {"ConfigurationSetName": SET}, OK),
    ("CreateEmailIdentity", {"EmailIdentity": "bob.example"}, OK),
    ("CreateEmailIdentity", {"EmailIdentity": BOB_EMAIL}, OK),
]


# Routes that are a second spelling of an operation probed under its own name.
V2_ALIASES = {
    "ListConfigurationSetsByGet": "ListConfigurationSets",
    # The catch-all that answers UnknownOperationException: no resource, no data.
    "UnknownOperation": "ListEmailIdentities",
}


def test_every_v2_route_is_probed():
    probed = {operation for operation, _, _ in V2_PROBES}
    routes = {V2_ALIASES.get(name, name) for name in v2_routes()}
    assert routes - probed == set(), "add a cross-account probe"


def test_no_v2_route_reaches_another_tenants_data(alice, bob):
    world = bobs_world(bob)
    before = snapshot(bob.server.settings, bob.id)
    failures = []
    for operation, params, expectation in V2_PROBES:
        outcome, text = call(alice.sesv2, _snake(operation), **params)
        where = f"{operation}: {outcome} {text[:300]}"
        try:
            check(expectation, outcome, where)
        except AssertionError:
            failures.append(where)
        leaked = [m for m in world.markers if m in text]
        if operation.startswith("List"):  # Alice has not made these names yet
            leaked += [n for n in BOB_NAMES if n in text]
        if leaked:
            failures.append(f"{operation} showed Bob's {leaked}")
    assert failures == [], "\n".join(failures)
    assert snapshot(bob.server.settings, bob.id) == before


def test_v2_names_are_matched_exactly_not_by_prefix_or_case(alice, bob):
    bobs_world(bob)
    for name in ("BOB.EXAMPLE", "bob.example.", "Bob.Example", "%62ob.example"):
        outcome, _ = call(alice.sesv2, "get_email_identity", EmailIdentity=name)
        assert outcome != "ok", name
    encoded = base64.b64encode(b"bob.example").decode()
    outcome, _ = call(alice.sesv2, "get_email_identity", EmailIdentity=encoded)
    assert outcome != "ok"


Probe = Callable[..., tuple[str, str]]


@pytest.mark.parametrize("service", ["ses", "sesv2"])
def test_a_deleted_tenants_key_stops_working(api, service):
    from tests.security.conftest import new_tenant, rows

    carol = new_tenant(api, "carol", "carol.example")
    client = carol.ses if service == "ses" else carol.sesv2
    operation = "get_send_quota" if service == "ses" else "get_account"
    assert call(client, operation)[0] == "ok"
    rows(api.settings, "delete from accounts where id = %s returning id", carol.id)
    # The API caches keys for a minute (CREDENTIAL_CACHE_SECONDS); the account
    # itself is looked up per request, so the deleted account is refused now.
    outcome, _ = call(client, operation)
    assert outcome != "ok"
