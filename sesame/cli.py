"""The ``sesame`` command: run components, migrate, and manage accounts."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from sesame import (
    accounts,
    crypto,
    db,
    embedded,
    operator_cli,
    suppression_cli,
    webhook_cli,
)
from sesame import log as logsetup
from sesame.settings import Settings, get_settings


class CliError(Exception):
    """A failure reported as one line on stderr with a non-zero exit status."""


def main(argv: list[str] | None = None) -> int:
    return run(_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; a failure is one line on stderr and exit status 1."""
    settings = get_settings()
    logsetup.setup(settings.log_level)
    try:
        result: int = args.run(settings, args)
        return result
    except CliError as exc:
        print(f"sesame: {exc}", file=sys.stderr)
        return 1
    except psycopg.OperationalError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"sesame: database unavailable: {first}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sesame", description="Self-hosted, Amazon SES-compatible email sending."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, run: Callable[[Settings, argparse.Namespace], int], text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(run=run)
        return p

    command("up", _up, "run every component under one supervisor")
    command("api", _api, "run the HTTP API (SES v1 Query, SESv2)")
    command("smtp", _smtp, "run the SMTP submission server")
    command("mx", _mx, "run the inbound MX for bounces and complaints")
    command("worker", _worker, "run one delivery worker process")
    command("scheduler", _scheduler, "run the scheduler (dispatch, sweeps, rollups)")
    command("migrate", _migrate, "apply database migrations (idempotent)")
    operator_cli.add_config_arguments(
        command(
            "config", _config, "list every setting with its default, unit and value"
        )
    )
    suppression_cli.add_parser(sub)
    operator_cli.add_parser(sub)
    webhook_cli.add_parser(sub)

    identity = sub.add_parser(
        "identity", help="manage identities", description="manage identities"
    )
    ident = identity.add_subparsers(
        dest="identity_command", required=True, metavar="ACTION"
    )
    p = ident.add_parser(
        "add-ed25519",
        help="sign a DKIM domain with a second, Ed25519 key (RFC 8463)",
        description="sign a DKIM domain with a second, Ed25519 key (RFC 8463);"
        " prints the TXT record to publish",
    )
    p.set_defaults(
        run=lambda settings, args: _account(settings, args, _identity_ed25519)
    )
    p.add_argument("account_id")
    p.add_argument("domain")

    account = sub.add_parser(
        "account", help="manage accounts", description="manage accounts"
    )
    acc = account.add_subparsers(
        dest="account_command", required=True, metavar="ACTION"
    )

    def account_command(
        name: str, run: Callable[..., Awaitable[Any]], text: str
    ) -> argparse.ArgumentParser:
        p = acc.add_parser(name, help=text, description=text)
        p.set_defaults(run=lambda settings, args: _account(settings, args, run))
        return p

    p = account_command(
        "create", _account_create, "create an account; print its credentials as JSON"
    )
    p.add_argument("name")
    p.add_argument("--production", action="store_true", help="skip the sandbox")
    account_command("list", _account_list, "list accounts as JSON")
    for name, run, text in (
        ("show", _account_show, "show one account's quota, usage and status as JSON"),
        ("grant-production", _account_grant, "move an account out of the sandbox"),
        ("pause", _account_pause, "pause an account's sending (operator)"),
        ("resume", _account_resume, "resume an account's sending (operator)"),
    ):
        account_command(name, run, text).add_argument("account_id")
    p = account_command(
        "review", _account_review, "end a reputation review: healthy or probation"
    )
    p.add_argument("account_id")
    p.add_argument("--status", choices=("healthy", "probation"), required=True)
    p = account_command("set-quota", _account_set_quota, "override an account's quota")
    p.add_argument("account_id")
    p.add_argument(
        "--max-24-hour-send", type=float, help="recipients per rolling 24 hours"
    )
    p.add_argument("--max-send-rate", type=float, help="recipients per second")
    return parser


# -- components ---------------------------------------------------------------


def _stores(settings: Settings) -> Settings:
    """Settings with database and Redis URLs, starting embedded stores if unset."""
    if settings.database_url and settings.redis_url:
        return settings
    stores = embedded.start(settings)
    embedded.export(stores)
    return settings.model_copy(
        update={"database_url": stores.database_url, "redis_url": stores.redis_url}
    )


def _up(settings: Settings, args: argparse.Namespace) -> int:
    from sesame import supervisor

    return supervisor.run(_stores(settings))


