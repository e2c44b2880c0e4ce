"""``sesame queue``, ``sesame message`` and ``sesame config``: operate from the shell.

Each command prints a table, or JSON with ``--json``; bulk changes show a
progress bar when stderr is a terminal. The queue operations themselves live in
mta/queue.py, so the same rules hold wherever they are called from.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from psycopg import AsyncConnection

from mta import queue
from sesame import cli, db
from sesame.settings import Settings

if TYPE_CHECKING:
    # Imported where used: every sesame command loads this module, and rich
    # costs ~0.15 s that only these commands need.
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

__all__ = ["add_config_arguments", "add_parser", "config_rows", "main", "show_config"]

# Groups listed in a bounce or purge table; --json lists every one.
_MAX_TABLE_GROUPS = 50
_DURATION = re.compile(r"(\d+)\s*([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_UNIT = re.compile(r"(.*?)\s*\(([^()]+)\)")
# Settings whose values are secret, or may carry a password.
_SECRET_SETTINGS = frozenset({"secret_key"})
_URL_SETTINGS = frozenset({"database_url", "redis_url"})


@dataclass(frozen=True, slots=True)
class _Output:
    """What a command prints: JSON for --json, else a rendering on a console."""

    data: Any
    render: Callable[[Console], None]


Run = Callable[[Settings, argparse.Namespace], int]
Action = Callable[[AsyncConnection[Any], argparse.Namespace], Awaitable[_Output]]


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Register ``queue ...`` and ``message show`` on a sesame parser."""
    _add_queue(subparsers)
    _add_message(subparsers)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Give ``sesame config`` its options."""
    parser.add_argument(
        "--json", action="store_true", help="print JSON instead of a table"
    )


def main(argv: list[str] | None = None) -> int:
    """Run these commands on their own: python -m sesame.operator_cli queue ..."""
    parser = argparse.ArgumentParser(
        prog="sesame", description="Operate Sesame's delivery queue."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser(sub)
    text = "list every setting with its default, unit and value"
    config = sub.add_parser("config", help=text, description=text)
    add_config_arguments(config)
    config.set_defaults(run=show_config)
    args = parser.parse_args(argv)
    return cli.run(args)


# -- parsers --------------------------------------------------------------------


def _add_queue(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    text = "inspect the delivery queue; suspend, retry, bounce or purge recipients"
    parser = subparsers.add_parser("queue", help=text, description=text)
    actions = parser.add_subparsers(
        dest="queue_command", required=True, metavar="ACTION"
    )

    def action(name: str, text: str, run: Action) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=text, description=text)
        p.add_argument(
            "--json", action="store_true", help="print JSON instead of a table"
        )
        p.set_defaults(run=_command(run))
        return p

    p = action(
        "summary",
        "count waiting recipients by state, with the age of the oldest due one",
        _summary,
    )
    p.add_argument(
        "--by",
        choices=("account", "domain", "state"),
        default="domain",
        help="one row per account, destination domain or state (default: domain)",
    )
    p.add_argument("--account", metavar="ID", help="only this account's recipients")

    p = action(
        "suspend",
        "stop delivering to a domain or for an account; accepting goes on",
        _suspend,
    )
    _target(p)
    p.add_argument("--reason", metavar="TEXT", help="shown in listings")
    p.add_argument(
        "--until",
        type=_until,
        metavar="ISO8601",
        help="end of the suspension: a time (UTC if no zone) or a duration such"
        " as 30m, 2h or 1d; default: until resumed",
    )

    p = action("resume", "deliver again to a suspended domain or account", _resume)
    _target(p)

    action("suspensions", "list the suspensions in force", _suspensions)

    p = action(
        "retry", "make matching deferred recipients due now (all if no filter)", _retry
    )
    _selectors(p)

    p = action(
        "bounce",
        "bounce matching queued or deferred recipients; the sender gets a bounce",
        _bounce,
    )
    _selectors(p, bulk=True)
    p.add_argument(
        "--reason", metavar="TEXT", help="added to the bounce's diagnostic code"
    )

    p = action(
        "purge",
        "delete matching queued or deferred recipients without telling the sender",
        _purge,
    )
    _selectors(p, bulk=True)


def _add_message(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    text = "inspect one message"
    parser = subparsers.add_parser("message", help=text, description=text)
    actions = parser.add_subparsers(
        dest="message_command", required=True, metavar="ACTION"
    )
    text = "show a message, its recipients, every attempt and every event"
    p = actions.add_parser("show", help=text, description=text)
    p.add_argument("message_id")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_command(_message_show))


def _target(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--domain", metavar="D", help="a destination domain")
    group.add_argument("--account", metavar="ID", help="an account id")


def _selectors(p: argparse.ArgumentParser, bulk: bool = False) -> None:
    p.add_argument("--domain", metavar="D", help="recipients at this domain")
    p.add_argument("--account", metavar="ID", help="recipients of this account")
    p.add_argument("--message", metavar="MESSAGE_ID", help="recipients of this message")
    if not bulk:
        return
    p.add_argument(
        "--state",
        choices=queue.PENDING_STATES,
        help="only queued or only deferred recipients (default: both)",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="allow matching the whole queue when no other filter is given",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="only show what would change (the default without --yes)",
    )
    mode.add_argument("--yes", action="store_true", help="make the change")


def _until(text: str) -> datetime:
    match = _DURATION.fullmatch(text.strip().lower())
    if match:
        seconds = int(match[1]) * _UNITS[match[2]]
        return datetime.now(UTC) + timedelta(seconds=seconds)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time or a duration: {text}"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- running --------------------------------------------------------------------


def _command(action: Action) -> Run:
    """Wrap an action: connect to migrated stores, run it, print its output."""

    def run(settings: Settings, args: argparse.Namespace) -> int:
        settings = cli._stores(settings)
        db.migrate(settings.database_url or "")

        async def go() -> _Output:
            async with await AsyncConnection.connect(
                settings.database_url or "", autocommit=True
            ) as conn:
                try:
                    return await action(conn, args)
                except queue.QueueError as exc:
                    raise cli.CliError(str(exc)) from None

        output = asyncio.run(go())
        if args.json:
            print(json.dumps(output.data, indent=2, default=str))
        else:
            output.render(_console())
        return 0

    return run


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output is not cut to 80 columns: a long address stays greppable.
    width = None if stream.isatty() else 10_000
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


class _Bar:
    """A rich progress bar on stderr, driven through queue.Progress."""

    def __init__(self, label: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=_console(stderr=True),
            transient=True,
        )
        self._label = label
        self._task: Any = None

    def start(self, total: int) -> None:
        self._task = self._progress.add_task(self._label, total=total)
        self._progress.start()

    def advance(self, done: int) -> None:
        self._progress.advance(self._task, done)

    def stop(self) -> None:
        self._progress.stop()


@contextmanager
def _progress(label: str) -> Iterator[_Bar | None]:
    """A progress bar if stderr is a terminal; nothing in pipes and logs."""
    if not sys.stderr.isatty():
        yield None
        return
    bar = _Bar(label)
    try:
        yield bar
    finally:
        bar.stop()


# -- rendering helpers ----------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    text = value.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _age(seconds: float | None) -> str:
    """Render a duration as its two largest units: 3d 4h, 5m 12s, 7s."""
    if seconds is None:
        return "-"
    left = max(0, int(seconds))
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    first = next((i for i, (_, size) in enumerate(units) if left >= size), 3)
    parts: list[str] = []
    for unit, size in units[first : first + 2]:
        parts.append(f"{left // size}{unit}")
        left %= size
    return " ".join(parts)


def _n(count: int, noun: str = "recipient") -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _cell(value: Any) -> Text:
    from rich.text import Text

    # Text, not str: rich would read "[...]" in an address or reply as markup.
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, datetime):
        return Text(_when(value))
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    return Text(str(value))


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    title: str | None = None,
    numeric: frozenset[str] = frozenset(),
) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    for header in headers:
        table.add_column(header, justify="right" if header in numeric else "left")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    return table


def _fields(pairs: Sequence[tuple[str, Any]], title: str | None = None) -> Table:
    """A two-column table of one record's fields."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in pairs:
        table.add_row(name, _cell(value))
    return table


