"""SESv2 configuration sets, their options and their event destinations.

Sesame publishes events to HTTP(S) webhooks. An event destination names one in
the ARN field of SnsDestination (``TopicArn``) or EventBridgeDestination
(``EventBusArn``): a destination whose ARN is an http:// or https:// URL gets
each event POSTed there, as an SNS Notification for SnsDestination and as the
bare event record for EventBridgeDestination. Any other ARN, and CloudWatch,
Kinesis Firehose or Pinpoint destinations, are refused with BadRequestException.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NoReturn, get_args

from fastapi import APIRouter, Path, Query
from pydantic import Field

from api.v2.auth import Caller, CallerDep, V2Route, bad_request, error
from api.v2.models import (
    EmptyResponse,
    SesModel,
    SuppressionListReason,
    Tag,
    decode_page_token,
    encode_page_token,
)
from mta import configuration_sets
from mta.configuration_sets import (
    ConfigurationSet,
    ConfigurationSetError,
    EventDestination,
)

router = APIRouter(route_class=V2Route, tags=["Configuration sets"])

# Sesame's largest page of configuration set names.
MAX_PAGE_SIZE = 1000

EventType = Literal[
    "SEND",
    "REJECT",
    "BOUNCE",
    "COMPLAINT",
    "DELIVERY",
    "OPEN",
    "CLICK",
    "RENDERING_FAILURE",
    "DELIVERY_DELAY",
    "SUBSCRIPTION",
]
TlsPolicy = Literal["REQUIRE", "OPTIONAL"]
# Stored (events.event_type) spellings, and SES v2's for each.
_EVENT_TYPES: dict[str, EventType] = {t.lower(): t for t in get_args(EventType)}
_REASONS: dict[str, SuppressionListReason] = {
    "BOUNCE": "BOUNCE",
    "COMPLAINT": "COMPLAINT",
}

ConfigurationSetNamePath = Annotated[
    str,
    Path(alias="ConfigurationSetName", min_length=1, description="The set's name."),
]
EventDestinationNamePath = Annotated[
    str,
    Path(alias="EventDestinationName", min_length=1, description="The name."),
]

# The v1 code of each refusal, as the SES v2 exception it becomes.
_EXCEPTIONS = {
    "ConfigurationSetDoesNotExist": "NotFoundException",
    "EventDestinationDoesNotExist": "NotFoundException",
    "ConfigurationSetAlreadyExists": "AlreadyExistsException",
    "EventDestinationAlreadyExists": "AlreadyExistsException",
    "LimitExceeded": "LimitExceededException",
}


# -- models -------------------------------------------------------------------


class TrackingOptions(SesModel):
    """The domain of open and click tracking links (stored, not used)."""

    custom_redirect_domain: str = Field(description="A domain of the account.")
    https_policy: Literal["REQUIRE", "REQUIRE_OPEN_ONLY", "OPTIONAL"] | None = Field(
        default=None, description="Whether tracking links use HTTPS."
    )


class DeliveryOptions(SesModel):
    """How messages sent with the set are delivered."""

    tls_policy: TlsPolicy | None = Field(
        default=None,
        description="REQUIRE: never deliver without TLS. Default OPTIONAL.",
    )
    sending_pool_name: str | None = Field(default=None, description="Stored, not used.")
    max_delivery_seconds: int | None = Field(
        default=None,
        ge=300,
        le=50400,
        description="Give up delivering after this long.",
    )


class ReputationOptions(SesModel):
    """Whether reputation metrics are kept per set (stored, not used)."""

    reputation_metrics_enabled: bool | None = Field(
        default=None, description="On or off."
    )


class SendingOptions(SesModel):
    """Whether messages may be sent with the set."""

    sending_enabled: bool | None = Field(
        default=None, description="False pauses the set."
    )


class SuppressionOptions(SesModel):
    """Which suppressions apply to messages sent with the set."""

    suppressed_reasons: list[SuppressionListReason] | None = Field(
        default=None, description="Replaces the account's reasons for these messages."
    )


class CreateConfigurationSetRequest(SesModel):
    """A new configuration set."""

    configuration_set_name: str = Field(description="1-64 of A-Z a-z 0-9 _ -.")
    tracking_options: TrackingOptions | None = None
    delivery_options: DeliveryOptions | None = None
    reputation_options: ReputationOptions | None = None
    sending_options: SendingOptions | None = None
    tags: list[Tag] = Field(default_factory=list, description="Resource tags.")
    suppression_options: SuppressionOptions | None = None


class CreateConfigurationSetResponse(EmptyResponse):
    """The set exists."""


class GetConfigurationSetResponse(SesModel):
    """A configuration set and its options."""

    configuration_set_name: str = Field(description="The set's name.")
    tracking_options: TrackingOptions | None = None
    delivery_options: DeliveryOptions
    reputation_options: ReputationOptions
    sending_options: SendingOptions
    tags: list[Tag] = Field(default_factory=list, description="Resource tags.")
    suppression_options: SuppressionOptions | None = None


class DeleteConfigurationSetResponse(EmptyResponse):
    """The set and its event destinations are gone."""


class ListConfigurationSetsRequest(SesModel):
    """A page request."""

    filter: dict[str, str] | None = Field(
        default=None, description="Accepted, ignored."
    )
    next_token: str | None = Field(default=None, description="From the previous page.")
    page_size: int | None = Field(default=None, ge=1, description="Names per page.")


class ListConfigurationSetsResponse(SesModel):
    """A page of configuration set names, in order."""

    configuration_sets: list[str] = Field(description="The names.")
    next_token: str | None = Field(
        default=None, description="Present when more follow."
    )


class SnsDestination(SesModel):
    """A webhook receiving SNS Notifications: TopicArn is its http(s) URL."""

    topic_arn: str = Field(min_length=1, description="An http:// or https:// URL.")


class EventBridgeDestination(SesModel):
    """A webhook receiving bare event records: EventBusArn is its http(s) URL."""

    event_bus_arn: str = Field(min_length=1, description="An http:// or https:// URL.")


class EventDestinationDefinition(SesModel):
    """Which events go where."""

    enabled: bool = Field(default=False, description="Whether events are published.")
    matching_event_types: list[EventType] = Field(
        default_factory=list, description="The event types to publish."
    )
    sns_destination: SnsDestination | None = None
    event_bridge_destination: EventBridgeDestination | None = None
    cloud_watch_destination: dict[str, Any] | None = Field(
        default=None, description="Refused: Sesame has no CloudWatch."
    )
    kinesis_firehose_destination: dict[str, Any] | None = Field(
        default=None, description="Refused: Sesame has no Firehose."
    )
    pinpoint_destination: dict[str, Any] | None = Field(
        default=None, description="Refused: Sesame has no Pinpoint."
    )


class CreateConfigurationSetEventDestinationRequest(SesModel):
    """A new event destination of a configuration set."""

    event_destination_name: str = Field(description="1-64 of A-Z a-z 0-9 _ -.")
    event_destination: EventDestinationDefinition


class CreateConfigurationSetEventDestinationResponse(EmptyResponse):
    """The destination exists."""


class EventDestinationView(SesModel):
    """An event destination as GetConfigurationSetEventDestinations shows it."""

    name: str = Field(description="The destination's name.")
    enabled: bool = Field(description="Whether events are published.")
    matching_event_types: list[EventType] = Field(description="Published types.")
    sns_destination: SnsDestination | None = None
    event_bridge_destination: EventBridgeDestination | None = None


class GetConfigurationSetEventDestinationsResponse(SesModel):
    """The event destinations of a configuration set."""

    event_destinations: list[EventDestinationView] = Field(description="By name.")


class UpdateConfigurationSetEventDestinationRequest(SesModel):
    """A replacement definition for an event destination."""

    event_destination: EventDestinationDefinition


class UpdateConfigurationSetEventDestinationResponse(EmptyResponse):
    """The destination has the new definition."""


class DeleteConfigurationSetEventDestinationResponse(EmptyResponse):
    """The destination is gone."""


class PutConfigurationSetDeliveryOptionsRequest(DeliveryOptions):
    """New delivery options; members left out return to their defaults."""


class PutConfigurationSetSendingOptionsRequest(SendingOptions):
    """Pause or resume sending with the set."""


class PutConfigurationSetSuppressionOptionsRequest(SuppressionOptions):
    """The reasons that suppress recipients of the set's messages; none if left out."""


