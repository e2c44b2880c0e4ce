"""SendEmail throughput of Sesame's API next to a bare FastAPI endpoint.

    .venv/bin/python loadtest/api_send.py [--seconds 10] [--connections 64]

Starts ``sesame api`` (uvicorn, 2 workers) on a throwaway database and a bare
FastAPI app that parses the same form and answers a fixed XML (also 2 workers),
then drives both with the same pre-signed SendEmail requests over 64 keep-alive
connections. Prints accepted/s, p50/p99 latency and the ratio Sesame / bare.
Every request Sesame answers 200 is a message committed in PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402
import redis  # noqa: E402
from botocore.auth import SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

from loadtest.common import (  # noqa: E402
    REDIS_URL,
    free_port,
    fresh_database,
    http_load,
    process,
    python,
    wait_for_port,
)

BODY_TEXT = "Hello from the load test. " * 40  # about 1 KB of text


def signed_requests(port: int, key_id: str, secret: str, count: int) -> list[bytes]:
    """SendEmail requests signed now; valid for the 5-minute skew window."""
    credentials = Credentials(key_id, secret)
    out = []
    for i in range(count):
        body = urlencode(
            {
                "Action": "SendEmail",
                "Version": "2010-12-01",
                "Source": "Load Test <sender@bench.example.com>",
                "Destination.ToAddresses.member.1": f"rcpt{i}@example.net",
                "Message.Subject.Data": f"Load test message {i}",
                "Message.Body.Text.Data": BODY_TEXT,
                "Message.Body.Html.Data": f"<p>{BODY_TEXT}</p>",
            }
        ).encode()
        request = AWSRequest(
            method="POST",
            url=f"http://127.0.0.1:{port}/",
            data=body,
            headers={
                "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"
            },
        )
        SigV4Auth(credentials, "ses", "us-east-1").add_auth(request)
        head = ["POST / HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        head += [f"{k}: {v}" for k, v in request.headers.items()]
        head.append(f"Content-Length: {len(body)}")
        out.append(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    redis.Redis.from_url(REDIS_URL).flushdb()
    with fresh_database() as database_url:
        key_id, secret = _production_account(database_url)
        sesame_port, bare_port = free_port(), free_port()
        env = {
            "SESAME_DATABASE_URL": database_url,
            "SESAME_REDIS_URL": REDIS_URL,
            "SESAME_API_PORT": str(sesame_port),
            "SESAME_API_WORKERS": str(args.workers),
            "SESAME_DATA_DIR": os.environ.get("SESAME_DATA_DIR", "var/bench"),
            "SESAME_LOG_LEVEL": "WARNING",
        }
        bare = [
            python(),
            "-m",
            "uvicorn",
            "loadtest.bare_api:app",
            "--port",
            str(bare_port),
            "--workers",
            str(args.workers),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        with process(bare):
            wait_for_port(bare_port)
            requests = signed_requests(bare_port, key_id, secret, 2000)
            base = asyncio.run(
                http_load(bare_port, requests, args.connections, args.seconds)
            )
        with process([python(), "-m", "sesame.cli", "api"], env=env):
            wait_for_port(sesame_port)
            requests = signed_requests(sesame_port, key_id, secret, 2000)
            ours = asyncio.run(
                http_load(sesame_port, requests, args.connections, args.seconds)
            )
        with psycopg.connect(database_url) as conn:
            stored = conn.execute("select count(*) from messages").fetchone()[0]

    print(base.line("bare FastAPI (fixed XML)"))
    print(ours.line("sesame SendEmail"))
    print(f"statuses: {ours.statuses}; messages committed: {stored}")
    print(f"ratio sesame/bare: {ours.rate / base.rate:.2f}  (goal >= 0.30)")
    return 0


def _production_account(database_url: str) -> tuple[str, str]:
    async def go() -> tuple[str, str]:
        from sesame import accounts, crypto
        from sesame.settings import Settings

        settings = Settings(
            database_url=database_url,
            redis_url=REDIS_URL,
            data_dir=Path(os.environ.get("SESAME_DATA_DIR", "var/bench")),
        )
        box = crypto.SecretBox(crypto.load_or_create_key(None, settings.data_dir))
        async with await psycopg.AsyncConnection.connect(
            database_url, autocommit=True
        ) as conn:
            account, creds = await accounts.create_account(
                conn, box, settings, "bench", True
            )
            await conn.execute(
                "update accounts set max_24_hour_send = 1e9, max_send_rate = 1e6 where id = %s",
                (account.id,),
            )
            await conn.execute(
                "insert into identities (account_id, name, kind, verification_status)"
                " values (%s, 'bench.example.com', 'domain', 'success')",
                (account.id,),
            )
        return creds.access_key_id, creds.secret_access_key

    return asyncio.run(go())


if __name__ == "__main__":
    sys.exit(main())
