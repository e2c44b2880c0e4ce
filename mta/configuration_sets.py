"""Configuration sets and their event destinations, shared by v1, v2 and SMTP.

An event destination is an HTTP(S) webhook; identity notification topics are
kept as account-wide destinations (``configuration_set`` null).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn
from urllib.parse import urlsplit

import orjson
from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation

from mta.accept import AcceptError

# SES's rule for configuration set and event destination names.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# SES quotas: configuration sets per account and region, destinations per set.
MAX_CONFIGURATION_SETS = 10_000
MAX_EVENT_DESTINATIONS = 10
MAX_URL_LENGTH = 2048

# events.event_type names, plus the SES types Sesame never records (open,
# click, subscription): they are stored so a destination reads back as written.
EVENT_TYPES = (
    "send",
    "reject",
    "bounce",
    "complaint",
    "delivery",
    "open",
    "click",
    "rendering_failure",
    "delivery_delay",
    "subscription",
)
TLS_POLICIES = ("require", "optional")
SUPPRESSION_REASONS = ("BOUNCE", "COMPLAINT")
# SetIdentityNotificationTopic's types, as event types.
NOTIFICATION_TYPES = {
    "Bounce": "bounce",
    "Complaint": "complaint",
    "Delivery": "delivery",
}
_NOTIFICATION_PREFIX = "identity-notification"


class ConfigurationSetError(Exception):
    """A refused change, with the SES v1 error code and wording.

    Codes: ``ConfigurationSetDoesNotExist``, ``ConfigurationSetAlreadyExists``,
    ``EventDestinationDoesNotExist``, ``EventDestinationAlreadyExists``,
    ``InvalidConfigurationSet``, ``InvalidParameterValue``, ``LimitExceeded``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ConfigurationSet:
    """A configuration set: what applies to every message sent with it."""

    name: str
    sending_enabled: bool
    tls_policy: str  # require | optional
    max_delivery_seconds: int | None
    sending_pool_name: str | None
    reputation_metrics_enabled: bool
    suppressed_reasons: tuple[str, ...] | None  # None: the account's apply
    tracking_options: dict[str, Any] | None
    tags: list[dict[str, str]]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class EventDestination:
    """A webhook that receives a configuration set's (or account's) events."""

    name: str
    enabled: bool
    matching_event_types: tuple[str, ...]
    url: str
    envelope: str  # none: the event record itself; sns: an SNS Notification


_COLUMNS = (
    "name, sending_enabled, tls_policy, max_delivery_seconds, sending_pool_name,"
    " reputation_metrics_enabled, suppressed_reasons, tracking_options, tags,"
    " created_at"
)
_DESTINATION_COLUMNS = "name, enabled, matching_event_types, url, envelope"


def _configuration_set(row: tuple[Any, ...]) -> ConfigurationSet:
    (name, enabled, tls, max_seconds, pool, metrics, reasons, tracking, tags, at) = row
    return ConfigurationSet(
        name=name,
        sending_enabled=enabled,
        tls_policy=tls,
        max_delivery_seconds=max_seconds,
        sending_pool_name=pool,
        reputation_metrics_enabled=metrics,
        suppressed_reasons=None if reasons is None else tuple(reasons),
        tracking_options=tracking,
        tags=list(tags or []),
        created_at=at,
    )


def _destination(row: tuple[Any, ...]) -> EventDestination:
    return EventDestination(row[0], row[1], tuple(row[2]), row[3], row[4])


def does_not_exist(name: str) -> ConfigurationSetError:
    return ConfigurationSetError(
        "ConfigurationSetDoesNotExist", f"Configuration set <{name}> does not exist."
    )


# -- applying a configuration set to a send -----------------------------------


async def resolve(
    conn: AsyncConnection[Any], account_id: str, name: str
) -> ConfigurationSet:
    """Return the configuration set a send names, or raise AcceptError.

    Raises AcceptError ``ConfigurationSetDoesNotExist`` for an unknown name and
    ``ConfigurationSetSendingPausedException`` when the set's sending is off.
    """
    found = await get(conn, account_id, name)
    if found is None:
        raise AcceptError(
            "ConfigurationSetDoesNotExist",
            f"Configuration set <{name}> does not exist.",
        )
    if not found.sending_enabled:
        raise AcceptError(
            "ConfigurationSetSendingPausedException",
            f"Sending is paused for configuration set <{name}>.",
        )
    return found


# -- configuration sets -------------------------------------------------------