class PutConfigurationSetReputationOptionsRequest(ReputationOptions):
    """Reputation metrics on or off."""


class PutConfigurationSetOptionsResponse(EmptyResponse):
    """The options are changed."""


# -- configuration sets -------------------------------------------------------


@router.post(
    "/configuration-sets",
    name="CreateConfigurationSet",
    operation_id="CreateConfigurationSet",
    response_model=CreateConfigurationSetResponse,
)
async def create_configuration_set(
    body: CreateConfigurationSetRequest, call: CallerDep
) -> CreateConfigurationSetResponse:
    """Create a configuration set with the options given."""
    delivery = body.delivery_options or DeliveryOptions()
    tracking = body.tracking_options
    async with call.runtime.pool.connection() as conn:
        try:
            await configuration_sets.create(
                conn,
                call.account.id,
                body.configuration_set_name,
                sending_enabled=_enabled(body.sending_options),
                tls_policy=(delivery.tls_policy or "OPTIONAL").lower(),
                max_delivery_seconds=delivery.max_delivery_seconds,
                sending_pool_name=delivery.sending_pool_name,
                reputation_metrics_enabled=bool(
                    body.reputation_options
                    and body.reputation_options.reputation_metrics_enabled
                ),
                suppressed_reasons=(
                    list(body.suppression_options.suppressed_reasons or [])
                    if body.suppression_options
                    else None
                ),
                tracking_options=(
                    tracking.model_dump(by_alias=True, exclude_none=True)
                    if tracking
                    else None
                ),
                tags=[t.model_dump(by_alias=True) for t in body.tags],
            )
        except ConfigurationSetError as exc:
            _refuse(exc)
    return CreateConfigurationSetResponse()


