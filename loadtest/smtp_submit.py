"""SMTP submission throughput of Sesame next to a bare aiosmtpd sink (RFC 5321/3207/4954).

    .venv/bin/python loadtest/smtp_submit.py [--seconds 6] [--rounds 3] [--sessions 32]

Starts Sesame's submission server (mta.submission.server.run) and a bare aiosmtpd
server that accepts everything (same certificate, STARTTLS and AUTH, no database)
in their own processes, then drives each in turn with the same traffic: 32
aiosmtplib sessions that connect, STARTTLS, AUTH once and send ~2 KB messages to
one recipient each. Prints accepted/s for both, the latency and the ratio
Sesame / bare; each 250 from Sesame is a message committed in PostgreSQL.

Uses SESAME_DATABASE_URL / SESAME_REDIS_URL when set, else a fresh database on
127.0.0.1:5432 (created and dropped here) and Redis db 12.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiosmtplib  # noqa: E402
import psycopg  # noqa: E402

from loadtest.common import REDIS_URL, free_port, fresh_database, wait_for_port  # noqa: E402
from sesame.settings import Settings  # noqa: E402

DOMAIN = "bench.example.com"
BODY = ("Hello from the SMTP load test; this line is padding for size.\r\n") * 24


@dataclass
class Phase:
    """What one target accepted within the measured window."""

    accepted: int = 0
    all_ok: int = 0  # every 250, warm-up and tail included
    refused: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(len(data) * p))] * 1000


def messages(count: int) -> list[tuple[str, bytes]]:
    """Pre-built (recipient, message) pairs, about 2 KB each."""
    out = []
    for i in range(count):
        rcpt = f"rcpt{i}@example.net"
        msg = (
            f"From: Load Test <sender@{DOMAIN}>\r\nTo: {rcpt}\r\n"
            f"Subject: Load test message {i}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + BODY
        ).encode()
        out.append((rcpt, msg))
    return out


async def drive(
    port: int,
    username: str,
    password: str,
    sessions: int,
    seconds: float,
    warmup: float,
    corpus: list[tuple[str, bytes]],
) -> Phase:
    """Run the sessions for warmup + seconds; count what was accepted after warmup."""
    phase = Phase(seconds=seconds)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the servers' certificate is self-signed
    start = time.monotonic()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def session(index: int) -> None:
        i = index
        while time.monotonic() < stop_at:
            smtp = aiosmtplib.SMTP(
                hostname="127.0.0.1", port=port, start_tls=True, tls_context=context
            )
            await smtp.connect()
            await smtp.login(username, password)
            try:
                while time.monotonic() < stop_at:
                    rcpt, msg = corpus[i % len(corpus)]
                    i += sessions
                    sent = time.monotonic()
                    try:
                        await smtp.sendmail(f"sender@{DOMAIN}", [rcpt], msg)
                        ok, key = True, ""
                    except aiosmtplib.SMTPResponseException as exc:
                        ok, key = False, f"{exc.code} {exc.message[:40]}"
                        if exc.code == 421:
                            break  # per-session command cap: reconnect
                        await smtp.rset()
                    except aiosmtplib.SMTPRecipientsRefused as exc:
                        ok, key = False, str(exc)[:40]
                        await smtp.rset()
                    done = time.monotonic()
                    phase.all_ok += ok
                    if sent >= measure_from and done <= stop_at:
                        if ok:
                            phase.accepted += 1
                            phase.latencies.append(done - sent)
                        else:
                            phase.refused[key] = phase.refused.get(key, 0) + 1
            finally:
                with contextlib.suppress(Exception):
                    await smtp.quit()

    await asyncio.gather(*(session(n) for n in range(sessions)))
    return phase


# -- the two servers, each in its own process ----------------------------------


def run_sesame(settings: Settings) -> None:
    from mta.submission import server
    from sesame import log

    log.setup("WARNING")
    server.run(settings)


def run_sink(port: int, cert: str, key: str) -> None:
    """A bare aiosmtpd server: STARTTLS, any AUTH, every message 250, nothing kept."""
    import logging

    from aiosmtpd.smtp import SMTP, AuthResult

    # aiosmtpd warns about its deprecated login_data on every AUTH.
    logging.getLogger("mail.log").setLevel(logging.ERROR)

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    def anyone(*args: Any) -> AuthResult:
        return AuthResult(success=True)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(
                Sink(),
                hostname="localhost",
                tls_context=context,
                require_starttls=True,
                authenticator=anyone,
                data_size_limit=41943040,
                loop=loop,
            ),
            "127.0.0.1",
            port,
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())


@contextlib.contextmanager
def child(target: Any, *args: Any) -> Iterator[multiprocessing.process.BaseProcess]:
    proc = multiprocessing.get_context("spawn").Process(target=target, args=args)
    proc.start()
    try:
        yield proc
    finally:
        proc.terminate()
        proc.join(20)
        if proc.is_alive():
            proc.kill()
            proc.join()


@contextlib.contextmanager
def database() -> Iterator[str]:
    url = os.environ.get("SESAME_DATABASE_URL")
    if url:
        yield url
    else:
        with fresh_database() as url:
            yield url


async def create_sender(settings: Settings) -> tuple[str, str, str]:
    """A production account with a verified domain and a quota that never binds."""
    from sesame import accounts, crypto

    box = crypto.SecretBox(
        crypto.load_or_create_key(settings.secret_key, settings.data_dir)
    )
    async with await psycopg.AsyncConnection.connect(
        settings.database_url or "", autocommit=True
    ) as conn:
        account, creds = await accounts.create_account(
            conn, box, settings, "smtp-load", production=True
        )
        await conn.execute(
            "update accounts set max_24_hour_send = 1e9, max_send_rate = 1e6"
            " where id = %s",
            (account.id,),
        )
        await conn.execute(
            "insert into identities (account_id, name, kind, verification_status,"
            " verified_at) values (%s, %s, 'domain', 'success', now())",
            (account.id, DOMAIN),
        )
    return account.id, creds.smtp_username, creds.smtp_password


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--only", choices=("bare", "sesame"), help="drive one target only"
    )
    args = parser.parse_args()
    corpus = messages(1000)

    with database() as database_url, tempfile.TemporaryDirectory() as data_dir:
        settings = Settings.model_validate(
            {
                "database_url": database_url,
                "redis_url": os.environ.get("SESAME_REDIS_URL", REDIS_URL),
                "data_dir": Path(data_dir),
                "smtp_host": "127.0.0.1",
                "smtp_port": free_port(),
                "smtps_port": free_port(),
                "hostname": "localhost",
                "log_level": "WARNING",
            }
        )
        from mta.submission import tls

        cert, key = tls.self_signed(settings.data_dir, settings.hostname)
        account_id, username, password = asyncio.run(create_sender(settings))
        sink_port = free_port()
        with (
            child(run_sesame, settings),
            child(run_sink, sink_port, str(cert), str(key)),
        ):
            wait_for_port(settings.smtp_port)
            wait_for_port(sink_port)
            results: dict[str, list[Phase]] = {"bare": [], "sesame": []}
            for _ in range(args.rounds):
                for name, port in (("bare", sink_port), ("sesame", settings.smtp_port)):
                    if args.only and name != args.only:
                        continue
                    results[name].append(
                        asyncio.run(
                            drive(
                                port,
                                username,
                                password,
                                args.sessions,
                                args.seconds,
                                args.warmup,
                                corpus,
                            )
                        )
                    )
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "select count(*) from messages where account_id = %s"
                " and interface = 'smtp'",
                (account_id,),
            ).fetchone()
            stored = row[0] if row else 0

    print(
        f"SMTP submission, {args.sessions} sessions (STARTTLS + AUTH once),"
        f" {args.rounds} x {args.seconds:.0f} s, ~{len(corpus[0][1])} B messages"
    )
    best: dict[str, Phase] = {}
    for name, phases in results.items():
        if not phases:
            continue
        best[name] = max(phases, key=lambda p: p.rate)
        rates = ", ".join(f"{p.rate:.0f}" for p in phases)
        refused = sum(sum(p.refused.values()) for p in phases)
        print(
            f"{name:<8} {best[name].rate:8.0f} msg/s (rounds: {rates})"
            f"  p50 {best[name].percentile(0.5):6.1f} ms"
            f"  p99 {best[name].percentile(0.99):6.1f} ms  refused {refused}"
        )
        for phase in phases:
            for reason, count in phase.refused.items():
                print(f"    refused {count} x {reason}")
    if len(best) == 2:
        ratio = best["sesame"].rate / best["bare"].rate if best["bare"].rate else 0.0
        print(f"ratio sesame/bare {ratio:.2f} (goal >= 0.5)")
    answered = sum(p.all_ok for p in results["sesame"])
    print(f"Sesame answered 250 to {answered} messages; rows in PostgreSQL: {stored}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
