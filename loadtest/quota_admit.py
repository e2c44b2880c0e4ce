"""Measure QuotaGate admits/s: `.venv/bin/python -m loadtest.quota_admit [--tasks 16]`."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

from redis.asyncio import Redis

from quota import Admission, QuotaGate, quota_keys

REDIS_URL = os.environ.get("SESAME_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")


async def no_history() -> list[tuple[int, int]]:
    """Return an empty record: bench accounts are new."""
    return []


async def bench(tasks: int, seconds: float, accounts: int) -> None:
    """Run `tasks` admit loops for `seconds` and print the rate."""
    client = Redis.from_url(REDIS_URL, max_connections=tasks)
    gate = QuotaGate(client)
    ids = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(accounts)]
    admitted = 0
    calls = 0
    deadline = time.perf_counter() + seconds

    async def loop(worker: int) -> None:
        nonlocal admitted, calls
        i = worker
        while time.perf_counter() < deadline:
            # Quotas far above what a few seconds can reach: every call is the
            # common case, one EVALSHA that admits.
            decision = await gate.admit(
                ids[i % accounts],
                1,
                max_24_hour_send=1e9,
                max_send_rate=1e6,
                rebuild=no_history,
            )
            calls += 1
            admitted += decision.admission is Admission.ADMITTED
            i += tasks

    started = time.perf_counter()
    try:
        await asyncio.gather(*(loop(w) for w in range(tasks)))
        elapsed = time.perf_counter() - started
        print(
            f"{tasks} tasks, {accounts} accounts: {calls / elapsed:,.0f} admits/s "
            f"({calls} calls, {admitted} admitted, {elapsed:.1f} s)"
        )
    finally:
        for account in ids:
            await client.delete(*quota_keys(account))
        await client.aclose()


def main() -> None:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--accounts", type=int, default=100)
    options = parser.parse_args()
    asyncio.run(bench(options.tasks, options.seconds, options.accounts))


if __name__ == "__main__":
    main()