def _enabled(options: SendingOptions | None) -> bool:
    return options is None or options.sending_enabled is not False


@router.get(
    "/configuration-sets/{ConfigurationSetName}",
    name="GetConfigurationSet",
    operation_id="GetConfigurationSet",
    response_model=GetConfigurationSetResponse,
    response_model_exclude_none=True,
)
async def get_configuration_set(
    configuration_set_name: ConfigurationSetNamePath, call: CallerDep
) -> GetConfigurationSetResponse:
    """Return a configuration set's options."""
    async with call.runtime.pool.connection() as conn:
        found = await configuration_sets.get(
            conn, call.account.id, configuration_set_name
        )
    if found is None:
        _refuse(configuration_sets.does_not_exist(configuration_set_name))
    return _view(found)


def _view(found: ConfigurationSet) -> GetConfigurationSetResponse:
    tracking = found.tracking_options
    reasons = found.suppressed_reasons
    return GetConfigurationSetResponse(
        configuration_set_name=found.name,
        tracking_options=TrackingOptions.model_validate(tracking) if tracking else None,
        delivery_options=DeliveryOptions(
            tls_policy="REQUIRE" if found.tls_policy == "require" else "OPTIONAL",
            sending_pool_name=found.sending_pool_name,
            max_delivery_seconds=found.max_delivery_seconds,
        ),
        reputation_options=ReputationOptions(
            reputation_metrics_enabled=found.reputation_metrics_enabled
        ),
        sending_options=SendingOptions(sending_enabled=found.sending_enabled),
        tags=[Tag.model_validate(t) for t in found.tags],
        suppression_options=(
            None
            if reasons is None
            else SuppressionOptions(
                suppressed_reasons=[_REASONS[r] for r in reasons if r in _REASONS]
            )
        ),
    )


