"""A real submission server (both ports) in its own thread, and clients for it."""

from __future__ import annotations

import asyncio
import base64
import os
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import trustme

from mta.accept import Acceptor
from mta.smtpd import loop_factory as _loop_factory
from mta.submission import Limits
from mta.submission.server import Servers, serve
from sesame import accounts
from sesame.runtime import Runtime
from sesame.settings import Settings
from tests.support.api_server import create_account, verify_identity

HOST = "127.0.0.1"


@dataclass
class SmtpServer:
    """Both listeners of one in-process submission server."""

    settings: Settings
    servers: Servers
    runtime: Runtime
    acceptor: Acceptor
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    client_context: ssl.SSLContext

    @property
    def port(self) -> int:
        return self.servers.starttls_port

    @property
    def tls_port(self) -> int:
        return self.servers.tls_port

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        async def down() -> None:
            await self.servers.close(grace=2)
            await self.acceptor.stop()
            await self.runtime.close()
            # As asyncio.run would: end what is left (the acceptor's wake-ups).
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            self.call(down())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def starttls(self, *, login: accounts.NewCredentials | None = None) -> smtplib.SMTP:
        """Connect to the STARTTLS port, EHLO, STARTTLS, EHLO, and log in if asked."""
        smtp = smtplib.SMTP(HOST, self.port, timeout=10)
        smtp.ehlo("client.example")
        smtp.starttls(context=self.client_context)
        smtp.ehlo("client.example")
        if login is not None:
            code, text = plain(smtp, login.smtp_username, login.smtp_password)
            assert code == 235, text
        return smtp

    def implicit(self, *, login: accounts.NewCredentials | None = None) -> smtplib.SMTP:
        """Connect to the implicit-TLS port, EHLO, and log in if asked."""
        smtp = smtplib.SMTP_SSL(
            HOST, self.tls_port, timeout=10, context=self.client_context
        )
        smtp.ehlo("client.example")
        if login is not None:
            code, text = plain(smtp, login.smtp_username, login.smtp_password)
            assert code == 235, text
        return smtp

    def raw(self, *, implicit: bool = True) -> RawClient:
        """Return a line-level client, already in TLS on the implicit port."""
        sock = socket.create_connection(
            (HOST, self.tls_port if implicit else self.port), 10
        )
        if implicit:
            sock = self.client_context.wrap_socket(sock, server_hostname=HOST)
        client = RawClient(sock, self.client_context)
        client.greeting = client.read()
        return client


