"""Fixtures of the security suite: a running API, tenants, raw signed requests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import smtplib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import psycopg
import pytest

from sesame import accounts
from sesame.settings import Settings
from tests.support.api_server import (
    ApiServer,
    create_account,
    start_api,
    verify_identity,
)


@dataclass
class Tenant:
    """An account with a verified domain, its credentials and boto3 clients."""

    account: accounts.Account
    creds: accounts.NewCredentials
    domain: str
    server: ApiServer
    ses: Any
    sesv2: Any

    @property
    def id(self) -> str:
        return self.account.id

    def query(self, action: str, **params: str) -> httpx.Response:
        """A signed SES v1 Query request with exactly these parameters."""
        body = urlencode({"Action": action, "Version": "2010-12-01", **params})
        return send_signed(self.server.url, self.creds, "POST", "/", body.encode())


def new_tenant(
    server: ApiServer, name: str, domain: str, production: bool = True
) -> Tenant:
    account, creds = create_account(server.settings, name, production=production)
    verify_identity(server.settings, account.id, domain)
    set_account(
        server.settings, account.id, max_24_hour_send=100000, max_send_rate=1000
    )
    return Tenant(
        account,
        creds,
        domain,
        server,
        server.client(creds),
        server.client(creds, service="sesv2"),
    )


def set_account(settings: Settings, account_id: str, **columns: Any) -> None:
    sets = ", ".join(f"{name} = %s" for name in columns)
    with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
        conn.execute(
            f"update accounts set {sets} where id = %s", (*columns.values(), account_id)
        )


def rows(settings: Settings, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def messages_of(settings: Settings, account_id: str) -> int:
    return int(
        rows(
            settings, "select count(*) from messages where account_id = %s", account_id
        )[0][0]
    )


@pytest.fixture(scope="module")
def security_database() -> Iterator[str]:
    """A database of the module's own.

    Mail accepted here (to dest.test and the like) must never be picked up by
    another suite's pipeline, which drains every due row of its database.
    """
    from tests.faults.harness import ADMIN_URL, fresh_database

    with fresh_database(ADMIN_URL) as url:
        yield url


@pytest.fixture(scope="module")
def api_settings(
    security_database: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Settings for one API per module: every test makes fresh accounts."""
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.startswith("SESAME_") and not key.startswith("SESAME_TEST_"):
                patch.delenv(key)
        return Settings(
            database_url=security_database,
            redis_url=redis_url,
            data_dir=tmp_path_factory.mktemp("security"),
            dns_nameservers="127.0.0.1:1",
            account_cache_seconds=0.0,
        )


@pytest.fixture(scope="module")
def api(api_settings: Settings) -> Iterator[ApiServer]:
    server = start_api(api_settings)
    yield server
    server.server.should_exit = True
    server.thread.join(10)


@pytest.fixture
def alice(api: ApiServer) -> Tenant:
    return new_tenant(api, "alice", "alice.example")


@pytest.fixture
def bob(api: ApiServer) -> Tenant:
    return new_tenant(api, "bob", "bob.example")


# -- SigV4 by hand, so every part of a request can be chosen or tampered with ---------


