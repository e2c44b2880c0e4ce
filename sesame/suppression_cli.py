"""``sesame suppression``: an account's suppression list, like SESv2's, from the shell.

Addresses are RFC 5321 mailboxes stored lower-cased; files are RFC 4180 CSV.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from psycopg import AsyncConnection

from mta import message
from sesame import cli, db
from sesame.settings import Settings

__all__ = ["REASONS", "add_parser", "main", "normalize_address"]

REASONS = ("BOUNCE", "COMPLAINT")
# Invalid import lines listed in the report; the rest are only counted.
_MAX_LISTED_ERRORS = 100
# ISO 8601 in UTC with milliseconds, as SES writes LastUpdateTime.
_ISO_UTC = 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'

Command = Callable[[AsyncConnection[Any], argparse.Namespace], Awaitable[Any]]


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``suppression add|remove|list|import|export`` on a sesame parser."""
    text = "manage an account's suppression list"
    parser = subparsers.add_parser("suppression", help=text, description=text)
    actions = parser.add_subparsers(
        dest="suppression_command", required=True, metavar="ACTION"
    )

    def action(name: str, text: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=text, description=text)
        p.add_argument("account_id")
        return p

    p = action("add", "suppress an address; print it as JSON")
    p.add_argument("address")
    p.add_argument("--reason", required=True, type=str.upper, choices=REASONS)
    p.set_defaults(run=_json_command(_add))

    p = action("remove", "stop suppressing an address")
    p.add_argument("address")
    p.set_defaults(run=_json_command(_remove))

    p = action("list", "list suppressed addresses as JSON, newest first")
    p.add_argument("--reason", type=str.upper, choices=REASONS)
    p.add_argument(
        "--since",
        type=_timestamp,
        metavar="ISO8601",
        help="only addresses added or updated at or after this time (UTC if no zone)",
    )
    p.set_defaults(run=_json_command(_list))

    p = action(
        "import", "suppress every address in a CSV file (address,reason); - is stdin"
    )
    p.add_argument("file", metavar="FILE.csv")
    p.set_defaults(run=_json_command(_import))

    p = action("export", "write suppressed addresses as CSV to stdout")
    p.add_argument("--reason", type=str.upper, choices=REASONS)
    p.set_defaults(run=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``sesame suppression ...`` on its own: python -m sesame.suppression_cli."""
    parser = argparse.ArgumentParser(
        prog="sesame", description="Manage suppression lists."
    )
    add_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(["suppression", *(sys.argv[1:] if argv is None else argv)])
    return cli.run(args)


def normalize_address(text: str) -> str:
    """Return the stored form of a bare address (lower-case, A-label domain).

    Raises ValueError with a one-line reason for anything else.
    """
    stripped = text.strip()
    if any(c in stripped for c in "<>()"):
        raise ValueError("give a bare address such as user@example.com")
    try:
        parsed = message.parse_address(stripped)
    except message.MessageError as exc:
        raise ValueError(exc.message) from None
    if parsed.display_name:
        raise ValueError("give a bare address such as user@example.com")
    return parsed.address.lower()


# -- running --------------------------------------------------------------------


def _connected(settings: Settings, run: Callable[[AsyncConnection[Any]], Any]) -> Any:
    """Run a coroutine function on one autocommit connection to migrated stores."""
    settings = cli._stores(settings)
    db.migrate(settings.database_url or "")

    async def go() -> Any:
        async with await AsyncConnection.connect(
            settings.database_url or "", autocommit=True
        ) as conn:
            return await run(conn)

    return asyncio.run(go())


def _json_command(
    command: Command,
) -> Callable[[Settings, argparse.Namespace], int]:
    """Wrap an action that returns a value to print as JSON, as sesame.cli does."""

    def run(settings: Settings, args: argparse.Namespace) -> int:
        result = _connected(settings, lambda conn: command(conn, args))
        print(json.dumps(result, indent=2, default=str))
        return 0

    return run


async def _account(conn: AsyncConnection[Any], account_id: str) -> None:
    cur = await conn.execute("select 1 from accounts where id = %s", (account_id,))
    if await cur.fetchone() is None:
        raise cli.CliError(f"no account {account_id}")


def _address(text: str) -> str:
    try:
        return normalize_address(text)
    except ValueError as exc:
        raise cli.CliError(f"invalid address {text.strip()!r}: {exc}") from None


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _summary(row: tuple[Any, ...]) -> dict[str, Any]:
    """Render a row like SESv2's SuppressedDestination."""
    address, reason, updated, message_id, feedback_id = row
    summary: dict[str, Any] = {
        "EmailAddress": address,
        "Reason": reason,
        "LastUpdateTime": updated,
    }
    if message_id or feedback_id:
        summary["Attributes"] = {"MessageId": message_id, "FeedbackId": feedback_id}
    return summary


# A manual entry keeps the automatic one's message and feedback ids only when it
# says the same thing; a changed reason makes them describe something else.
_UPSERT = (
    " on conflict (account_id, address) do update set reason = excluded.reason,"
    " updated_at = now(),"
    " message_id = case when suppressions.reason = excluded.reason"
    " then suppressions.message_id end,"
    " feedback_id = case when suppressions.reason = excluded.reason"
    " then suppressions.feedback_id end"
)
_COLUMNS = (
    f"address, reason, to_char(updated_at at time zone 'UTC', '{_ISO_UTC}'),"
    " message_id, feedback_id"
)


# -- actions --------------------------------------------------------------------


async def _add(conn: AsyncConnection[Any], args: argparse.Namespace) -> Any:
    address = _address(args.address)
    await _account(conn, args.account_id)
    cur = await conn.execute(
        "insert into suppressions (account_id, address, reason)"
        f" values (%s, %s, %s){_UPSERT} returning {_COLUMNS}",
        (args.account_id, address, args.reason),
    )
    row = await cur.fetchone()
    assert row is not None
    return _summary(row)


async def _remove(conn: AsyncConnection[Any], args: argparse.Namespace) -> Any:
    address = _address(args.address)
    await _account(conn, args.account_id)
    cur = await conn.execute(
        "delete from suppressions where account_id = %s and address = %s",
        (args.account_id, address),
    )
    if cur.rowcount == 0:
        raise cli.CliError(f"{address} is not on the suppression list")
    return {"EmailAddress": address, "Removed": True}


async def _list(conn: AsyncConnection[Any], args: argparse.Namespace) -> Any:
    await _account(conn, args.account_id)
    cur = await conn.execute(
        f"select {_COLUMNS} from suppressions where account_id = %s"
        " and (%s::text is null or reason = %s)"
        " and (%s::timestamptz is null or updated_at >= %s)"
        " order by updated_at desc, address",
        (args.account_id, args.reason, args.reason, args.since, args.since),
    )
    return [_summary(row) for row in await cur.fetchall()]


@dataclass
class _ImportFile:
    """The valid rows of an import file, last one per address, and the rest."""

    rows: dict[str, str]
    read: int = 0
    duplicates: int = 0
    invalid: int = 0
    errors: list[dict[str, Any]] | None = None

    def reject(self, line: int, error: str) -> None:
        self.invalid += 1
        if self.errors is None:
            self.errors = []
        if len(self.errors) < _MAX_LISTED_ERRORS:
            self.errors.append({"Line": line, "Error": error})


async def _import(conn: AsyncConnection[Any], args: argparse.Namespace) -> Any:
    await _account(conn, args.account_id)
    if args.file == "-":
        loaded = _read_csv(sys.stdin)
    else:
        try:
            with open(
                args.file, encoding="utf-8-sig", errors="replace", newline=""
            ) as f:
                loaded = _read_csv(f)
        except OSError as exc:
            raise cli.CliError(f"cannot read {args.file}: {exc.strerror}") from None
    inserted = updated = 0
    if loaded.rows:
        async with conn.transaction():
            await conn.execute(
                "create temp table suppression_import (address text, reason text)"
                " on commit drop"
            )
            cur = conn.cursor()
            async with cur.copy(
                "copy suppression_import (address, reason) from stdin"
            ) as copy:
                for address, reason in loaded.rows.items():
                    await copy.write_row((address, reason))
            await cur.execute(
                "with upserted as (insert into suppressions (account_id, address, reason)"
                " select %s, address, reason from suppression_import"
                f"{_UPSERT} returning (xmax = 0) as inserted)"
                " select count(*) filter (where inserted),"
                " count(*) filter (where not inserted) from upserted",
                (args.account_id,),
            )
            counts = await cur.fetchone()
            assert counts is not None
            inserted, updated = int(counts[0]), int(counts[1])
    return {
        "AccountId": args.account_id,
        "Read": loaded.read,
        "Imported": inserted,
        "Updated": updated,
        "Duplicates": loaded.duplicates,
        "Invalid": loaded.invalid,
        "Errors": loaded.errors or [],
    }


def _read_csv(stream: TextIO) -> _ImportFile:
    """Read address,reason rows; an optional header may name the columns."""
    loaded = _ImportFile(rows={})
    address_at, reason_at = 0, 1
    first = True
    for line, fields in _csv_rows(stream, loaded):
        if not fields or all(not f.strip() for f in fields):
            continue
        if first:
            first = False
            names = [f.strip().lower() for f in fields]
            if "address" in names:
                address_at = names.index("address")
                reason_at = names.index("reason") if "reason" in names else -1
                continue
        loaded.read += 1
        if address_at >= len(fields):
            loaded.reject(line, "missing address")
            continue
        reason = (
            fields[reason_at].strip().upper() if 0 <= reason_at < len(fields) else ""
        )
        if reason not in REASONS:
            loaded.reject(line, f"reason must be BOUNCE or COMPLAINT, not {reason!r}")
            continue
        try:
            address = normalize_address(fields[address_at])
        except ValueError as exc:
            loaded.reject(line, str(exc))
            continue
        if address in loaded.rows:
            loaded.duplicates += 1
        loaded.rows[address] = reason
    return loaded


def _csv_rows(stream: TextIO, loaded: _ImportFile) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields), counting rows the csv module cannot read."""
    reader = csv.reader(stream)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a field over the size limit, a stray NUL
            loaded.read += 1
            loaded.reject(reader.line_num, str(exc))
            continue
        yield reader.line_num, fields


def _export(settings: Settings, args: argparse.Namespace) -> int:
    out = sys.stdout.buffer

    async def run(conn: AsyncConnection[Any]) -> None:
        await _account(conn, args.account_id)
        cur = conn.cursor()
        async with cur.copy(
            "copy (select address, reason, to_char(updated_at at time zone 'UTC',"
            f" '{_ISO_UTC}') as last_update_time from suppressions"
            " where account_id = %s and (%s::text is null or reason = %s)"
            " order by address) to stdout (format csv, header)",
            (args.account_id, args.reason, args.reason),
        ) as copy:
            async for chunk in copy:
                out.write(chunk)

    sys.stdout.flush()
    _connected(settings, run)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
