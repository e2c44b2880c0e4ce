"""Fixtures for the operator tools: a real queue, and the CLI run as a user runs it."""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from sesame.settings import Settings
from tests.support.api_server import create_account, start_api, verify_identity


@functools.cache
def cli_module() -> str:
    """sesame.cli once it mounts the queue commands, else their own module."""
    from sesame import cli

    for action in cli._parser()._actions:
        if isinstance(action, argparse._SubParsersAction) and "queue" in action.choices:
            return "sesame.cli"
    return "sesame.operator_cli"


@dataclass
class Cli:
    settings: Settings

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SESAME_")},
            "SESAME_DATABASE_URL": self.settings.database_url or "",
            "SESAME_REDIS_URL": self.settings.redis_url or "",
            "SESAME_DATA_DIR": str(self.settings.data_dir),
            "SESAME_LOG_LEVEL": "WARNING",
        }
        module = "sesame.cli" if args and args[0] == "config" else cli_module()
        proc = subprocess.run(
            [sys.executable, "-m", module, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)


@pytest.fixture
def cli(settings: Settings) -> Cli:
    return Cli(settings)


def sql(settings: Settings, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


@pytest.fixture
def account(settings: Settings) -> Iterator[str]:
    """A fresh account; its mail and every suspension are gone afterwards."""
    created, _ = create_account(settings, f"ops-{uuid.uuid4().hex[:6]}", True)
    yield created.id
    _forget(settings, created.id)


def _forget(settings: Settings, account_id: str) -> None:
    # Left queued, suspended rows would keep other tests' drains waiting.
    sql(settings, "delete from delivery_suspensions")
    sql(settings, "delete from accounts where id = %s", account_id)  # cascades


def add_message(
    settings: Settings,
    account_id: str,
    recipients: list[tuple[str, str]],
    *,
    due_in: str = "-1 minute",
) -> tuple[str, dict[str, int]]:
    """Insert a message with (address, state) recipients; return ids."""
    message_id = f"0100{uuid.uuid4().hex}-op"
    ids: dict[str, int] = {}
    with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
        conn.execute(
            "insert into messages (id, account_id, source, subject, raw,"
            " recipient_count, interface) values (%s, %s, 'a@example.com',"
            " 'Operator test', 'Subject: x\r\n\r\nbody\r\n', %s, 'api')",
            (message_id, account_id, len(recipients)),
        )
        for address, state in recipients:
            lease = "now() + interval '10 minutes'" if state == "sending" else "null"
            row = conn.execute(
                "insert into recipients (message_id, account_id, address, domain,"
                " state, attempts, next_attempt_at, expires_at, lease_until)"
                " values (%s, %s, %s, %s, %s, %s, now() + %s::interval,"
                f" now() + interval '1 day', {lease}) returning id",
                (
                    message_id,
                    account_id,
                    address,
                    address.rpartition("@")[2],
                    state,
                    0 if state == "queued" else 1,
                    "30 minutes" if state == "deferred" else due_in,
                ),
            ).fetchone()
            assert row is not None
            ids[address] = row[0]
    return message_id, ids


@dataclass
class Sender:
    settings: Settings
    account_id: str
    ses: Any

    def send(self, *to: str) -> str:
        message_id: str = self.ses.send_email(
            Source="sender@example.com",
            Destination={"ToAddresses": list(to)},
            Message={
                "Subject": {"Data": "Queue test"},
                "Body": {"Text": {"Data": "Body text"}},
            },
        )["MessageId"]
        return message_id


@pytest.fixture
def sender(
    settings: Settings, dns_server: Any, delivery_port: int, redis_client: Any
) -> Iterator[Sender]:
    """A production account sending through a real API to loopback MX hosts."""
    for domain in ("dest.test", "other.test"):
        dns_server.add(domain, "MX", f"10 mx.{domain}.")
        dns_server.add(f"mx.{domain}", "A", "127.0.0.2")
    delivery = settings.model_copy(
        update={
            "dns_nameservers": dns_server.nameservers,
            "delivery_port": delivery_port,
            "retry_base_seconds": 3600.0,
            "retry_max_interval_seconds": 3600.0,
            "dns_timeout_seconds": 1.0,
        }
    )
    server = start_api(delivery)
    created, creds = create_account(server.settings, "ops-sender", production=True)
    verify_identity(server.settings, created.id, "example.com")
    sql(
        server.settings,
        "update accounts set max_send_rate = 100 where id = %s",
        created.id,
    )
    yield Sender(server.settings, created.id, server.client(creds))
    server.server.should_exit = True
    server.thread.join(10)
    _forget(server.settings, created.id)
