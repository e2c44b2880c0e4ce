"""``sesame webhook``: HTTP event destinations of an account, and their deliveries.

Each destination gets a signing secret, printed once by ``add`` and stored sealed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from psycopg import AsyncConnection, errors

from mta import events
from sesame import cli, crypto, db
from sesame.settings import Settings

__all__ = ["add_parser", "main", "parse_event_types"]

STATES = ("pending", "delivered", "failed")
# Deliveries listed when --limit is not given; the newest come first.
_DEFAULT_LIMIT = 100
# ISO 8601 in UTC with milliseconds, as SES writes times.
_ISO_UTC = 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'

Command = Callable[
    [AsyncConnection[Any], crypto.SecretBox, argparse.Namespace], Awaitable[Any]
]


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``webhook add|list|remove|deliveries`` on a sesame parser."""
    text = "manage an account's HTTP event destinations (webhooks)"
    parser = subparsers.add_parser("webhook", help=text, description=text)
    actions = parser.add_subparsers(
        dest="webhook_command", required=True, metavar="ACTION"
    )

    def action(name: str, text: str, run: Command) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=text, description=text)
        p.add_argument("account_id")
        p.set_defaults(run=_json_command(run))
        return p

    p = action(
        "add",
        "add a destination; print it and its signing secret (shown once) as JSON",
        _add,
    )
    p.add_argument("url", help="http or https URL that receives a POST per event")
    p.add_argument(
        "--events",
        type=parse_event_types,
        default=list(events.EVENT_TYPES),
        metavar="TYPE,...",
        help="event types to send (default all): " + ",".join(events.EVENT_TYPES),
    )
    p.add_argument(
        "--configuration-set",
        metavar="NAME",
        help="only messages sent with this configuration set (default: all mail)",
    )
    p.add_argument(
        "--sns",
        action="store_true",
        help="wrap each event in an SNS Notification envelope",
    )
    p.add_argument("--name", help="destination name (default: generated)")

    action("list", "list destinations as JSON (secrets are never shown)", _list)

    p = action("remove", "remove a destination and its pending deliveries", _remove)
    p.add_argument("name")
    p.add_argument("--configuration-set", metavar="NAME")

    p = action(
        "deliveries", "list webhook deliveries as JSON, newest first", _deliveries
    )
    p.add_argument("--state", choices=STATES)
    p.add_argument("--limit", type=_positive, default=_DEFAULT_LIMIT)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``sesame webhook ...`` on its own: python -m sesame.webhook_cli."""
    parser = argparse.ArgumentParser(prog="sesame", description="Manage webhooks.")
    add_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(["webhook", *(sys.argv[1:] if argv is None else argv)])
    return cli.run(args)


def parse_event_types(text: str) -> list[str]:
    """Parse ``send,delivery,...`` in our or SES spellings (DELIVERY_DELAY, all)."""
    known = {t.replace("_", ""): t for t in events.EVENT_TYPES}
    found: list[str] = []
    for item in text.split(","):
        key = item.strip().lower().replace("_", "").replace("-", "").replace(" ", "")
        if not key:
            continue
        if key == "all":
            return list(events.EVENT_TYPES)
        if key not in known:
            raise argparse.ArgumentTypeError(
                f"unknown event type {item.strip()!r};"
                f" use some of {','.join(events.EVENT_TYPES)}"
            )
        if known[key] not in found:
            found.append(known[key])
    if not found:
        raise argparse.ArgumentTypeError("give at least one event type")
    return found


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a positive number: {text}")
    return value


# -- running --------------------------------------------------------------------


def _json_command(command: Command) -> Callable[[Settings, argparse.Namespace], int]:
    """Wrap an action whose result is printed as JSON, as sesame.cli does."""

    def run(settings: Settings, args: argparse.Namespace) -> int:
        settings = cli._stores(settings)
        db.migrate(settings.database_url or "")
        box = crypto.SecretBox(
            crypto.load_or_create_key(settings.secret_key, settings.data_dir)
        )

        async def go() -> Any:
            async with await AsyncConnection.connect(
                settings.database_url or "", autocommit=True
            ) as conn:
                return await command(conn, box, args)

        print(json.dumps(asyncio.run(go()), indent=2, default=str))
        return 0

    return run


async def _account(conn: AsyncConnection[Any], account_id: str) -> None:
    cur = await conn.execute("select 1 from accounts where id = %s", (account_id,))
    if await cur.fetchone() is None:
        raise cli.CliError(f"no account {account_id}")


# -- actions --------------------------------------------------------------------


async def _add(
    conn: AsyncConnection[Any], box: crypto.SecretBox, args: argparse.Namespace
) -> Any:
    from workers import webhooks

    await _account(conn, args.account_id)
    name = args.name or await _free_name(conn, args.account_id, args.configuration_set)
    try:
        destination_id, secret = await webhooks.create_destination(
            conn,
            box,
            account_id=args.account_id,
            name=name,
            url=args.url,
            event_types=args.events,
            configuration_set=args.configuration_set,
            envelope="sns" if args.sns else "none",
        )
    except ValueError as exc:
        raise cli.CliError(str(exc)) from None
    except errors.ForeignKeyViolation:
        raise cli.CliError(
            f"no configuration set {args.configuration_set}"
            f" in account {args.account_id}"
        ) from None
    except errors.UniqueViolation:
        raise cli.CliError(f"a destination named {name} already exists") from None
    [summary] = await _summaries(conn, args.account_id, destination_id)
    return {
        **summary,
        "SigningSecret": secret,
        "SignatureHeader": webhooks.SIGNATURE_HEADER,
    }


async def _free_name(
    conn: AsyncConnection[Any], account_id: str, configuration_set: str | None
) -> str:
    """Return webhook-N, the first N not taken in the account or set."""
    cur = await conn.execute(
        "select name from event_destinations where account_id = %s"
        " and configuration_set is not distinct from %s",
        (account_id, configuration_set),
    )
    taken = {row[0] for row in await cur.fetchall()}
    n = 1
    while f"webhook-{n}" in taken:
        n += 1
    return f"webhook-{n}"


async def _list(
    conn: AsyncConnection[Any], box: crypto.SecretBox, args: argparse.Namespace
) -> Any:
    await _account(conn, args.account_id)
    return await _summaries(conn, args.account_id)


async def _summaries(
    conn: AsyncConnection[Any], account_id: str, destination_id: int | None = None
) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "select d.id, d.name, d.configuration_set, d.url, d.envelope,"
        " d.matching_event_types, d.enabled, d.signing_secret_sealed is not null,"
        f" to_char(d.created_at at time zone 'UTC', '{_ISO_UTC}'),"
        " (select coalesce(jsonb_object_agg(state, n), '{}') from ("
        "  select state, count(*) as n from webhook_deliveries w"
        "  where w.destination_id = d.id group by state) counts)"
        " from event_destinations d where d.account_id = %s"
        " and (%s::bigint is null or d.id = %s)"
        " order by d.configuration_set nulls first, d.name",
        (account_id, destination_id, destination_id),
    )
    out = []
    for row in await cur.fetchall():
        counts = {state: int(row[9].get(state, 0)) for state in STATES}
        out.append(
            {
                "Name": row[1],
                "ConfigurationSetName": row[2],
                "Url": row[3],
                "Envelope": row[4].upper(),
                "MatchingEventTypes": [t.upper() for t in row[5]],
                "Enabled": row[6],
                "Signed": row[7],
                "CreatedTimestamp": row[8],
                "Deliveries": counts,
            }
        )
    return out


async def _remove(
    conn: AsyncConnection[Any], box: crypto.SecretBox, args: argparse.Namespace
) -> Any:
    await _account(conn, args.account_id)
    cur = await conn.execute(
        "delete from event_destinations where account_id = %s and name = %s"
        " and configuration_set is not distinct from %s",
        (args.account_id, args.name, args.configuration_set),
    )
    if cur.rowcount == 0:
        where = (
            f" in configuration set {args.configuration_set}"
            if args.configuration_set
            else ""
        )
        raise cli.CliError(f"no destination named {args.name}{where}")
    return {
        "Name": args.name,
        "ConfigurationSetName": args.configuration_set,
        "Removed": True,
    }


async def _deliveries(
    conn: AsyncConnection[Any], box: crypto.SecretBox, args: argparse.Namespace
) -> Any:
    await _account(conn, args.account_id)
    cur = await conn.execute(
        "select w.id, w.event_id, e.event_type, e.message_id, e.recipient,"
        " d.name, d.configuration_set, w.state, w.attempts,"
        f" to_char(w.next_attempt_at at time zone 'UTC', '{_ISO_UTC}'),"
        " w.last_status, w.last_error,"
        f" to_char(w.created_at at time zone 'UTC', '{_ISO_UTC}')"
        " from webhook_deliveries w"
        " join event_destinations d on d.id = w.destination_id"
        " left join events e on e.id = w.event_id"
        " where d.account_id = %s and (%s::text is null or w.state = %s)"
        " order by w.id desc limit %s",
        (args.account_id, args.state, args.state, args.limit),
    )
    return [
        {
            "DeliveryId": row[0],
            "EventId": str(row[1]),
            "EventType": events.event_type_name(row[2]) if row[2] else None,
            "MessageId": row[3],
            "Recipient": row[4],
            "Destination": row[5],
            "ConfigurationSetName": row[6],
            "State": row[7].upper(),
            "Attempts": row[8],
            "NextAttemptTime": row[9] if row[7] == "pending" else None,
            "LastStatus": row[10],
            "LastError": row[11],
            "CreatedTimestamp": row[12],
        }
        for row in await cur.fetchall()
    ]


if __name__ == "__main__":
    sys.exit(main())