def _api(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    settings = _stores(settings)
    db.migrate(settings.database_url or "")
    _metrics(settings, "api")
    uvicorn.run(
        "api.app:app_from_environment",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        workers=settings.api_workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=10,
    )
    return 0


def _smtp(settings: Settings, args: argparse.Namespace) -> int:
    from mta.submission import server

    settings = _stores(settings)
    db.migrate(settings.database_url or "")
    _metrics(settings, "smtp")
    return server.run(settings)


def _mx(settings: Settings, args: argparse.Namespace) -> int:
    from mta.inbound import server

    settings = _stores(settings)
    db.migrate(settings.database_url or "")
    _metrics(settings, "mx")
    return server.run(settings)


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from workers import deliver

    settings = _stores(settings)
    _metrics(settings, "worker")
    return deliver.run_worker(settings)


def _scheduler(settings: Settings, args: argparse.Namespace) -> int:
    from workers import scheduler

    settings = _stores(settings)
    _metrics(settings, "scheduler")
    return asyncio.run(scheduler.run(settings))


def _metrics(settings: Settings, component: str) -> None:
    """Expose a component's metrics (sesame/metrics.py says where)."""
    from sesame import metrics

    if component == "api":
        # /metrics is on the API port; several uvicorn workers share a directory.
        metrics.share_between_workers(
            settings.data_dir, settings.api_port, settings.api_workers
        )
        return
    metrics.expose(component, settings.metrics_host, settings.metrics_port)


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    settings = _stores(settings)
    applied = db.migrate(settings.database_url or "")
    print(json.dumps({"Applied": applied}))
    return 0


def _config(settings: Settings, args: argparse.Namespace) -> int:
    return operator_cli.show_config(settings, args)


# -- accounts -----------------------------------------------------------------


def _account(
    settings: Settings, args: argparse.Namespace, run: Callable[..., Awaitable[Any]]
) -> int:
    settings = _stores(settings)
    db.migrate(settings.database_url or "")

    async def go() -> Any:
        box = crypto.SecretBox(
            crypto.load_or_create_key(settings.secret_key, settings.data_dir)
        )
        async with await psycopg.AsyncConnection.connect(
            settings.database_url or "", autocommit=True
        ) as conn:
            return await run(conn, box, settings, args)

    print(json.dumps(asyncio.run(go()), indent=2, default=str))
    return 0


async def _account_create(
    conn: Any, box: crypto.SecretBox, settings: Settings, args: argparse.Namespace
) -> Any:
    account, creds = await accounts.create_account(
        conn, box, settings, args.name, args.production
    )
    return {
        "AccountId": account.id,
        "AccessKeyId": creds.access_key_id,
        "SecretAccessKey": creds.secret_access_key,
        "SmtpUsername": creds.smtp_username,
        "SmtpPassword": creds.smtp_password,
    }


async def _account_list(
    conn: Any, box: crypto.SecretBox, settings: Settings, args: argparse.Namespace
) -> Any:
    return [_summary(a) for a in await accounts.list_accounts(conn)]


async def _account_show(
    conn: Any, box: crypto.SecretBox, settings: Settings, args: argparse.Namespace
) -> Any:
    account = await _load(conn, args.account_id)
    cur = await conn.execute(
        "select coalesce(sum(recipient_count), 0) from messages where account_id = %s"
        " and interface <> 'system' and created_at > now() - interval '24 hours'",
        (account.id,),
    )
    sent = (await cur.fetchone())[0]
    cur = await conn.execute(
        "select state, count(*) from recipients where account_id = %s group by state",
        (account.id,),
    )
    states = {row[0]: row[1] for row in await cur.fetchall()}
    return {
        **_summary(account),
        "SentLast24Hours": float(sent),
        "Recipients": states,
        "Reputation": await _reputation(conn, account.id),
    }


async def _reputation(conn: Any, account_id: str) -> dict[str, Any]:
    """Bounce and complaint rates as the enforcement policy judges them."""
    from quota import policy, reputation

    history = (await reputation.load_histories(conn, account_ids=[account_id])).get(
        account_id
    )
    rep = policy.reputation(history) if history else None
    changes = await reputation.recent_changes(conn, account_id, limit=5)
    return {
        "Recipients": rep.recipients if rep else 0,
        "Bounces": rep.bounces if rep else 0,
        "Complaints": rep.complaints if rep else 0,
        "BounceRate": rep.bounce_rate if rep else None,
        "ComplaintRate": rep.complaint_rate if rep else None,
        "RecentChanges": [
            {
                "At": change.at.isoformat(),
                "Kind": change.kind,
                "Reason": change.reason,
                "From": change.old_status,
                "To": change.new_status,
            }
            for change in changes
        ],
    }


async def _account_grant(
    conn: Any, box: crypto.SecretBox, settings: Settings, args: argparse.Namespace
) -> Any:
    account = await _load(conn, args.account_id)
    changes: dict[str, Any] = {"production": True}
    if not account.quota_override and not account.production:
        changes["max_24_hour_send"] = settings.production_max_24_hour_send
        changes["max_send_rate"] = settings.production_max_send_rate
    if account.details is not None:
        # Settle a PutAccountDetails request: GetAccount then shows it GRANTED.
        review = {**account.details.get("ReviewDetails", {}), "Status": "GRANTED"}
        changes["details"] = Jsonb({**account.details, "ReviewDetails": review})
    return _summary(await accounts.update_account(conn, account.id, **changes))


async def _account_set_quota(
    conn: Any, box: crypto.SecretBox, settings: Settings, args: argparse.Namespace
) -> Any:
    account = await _load(conn, args.account_id)
    changes: dict[str, Any] = {"quota_override": True}
    if args.max_24_hour_send is not None:
        if args.max_24_hour_send < 0:
            raise CliError("--max-24-hour-send must not be negative")
        changes["max_24_hour_send"] = args.max_24_hour_send
    if args.max_send_rate is not None:
        if args.max_send_rate <= 0:
            raise CliError("--max-send-rate must be positive")
        changes["max_send_rate"] = args.max_send_rate
    if len(changes) == 1:
        raise CliError("give --max-24-hour-send and/or --max-send-rate")
    return _summary(await accounts.update_account(conn, account.id, **changes))


async def _account_pause(
    conn: Any, box: crypto.SecretBox, settings: Settings, args: argparse.Namespace
) -> Any:
    account = await _load(conn, args.account_id)
    return _summary(
        await accounts.update_account(conn, account.id, paused_by_operator=True)
    )


async def _account_resume(
    conn: Any, box: crypto.SecretBox, settings: Settings, args: argparse.Namespace
) -> Any:
    account = await _load(conn, args.account_id)
    return _summary(
        await accounts.update_account(conn, account.id, paused_by_operator=False)
    )


async def _account_review(
    conn: Any, box: crypto.SecretBox, settings: Settings, args: argparse.Namespace
) -> Any:
    from quota import reputation

    change = await reputation.review(conn, args.account_id, args.status)
    if change is None:
        raise CliError(f"no account {args.account_id}")
    return _summary(await _load(conn, args.account_id))


async def _identity_ed25519(
    conn: Any, box: crypto.SecretBox, settings: Settings, args: argparse.Namespace
) -> Any:
    from mta import identities
    from mta.delivery import dkim

    name = identities.normalize_domain(args.domain)
    identity = await identities.get_identity(conn, args.account_id, name)
    if identity is None or identity.kind != "domain":
        raise CliError(f"account {args.account_id} has no domain identity {name}")
    if not identity.dkim_enabled:
        raise CliError(f"{name} has no DKIM keys yet; call VerifyDomainDkim first")
    selector = await identities.add_ed25519_key(conn, box, identity)
    key = next(
        k
        for k in await identities.dkim_keys(conn, identity.id)
        if k.selector == selector
    )
    return {
        "Selector": selector,
        "DnsRecord": {
            "Name": f"{selector}._domainkey.{name}",
            "Type": "TXT",
            "Value": dkim.dns_record(key.public_key, key.algorithm),
        },
    }


async def _load(conn: Any, account_id: str) -> accounts.Account:
    account = await accounts.get_account(conn, account_id)
    if account is None:
        raise CliError(f"no account {account_id}")
    return account


def _summary(account: accounts.Account | None) -> dict[str, Any]:
    assert account is not None
    return {
        "AccountId": account.id,
        "Name": account.name,
        "ProductionAccessEnabled": account.production,
        "SendingEnabled": account.sending_enabled,
        "PausedByOperator": account.paused_by_operator,
        "EnforcementStatus": account.enforcement_status.upper(),
        "SendQuota": {
            "Max24HourSend": account.max_24_hour_send,
            "MaxSendRate": account.max_send_rate,
        },
        "QuotaOverride": account.quota_override,
        "CreatedTimestamp": account.created_at.isoformat(),
    }


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: the command
    # modules raise sesame.cli.CliError, which must be the class caught above.
    from sesame.cli import main as _main

    sys.exit(_main())
