"""Real Sesame processes for the operations tests: own database, free ports, a sink.

Each test gets a database of its own, because the processes it starts run a
scheduler that would otherwise dispatch whatever other tests left queued.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from sesame import db
from tests.conftest import ADMIN_URL
from tests.support.smtp_sink import free_port

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = ("127.0.0.1",)


def port() -> int:
    """A TCP port free on 127.0.0.1, below the ephemeral range."""
    return free_port(LOOPBACK)


@pytest.fixture
def ops_database() -> Iterator[str]:
    """A new, migrated database for one test, dropped afterwards."""
    name = f"sesame_ops_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    db.migrate(url)
    yield url
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def ops_redis(redis_url: str) -> Iterator[str]:
    """The test Redis database, empty before and after the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield redis_url
    client.flushdb()
    client.close()


def sesame_env(
    database_url: str, redis_url: str, data_dir: Path, **settings: Any
) -> dict[str, str]:
    """The environment of a Sesame process: the caller's, minus its SESAME_*."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SESAME_") and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        SESAME_DATABASE_URL=database_url,
        SESAME_REDIS_URL=redis_url,
        SESAME_DATA_DIR=str(data_dir),
        SESAME_LOG_LEVEL="WARNING",
        # No real DNS: the smarthost is an address, and nothing else resolves.
        SESAME_DNS_NAMESERVERS="127.0.0.1:1",
    )
    env.update({f"SESAME_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def sesame(env: dict[str, str], *args: str) -> Any:
    """Run one ``sesame`` command to completion; return its JSON output."""
    proc = subprocess.run(
        [sys.executable, "-m", "sesame.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip() else None


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Processes:
    """Long-running Sesame processes of one test, stopped at its end."""

    directory: Path
    running: list[Process] = field(default_factory=list)

    def start(self, name: str, env: dict[str, str], *args: str) -> Process:
        log = self.directory / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "sesame.cli", *args],
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own group, so stopping it reaches uvicorn's workers too.
                start_new_session=True,
            )
        process = Process(name, popen, log)
        self.running.append(process)
        return process

    def check_alive(self) -> None:
        """Fail with the logs if a process exited."""
        for process in self.running:
            if process.popen.poll() is not None:
                raise AssertionError(
                    f"{process.name} exited with {process.popen.returncode}:\n"
                    + self.tail(process)
                )

    def tail(self, process: Process, lines: int = 40) -> str:
        text = process.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def logs(self) -> str:
        return "\n".join(
            f"--- {process.name}\n{self.tail(process)}" for process in self.running
        )

    def stop(self) -> None:
        for process in self.running:
            if process.popen.poll() is None:
                os.killpg(process.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.running:
            try:
                process.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.stop()


def wait_until_http(url: str, processes: Processes, timeout: float = 60.0) -> None:
    """Wait for a 200 from url while every started process stays up."""
    deadline = time.monotonic() + timeout
    while True:
        processes.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer\n{processes.logs()}")
        time.sleep(0.2)


def wait_until_listening(
    host: str, port_number: int, processes: Processes, timeout: float = 60.0
) -> None:
    """Wait until host:port accepts TCP connections."""
    deadline = time.monotonic() + timeout
    while True:
        processes.check_alive()
        try:
            with socket.create_connection((host, port_number), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{host}:{port_number} did not listen\n{processes.logs()}"
            )
        time.sleep(0.2)


def verify_domain(database_url: str, account_id: str, domain: str) -> None:
    """Mark a domain identity (and its DKIM keys, if any) verified in the database."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "insert into identities (account_id, name, kind, verification_status,"
            " verified_at) values (%s, %s, 'domain', 'success', now())"
            " on conflict (account_id, name) do update set"
            " verification_status = 'success', verified_at = now()",
            (account_id, domain),
        )
        conn.execute(
            "update identities set dkim_enabled = true, dkim_status = 'success'"
            " where account_id = %s and name = %s"
            " and exists (select 1 from dkim_keys k where k.identity_id = identities.id)",
            (account_id, domain),
        )
