"""Helpers shared by the load tests: throwaway databases, processes, HTTP load."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get(
    "SESAME_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("SESAME_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """Create an empty database with Sesame's schema; drop it afterwards."""
    from sesame import db

    name = f"sesame_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        db.migrate(url)
        yield url
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


@contextlib.contextmanager
def process(
    argv: list[str], env: dict[str, str] | None = None, quiet: bool = True
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a child process for the duration of the block."""
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(
        argv, env={**os.environ, **(env or {})}, stdout=out, stderr=out, cwd=ROOT
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(roles: dict[str, str]) -> dict[str, float]:
    """CPU seconds used so far by the live processes whose command line holds each
    role's pattern (first match wins), read from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = dict.fromkeys(roles, 0.0)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # utime and stime are fields 14 and 15; the name in parentheses may
        # hold spaces, so count from its closing parenthesis.
        fields = stat.rpartition(")")[2].split()
        used = (int(fields[11]) + int(fields[12])) / tick
        for role, pattern in roles.items():
            if pattern in command:
                totals[role] += used
                break
    return totals


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout} s")


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(len(data) * p))] * 1000

    def line(self, label: str) -> str:
        return (
            f"{label:<28} {self.rate:9.0f} req/s  p50 {self.percentile(0.5):7.1f} ms"
            f"  p99 {self.percentile(0.99):7.1f} ms  non-200 {self.errors}"
        )


async def http_load(
    port: int,
    requests: list[bytes],
    connections: int,
    seconds: float,
    warmup: float = 2.0,
) -> LoadResult:
    """Send pre-built HTTP/1.1 requests over keep-alive connections for a while."""
    result = LoadResult()
    start = time.monotonic()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    async def client(index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = index
        try:
            while time.monotonic() < stop_at:
                payload = requests[i % len(requests)]
                i += connections
                sent = time.monotonic()
                writer.write(payload)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                done = time.monotonic()
                if sent >= measure_from and done <= stop_at:
                    result.requests += 1
                    result.latencies.append(done - sent)
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    if status != 200:
                        result.errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(client(i) for i in range(connections)))
    result.seconds = seconds
    return result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def python() -> str:
    return sys.executable
