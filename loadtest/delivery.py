"""Delivery throughput of Sesame's MTA next to a plain aiosmtplib client.

    .venv/bin/python loadtest/delivery.py [--messages 5000] [--workers 2] [--rounds 3]

Each round, back to back so both sides meet the machine in the same state:
1. Accepts N messages (about 5 KB, text + HTML) through the API to one
   production account whose domain signs with RSA-2048 DKIM; no worker runs.
2. Baseline: a plain aiosmtplib client with 50 reused connections sends the
   same stored messages to the same sink (Postfix's C smtp-sink on loopback).
3. Starts the scheduler and the delivery workers and times the backlog from the
   first delivery attempt to the last recorded outcome; stops them again.
Then, steady state: with workers running, sends more messages at a fixed rate
and reports accept-to-delivered latency (p50/p99) from the recorded timestamps.
Prints delivered/s and CPU per message for both sides of every round, and the
median ratio over the rounds (goal >= 0.5): on a shared 2-core machine one
round can land in a slow moment for one side only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiosmtplib  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
from botocore.auth import SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402
from rq import Worker  # noqa: E402

from loadtest import sink  # noqa: E402
from loadtest.common import (  # noqa: E402
    REDIS_URL,
    cpu_seconds,
    free_port,
    fresh_database,
    process,
    python,
    wait_for_port,
)

DOMAIN = "bench.example.com"
# Where the CPU of the backlog phase goes, by command line.
ROLES = {
    "worker": "sesame.cli worker",
    "scheduler": "sesame.cli scheduler",
    "postgres": "postgres: ",
    "redis": "redis-server",
    "sink": "smtp-sink",
    "api": "multiprocessing",
}
TEXT = ("Sesame delivery benchmark. " * 3 + "\n") * 30  # ~2.5 KB; HTML doubles it


def requests(
    port: int, key_id: str, secret: str, start: int, count: int
) -> list[bytes]:
    credentials = Credentials(key_id, secret)
    out = []
    for i in range(start, start + count):
        body = urlencode(
            {
                "Action": "SendEmail",
                "Version": "2010-12-01",
                "Source": f"Bench <sender@{DOMAIN}>",
                "Destination.ToAddresses.member.1": f"user{i}@dest.example.net",
                "Message.Subject.Data": f"Benchmark message {i}",
                "Message.Body.Text.Data": TEXT,
                "Message.Body.Html.Data": "<pre>" + TEXT + "</pre>",
            }
        ).encode()
        request = AWSRequest(
            method="POST",
            url=f"http://127.0.0.1:{port}/",
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        SigV4Auth(credentials, "ses", "us-east-1").add_auth(request)
        head = ["POST / HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        head += [f"{k}: {v}" for k, v in request.headers.items()]
        head.append(f"Content-Length: {len(body)}")
        out.append(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return out


async def submit(
    port: int, payloads: list[bytes], connections: int, rate: float | None
) -> int:
    """Send the requests; return how many were answered 200."""
    ok = 0
    queue = list(reversed(payloads))
    interval = connections / rate if rate else 0.0

    async def client() -> None:
        nonlocal ok
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            started = time.monotonic()
            writer.write(queue.pop())
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line[15:])
                for line in head.split(b"\r\n")
                if line[:15].lower() == b"content-length:"
            )
            await reader.readexactly(length)
            ok += head[9:12] == b"200"
            if interval:
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return ok


async def baseline(
    port: int, messages: list[tuple[str, str, bytes]], connections: int
) -> float:
    """Messages/s of a plain aiosmtplib client over reused connections."""
    queue = list(messages)

    async def client() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await smtp.connect()
        while queue:
            sender, rcpt, data = queue.pop()
            await smtp.sendmail(sender, [rcpt], data)
        await smtp.quit()

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(connections)))
    return len(messages) / (time.monotonic() - started)


@dataclass
class Round:
    """One backlog delivered by the baseline client and then by Sesame."""

    baseline: float  # messages/s
    baseline_cpu: float  # ms of CPU per message, client + sink
    sesame: float  # messages/s
    sesame_cpu: dict[str, float]  # ms of CPU per message, by process role
    delivered: int

    @property
    def ratio(self) -> float:
        return self.sesame / self.baseline


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="baseline/Sesame pairs; the ratio reported is their median",
    )
    parser.add_argument(
        "--steady", type=int, default=1000, help="messages in the latency phase"
    )
    parser.add_argument(
        "--steady-rate",
        type=float,
        default=200.0,
        help="messages/s in the latency phase",
    )
    args = parser.parse_args()

    redis.Redis.from_url(REDIS_URL).flushdb()
    data_dir = Path(os.environ.get("SESAME_DATA_DIR", "var/bench"))
    rounds: list[Round] = []
    with fresh_database() as database_url:
        key_id, secret = _account(database_url, data_dir)
        api_port, sink_port = free_port(), free_port()
        env = {
            "SESAME_DATABASE_URL": database_url,
            "SESAME_REDIS_URL": REDIS_URL,
            "SESAME_API_PORT": str(api_port),
            "SESAME_DATA_DIR": str(data_dir),
            "SESAME_SMARTHOST": f"127.0.0.1:{sink_port}",
            "SESAME_LOG_LEVEL": "WARNING",
            "SESAME_SWEEP_SECONDS": "1",
        }
        cli = [python(), "-m", "sesame.cli"]

        def delivery() -> contextlib.ExitStack:
            """Start the scheduler and the workers; stop them when the block ends."""
            stack = contextlib.ExitStack()
            stack.enter_context(process([*cli, "scheduler"], env=env))
            for _ in range(args.workers):
                stack.enter_context(process([*cli, "worker"], env=env))
            return stack

        with process(sink.command(sink_port)), process([*cli, "api"], env=env):
            wait_for_port(api_port)
            wait_for_port(sink_port)
            sent = 0
            for number in range(1, args.rounds + 1):
                # Each round: a backlog accepted with no worker running, sent by
                # the baseline, then delivered by Sesame, back to back, so both
                # see the machine in the same state.
                after = _last_recipient_id(database_url)
                sent += asyncio.run(
                    submit(
                        api_port,
                        requests(api_port, key_id, secret, sent, args.messages),
                        32,
                        None,
                    )
                )
                stored = _stored(database_url, after)
                before = cpu_seconds({"sink": "smtp-sink"})["sink"] + _own_cpu()
                base = asyncio.run(baseline(sink_port, stored, 50))
                base_cpu = (
                    cpu_seconds({"sink": "smtp-sink"})["sink"] + _own_cpu() - before
                )
                with delivery():
                    # Count CPU from the round's first delivery, once start-up
                    # is over.
                    _wait_delivered(database_url, after, 1, timeout=60)
                    cpu_start = cpu_seconds(ROLES)
                    delivered = _wait_delivered(
                        database_url, after, len(stored), timeout=600
                    )
                    cpu_end = cpu_seconds(ROLES)
                elapsed = _backlog_seconds(database_url, after)
                result = Round(
                    baseline=base,
                    baseline_cpu=base_cpu * 1000 / len(stored),
                    sesame=delivered / elapsed,
                    sesame_cpu={
                        role: (cpu_end[role] - cpu_start[role]) * 1000 / delivered
                        for role in ROLES
                    },
                    delivered=delivered,
                )
                rounds.append(result)
                _print_round(number, result)

            after = _last_recipient_id(database_url)
            with delivery():
                _wait_for_workers(args.workers)
                steady_ok = asyncio.run(
                    submit(
                        api_port,
                        requests(api_port, key_id, secret, sent, args.steady),
                        8,
                        args.steady_rate,
                    )
                )
                _wait_delivered(database_url, after, steady_ok, timeout=120)
        p50, p99, failed = _latency(database_url, after)

    ratios = sorted(r.ratio for r in rounds)
    print(
        f"{args.messages} messages x {args.rounds} rounds, {args.workers} workers,"
        " DKIM RSA-2048, Postfix smtp-sink"
    )
    print(
        f"ratio sesame/aiosmtplib: median {statistics.median(ratios):.2f}"
        f" (rounds {', '.join(f'{r:.2f}' for r in ratios)})  (goal >= 0.50)"
    )
    print(
        f"accept-to-delivered at {args.steady_rate:.0f} msg/s: p50 {p50:.0f} ms"
        f"  p99 {p99:.0f} ms  ({steady_ok} messages, {failed} not delivered)"
    )
    return 0


def _print_round(number: int, result: Round) -> None:
    cpu = result.sesame_cpu
    print(
        f"round {number}: aiosmtplib, 50 connections {result.baseline:6.0f} msg/s"
        f" | sesame {result.sesame:6.0f} msg/s | ratio {result.ratio:.2f}"
    )
    print(
        f"  CPU per message: baseline {result.baseline_cpu:.2f} ms (client + sink);"
        f" sesame {sum(cpu.values()):.2f} ms ("
        + ", ".join(f"{role} {ms:.2f}" for role, ms in cpu.items())
        + ")"
    )


def _own_cpu() -> float:
    """CPU seconds this process has used (the baseline client runs in it)."""
    times = os.times()
    return times.user + times.system


def _account(database_url: str, data_dir: Path) -> tuple[str, str]:
    async def go() -> tuple[str, str]:
        from mta.delivery import dkim
        from sesame import accounts, crypto
        from sesame.settings import Settings

        settings = Settings(
            database_url=database_url, redis_url=REDIS_URL, data_dir=data_dir
        )
        box = crypto.SecretBox(crypto.load_or_create_key(None, data_dir))
        async with await psycopg.AsyncConnection.connect(
            database_url, autocommit=True
        ) as conn:
            account, creds = await accounts.create_account(
                conn, box, settings, "bench", True
            )
            await conn.execute(
                "update accounts set max_24_hour_send = 1e9, max_send_rate = 1e6"
                " where id = %s",
                (account.id,),
            )
            cur = await conn.execute(
                "insert into identities (account_id, name, kind, verification_status,"
                " dkim_enabled, dkim_status) values (%s, %s, 'domain', 'success', true,"
                " 'success') returning id",
                (account.id, DOMAIN),
            )
            identity_id = (await cur.fetchone())[0]
            pem, public = dkim.generate_rsa_key(2048)
            await conn.execute(
                "insert into dkim_keys (identity_id, selector, algorithm,"
                " private_key_sealed, public_key) values (%s, 'bench', 'rsa-sha256', %s, %s)",
                (identity_id, box.seal(pem, b"bench"), public),
            )
        return creds.access_key_id, creds.secret_access_key

    return asyncio.run(go())


def _wait_for_workers(count: int, timeout: float = 30.0) -> None:
    """Wait until count RQ workers have registered, so start-up is not timed."""
    connection = redis.Redis.from_url(REDIS_URL)
    deadline = time.monotonic() + timeout
    while Worker.count(connection=connection) < count:
        if time.monotonic() > deadline:
            raise TimeoutError("delivery workers did not start")
        time.sleep(0.05)


def _last_recipient_id(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return int(
            conn.execute("select coalesce(max(id), 0) from recipients").fetchone()[0]
        )


def _stored(database_url: str, after: int) -> list[tuple[str, str, bytes]]:
    """The messages of recipients after a given id, as stored for sending."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "select m.source, r.address, m.raw from messages m"
            " join recipients r on r.message_id = m.id where r.id > %s",
            (after,),
        ).fetchall()
    return [(f"bounce@{DOMAIN}", rcpt, bytes(raw)) for _, rcpt, raw in rows]