@router.delete(
    "/configuration-sets/{ConfigurationSetName}",
    name="DeleteConfigurationSet",
    operation_id="DeleteConfigurationSet",
    response_model=DeleteConfigurationSetResponse,
)
async def delete_configuration_set(
    configuration_set_name: ConfigurationSetNamePath, call: CallerDep
) -> DeleteConfigurationSetResponse:
    """Delete a configuration set and its event destinations."""
    async with call.runtime.pool.connection() as conn:
        try:
            await configuration_sets.delete(
                conn, call.account.id, configuration_set_name
            )
        except ConfigurationSetError as exc:
            _refuse(exc)
    return DeleteConfigurationSetResponse()


@router.post(
    "/list-configuration-sets",
    name="ListConfigurationSets",
    operation_id="ListConfigurationSets",
    response_model=ListConfigurationSetsResponse,
    response_model_exclude_none=True,
)
async def list_configuration_sets(
    body: ListConfigurationSetsRequest, call: CallerDep
) -> ListConfigurationSetsResponse:
    """List configuration set names (the route of botocore 1.43.105 and later)."""
    return await _list(call, body.next_token, body.page_size)


@router.get(
    "/configuration-sets",
    name="ListConfigurationSetsByGet",
    operation_id="ListConfigurationSetsByGet",
    response_model=ListConfigurationSetsResponse,
    response_model_exclude_none=True,
)
async def list_configuration_sets_by_get(
    call: CallerDep,
    next_token: Annotated[
        str | None, Query(alias="NextToken", description="From the previous page.")
    ] = None,
    page_size: Annotated[
        int | None, Query(alias="PageSize", ge=1, description="Names per page.")
    ] = None,
) -> ListConfigurationSetsResponse:
    """List configuration set names (the route of older botocore releases)."""
    return await _list(call, next_token, page_size)


async def _list(
    call: Caller, next_token: str | None, page_size: int | None
) -> ListConfigurationSetsResponse:
    limit = min(page_size or MAX_PAGE_SIZE, MAX_PAGE_SIZE)
    after = decode_page_token(next_token)
    if after is not None and not isinstance(after, str):
        raise bad_request("The NextToken is not valid.")
    async with call.runtime.pool.connection() as conn:
        names = await configuration_sets.list_names(
            conn, call.account.id, after=after, limit=limit + 1
        )
    page = names[:limit]
    return ListConfigurationSetsResponse(
        configuration_sets=page,
        next_token=encode_page_token(page[-1]) if len(names) > limit else None,
    )


# -- options ------------------------------------------------------------------


@router.put(
    "/configuration-sets/{ConfigurationSetName}/delivery-options",
    name="PutConfigurationSetDeliveryOptions",
    operation_id="PutConfigurationSetDeliveryOptions",
    response_model=PutConfigurationSetOptionsResponse,
)
async def put_configuration_set_delivery_options(
    configuration_set_name: ConfigurationSetNamePath,
    body: PutConfigurationSetDeliveryOptionsRequest,
    call: CallerDep,
) -> PutConfigurationSetOptionsResponse:
    """Set the TLS policy, sending pool and give-up time of a set's messages."""
    await _update(
        call,
        configuration_set_name,
        tls_policy=(body.tls_policy or "OPTIONAL").lower(),
        sending_pool_name=body.sending_pool_name,
        max_delivery_seconds=body.max_delivery_seconds,
    )
    return PutConfigurationSetOptionsResponse()