def _selector(args: argparse.Namespace, bulk: bool = False) -> queue.Selector:
    domain = queue.normalize_domain(args.domain) if args.domain else None
    states = (args.state,) if bulk and args.state else queue.PENDING_STATES
    return queue.Selector(domain, args.account, args.message, states)


def _suspension_json(s: queue.Suspension) -> dict[str, Any]:
    return {
        "Kind": s.kind,
        "Value": s.value,
        "Reason": s.reason,
        "CreatedAt": _iso(s.created_at),
        "Until": _iso(s.until),
    }


def _target_of(args: argparse.Namespace) -> tuple[queue.SuspensionKind, str]:
    if args.domain is not None:
        return "domain", queue.normalize_domain(args.domain)
    return "account", args.account


# -- queue summary --------------------------------------------------------------

_KEY_NAMES = {"account": "AccountId", "domain": "Domain", "state": "State"}


def _group_json(group: queue.QueueGroup, key: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {} if key is None else {key: group.key}
    data.update(
        {
            "Queued": group.queued,
            "Deferred": group.deferred,
            "Sending": group.sending,
            "Due": group.due,
            "OldestDueSeconds": _round(group.oldest_due_seconds),
            "OldestSeconds": _round(group.oldest_seconds),
        }
    )
    if key is not None and group.suspended is not None:
        data["Suspended"] = group.suspended
    return data


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


async def _summary(conn: AsyncConnection[Any], args: argparse.Namespace) -> _Output:
    by = cast(queue.SummaryKey, args.by)
    result = await queue.summary(conn, by, args.account)
    key = _KEY_NAMES[by]
    data = {
        "By": by,
        "Groups": [_group_json(g, key) for g in result.groups],
        "Total": _group_json(result.total, None),
        "Suspensions": [_suspension_json(s) for s in result.suspensions],
    }

    def render(console: Console) -> None:
        # By state, each row has one non-zero count: show it as one column.
        counts = ["Recipients"] if by == "state" else ["Queued", "Deferred", "Sending"]
        headers = [key, *counts, "Due", "Oldest due", "Oldest"]
        if by != "state":
            headers.append("Suspended")
        rows: list[list[Any]] = []
        for g in [*result.groups, result.total]:
            row: list[Any] = ["total" if g is result.total else g.key]
            if by == "state":
                row.append(g.queued + g.deferred + g.sending)
            else:
                row += [g.queued, g.deferred, g.sending]
            row += [g.due, _age(g.oldest_due_seconds), _age(g.oldest_seconds)]
            if by != "state":
                row.append(g.suspended)
            rows.append(row)
        title = "Waiting recipients" + (
            f" of account {args.account}" if args.account else ""
        )
        console.print(
            _table(
                headers,
                rows,
                title=title,
                numeric=frozenset([*counts, "Due", "Oldest due", "Oldest"]),
            )
        )
        if result.suspensions:
            console.print(_suspension_table(result.suspensions))

    return _Output(data, render)


def _suspension_table(items: Sequence[queue.Suspension]) -> Table:
    return _table(
        ["Kind", "Value", "Since", "Until", "Reason"],
        [(s.kind, s.value, s.created_at, s.until, s.reason) for s in items],
        title="Suspensions in force",
    )


# -- suspend, resume ------------------------------------------------------------


async def _suspend(conn: AsyncConnection[Any], args: argparse.Namespace) -> _Output:
    kind, value = _target_of(args)
    if args.until is not None and args.until <= datetime.now(UTC):
        raise cli.CliError("--until is in the past")
    suspension = await queue.suspend(conn, kind, value, args.reason, args.until)
    waiting = await queue.pending_count(conn, _waiting(kind, suspension.value))
    data = {**_suspension_json(suspension), "Waiting": waiting}

    def render(console: Console) -> None:
        until = _when(suspension.until) if suspension.until else "resumed"
        console.print(
            f"Delivery suspended for {kind} {suspension.value} until {until};"
            f" {_n(waiting)} wait.",
            markup=False,
        )

    return _Output(data, render)


async def _resume(conn: AsyncConnection[Any], args: argparse.Namespace) -> _Output:
    kind, value = _target_of(args)
    suspension = await queue.resume(conn, kind, value)
    if suspension is None:
        raise cli.CliError(f"{kind} {value} is not suspended")
    waiting = await queue.pending_count(conn, _waiting(kind, value))
    data = {**_suspension_json(suspension), "Resumed": True, "Waiting": waiting}

    def render(console: Console) -> None:
        console.print(
            f"Delivery resumed for {kind} {value}; {_n(waiting)} wait.",
            markup=False,
        )

    return _Output(data, render)


def _waiting(kind: str, value: str) -> queue.Selector:
    if kind == "domain":
        return queue.Selector(domain=value)
    return queue.Selector(account_id=value)


async def _suspensions(conn: AsyncConnection[Any], args: argparse.Namespace) -> _Output:
    items = await queue.suspensions(conn)

    def render(console: Console) -> None:
        if not items:
            console.print("No suspensions in force.")
            return
        console.print(_suspension_table(items))

    return _Output([_suspension_json(s) for s in items], render)


# -- retry, bounce, purge -------------------------------------------------------


async def _retry(conn: AsyncConnection[Any], args: argparse.Namespace) -> _Output:
    selector = _selector(args)
    await queue.check_selector(conn, selector)
    with _progress("retrying") as bar:
        retried = await queue.retry(conn, selector, progress=bar)
    held = await _held(conn, selector)
    data = {"Retried": retried, "StillSuspended": [_suspension_json(s) for s in held]}

    def render(console: Console) -> None:
        console.print(f"{_n(retried)} due now.")
        for s in held:
            console.print(
                f"Note: {s.kind} {s.value} is suspended; resume it to deliver.",
                markup=False,
            )

    return _Output(data, render)


async def _held(
    conn: AsyncConnection[Any], selector: queue.Selector
) -> list[queue.Suspension]:
    """The suspensions in force that name the selector's domain or account."""
    return [
        s
        for s in await queue.suspensions(conn)
        if (s.kind, s.value)
        in {("domain", selector.domain), ("account", selector.account_id)}
    ]


async def _bounce(conn: AsyncConnection[Any], args: argparse.Namespace) -> _Output:
    return await _bulk(conn, args, "bounce")


async def _purge(conn: AsyncConnection[Any], args: argparse.Namespace) -> _Output:
    return await _bulk(conn, args, "purge")


async def _bulk(
    conn: AsyncConnection[Any], args: argparse.Namespace, action: str
) -> _Output:
    """Show what a bounce or purge matches; with --yes, do it."""
    selector = _selector(args, bulk=True)
    if not selector.narrowed and not args.all:
        raise cli.CliError(
            "give --domain, --account or --message, or --all for the whole queue"
        )
    await queue.check_selector(conn, selector)
    plan = await queue.plan(conn, selector)
    act = args.yes and not args.dry_run
    done = 0
    if act and plan.matched:
        with _progress("bouncing" if action == "bounce" else "purging") as bar:
            if action == "bounce":
                done = await queue.bounce(conn, selector, args.reason, progress=bar)
            else:
                done = await queue.purge(conn, selector, progress=bar)
    past = "Bounced" if action == "bounce" else "Purged"
    data = {
        "Action": action,
        "DryRun": not act,
        "Matched": plan.matched,
        past: done,
        "SkippedSending": plan.skipped_sending,
        "Groups": [
            {
                "AccountId": g.account_id,
                "Domain": g.domain,
                "State": g.state,
                "Recipients": g.recipients,
            }
            for g in plan.groups
        ],
        "Sample": [
            {
                "RecipientId": r.id,
                "MessageId": r.message_id,
                "AccountId": r.account_id,
                "Address": r.address,
                "State": r.state,
                "Attempts": r.attempts,
                "NextAttemptAt": _iso(r.next_attempt_at),
            }
            for r in plan.sample
        ],
    }
    if not act and not args.dry_run and plan.matched:
        print(
            f"sesame: nothing changed; add --yes to {action} {_n(plan.matched)}",
            file=sys.stderr,
        )

    def render(console: Console) -> None:
        verb = "bounce" if action == "bounce" else "purge"
        if act:
            matched = _n(plan.matched, "matching recipient")
            console.print(f"{past} {done} of {matched}.")
        else:
            console.print(
                f"Would {verb} {_n(plan.matched)} (dry run: nothing changed)."
            )
        if plan.skipped_sending:
            console.print(
                f"Skipped {_n(plan.skipped_sending)} being delivered now;"
                " their attempts finish and record their outcome."
            )
        if not plan.groups:
            return
        shown = plan.groups[:_MAX_TABLE_GROUPS]
        console.print(
            _table(
                ["Account", "Domain", "State", "Recipients"],
                [(g.account_id, g.domain, g.state, g.recipients) for g in shown],
                title="Matched",
                numeric=frozenset({"Recipients"}),
            )
        )
        if len(plan.groups) > len(shown):
            console.print(
                f"... and {len(plan.groups) - len(shown)} more groups (see --json)."
            )
        if not act:
            console.print(
                _table(
                    ["Recipient", "Message", "Address", "State", "Attempts", "Next"],
                    [
                        (
                            r.id,
                            r.message_id,
                            r.address,
                            r.state,
                            r.attempts,
                            r.next_attempt_at,
                        )
                        for r in plan.sample
                    ],
                    title=f"First {len(plan.sample)} by id",
                    numeric=frozenset({"Recipient", "Attempts"}),
                )
            )

    return _Output(data, render)


# -- message show ---------------------------------------------------------------

_DETAIL_NAMES = {
    "attempt": "Attempt",
    "mx_host": "MxHost",
    "smtp_code": "SmtpCode",
    "enhanced_status": "EnhancedStatus",
    "reply": "Reply",
    "duration_ms": "DurationMs",
    "bounce_type": "BounceType",
    "bounce_subtype": "BounceSubtype",
    "feedback_id": "FeedbackId",
    "detail": "Detail",
}


async def _message_show(
    conn: AsyncConnection[Any], args: argparse.Namespace
) -> _Output:
    found = await queue.message_history(conn, args.message_id)
    if found is None:
        raise cli.CliError(f"no message {args.message_id}")
    m = found.message
    data = {
        "Message": {
            "MessageId": m.id,
            "AccountId": m.account_id,
            "Source": m.source,
            "FromDomain": m.from_domain,
            "Subject": m.subject,
            "SizeBytes": m.size,
            "RecipientCount": m.recipient_count,
            "Interface": m.interface,
            "ConfigurationSet": m.configuration_set,
            "Tags": m.tags,
            "CreatedAt": _iso(m.created_at),
        },
        "Recipients": [
            {
                "RecipientId": r.id,
                "Address": r.address,
                "Domain": r.domain,
                "State": r.state,
                "Attempts": r.attempts,
                "NextAttemptAt": _iso(r.next_attempt_at),
                "ExpiresAt": _iso(r.expires_at),
                "LeaseUntil": _iso(r.lease_until),
                "SmtpCode": r.smtp_code,
                "EnhancedStatus": r.enhanced_status,
                "Response": r.response,
                "MxHost": r.mx_host,
                "Suspended": r.suspended,
                "CreatedAt": _iso(r.created_at),
                "UpdatedAt": _iso(r.updated_at),
            }
            for r in found.recipients
        ],
        "History": [
            {
                "Time": _iso(h.time),
                "Kind": h.kind,
                "Name": h.name,
                "RecipientId": h.recipient_id,
                "Address": h.address,
                **{_DETAIL_NAMES.get(k, k): v for k, v in h.details.items()},
            }
            for h in found.history
        ],
    }

    def render(console: Console) -> None:
        console.print(
            _fields(
                [
                    ("Message", m.id),
                    ("Account", m.account_id),
                    ("Source", m.source),
                    ("Subject", m.subject),
                    ("Size", f"{m.size} bytes"),
                    ("Interface", m.interface),
                    ("Configuration set", m.configuration_set),
                    ("Created", m.created_at),
                ]
            )
        )
        console.print(
            _table(
                ["Id", "Address", "State", "Attempts", "Next attempt", "Expires"]
                + ["Last reply"],
                [
                    (
                        r.id,
                        r.address,
                        r.state + (" (suspended)" if r.suspended else ""),
                        r.attempts,
                        r.next_attempt_at,
                        r.expires_at,
                        _reply(r.smtp_code, r.enhanced_status, r.response),
                    )
                    for r in found.recipients
                ],
                title="Recipients",
                numeric=frozenset({"Id", "Attempts"}),
            )
        )
        console.print(
            _table(
                ["Time", "Recipient", "What", "MX", "Code", "Status", "Detail"],
                [_history_row(h) for h in found.history],
                title="History",
            )
        )

    return _Output(data, render)


def _reply(code: int | None, status: str | None, text: str | None) -> str | None:
    parts = [str(p) for p in (code, status, text) if p]
    return " ".join(parts) or None


def _history_row(h: queue.HistoryEntry) -> tuple[Any, ...]:
    d = h.details
    if h.kind == "attempt":
        return (
            h.time,
            h.address,
            f"attempt {d['attempt']}: {h.name}",
            d.get("mx_host"),
            d.get("smtp_code"),
            d.get("enhanced_status"),
            d.get("reply"),
        )
    what = h.name
    if d.get("bounce_type"):
        what += f" ({d['bounce_type']}/{d.get('bounce_subtype')})"
    detail = d.get("detail")
    summary: Any = None
    if isinstance(detail, dict):
        summary = (
            detail.get("diagnosticCode")
            or detail.get("smtpResponse")
            or json.dumps(detail, default=str)
        )
    status = detail.get("status") if isinstance(detail, dict) else None
    return (h.time, h.address, what, None, None, status, summary)


# -- config ---------------------------------------------------------------------


def config_rows(settings: Settings) -> list[dict[str, Any]]:
    """Describe every setting: env var, default, unit, value (secrets hidden)."""
    rows = []
    for name, field in Settings.model_fields.items():
        description = field.description or ""
        match = _UNIT.fullmatch(description)
        unit = match[2] if match else None
        if match:
            description = match[1]
        rows.append(
            {
                "Setting": name,
                "EnvVar": "SESAME_" + name.upper(),
                "Default": _plain(field.default),
                "Unit": unit,
                "Value": _shown(name, getattr(settings, name)),
                "Description": description,
            }
        )
    return rows


def show_config(settings: Settings, args: argparse.Namespace) -> int:
    """Print every setting as a table, or as JSON with --json."""
    rows = config_rows(settings)
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2))
        return 0
    columns = ["Setting", "EnvVar", "Default", "Unit", "Value", "Description"]
    from rich.table import Table

    table = Table(title="Settings (environment variables)", title_justify="left")
    for header in ("Setting", "Env var", "Default", "Unit", "Current", "Description"):
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row[c]) for c in columns))
    _console().print(table)
    return 0


def _plain(value: Any) -> Any:
    """A value JSON can hold as is."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _shown(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _SECRET_SETTINGS:
        return "(set)"
    if name in _URL_SETTINGS:
        return _mask_url(str(value))
    return _plain(value)


def _mask_url(url: str) -> str:
    """Hide the password of a URL, in its user part or its query."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        name = user.split(":", 1)[0]
        netloc = f"{name}:***@{host}"
    query = urlencode(
        [
            (k, "***" if k.lower() == "password" else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


if __name__ == "__main__":
    sys.exit(main())
