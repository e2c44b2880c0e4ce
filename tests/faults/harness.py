"""Building blocks of the fault scenarios: real processes, stores we may break, load.

A :class:`Stack` is one Sesame installation made of real ``sesame`` processes on a
fresh database, a Redis server of its own (so it can be flushed or killed), an
optional PostgreSQL cluster of its own (so it can be restarted), and a counting
SMTP sink that every delivery goes to (``SESAME_SMARTHOST``). Load generators
send through the API (SigV4-signed SendEmail) or SMTP submission and record
what each request was answered; :func:`tally` turns that and the sink's log into
the figures every scenario prints: accepted / delivered / lost / duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
import redis

from sesame import db
from sesame.accounts import NewCredentials
from tests.support.api_server import create_account, verify_identity
from tests.support.smtp_sink import free_port as _free_port

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("SESAME_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
ADMIN_URL = os.environ.get(
    "SESAME_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
SENDER = "sender@example.com"  # on the account's verified domain
DEST = "dest.test"  # recipients' domain; all mail goes to the sink anyway
# How long the harness, standing in for `sesame up`, waits before restarting a
# component that died (the supervisor's own first delay is 1 s).
RESTART_DELAY_SECONDS = 0.5
# Settings every scenario shares: quick recovery, small batches so a fault
# lands in the middle of several of them.
FAULT_SETTINGS = {
    "SESAME_LEASE_SECONDS": "3",
    "SESAME_SWEEP_SECONDS": "0.5",
    "SESAME_DISPATCH_BATCH_SIZE": "25",
    "SESAME_API_WORKERS": "1",
    "SESAME_WORKERS": "2",
    "SESAME_LOG_LEVEL": "WARNING",
    "SESAME_HOSTNAME": "localhost",
}
NON_TERMINAL = ("queued", "sending", "deferred")


def free_port() -> int:
    """A loopback TCP port below the ephemeral range, free right now."""
    return _free_port(("127.0.0.1",))


def _as_postgres(argv: list[str]) -> list[str]:
    """Run a PostgreSQL server binary as the postgres user (it refuses root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


# -- stores we may break ------------------------------------------------------------


class RedisServer:
    """A redis-server of our own, without persistence, on a free port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        """SIGKILL the server: everything it held is gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def flushall(self) -> None:
        client = redis.Redis.from_url(self.url)
        client.flushall()
        client.close()


class PostgresServer:
    """A PostgreSQL cluster of our own (initdb in a temp dir) that we may restart."""

    def __init__(self) -> None:
        self.port = free_port()
        # Under /tmp, not pytest's tmp_path: the postgres user must reach it.
        self.dir = Path(tempfile.mkdtemp(prefix="sesame-faults-pg-"))
        self.data = self.dir / "data"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        subprocess.run(
            _as_postgres(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(self.data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        subprocess.run(
            _as_postgres(
                [
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-o",
                    options,
                    "-l",
                    str(self.dir / "server.log"),
                    "-w",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            _as_postgres(
                [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]
            ),
            check=False,
            capture_output=True,
        )

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """Create an empty database with every migration; drop it afterwards."""
    name = f"sesame_fault_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    try:
        db.migrate(url)
        yield url
    finally:
        with contextlib.suppress(psycopg.Error):
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'drop database if exists "{name}" with (force)')


# -- the counting sink --------------------------------------------------------------


class Sink:
    """tests/faults/sink.py in its own process; reads back its delivery log."""

    def __init__(
        self, workdir: Path, tempfail: tuple[str, ...] = (), delay: float = 0.0
    ) -> None:
        self.port = free_port()
        self.log = workdir / "sink.log"
        self.tempfail = tempfail
        self.delay = delay
        self.process: subprocess.Popen[bytes] | None = None
        self._offset = 0
        self._partial = b""
        self._entries: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def start(self, timeout: float = 15.0) -> None:
        argv = [
            sys.executable,
            "-m",
            "tests.faults.sink",
            "--port",
            str(self.port),
            "--log",
            str(self.log),
            "--delay",
            str(self.delay),
        ]
        for domain in self.tempfail:
            argv += ["--tempfail-domain", domain]
        self.process = subprocess.Popen(argv, cwd=ROOT)
        ready = Path(str(self.log) + ".ready")
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the sink did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def entries(self) -> list[tuple[float, str]]:
        """Every delivery so far as (unix time, recipient), in arrival order."""
        with self._lock:
            if self.log.exists():
                with open(self.log, "rb") as f:
                    f.seek(self._offset)
                    chunk = f.read()
                self._offset += len(chunk)
                data = self._partial + chunk
                complete, _, self._partial = data.rpartition(b"\n")
                for line in complete.split(b"\n") if complete else []:
                    stamp, _, address = line.decode().partition(" ")
                    self._entries.append((float(stamp), address))
            return list(self._entries)

    def counts(self) -> Counter[str]:
        return Counter(address for _, address in self.entries())

    def delivered(self) -> int:
        return len(self.entries())


# -- Sesame's processes --------------------------------------------------------------


@dataclass
class Component:
    """One ``sesame`` process the harness runs and, like `sesame up`, restarts."""

    name: str
    command: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    supervised: bool = True
    died_at: float | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def spawn(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sesame.cli", self.command],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        finally:
            out.close()
        self.died_at = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Cluster:
    """Sesame's components as real processes, restarted when they die."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.components: dict[str, Component] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.env['SESAME_API_PORT']}"

    def start(self, name: str, command: str | None = None, **env: str) -> Component:
        """Start a component (``api``, ``worker``...) under a unique name."""
        component = Component(
            name,
            command or name,
            {**self.env, **env},
            self.workdir / f"{name}.log",
        )
        with self._lock:
            self.components[name] = component
            component.spawn()
        return component

    def start_all(self, workers: int = 2, smtp: bool = False) -> None:
        self.start("api")
        self.start("scheduler")
        for i in range(workers):
            self.start(f"worker-{i + 1}", "worker")
        if smtp:
            self.start("smtp")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Send a signal (SIGKILL by default) to one component; return its pid."""
        component = self.components[name]
        pid = component.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        return pid

    def kill_everything(self) -> None:
        """SIGKILL every component and its children at once, with no restart."""
        with self._lock:
            for component in self.components.values():
                component.supervised = False
                if component.alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(component.pid, signal.SIGKILL)
            for component in self.components.values():
                if component.process is not None:
                    component.process.wait()

    def children(self, name: str) -> list[int]:
        """Worker processes a component forked (uvicorn's, for the API)."""
        pid = self.components[name].pid
        found = []
        for path in Path(f"/proc/{pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                found += [int(p) for p in path.read_text().split()]
        workers = []
        for child in found:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                if b"resource_tracker" not in cmdline:
                    workers.append(child)
        return workers

    def restarts(self) -> int:
        return sum(c.restarts for c in self.components.values())

    def wait_api(self, timeout: float = 30.0) -> None:
        """Wait until the API answers /readyz."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.api_url + "/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"the API is not ready after {timeout} s")

    def wait_port(self, port: int, timeout: float = 30.0) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"nothing listens on port {port} after {timeout} s")

    def stop(self) -> None:
        """Stop supervising; SIGTERM everything, SIGKILL what lingers."""
        self._stopping.set()
        self._thread.join(5)
        with self._lock:
            running = [c for c in self.components.values() if c.alive()]
            for component in running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(component.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            for component in running:
                assert component.process is not None
                try:
                    component.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(component.pid, signal.SIGKILL)
                    component.process.wait()

    def logs(self) -> str:
        """Every component's captured output, for a failing scenario's report."""
        parts = []
        for component in self.components.values():
            if component.log.exists():
                text = component.log.read_text(errors="replace")[-4000:]
                if text.strip():
                    parts.append(f"--- {component.name} ---\n{text}")
        return "\n".join(parts)

    def _supervise(self) -> None:
        while not self._stopping.wait(0.05):
            now = time.monotonic()
            with self._lock:
                for component in self.components.values():
                    if not component.supervised or component.process is None:
                        continue
                    if component.process.poll() is None:
                        continue
                    if component.died_at is None:
                        component.died_at = now
                    elif now - component.died_at >= RESTART_DELAY_SECONDS:
                        component.restarts += 1
                        component.spawn()


# -- one installation ---------------------------------------------------------------


@dataclass
class Stack:
    workdir: Path
    database_url: str
    redis: RedisServer
    sink: Sink
    cluster: Cluster
    account_id: str
    creds: NewCredentials
    env: dict[str, str]
    postgres: PostgresServer | None = None

    @property
    def api_port(self) -> int:
        return int(self.env["SESAME_API_PORT"])

    @property
    def smtp_port(self) -> int:
        return int(self.env["SESAME_SMTP_PORT"])

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(
            self.database_url, autocommit=True, connect_timeout=5
        ) as c:
            return c.execute(sql, params).fetchall()

    def scalar(self, sql: str, *params: Any) -> Any:
        return self.query(sql, *params)[0][0]

    def in_flight(self) -> int:
        """Recipients claimed by a worker right now (state sending)."""
        return int(
            self.scalar("select count(*) from recipients where state = 'sending'")
        )


@contextlib.contextmanager
def open_stack(
    *,
    own_postgres: bool = False,
    sink_delay: float = 0.0,
    tempfail: tuple[str, ...] = (),
    settings: dict[str, str] | None = None,
    workdir: Path | None = None,
) -> Iterator[Stack]:
    """A fresh installation: database, Redis, sink and one production account."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        workdir.mkdir(parents=True, exist_ok=True)

        postgres = None
        admin_url = ADMIN_URL
        if own_postgres:
            postgres = PostgresServer()
            stack.callback(postgres.destroy)
            postgres.init()
            postgres.start()
            admin_url = postgres.admin_url
        database_url = stack.enter_context(fresh_database(admin_url))

        redis_server = RedisServer(workdir)
        redis_server.start()
        stack.callback(redis_server.kill)

        sink = Sink(workdir, tempfail=tempfail, delay=sink_delay)
        sink.start()
        stack.callback(sink.stop)

        data_dir = workdir / "data"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SESAME_")},
            **FAULT_SETTINGS,
            "SESAME_DATABASE_URL": database_url,
            "SESAME_REDIS_URL": redis_server.url,
            "SESAME_DATA_DIR": str(data_dir),
            "SESAME_API_PORT": str(free_port()),
            "SESAME_SMTP_PORT": str(free_port()),
            "SESAME_SMTPS_PORT": str(free_port()),
            "SESAME_MX_PORT": str(free_port()),
            "SESAME_SMARTHOST": f"127.0.0.1:{sink.port}",
            **(settings or {}),
        }
        # The account is made (and the secret key written) before any process
        # starts, as an operator would with `sesame account create`.
        from sesame.settings import Settings

        account_settings = Settings(
            database_url=database_url, redis_url=redis_server.url, data_dir=data_dir
        )
        account, creds = create_account(account_settings, "faults", production=True)
        verify_identity(account_settings, account.id, "example.com")
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "update accounts set max_24_hour_send = 1e9, max_send_rate = 1e6"
                " where id = %s",
                (account.id,),
            )

        cluster = Cluster(env, workdir)
        stack.callback(cluster.stop)
        yield Stack(
            workdir,
            database_url,
            redis_server,
            sink,
            cluster,
            account.id,
            creds,
            env,
            postgres,
        )


# -- load -------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one request (one message to one unique recipient) was answered."""

    index: int
    address: str
    kind: str = "pending"  # accepted | refused | unanswered
    status: int | None = None  # HTTP status or SMTP reply code
    code: str | None = None  # SES error code of a refusal
    message_id: str | None = None
    sent_at: float = 0.0
    answered_at: float | None = None


_MESSAGE_ID = re.compile(rb"<MessageId>([^<]+)</MessageId>")
_ERROR_CODE = re.compile(rb"<Code>([^<]+)</Code>")
_SMTP_ID = re.compile(r"Ok (\S+)")


class Load:
    """Messages to unique recipients at a fixed rate, sent from a background thread."""

    def __init__(
        self,
        prefix: str,
        count: int,
        rate: float | None,
        connections: int,
        timeout: float,
        domain: str,
    ) -> None:
        self.outcomes = [
            Outcome(i, f"{prefix}{i}@{domain}".lower()) for i in range(count)
        ]
        self.rate = rate
        self.connections = connections
        self.timeout = timeout
        self._next = 0
        self._started = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def join(self, timeout: float = 300.0) -> list[Outcome]:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the load did not finish in time")
        return self.outcomes

    def answered(self) -> int:
        return sum(1 for o in self.outcomes if o.kind != "pending")

    def wait_answered(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.answered() < count:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise TimeoutError(f"only {self.answered()} of {count} answered")
            time.sleep(0.01)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._started = time.monotonic()
        await asyncio.gather(*(self._client() for _ in range(self.connections)))

    def _take(self) -> Outcome | None:
        if self._next >= len(self.outcomes):
            return None
        outcome = self.outcomes[self._next]
        self._next += 1
        return outcome

    async def _pace(self, outcome: Outcome) -> None:
        if self.rate:
            due = self._started + outcome.index / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def _client(self) -> None:
        raise NotImplementedError


class ApiLoad(Load):
    """SigV4-signed SendEmail requests over keep-alive HTTP/1.1 connections."""

    def __init__(
        self,
        port: int,
        creds: NewCredentials,
        count: int,
        *,
        rate: float | None = 200.0,
        connections: int = 8,
        prefix: str = "api",
        timeout: float = 20.0,
        domain: str = DEST,
    ) -> None:
        super().__init__(prefix, count, rate, connections, timeout, domain)
        from botocore.credentials import Credentials

        self.port = port
        self.credentials = Credentials(creds.access_key_id, creds.secret_access_key)

    def _request(self, outcome: Outcome) -> bytes:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        body = urlencode(
            {
                "Action": "SendEmail",
                "Version": "2010-12-01",
                "Source": f"Faults <{SENDER}>",
                "Destination.ToAddresses.member.1": outcome.address,
                "Message.Subject.Data": f"fault test {outcome.index}",
                "Message.Body.Text.Data": f"message {outcome.index}\n",
            }
        ).encode()
        url = f"http://127.0.0.1:{self.port}/"
        request = AWSRequest(
            method="POST",
            url=url,
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        SigV4Auth(self.credentials, "ses", "us-east-1").add_auth(request)
        head = ["POST / HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        head += [f"{k}: {v}" for k, v in request.headers.items()]
        head.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect, retrying while the API is away (restarting after a kill)."""
        deadline = time.monotonic() + 120
        while True:
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), 5
                )
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def _client(self) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        last_used = 0.0
        while (outcome := self._take()) is not None:
            await self._pace(outcome)
            # uvicorn closes a connection idle for 5 s; a request sent on one it
            # is closing would be counted unanswered for no fault of Sesame's.
            if conn is not None and time.monotonic() - last_used > 3.0:
                conn[1].close()
                conn = None
            if conn is None:
                conn = await self._connect()
            reader, writer = conn
            outcome.sent_at = time.time()
            try:
                writer.write(self._request(outcome))
                status, body = await asyncio.wait_for(
                    _read_response(reader), self.timeout
                )
            except (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError):
                outcome.kind = "unanswered"
                writer.close()
                conn = None
                continue
            finally:
                last_used = time.monotonic()
            outcome.answered_at = time.time()
            outcome.status = status
            if status == 200 and (match := _MESSAGE_ID.search(body)):
                outcome.kind = "accepted"
                outcome.message_id = match.group(1).decode()
            else:
                outcome.kind = "refused"
                code = _ERROR_CODE.search(body)
                outcome.code = code.group(1).decode() if code else None
        if conn is not None:
            conn[1].close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


class SmtpLoad(Load):
    """Messages over SMTP submission (STARTTLS, AUTH PLAIN), one connection each."""

    def __init__(
        self,
        port: int,
        creds: NewCredentials,
        count: int,
        *,
        rate: float | None = 100.0,
        connections: int = 4,
        prefix: str = "smtp",
        timeout: float = 20.0,
        domain: str = DEST,
    ) -> None:
        super().__init__(prefix, count, rate, connections, timeout, domain)
        self.port = port
        self.creds = creds
        self.failed_sessions = 0  # connections or logins refused (server away)

    async def _session(self) -> Any:
        """Connect, STARTTLS and log in, retrying while the server is away."""
        import aiosmtplib

        deadline = time.monotonic() + 120
        while True:
            smtp = aiosmtplib.SMTP(
                hostname="127.0.0.1",
                port=self.port,
                start_tls=True,
                validate_certs=False,
                timeout=self.timeout,
            )
            try:
                await smtp.connect()
                await smtp.login(self.creds.smtp_username, self.creds.smtp_password)
                return smtp
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                await _drop(smtp)
                self.failed_sessions += 1
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def _client(self) -> None:
        import aiosmtplib

        smtp: Any = None
        outcome: Outcome | None = None
        while True:
            if smtp is None:
                smtp = await self._session()
            if outcome is None:
                outcome = self._take()
                if outcome is None:
                    break
                await self._pace(outcome)
            data = (
                f"From: Faults <{SENDER}>\r\nTo: {outcome.address}\r\n"
                f"Subject: fault test {outcome.index}\r\n\r\n"
                f"message {outcome.index}\r\n"
            ).encode()
            outcome.sent_at = time.time()
            in_data = False
            try:
                await smtp.mail(SENDER)
                await smtp.rcpt(outcome.address)
                in_data = True
                reply = await smtp.data(data)
            except aiosmtplib.SMTPResponseException as exc:
                outcome.answered_at = time.time()
                outcome.status = exc.code
                outcome.code = exc.message[:80]
                outcome.kind = "refused"
                if exc.code == 421:
                    smtp = await _drop(smtp)
                else:
                    with contextlib.suppress(aiosmtplib.SMTPException):
                        await smtp.rset()
                outcome = None
                continue
            except (aiosmtplib.SMTPException, OSError, TimeoutError, EOFError):
                smtp = await _drop(smtp)
                if in_data:
                    # The message may have been committed before the reply was lost.
                    outcome.kind = "unanswered"
                    outcome = None
                # Before DATA nothing was submitted: send it again on a new session.
                continue
            outcome.answered_at = time.time()
            outcome.status = reply.code
            outcome.kind = "accepted"
            if match := _SMTP_ID.search(reply.message):
                outcome.message_id = match.group(1)
            outcome = None
        await _drop(smtp)


async def _drop(smtp: Any) -> None:
    if smtp is not None:
        with contextlib.suppress(Exception):
            smtp.close()
    return None


# -- figures ------------------------------------------------------------------------


@dataclass
class Figures:
    """What a scenario prints: accepted / delivered / lost / duplicated, and context."""

    scenario: str
    accepted: int
    delivered: int
    lost: int
    duplicated: int
    in_flight: int = 0  # recipients claimed by workers when the fault hit
    unanswered: int = 0  # requests that got no answer (connection dropped)
    unanswered_stored: int = 0  # ... of which the message was committed anyway
    unanswered_delivered: int = 0
    refused: int = 0  # answered with an error (503, 451, ...)
    refused_delivered: int = 0  # refused, yet delivered: a retrying client duplicates
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        text = (
            f"[{self.scenario}] accepted {self.accepted} / delivered {self.delivered}"
            f" / lost {self.lost} / duplicated {self.duplicated}"
        )
        details = [f"in flight at fault {self.in_flight}"]
        if self.unanswered:
            details.append(
                f"unanswered {self.unanswered} (stored {self.unanswered_stored},"
                f" delivered {self.unanswered_delivered})"
            )
        if self.refused:
            details.append(
                f"refused {self.refused} (delivered {self.refused_delivered})"
            )
        details += [
            f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in self.extra.items()
            if not k.startswith("_")  # raw data kept for assertions
        ]
        return f"{text}  ({'; '.join(details)})"


def report(figures: Figures) -> Figures:
    """Print a scenario's figures (pytest shows them with -s or -rP)."""
    print(figures.line(), flush=True)
    return figures


def drain(
    stack: Stack, expected: set[str], timeout: float, settle: float = 0.0
) -> bool:
    """Wait until every expected recipient reached the sink and no work is left.

    No work left (no queued, sending or deferred row) also means no late
    duplicate can still arrive. Returns whether that happened before timeout.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if expected <= set(stack.sink.counts()):
            with contextlib.suppress(psycopg.OperationalError):
                left = stack.scalar(
                    "select count(*) from recipients where state = any(%s)",
                    list(NON_TERMINAL),
                )
                if left == 0:
                    if settle:
                        time.sleep(settle)
                    return True
        time.sleep(0.1)
    return False


def tally(
    scenario: str,
    stack: Stack,
    outcomes: list[Outcome],
    *,
    in_flight: int = 0,
    settled: set[str] | frozenset[str] = frozenset(),
    **extra: Any,
) -> Figures:
    """Compare what was answered with what reached the sink.

    settled: accepted recipients that ended otherwise, with a record (a bounce
    event); they are not lost.
    """
    accepted = {o.address for o in outcomes if o.kind == "accepted"}
    unanswered = {o.address for o in outcomes if o.kind == "unanswered"}
    refused = {o.address for o in outcomes if o.kind == "refused"}
    counts = stack.sink.counts()
    seen = set(counts)
    stored = set()
    if unanswered:
        stored = {
            row[0]
            for row in stack.query(
                "select lower(address) from recipients where lower(address) = any(%s)",
                list(unanswered),
            )
        }
    figures = Figures(
        scenario=scenario,
        accepted=len(accepted),
        delivered=len(accepted & seen),
        lost=len(accepted - seen - settled),
        duplicated=sum(n - 1 for n in counts.values() if n > 1),
        in_flight=in_flight,
        unanswered=len(unanswered),
        unanswered_stored=len(stored),
        unanswered_delivered=len(unanswered & seen),
        refused=len(refused),
        refused_delivered=len(refused & seen),
        extra=extra,
    )
    # Every MessageId answered must name a committed message (RFC 5321 6.1).
    answered_ids = [
        o.message_id for o in outcomes if o.kind == "accepted" and o.message_id
    ]
    if answered_ids:
        stored_ids = {
            row[0]
            for row in stack.query(
                "select id from messages where id = any(%s)", answered_ids
            )
        }
        missing_ids = len(set(answered_ids) - stored_ids)
        if missing_ids:
            figures.extra["answered but not stored"] = missing_ids
    strays = seen - accepted - unanswered - refused
    if strays:
        figures.extra["never sent but delivered"] = len(strays)
    if figures.lost:
        missing = sorted(accepted - seen - settled)[:20]
        states = stack.query(
            "select lower(address), state, attempts from recipients"
            " where lower(address) = any(%s)",
            missing,
        )
        figures.extra["lost sample"] = states
    return figures
