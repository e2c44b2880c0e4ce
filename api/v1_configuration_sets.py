"""SES v1 configuration set, event destination and identity notification actions.

Sesame publishes events to HTTP(S) webhooks: an SNSDestination whose TopicARN
is an http:// or https:// URL receives them there, wrapped as SNS
Notifications. Other destinations (CloudWatch, Firehose, real SNS ARNs) are
refused. SetIdentityNotificationTopic takes such a URL as its SnsTopic.
"""

from __future__ import annotations

from api import v1, xml
from api.errors import ApiError, invalid, missing
from api.query import Params
from mta import configuration_sets, identities
from mta.configuration_sets import ConfigurationSetError, EventDestination

# SES v1 ListConfigurationSets: Sesame's page size when the caller gives none.
MAX_CONFIGURATION_SET_PAGE = 1000

# v1 spellings of event types, and the events.event_type each stands for.
EVENT_TYPES = {
    "send": "send",
    "reject": "reject",
    "bounce": "bounce",
    "complaint": "complaint",
    "delivery": "delivery",
    "open": "open",
    "click": "click",
    "renderingFailure": "rendering_failure",
    "deliveryDelay": "delivery_delay",
    "subscription": "subscription",
}
_V1_EVENT_TYPES = {stored: written for written, stored in EVENT_TYPES.items()}
_TLS = {"Require": "require", "Optional": "optional"}
_ATTRIBUTES = (
    "eventDestinations",
    "trackingOptions",
    "deliveryOptions",
    "reputationOptions",
)


# -- configuration sets -------------------------------------------------------


async def create_configuration_set(call: v1.Call) -> str | None:
    name = call.params.require("ConfigurationSet.Name")
    async with call.runtime.pool.connection() as conn:
        await configuration_sets.create(conn, call.account.id, name)
    return ""


async def describe_configuration_set(call: v1.Call) -> str | None:
    p = call.params
    name = p.require("ConfigurationSetName")
    wanted = p.members("ConfigurationSetAttributeNames")
    for attribute in wanted:
        if attribute not in _ATTRIBUTES:
            raise invalid(f"Invalid configuration set attribute name: {attribute}.")
    async with call.runtime.pool.connection() as conn:
        found = await configuration_sets.get(conn, call.account.id, name)
        if found is None:
            raise configuration_sets.does_not_exist(name)
        destinations = (
            await configuration_sets.event_destinations(conn, call.account.id, name)
            if "eventDestinations" in wanted
            else []
        )
    body = f"<ConfigurationSet>{xml.element('Name', found.name)}</ConfigurationSet>"
    if "eventDestinations" in wanted:
        body += xml.members("EventDestinations", map(_destination_xml, destinations))
    if "trackingOptions" in wanted and found.tracking_options:
        domain = found.tracking_options.get("CustomRedirectDomain")
        body += (
            f"<TrackingOptions>{xml.element('CustomRedirectDomain', domain)}"
            "</TrackingOptions>"
        )
    if "deliveryOptions" in wanted:
        policy = "Require" if found.tls_policy == "require" else "Optional"
        body += f"<DeliveryOptions>{xml.element('TlsPolicy', policy)}</DeliveryOptions>"
    if "reputationOptions" in wanted:
        body += (
            "<ReputationOptions>"
            + xml.element("SendingEnabled", found.sending_enabled)
            + xml.element("ReputationMetricsEnabled", found.reputation_metrics_enabled)
            + "</ReputationOptions>"
        )
    return body


def _destination_xml(destination: EventDestination) -> str:
    types = (_V1_EVENT_TYPES[t] for t in destination.matching_event_types)
    return (
        xml.element("Name", destination.name)
        + xml.element("Enabled", destination.enabled)
        + xml.text_members("MatchingEventTypes", types)
        + f"<SNSDestination>{xml.element('TopicARN', destination.url)}</SNSDestination>"
    )


async def list_configuration_sets(call: v1.Call) -> str | None:
    p = call.params
    limit = p.integer("MaxItems", MAX_CONFIGURATION_SET_PAGE)
    if limit is None or limit < 1:
        raise invalid("MaxItems must be at least 1.")
    limit = min(limit, MAX_CONFIGURATION_SET_PAGE)
    after = v1._decode_token(p.get("NextToken"))
    async with call.runtime.pool.connection() as conn:
        names = await configuration_sets.list_names(
            conn, call.account.id, after=after, limit=limit + 1
        )
    page = names[:limit]
    body = xml.members("ConfigurationSets", (xml.element("Name", n) for n in page))
    if len(names) > limit:
        body += xml.element("NextToken", v1._encode_token(page[-1]))
    return body


async def delete_configuration_set(call: v1.Call) -> str | None:
    name = call.params.require("ConfigurationSetName")
    async with call.runtime.pool.connection() as conn:
        await configuration_sets.delete(conn, call.account.id, name)
    return ""


async def put_configuration_set_delivery_options(call: v1.Call) -> str | None:
    p = call.params
    name = p.require("ConfigurationSetName")
    written = p.get("DeliveryOptions.TlsPolicy") or "Optional"
    if written not in _TLS:
        raise ApiError(
            "InvalidDeliveryOptions",
            f"TlsPolicy must be Require or Optional: {written}.",
        )
    await _update(call, name, tls_policy=_TLS[written])
    return ""


async def update_configuration_set_sending_enabled(call: v1.Call) -> str | None:
    p = call.params
    name = p.require("ConfigurationSetName")
    if p.get("Enabled") is None:
        raise missing("Enabled")
    await _update(call, name, sending_enabled=p.flag("Enabled"))
    return None


