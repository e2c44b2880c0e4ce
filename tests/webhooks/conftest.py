"""A recording loopback webhook consumer, a runtime for the relay, and row helpers."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from sesame.runtime import Runtime
from sesame.settings import Settings
from tests.support.api_server import create_account
from workers import webhooks


@dataclass
class Request:
    """One POST the consumer received."""

    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event_id(self) -> str:
        return self.headers["x-sesame-event-id"]


@dataclass
class Consumer:
    """A webhook endpoint on 127.0.0.1 answering with scripted statuses."""

    url: str = ""
    requests: list[Request] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # popped per request
    default_status: int = 200
    retry_after: str | None = None
    hold: threading.Event | None = None  # requests wait for it before answering
    received: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def events(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.requests]

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["eventType"] == event_type]

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.requests) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{len(self.requests)} of {count} requests")
            await asyncio.sleep(0.01)


def _handler(consumer: Consumer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with consumer.lock:
                consumer.requests.append(
                    Request(
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                    )
                )
                status = (
                    consumer.statuses.pop(0)
                    if consumer.statuses
                    else consumer.default_status
                )
            consumer.received.set()
            if consumer.hold is not None:
                consumer.hold.wait(30)
            try:
                self.send_response(status)
                if consumer.retry_after is not None:
                    self.send_header("Retry-After", consumer.retry_after)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:  # the relay gave up on us (a killed relay)
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the relay opens up to 50 connections at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a killed relay leaves broken connections behind


@pytest.fixture
def consumer() -> Iterator[Consumer]:
    made = Consumer()
    server = _Server(("127.0.0.1", 0), _handler(made))
    made.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/ses"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield made
    if made.hold is not None:
        made.hold.set()
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture(autouse=True)
def _no_destinations(settings: Settings) -> Iterator[None]:
    """Give each test an empty outbox, and leave none: the relay serves everyone."""
    query(settings, "delete from event_destinations")
    yield
    query(settings, "delete from event_destinations")


@pytest_asyncio.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    made = Runtime.create(settings, pool_size=4)
    await made.open()
    yield made
    await made.close()


@pytest.fixture
def account_id(settings: Settings) -> str:
    account, _ = create_account(settings, "webhooks", production=True)
    return str(account.id)


def query(settings: Settings, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


async def add_destination(
    runtime: Runtime,
    account_id: str,
    url: str,
    event_types: list[str] | None = None,
    *,
    name: str = "hooks",
    configuration_set: str | None = None,
    sns: bool = False,
) -> tuple[int, str]:
    """Create a destination as the CLI does; return its id and signing secret."""
    async with runtime.pool.connection() as conn:
        return await webhooks.create_destination(
            conn,
            runtime.box,
            account_id=account_id,
            name=name,
            url=url,
            event_types=event_types or ["send", "delivery", "bounce", "complaint"],
            configuration_set=configuration_set,
            envelope="sns" if sns else "none",
        )


RAW = (
    b"Message-ID: <m1@localhost>\r\n"
    b"Date: Thu, 23 May 2024 19:58:31 +0000\r\n"
    b"From: Shop <shop@example.com>\r\n"
    b"To: reader@example.net, Second <second@example.net>\r\n"
    b"Subject: =?utf-8?q?Your_order_has_shipped_=E2=9C=93?=\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Body\r\n"
)

_counter = iter(range(1, 1_000_000))


def insert_message(
    settings: Settings,
    account_id: str,
    recipients: list[str],
    *,
    configuration_set: str | None = None,
    tags: dict[str, str] | None = None,
    raw: bytes = RAW,
    source: str = "Shop <shop@example.com>",
) -> tuple[str, list[int]]:
    """Insert an accepted message, its recipient rows and its send event."""
    message_id = f"0100-webhooks-{next(_counter):06d}-000000"
    with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
        with conn.transaction():
            conn.execute(
                "insert into messages (id, account_id, source, from_domain, subject,"
                " raw, recipient_count, interface, configuration_set, tags)"
                " values (%s, %s, %s, 'example.com',"
                " 'Your order', %s, %s, 'api', %s, %s)",
                (
                    message_id,
                    account_id,
                    source,
                    raw,
                    len(recipients),
                    configuration_set,
                    json.dumps(tags) if tags else None,
                ),
            )
            ids = [
                conn.execute(
                    "insert into recipients (message_id, account_id, address, domain,"
                    " state, expires_at) values (%s, %s, %s, %s, 'delivered',"
                    " now() + interval '1 day') returning id",
                    (message_id, account_id, r, r.rpartition("@")[2]),
                ).fetchone()[0]  # type: ignore[index]
                for r in recipients
            ]
            conn.execute(
                "insert into events (account_id, message_id, event_type, detail)"
                " values (%s, %s, 'send', %s)",
                (account_id, message_id, json.dumps({"recipients": len(recipients)})),
            )
    return message_id, ids