@router.put(
    "/configuration-sets/{ConfigurationSetName}/sending",
    name="PutConfigurationSetSendingOptions",
    operation_id="PutConfigurationSetSendingOptions",
    response_model=PutConfigurationSetOptionsResponse,
)
async def put_configuration_set_sending_options(
    configuration_set_name: ConfigurationSetNamePath,
    body: PutConfigurationSetSendingOptionsRequest,
    call: CallerDep,
) -> PutConfigurationSetOptionsResponse:
    """Pause or resume sending with a configuration set."""
    await _update(call, configuration_set_name, sending_enabled=_enabled(body))
    return PutConfigurationSetOptionsResponse()


@router.put(
    "/configuration-sets/{ConfigurationSetName}/suppression-options",
    name="PutConfigurationSetSuppressionOptions",
    operation_id="PutConfigurationSetSuppressionOptions",
    response_model=PutConfigurationSetOptionsResponse,
)
async def put_configuration_set_suppression_options(
    configuration_set_name: ConfigurationSetNamePath,
    body: PutConfigurationSetSuppressionOptionsRequest,
    call: CallerDep,
) -> PutConfigurationSetOptionsResponse:
    """Replace the account's suppression reasons for a set's messages."""
    reasons = list(dict.fromkeys(body.suppressed_reasons or []))
    await _update(call, configuration_set_name, suppressed_reasons=reasons)
    return PutConfigurationSetOptionsResponse()


@router.put(
    "/configuration-sets/{ConfigurationSetName}/reputation-options",
    name="PutConfigurationSetReputationOptions",
    operation_id="PutConfigurationSetReputationOptions",
    response_model=PutConfigurationSetOptionsResponse,
)
async def put_configuration_set_reputation_options(
    configuration_set_name: ConfigurationSetNamePath,
    body: PutConfigurationSetReputationOptionsRequest,
    call: CallerDep,
) -> PutConfigurationSetOptionsResponse:
    """Turn a set's reputation metrics on or off."""
    await _update(
        call,
        configuration_set_name,
        reputation_metrics_enabled=bool(body.reputation_metrics_enabled),
    )
    return PutConfigurationSetOptionsResponse()


async def _update(call: Caller, name: str, **changes: Any) -> None:
    async with call.runtime.pool.connection() as conn:
        try:
            await configuration_sets.update(conn, call.account.id, name, **changes)
        except ConfigurationSetError as exc:
            _refuse(exc)


# -- event destinations -------------------------------------------------------


@router.post(
    "/configuration-sets/{ConfigurationSetName}/event-destinations",
    name="CreateConfigurationSetEventDestination",
    operation_id="CreateConfigurationSetEventDestination",
    response_model=CreateConfigurationSetEventDestinationResponse,
)
async def create_configuration_set_event_destination(
    configuration_set_name: ConfigurationSetNamePath,
    body: CreateConfigurationSetEventDestinationRequest,
    call: CallerDep,
) -> CreateConfigurationSetEventDestinationResponse:
    """Publish some of a set's events to a webhook."""
    destination = _destination(body.event_destination_name, body.event_destination)
    async with call.runtime.pool.connection() as conn:
        try:
            await configuration_sets.create_event_destination(
                conn, call.account.id, configuration_set_name, destination
            )
        except ConfigurationSetError as exc:
            _refuse(exc)
    return CreateConfigurationSetEventDestinationResponse()


@router.get(
    "/configuration-sets/{ConfigurationSetName}/event-destinations",
    name="GetConfigurationSetEventDestinations",
    operation_id="GetConfigurationSetEventDestinations",
    response_model=GetConfigurationSetEventDestinationsResponse,
    response_model_exclude_none=True,
)
async def get_configuration_set_event_destinations(
    configuration_set_name: ConfigurationSetNamePath, call: CallerDep
) -> GetConfigurationSetEventDestinationsResponse:
    """Return a set's event destinations."""
    async with call.runtime.pool.connection() as conn:
        try:
            found = await configuration_sets.event_destinations(
                conn, call.account.id, configuration_set_name
            )
        except ConfigurationSetError as exc:
            _refuse(exc)
    return GetConfigurationSetEventDestinationsResponse(
        event_destinations=[_destination_view(d) for d in found]
    )