def _wait_delivered(
    database_url: str, after: int, expected: int, timeout: float
) -> int:
    """Wait until expected recipients after a given id are finished."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            done = conn.execute(
                "select count(*) from recipients where id > %s"
                " and state in ('delivered', 'bounced')",
                (after,),
            ).fetchone()[0]
            if done >= expected:
                return int(done)
            time.sleep(0.05)
    raise TimeoutError(f"only {done} of {expected} recipients finished")


def _backlog_seconds(database_url: str, after: int) -> float:
    """From the first attempt to the last outcome, so process start-up is not timed."""
    with psycopg.connect(database_url) as conn:
        first, last = conn.execute(
            "select (select min(started_at) from delivery_attempts"
            " where recipient_id > %s),"
            " max(updated_at) from recipients where id > %s and state = 'delivered'",
            (after, after),
        ).fetchone()
    return float((last - first).total_seconds())


def _latency(database_url: str, after: int) -> tuple[float, float, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "select extract(epoch from r.updated_at - m.created_at) * 1000, r.state"
            " from recipients r join messages m on m.id = r.message_id"
            " where r.id > %s order by 1",
            (after,),
        ).fetchall()
    steady = [ms for ms, state in rows if state == "delivered"]
    failed = sum(1 for _, state in rows if state != "delivered")
    if not steady:
        return 0.0, 0.0, failed
    return (
        steady[len(steady) // 2],
        steady[min(len(steady) - 1, int(len(steady) * 0.99))],
        failed,
    )


if __name__ == "__main__":
    sys.exit(main())