def check_name(name: str, what: str = "configuration set") -> None:
    """Refuse a name SES would refuse: 1 to 64 letters, digits, '_' or '-'."""
    if not _NAME.match(name):
        code = (
            "InvalidConfigurationSet"
            if what == "configuration set"
            else "InvalidParameterValue"
        )
        raise ConfigurationSetError(
            code,
            f"Invalid {what} name <{name}>: use 1 to 64 letters, digits, '_' or '-'.",
        )


async def get(
    conn: AsyncConnection[Any], account_id: str, name: str
) -> ConfigurationSet | None:
    if not _NAME.match(name):
        return None  # never stored, and PostgreSQL refuses some such text
    cur = await conn.execute(
        f"select {_COLUMNS} from configuration_sets"
        " where account_id = %s and name = %s",
        (account_id, name),
    )
    row = await cur.fetchone()
    return None if row is None else _configuration_set(row)


async def create(
    conn: AsyncConnection[Any],
    account_id: str,
    name: str,
    *,
    sending_enabled: bool = True,
    tls_policy: str = "optional",
    max_delivery_seconds: int | None = None,
    sending_pool_name: str | None = None,
    reputation_metrics_enabled: bool = False,
    suppressed_reasons: list[str] | None = None,
    tracking_options: dict[str, Any] | None = None,
    tags: list[dict[str, str]] | None = None,
) -> ConfigurationSet:
    """Create a configuration set; raise ConfigurationSetError if it exists."""
    check_name(name)
    _check_options(tls_policy, max_delivery_seconds, suppressed_reasons)
    _check_text(sending_pool_name, tracking_options, tags)
    cur = await conn.execute(
        "insert into configuration_sets (account_id, name, sending_enabled,"
        " tls_policy, max_delivery_seconds, sending_pool_name,"
        " reputation_metrics_enabled, suppressed_reasons, tracking_options, tags)"
        " select %s, %s, %s, %s, %s, %s, %s, %s, %s, %s"
        " where (select count(*) from configuration_sets where account_id = %s) < %s"
        f" on conflict do nothing returning {_COLUMNS}",
        (
            account_id,
            name,
            sending_enabled,
            tls_policy,
            max_delivery_seconds,
            sending_pool_name,
            reputation_metrics_enabled,
            suppressed_reasons,
            None
            if tracking_options is None
            else orjson.dumps(tracking_options).decode(),
            orjson.dumps(tags or []).decode(),
            account_id,
            MAX_CONFIGURATION_SETS,
        ),
    )
    row = await cur.fetchone()
    if row is not None:
        return _configuration_set(row)
    if await get(conn, account_id, name) is not None:
        raise ConfigurationSetError(
            "ConfigurationSetAlreadyExists",
            f"Configuration set <{name}> already exists.",
        )
    raise ConfigurationSetError(
        "LimitExceeded",
        f"An account may have at most {MAX_CONFIGURATION_SETS} configuration sets.",
    )


_UPDATABLE = frozenset(
    {
        "sending_enabled",
        "tls_policy",
        "max_delivery_seconds",
        "sending_pool_name",
        "reputation_metrics_enabled",
        "suppressed_reasons",
        "tracking_options",
    }
)


async def update(
    conn: AsyncConnection[Any], account_id: str, name: str, **changes: Any
) -> ConfigurationSet:
    """Change some options of a configuration set; raise if it does not exist."""
    unknown = set(changes) - _UPDATABLE
    if unknown:
        raise TypeError(f"not a configuration set option: {sorted(unknown)}")
    _check_options(
        changes.get("tls_policy", "optional"),
        changes.get("max_delivery_seconds"),
        changes.get("suppressed_reasons"),
    )
    _check_text(changes.get("sending_pool_name"), changes.get("tracking_options"))
    if "tracking_options" in changes and changes["tracking_options"] is not None:
        changes["tracking_options"] = orjson.dumps(changes["tracking_options"]).decode()
    if not changes or not _NAME.match(name):
        found = await get(conn, account_id, name)
        if found is None:
            raise does_not_exist(name)
        return found
    columns = sorted(changes)
    assignments = ", ".join(f"{column} = %s" for column in columns)
    cur = await conn.execute(
        f"update configuration_sets set {assignments}"
        f" where account_id = %s and name = %s returning {_COLUMNS}",
        (*(changes[c] for c in columns), account_id, name),
    )
    row = await cur.fetchone()
    if row is None:
        raise does_not_exist(name)
    return _configuration_set(row)