class RawClient:
    """Bytes on the wire, for what smtplib would tidy up (dots, bare CR/LF)."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.context = context
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
        """Return one whole reply, multi-line ones joined with newlines."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return "\n".join(x.decode() for x in lines)

    def command(self, text: str) -> str:
        self.send(text.encode() + b"\r\n")
        return self.read()

    def closed(self, timeout: float = 5.0) -> bool:
        """Tell whether the server closed the connection (after any pending data)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except (ConnectionResetError, ssl.SSLError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def plain(smtp: smtplib.SMTP, username: str, password: str) -> tuple[int, str]:
    """Send AUTH PLAIN with an initial response; return the reply."""
    token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
    code, text = smtp.docmd("AUTH", "PLAIN " + token)
    return code, text.decode()


def reply(code: int, text: bytes | str) -> str:
    """Return a reply as one string, as the replies module spells it."""
    return f"{code} {text.decode() if isinstance(text, bytes) else text}"


def start_smtp(
    settings: Settings,
    limits: Limits | None = None,
    acceptor_class: type[Acceptor] = Acceptor,
    client_context: ssl.SSLContext | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> SmtpServer:
    """Start a submission server on free loopback ports in a new thread."""
    # The same loop as `sesame smtp` (uvloop when installed) unless told otherwise.
    factory = loop_factory or _loop_factory() or asyncio.new_event_loop
    loop = factory()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def boot() -> tuple[Runtime, Acceptor, Servers]:
        runtime = Runtime.create(settings, pool_size=4)
        await runtime.open()
        acceptor = acceptor_class(runtime.pool, runtime.redis, settings)
        await acceptor.start()
        servers = await serve(settings, runtime, acceptor, limits)
        return runtime, acceptor, servers

    try:
        runtime, acceptor, servers = asyncio.run_coroutine_threadsafe(
            boot(), loop
        ).result(30)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        raise
    if client_context is None:
        client_context = ssl.create_default_context()
        client_context.check_hostname = False
        client_context.verify_mode = ssl.CERT_NONE
    return SmtpServer(
        settings, servers, runtime, acceptor, loop, thread, client_context
    )


@pytest.fixture(scope="session")
def smtp_ca() -> trustme.CA:
    return trustme.CA()


# A Redis db of its own: suites run side by side on a shared machine flush db 9
# (tests/conftest.py's redis_client) under each other's feet.
SMTP_REDIS_URL = os.environ.get(
    "SESAME_TEST_SUBMISSION_REDIS_URL", "redis://127.0.0.1:6379/10"
)


@pytest.fixture
def smtp_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(SMTP_REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def smtp_settings(
    settings: Settings, smtp_ca: trustme.CA, tmp_path: Path, smtp_redis: redis.Redis
) -> Settings:
    """Settings for a server on port-0 listeners with a certificate the tests trust."""
    cert = smtp_ca.issue_cert("localhost", HOST)
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return settings.model_copy(
        update={
            "smtp_host": HOST,
            "smtp_port": 0,
            "smtps_port": 0,
            "hostname": "localhost",
            "redis_url": SMTP_REDIS_URL,
            "tls_cert": cert_path,
            "tls_key": key_path,
        }
    )


@pytest.fixture
def smtp_factory(
    smtp_settings: Settings, smtp_ca: trustme.CA
) -> Iterator[Callable[..., SmtpServer]]:
    """Start servers with chosen limits (or acceptor); all stop after the test."""
    started: list[SmtpServer] = []
    context = ssl.create_default_context()
    smtp_ca.configure_trust(context)

    def make(limits: Limits | None = None, **kwargs: Any) -> SmtpServer:
        server = start_smtp(smtp_settings, limits, client_context=context, **kwargs)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def smtp_server(smtp_factory: Callable[..., SmtpServer]) -> SmtpServer:
    return smtp_factory()


@dataclass
class Sender:
    """A production account whose domain example.com is verified."""

    account: accounts.Account
    creds: accounts.NewCredentials


def set_account(settings: Settings, account_id: str, **columns: Any) -> None:
    """Change account columns directly (quotas, pauses) for a test."""
    sets = ", ".join(f"{name} = %s" for name in columns)
    with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
        conn.execute(
            f"update accounts set {sets} where id = %s", (*columns.values(), account_id)
        )


@pytest.fixture
def sender(smtp_settings: Settings) -> Sender:
    account, creds = create_account(smtp_settings, "smtp-prod", production=True)
    verify_identity(smtp_settings, account.id, "example.com")
    set_account(smtp_settings, account.id, max_24_hour_send=100000, max_send_rate=1000)
    return Sender(account, creds)


@pytest.fixture
def sandbox_sender(smtp_settings: Settings) -> Sender:
    account, creds = create_account(smtp_settings, "smtp-sandbox", production=False)
    verify_identity(smtp_settings, account.id, "example.com")
    set_account(smtp_settings, account.id, max_24_hour_send=100000, max_send_rate=1000)
    return Sender(account, creds)


def stored(settings: Settings, account_id: str) -> list[dict[str, Any]]:
    """Return the account's messages with their recipients, oldest first."""
    with psycopg.connect(settings.database_url or "") as conn:
        rows = conn.execute(
            "select id, source, from_domain, subject, raw, recipient_count, interface,"
            " configuration_set, tags from messages where account_id = %s"
            " order by created_at, id",
            (account_id,),
        ).fetchall()
        out = []
        for row in rows:
            rcpts = conn.execute(
                "select address, state from recipients where message_id = %s order by id",
                (row[0],),
            ).fetchall()
            out.append(
                {
                    "id": row[0],
                    "source": row[1],
                    "from_domain": row[2],
                    "subject": row[3],
                    "raw": bytes(row[4]),
                    "recipient_count": row[5],
                    "interface": row[6],
                    "configuration_set": row[7],
                    "tags": row[8],
                    "recipients": [(a, s) for a, s in rcpts],
                }
            )
    return out