def sigv4_headers(
    creds_or_pair: accounts.NewCredentials | tuple[str, str],
    method: str,
    url: str,
    body: bytes,
    *,
    when: datetime | None = None,
    region: str = "us-east-1",
    service: str = "ses",
    scope_date: str | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """Return the headers that sign a request (AWS Signature Version 4)."""
    if isinstance(creds_or_pair, tuple):
        key_id, secret = creds_or_pair
    else:
        key_id, secret = creds_or_pair.access_key_id, creds_or_pair.secret_access_key
    when = when or datetime.now(UTC)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    date = scope_date or amz_date[:8]
    parts = urlsplit(url)
    headers = {
        "host": parts.netloc,
        "x-amz-date": amz_date,
        "content-type": "application/x-www-form-urlencoded",
        **{k.lower(): v for k, v in (extra or {}).items()},
    }
    names = sorted(headers)
    canonical = "\n".join(
        [
            method,
            parts.path or "/",
            "&".join(sorted(parts.query.split("&"))) if parts.query else "",
            "".join(f"{n}:{headers[n].strip()}\n" for n in names),
            ";".join(names),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    signing = hmac.digest(f"AWS4{secret}".encode(), date.encode(), "sha256")
    for part in (region, service, "aws4_request"):
        signing = hmac.digest(signing, part.encode(), "sha256")
    signature = hmac.new(signing, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return headers


def send_signed(
    base_url: str,
    creds: accounts.NewCredentials,
    method: str,
    path: str,
    body: bytes,
    **sign_options: Any,
) -> httpx.Response:
    url = base_url + path
    headers = sigv4_headers(creds, method, url, body, **sign_options)
    return httpx.request(method, url, content=body, headers=headers, timeout=30)


def error_code(response: httpx.Response) -> str | None:
    """The SES error code of a v1 (XML) or v2 (JSON, header) error answer."""
    if "x-amzn-errortype" in response.headers:
        return response.headers["x-amzn-errortype"].split(":")[0]
    text = response.text
    start = text.find("<Code>")
    if start < 0:
        return None
    return text[start + 6 : text.find("</Code>", start)]


# -- SMTP submission in a thread of its own ---------------------------------------------


@dataclass
class SmtpServer:
    """Both submission listeners of an in-process server (mta.submission.server)."""

    settings: Settings
    servers: Any
    runtime: Any
    acceptor: Any
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    client_context: ssl.SSLContext

    @property
    def port(self) -> int:
        return int(self.servers.starttls_port)

    @property
    def tls_port(self) -> int:
        return int(self.servers.tls_port)

    def implicit(self, login: accounts.NewCredentials | None = None) -> smtplib.SMTP:
        """An smtplib client on the implicit-TLS port, logged in if asked."""
        client = smtplib.SMTP_SSL(
            "127.0.0.1", self.tls_port, timeout=10, context=self.client_context
        )
        client.ehlo("client.example")
        if login is not None:
            token = base64.b64encode(
                f"\0{login.smtp_username}\0{login.smtp_password}".encode()
            ).decode()
            code, text = client.docmd("AUTH", "PLAIN " + token)
            assert code == 235, text
        return client

    def raw(self) -> RawClient:
        """A line-level client in TLS on the implicit port, greeting read."""
        sock = socket.create_connection(("127.0.0.1", self.tls_port), 10)
        tls = self.client_context.wrap_socket(sock, server_hostname="127.0.0.1")
        client = RawClient(tls)
        client.greeting = client.read()
        return client

    def stop(self) -> None:
        async def down() -> None:
            await self.servers.close(grace=2)
            await self.acceptor.stop()
            await self.runtime.close()

        try:
            asyncio.run_coroutine_threadsafe(down(), self.loop).result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


class RawClient:
    """Bytes on the wire, for what smtplib would tidy up (bare CR/LF, dots)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.greeting = ""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buffer)
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def read(self) -> str:
        """One whole reply, the lines of a multi-line one joined by newlines."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return "\n".join(x.decode("utf-8", "replace") for x in lines)

    def command(self, text: str) -> str:
        self.send(text.encode() + b"\r\n")
        return self.read()

    def close(self) -> None:
        self.sock.close()


def start_smtp(
    settings: Settings, limits: Any = None, uvloop: bool = True
) -> SmtpServer:
    """Start SMTP submission on free loopback ports, in a new thread.

    The loop is uvloop's, as `sesame smtp` runs, unless uvloop=False.
    """
    from mta.accept import Acceptor
    from mta.submission.server import serve
    from sesame.runtime import Runtime

    factory = None
    if uvloop:
        try:
            from mta.smtpd import loop_factory

            factory = loop_factory()
        except ImportError:  # pragma: no cover - an older layout
            factory = None

    settings = settings.model_copy(
        update={
            "smtp_host": "127.0.0.1",
            "smtp_port": 0,
            "smtps_port": 0,
            "hostname": "localhost",
        }
    )
    loop = (factory or asyncio.new_event_loop)()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def boot() -> tuple[Any, Any, Any]:
        runtime = Runtime.create(settings, pool_size=4)
        await runtime.open()
        acceptor = Acceptor(runtime.pool, runtime.redis, settings)
        await acceptor.start()
        return runtime, acceptor, await serve(settings, runtime, acceptor, limits)

    try:
        runtime, acceptor, servers = asyncio.run_coroutine_threadsafe(
            boot(), loop
        ).result(30)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        raise
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return SmtpServer(settings, servers, runtime, acceptor, loop, thread, context)


@pytest.fixture
def smtp(api: ApiServer, redis_client: Any) -> Iterator[SmtpServer]:
    """SMTP submission sharing the API's database and secret key."""
    server = start_smtp(api.settings)
    yield server
    server.stop()
