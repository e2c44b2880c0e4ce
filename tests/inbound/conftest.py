"""An in-process inbound MX on a loopback port, plus rows and reports to feed it."""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mta import verp
from mta.inbound import Limits
from mta.inbound.server import MxServer, serve
from sesame import crypto
from sesame.runtime import Runtime
from sesame.settings import Settings
from tests.support.api_server import create_account

DOMAIN = "bounces.example.test"
CORPUS = Path(__file__).parent.parent / "mta" / "feedback_corpus"
PLACEHOLDER = b"b-aaaa-bbbb@bounces.example.test"
FBL_ADDRESS = f"fbl@{DOMAIN}"


class MxThread:
    """serve() in its own thread and event loop, so tests can use smtplib."""

    def __init__(self, settings: Settings, limits: Limits | None = None) -> None:
        self.settings = settings
        self.limits = limits
        self.port = 0
        self.server: MxServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def start(self) -> MxThread:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("MX did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        runtime = Runtime.create(self.settings, pool_size=4)
        try:
            await runtime.open()
            self.server = await serve(self.settings, runtime, self.limits)
            self.port = self.server.port
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            await self.server.close(grace=2)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            await runtime.close()

    # -- client side -------------------------------------------------------------

    def client(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, timeout=10)

    def send(
        self,
        data: bytes,
        rcpt: str | list[str] = FBL_ADDRESS,
        mail_from: str = "",
    ) -> tuple[int, bytes]:
        """Send one message with a null (or given) sender; return the DATA reply."""
        with self.client() as smtp:
            smtp.ehlo("reporter.example.net")
            code, reply = smtp.mail(mail_from)
            assert code == 250, reply
            for address in [rcpt] if isinstance(rcpt, str) else rcpt:
                code, reply = smtp.rcpt(address)
                assert code == 250, reply
            try:
                return smtp.data(crlf(data))
            except smtplib.SMTPDataError as exc:
                return exc.smtp_code, exc.smtp_error


@pytest.fixture
def mx_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "mail_from_domain": DOMAIN,
            "hostname": "mx.sesame.test",
            "mx_host": "127.0.0.1",
            "mx_port": 0,
        }
    )


@pytest.fixture
def mx_factory(
    mx_settings: Settings, redis_client: Any
) -> Iterator[Callable[..., MxThread]]:
    started: list[MxThread] = []

    def start(**limits: Any) -> MxThread:
        mx = MxThread(mx_settings, Limits(**limits) if limits else None).start()
        started.append(mx)
        return mx

    yield start
    for mx in started:
        mx.stop()


@pytest.fixture
def mx(mx_factory: Callable[..., MxThread]) -> MxThread:
    return mx_factory()


@dataclass(frozen=True)
class Row:
    """A recipient row made for a test, and the return path that names it."""

    account_id: str
    message_id: str
    recipient_id: int
    address: str
    token: str


@pytest.fixture
def account(mx_settings: Settings) -> str:
    created, _ = create_account(mx_settings, "bounce-test", production=True)
    return str(created.id)


@pytest.fixture
def make_row(mx_settings: Settings, account: str) -> Callable[..., Row]:
    """Insert a sent message with one recipient row directly; return it."""
    key = verp.verp_key(
        crypto.load_or_create_key(mx_settings.secret_key, mx_settings.data_dir)
    )
    counter = iter(range(1, 1_000_000))

    def make(
        address: str, state: str = "delivered", account_id: str | None = None
    ) -> Row:
        owner = account_id or account
        message_id = f"test-{owner}-{next(counter):06d}"
        with psycopg.connect(mx_settings.database_url or "", autocommit=True) as conn:
            conn.execute(
                "insert into messages (id, account_id, source, raw, recipient_count,"
                " interface) values (%s, %s, 'shop@example.com', '\\x00', 1, 'api')",
                (message_id, owner),
            )
            row = conn.execute(
                "insert into recipients (message_id, account_id, address, domain,"
                " state, expires_at, lease_token, lease_until)"
                " values (%s, %s, %s, %s, %s, now() + interval '1 day',"
                " case when %s = 'sending' then gen_random_uuid() end,"
                " case when %s = 'sending' then now() + interval '10 minutes' end)"
                " returning id",
                (
                    message_id,
                    owner,
                    address,
                    address.rpartition("@")[2],
                    state,
                    state,
                    state,
                ),
            ).fetchone()
        assert row is not None
        token = verp.return_path(row[0], DOMAIN, key)
        return Row(owner, message_id, row[0], address, token)

    return make


def corpus(name: str, token: str | bytes) -> bytes:
    """A corpus report with the placeholder return path replaced by token."""
    if isinstance(token, str):
        token = token.encode()
    return (CORPUS / name).read_bytes().replace(PLACEHOLDER, token)


def crlf(data: bytes) -> bytes:
    """Give every line a CRLF ending, as SMTP requires (RFC 5321 2.3.8)."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def query(settings: Settings, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def forge(token: str) -> str:
    """Change one character of a token's MAC."""
    local, _, domain = token.partition("@")
    last = local[-1]
    return f"{local[:-1]}{'a' if last != 'a' else 'b'}@{domain}"