def _check_text(*values: Any) -> None:
    """Refuse NUL characters in strings, lists and objects (PostgreSQL stores none)."""
    pending = list(values)
    while pending:
        value = pending.pop()
        if isinstance(value, str) and "\x00" in value:
            raise ConfigurationSetError(
                "InvalidParameterValue", "Values cannot contain NUL characters."
            )
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list | tuple):
            pending.extend(value)


def _check_options(
    tls_policy: str, max_delivery_seconds: int | None, reasons: list[str] | None
) -> None:
    if tls_policy not in TLS_POLICIES:
        raise ConfigurationSetError(
            "InvalidParameterValue", f"Invalid TlsPolicy: {tls_policy}."
        )
    if max_delivery_seconds is not None and not 300 <= max_delivery_seconds <= 50400:
        raise ConfigurationSetError(
            "InvalidParameterValue",
            "MaxDeliverySeconds must be between 300 and 50400 seconds.",
        )
    for reason in reasons or ():
        if reason not in SUPPRESSION_REASONS:
            raise ConfigurationSetError(
                "InvalidParameterValue", f"Invalid suppression reason: {reason}."
            )


async def delete(conn: AsyncConnection[Any], account_id: str, name: str) -> None:
    """Delete a configuration set and its destinations; raise if it does not exist."""
    if not _NAME.match(name):
        raise does_not_exist(name)
    cur = await conn.execute(
        "delete from configuration_sets where account_id = %s and name = %s",
        (account_id, name),
    )
    if cur.rowcount != 1:
        raise does_not_exist(name)


async def list_names(
    conn: AsyncConnection[Any], account_id: str, *, after: str | None, limit: int
) -> list[str]:
    """Names of configuration sets in order, starting after ``after``."""
    cur = await conn.execute(
        "select name from configuration_sets where account_id = %s and name > %s"
        " order by name limit %s",
        (account_id, (after or "").replace("\x00", ""), limit),
    )
    return [row[0] for row in await cur.fetchall()]


# -- event destinations -------------------------------------------------------


def check_url(url: str) -> str:
    """Return a webhook URL if it is an absolute http(s) URL, else raise."""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or len(url) > MAX_URL_LENGTH
        or any(c.isspace() or not c.isprintable() for c in url)
    ):
        raise ConfigurationSetError(
            "InvalidParameterValue",
            f"Sesame delivers events to http(s) URLs only; {url!r} is not one.",
        )
    return url


def check_event_types(types: list[str]) -> tuple[str, ...]:
    """Return event types (events.event_type spelling) deduplicated, or raise."""
    if not types:
        raise ConfigurationSetError(
            "InvalidParameterValue", "MatchingEventTypes must name at least one type."
        )
    for kind in types:
        if kind not in EVENT_TYPES:
            raise ConfigurationSetError(
                "InvalidParameterValue", f"Invalid event type: {kind}."
            )
    return tuple(dict.fromkeys(types))


async def event_destinations(
    conn: AsyncConnection[Any], account_id: str, configuration_set: str
) -> list[EventDestination]:
    """Destinations of a configuration set; raise if the set does not exist."""
    if await get(conn, account_id, configuration_set) is None:
        raise does_not_exist(configuration_set)
    cur = await conn.execute(
        f"select {_DESTINATION_COLUMNS} from event_destinations"
        " where account_id = %s and configuration_set = %s order by name",
        (account_id, configuration_set),
    )
    return [_destination(row) for row in await cur.fetchall()]


async def create_event_destination(
    conn: AsyncConnection[Any],
    account_id: str,
    configuration_set: str,
    destination: EventDestination,
) -> None:
    """Add a destination to a configuration set; raise ConfigurationSetError."""
    check_name(destination.name, "event destination")
    if not _NAME.match(configuration_set):
        raise does_not_exist(configuration_set)
    async with conn.transaction():
        # Lock the set so the count below holds until the insert commits.
        cur = await conn.execute(
            "select (select count(*) from event_destinations d"
            " where d.account_id = c.account_id and d.configuration_set = c.name)"
            " from configuration_sets c where c.account_id = %s and c.name = %s"
            " for update",
            (account_id, configuration_set),
        )
        row = await cur.fetchone()
        if row is None:
            raise does_not_exist(configuration_set)
        if row[0] >= MAX_EVENT_DESTINATIONS:
            raise ConfigurationSetError(
                "LimitExceeded",
                f"A configuration set may have at most {MAX_EVENT_DESTINATIONS}"
                " event destinations.",
            )
        try:
            async with conn.transaction():
                await conn.execute(
                    "insert into event_destinations (account_id, configuration_set,"
                    " name, enabled, matching_event_types, url, envelope)"
                    " values (%s, %s, %s, %s, %s, %s, %s)",
                    (account_id, configuration_set, *_destination_values(destination)),
                )
        except UniqueViolation:
            raise ConfigurationSetError(
                "EventDestinationAlreadyExists",
                f"Event destination {destination.name} already exists"
                f" in configuration set {configuration_set}.",
            ) from None


