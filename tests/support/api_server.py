"""A real Sesame API on a loopback port, and boto3 clients signed for it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import psycopg
import pytest
import uvicorn
from botocore.config import Config

from sesame import accounts, crypto
from sesame.settings import Settings


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class ApiServer:
    url: str
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread

    def client(
        self,
        creds: accounts.NewCredentials,
        service: str = "ses",
        region: str = "us-east-1",
    ) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=region,
            aws_access_key_id=creds.access_key_id,
            aws_secret_access_key=creds.secret_access_key,
            config=Config(retries={"mode": "standard", "max_attempts": 1}),
        )


def start_api(settings: Settings) -> ApiServer:
    from api.app import create_app

    port = free_port()
    settings = settings.model_copy(
        update={"api_port": port, "public_url": f"http://127.0.0.1:{port}"}
    )
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        loop="asyncio",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("API server did not start")
        time.sleep(0.02)
    return ApiServer(f"http://127.0.0.1:{port}", settings, server, thread)


@pytest.fixture
def api_server(settings: Settings, redis_client: Any) -> Iterator[ApiServer]:
    server = start_api(settings)
    yield server
    server.server.should_exit = True
    server.thread.join(10)


def create_account(
    settings: Settings, name: str = "test", production: bool = False
) -> tuple[accounts.Account, accounts.NewCredentials]:
    async def go() -> tuple[accounts.Account, accounts.NewCredentials]:
        box = crypto.SecretBox(
            crypto.load_or_create_key(settings.secret_key, settings.data_dir)
        )
        async with await psycopg.AsyncConnection.connect(
            settings.database_url or "", autocommit=True
        ) as conn:
            return await accounts.create_account(conn, box, settings, name, production)

    return asyncio.run(go())


def verify_identity(
    settings: Settings, account_id: str, name: str, kind: str | None = None
) -> None:
    """Mark an identity verified directly in the database (test shortcut)."""
    kind = kind or ("email_address" if "@" in name else "domain")
    with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
        conn.execute(
            "insert into identities (account_id, name, kind, verification_status, verified_at)"
            " values (%s, %s, %s, 'success', now()) on conflict (account_id, name)"
            " do update set verification_status = 'success', verified_at = now()",
            (account_id, name, kind),
        )