async def _update(call: v1.Call, name: str, **changes: object) -> None:
    async with call.runtime.pool.connection() as conn:
        await configuration_sets.update(conn, call.account.id, name, **changes)


# -- event destinations -------------------------------------------------------


async def create_configuration_set_event_destination(call: v1.Call) -> str | None:
    name = call.params.require("ConfigurationSetName")
    destination = _event_destination(call.params)
    async with call.runtime.pool.connection() as conn:
        await configuration_sets.create_event_destination(
            conn, call.account.id, name, destination
        )
    return ""


async def update_configuration_set_event_destination(call: v1.Call) -> str | None:
    name = call.params.require("ConfigurationSetName")
    destination = _event_destination(call.params)
    async with call.runtime.pool.connection() as conn:
        await configuration_sets.update_event_destination(
            conn, call.account.id, name, destination
        )
    return ""


async def delete_configuration_set_event_destination(call: v1.Call) -> str | None:
    p = call.params
    name = p.require("ConfigurationSetName")
    destination = p.require("EventDestinationName")
    async with call.runtime.pool.connection() as conn:
        await configuration_sets.delete_event_destination(
            conn, call.account.id, name, destination
        )
    return ""


def _event_destination(p: Params) -> EventDestination:
    """Read ``EventDestination.*``; only an SNS destination with a URL is taken."""
    name = p.require("EventDestination.Name")
    written = p.members("EventDestination.MatchingEventTypes")
    unknown = [t for t in written if t not in EVENT_TYPES]
    if unknown:
        raise invalid(f"Invalid event type: {unknown[0]}.")
    if any(k.startswith("EventDestination.CloudWatchDestination.") for k in p.fields):
        raise ApiError(
            "InvalidCloudWatchDestination",
            "Sesame publishes events only to an SNSDestination whose TopicARN is"
            " an http(s) URL.",
        )
    if any(
        k.startswith("EventDestination.KinesisFirehoseDestination.") for k in p.fields
    ):
        raise ApiError(
            "InvalidFirehoseDestination",
            "Sesame publishes events only to an SNSDestination whose TopicARN is"
            " an http(s) URL.",
        )
    topic = p.get("EventDestination.SNSDestination.TopicARN")
    if topic is None:
        raise missing("EventDestination.SNSDestination.TopicARN")
    try:
        url = configuration_sets.check_url(topic)
    except ConfigurationSetError as exc:
        raise ApiError("InvalidSNSDestination", exc.message) from None
    types = configuration_sets.check_event_types([EVENT_TYPES[t] for t in written])
    configuration_sets.check_name(name, "event destination")
    return EventDestination(
        name=name,
        enabled=p.flag("EventDestination.Enabled", default=False),
        matching_event_types=types,
        url=url,
        envelope="sns",
    )


# -- identity notifications ---------------------------------------------------


async def set_identity_notification_topic(call: v1.Call) -> str | None:
    p = call.params
    written = p.require("Identity")
    kind = p.require("NotificationType")
    if kind not in configuration_sets.NOTIFICATION_TYPES:
        raise invalid("NotificationType must be Bounce, Complaint or Delivery.")
    _, name = identities.parse_identity(written)  # the dispatcher answers its errors
    async with call.runtime.pool.connection() as conn:
        if not await identities.get_identities(conn, call.account.id, [name]):
            raise invalid(f"Identity <{written}> does not exist.")
        try:
            await configuration_sets.set_identity_notification(
                conn, call.account.id, name, kind, p.get("SnsTopic") or None
            )
        except ConfigurationSetError as exc:
            raise ApiError("InvalidSnsTopic", exc.message) from None
    return ""


async def get_identity_notification_attributes(call: v1.Call) -> str | None:
    names = v1._attribute_identities(call)
    async with call.runtime.pool.connection() as conn:
        found = await identities.get_identities(conn, call.account.id, list(names))
        topics = await configuration_sets.identity_notifications(
            conn, call.account.id, [i.name for i in found]
        )
    existing = {i.name for i in found}
    items = []
    for name, written in names.items():
        if name not in existing:
            continue
        urls = topics.get(name, {})
        value = "".join(
            xml.element(f"{kind}Topic", urls.get(kind))
            for kind in configuration_sets.NOTIFICATION_TYPES
        )
        value += xml.element("ForwardingEnabled", True)
        for kind in configuration_sets.NOTIFICATION_TYPES:
            value += xml.element(f"HeadersIn{kind}NotificationsEnabled", False)
        items.append((written, value))
    return xml.entries("NotificationAttributes", items)


ACTIONS: dict[str, v1.Handler] = {
    "CreateConfigurationSet": create_configuration_set,
    "DescribeConfigurationSet": describe_configuration_set,
    "ListConfigurationSets": list_configuration_sets,
    "DeleteConfigurationSet": delete_configuration_set,
    "PutConfigurationSetDeliveryOptions": put_configuration_set_delivery_options,
    "UpdateConfigurationSetSendingEnabled": update_configuration_set_sending_enabled,
    "CreateConfigurationSetEventDestination": create_configuration_set_event_destination,
    "UpdateConfigurationSetEventDestination": update_configuration_set_event_destination,
    "DeleteConfigurationSetEventDestination": delete_configuration_set_event_destination,
    "SetIdentityNotificationTopic": set_identity_notification_topic,
    "GetIdentityNotificationAttributes": get_identity_notification_attributes,
}

# api.v1 imports this module last; the actions join its table here, which works
# whichever of the two modules is imported first.
v1.ACTIONS.update(ACTIONS)