async def update_event_destination(
    conn: AsyncConnection[Any],
    account_id: str,
    configuration_set: str,
    destination: EventDestination,
) -> None:
    """Replace a destination of a configuration set; raise if either is missing."""
    if not (_NAME.match(configuration_set) and _NAME.match(destination.name)):
        await _missing_destination(
            conn, account_id, configuration_set, destination.name
        )
    cur = await conn.execute(
        "update event_destinations set enabled = %s, matching_event_types = %s,"
        " url = %s, envelope = %s where account_id = %s and configuration_set = %s"
        " and name = %s",
        (
            *_destination_values(destination)[1:],
            account_id,
            configuration_set,
            destination.name,
        ),
    )
    if cur.rowcount != 1:
        await _missing_destination(
            conn, account_id, configuration_set, destination.name
        )


async def delete_event_destination(
    conn: AsyncConnection[Any], account_id: str, configuration_set: str, name: str
) -> None:
    """Remove a destination of a configuration set; raise if either is missing."""
    if not (_NAME.match(configuration_set) and _NAME.match(name)):
        await _missing_destination(conn, account_id, configuration_set, name)
    cur = await conn.execute(
        "delete from event_destinations where account_id = %s"
        " and configuration_set = %s and name = %s",
        (account_id, configuration_set, name),
    )
    if cur.rowcount != 1:
        await _missing_destination(conn, account_id, configuration_set, name)


def _destination_values(destination: EventDestination) -> tuple[Any, ...]:
    return (
        destination.name,
        destination.enabled,
        list(destination.matching_event_types),
        destination.url,
        destination.envelope,
    )


async def _missing_destination(
    conn: AsyncConnection[Any], account_id: str, configuration_set: str, name: str
) -> NoReturn:
    if await get(conn, account_id, configuration_set) is None:
        raise does_not_exist(configuration_set)
    raise ConfigurationSetError(
        "EventDestinationDoesNotExist",
        f"No event destination {name} in configuration set {configuration_set}.",
    )


# -- identity notification topics ---------------------------------------------
#
# SetIdentityNotificationTopic keeps one account-wide destination per identity
# and notification type, named "identity-notification:<Type>:<identity>", with
# the identity in its own column: the fan-out trigger sends it only the events
# of mail from that identity (an address's topic over its domain's), and the
# relay renders them as SES notifications (notificationType).


def _notification_name(identity: str, notification_type: str) -> str:
    return f"{_NOTIFICATION_PREFIX}:{notification_type}:{identity}"


async def set_identity_notification(
    conn: AsyncConnection[Any],
    account_id: str,
    identity: str,
    notification_type: str,
    url: str | None,
) -> None:
    """Send one notification type of an identity to ``url``; None stops it."""
    name = _notification_name(identity, notification_type)
    if url is None:
        await conn.execute(
            "delete from event_destinations where account_id = %s"
            " and configuration_set is null and name = %s",
            (account_id, name),
        )
        return
    event_type = NOTIFICATION_TYPES[notification_type]
    await conn.execute(
        "insert into event_destinations (account_id, configuration_set, name,"
        " enabled, matching_event_types, url, envelope, identity)"
        " values (%s, null, %s, true, %s, %s, 'sns', %s)"
        " on conflict (account_id, coalesce(configuration_set, ''), name)"
        " do update set url = excluded.url, enabled = true,"
        " matching_event_types = excluded.matching_event_types,"
        " identity = excluded.identity",
        (account_id, name, [event_type], check_url(url), identity.lower()),
    )


async def identity_notifications(
    conn: AsyncConnection[Any], account_id: str, identity_names: list[str]
) -> dict[str, dict[str, str]]:
    """Return {identity: {notification type: url}} for the identities given."""
    names = {
        _notification_name(identity, kind): (identity, kind)
        for identity in identity_names
        for kind in NOTIFICATION_TYPES
    }
    cur = await conn.execute(
        "select name, url from event_destinations where account_id = %s"
        " and configuration_set is null and name = any(%s)",
        (account_id, list(names)),
    )
    found: dict[str, dict[str, str]] = {}
    for name, url in await cur.fetchall():
        identity, kind = names[name]
        found.setdefault(identity, {})[kind] = url
    return found