@router.put(
    "/configuration-sets/{ConfigurationSetName}/event-destinations/{EventDestinationName}",
    name="UpdateConfigurationSetEventDestination",
    operation_id="UpdateConfigurationSetEventDestination",
    response_model=UpdateConfigurationSetEventDestinationResponse,
)
async def update_configuration_set_event_destination(
    configuration_set_name: ConfigurationSetNamePath,
    event_destination_name: EventDestinationNamePath,
    body: UpdateConfigurationSetEventDestinationRequest,
    call: CallerDep,
) -> UpdateConfigurationSetEventDestinationResponse:
    """Replace an event destination's definition."""
    destination = _destination(event_destination_name, body.event_destination)
    async with call.runtime.pool.connection() as conn:
        try:
            await configuration_sets.update_event_destination(
                conn, call.account.id, configuration_set_name, destination
            )
        except ConfigurationSetError as exc:
            _refuse(exc)
    return UpdateConfigurationSetEventDestinationResponse()


@router.delete(
    "/configuration-sets/{ConfigurationSetName}/event-destinations/{EventDestinationName}",
    name="DeleteConfigurationSetEventDestination",
    operation_id="DeleteConfigurationSetEventDestination",
    response_model=DeleteConfigurationSetEventDestinationResponse,
)
async def delete_configuration_set_event_destination(
    configuration_set_name: ConfigurationSetNamePath,
    event_destination_name: EventDestinationNamePath,
    call: CallerDep,
) -> DeleteConfigurationSetEventDestinationResponse:
    """Stop publishing to an event destination."""
    async with call.runtime.pool.connection() as conn:
        try:
            await configuration_sets.delete_event_destination(
                conn, call.account.id, configuration_set_name, event_destination_name
            )
        except ConfigurationSetError as exc:
            _refuse(exc)
    return DeleteConfigurationSetEventDestinationResponse()


def _destination(name: str, definition: EventDestinationDefinition) -> EventDestination:
    """Map a v2 definition onto a webhook; see the module docstring."""
    targets = [
        d
        for d in (
            definition.sns_destination,
            definition.event_bridge_destination,
            definition.cloud_watch_destination,
            definition.kinesis_firehose_destination,
            definition.pinpoint_destination,
        )
        if d is not None
    ]
    if len(targets) != 1:
        raise bad_request("An event destination must name exactly one destination.")
    if definition.sns_destination is not None:
        url, envelope = definition.sns_destination.topic_arn, "sns"
    elif definition.event_bridge_destination is not None:
        url, envelope = definition.event_bridge_destination.event_bus_arn, "none"
    else:
        raise bad_request(
            "Sesame publishes events only to an SnsDestination or"
            " EventBridgeDestination whose ARN is an http(s) URL."
        )
    try:
        configuration_sets.check_name(name, "event destination")
        return EventDestination(
            name=name,
            enabled=definition.enabled,
            matching_event_types=configuration_sets.check_event_types(
                [t.lower() for t in definition.matching_event_types]
            ),
            url=configuration_sets.check_url(url),
            envelope=envelope,
        )
    except ConfigurationSetError as exc:
        _refuse(exc)


def _destination_view(destination: EventDestination) -> EventDestinationView:
    sns = destination.envelope == "sns"
    return EventDestinationView(
        name=destination.name,
        enabled=destination.enabled,
        matching_event_types=[
            _EVENT_TYPES[t] for t in destination.matching_event_types
        ],
        sns_destination=SnsDestination(topic_arn=destination.url) if sns else None,
        event_bridge_destination=(
            None if sns else EventBridgeDestination(event_bus_arn=destination.url)
        ),
    )


def _refuse(exc: ConfigurationSetError) -> NoReturn:
    """Raise a refusal as the SES v2 exception for it."""
    raise error(_EXCEPTIONS.get(exc.code, "BadRequestException"), exc.message) from None
