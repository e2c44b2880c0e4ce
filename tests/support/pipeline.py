"""Drive the scheduler and a deliverer in the test's own event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import psycopg
import pytest
import pytest_asyncio
from redis import Redis as SyncRedis
from rq import Queue

from mta.delivery.deliverer import Deliverer
from sesame.runtime import Runtime
from sesame.settings import Settings
from workers import DELIVERY_QUEUE
from workers.scheduler import Scheduler


@dataclass
class Pipeline:
    runtime: Runtime
    scheduler: Scheduler
    deliverer: Deliverer
    queue: Queue

    async def run_jobs(self) -> int:
        """Run every queued delivery job here; return the recipients attempted."""
        done = 0
        while True:
            raw = self.queue.connection.lpop(self.queue.key)
            if raw is None:
                return done
            job = self.queue.fetch_job(raw.decode())
            if job is None:
                continue
            done += await self.deliverer.deliver(*job.args)
            job.delete()

    async def drain(self, timeout: float = 20.0) -> None:
        """Dispatch and deliver until nothing is due or in flight."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await self.scheduler.check_epoch()
            await self.scheduler.sweep()
            await self.scheduler.dispatch()
            await self.run_jobs()
            async with self.runtime.pool.connection() as conn:
                cur = await conn.execute(
                    "select count(*) from recipients where state = 'sending'"
                    " or (state in ('queued', 'deferred') and next_attempt_at <= now()"
                    " and expires_at > now())"
                )
                row = await cur.fetchone()
            if row and row[0] == 0:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError("work still due after the deadline")


async def open_pipeline(settings: Settings) -> Pipeline:
    runtime = Runtime.create(settings, pool_size=4)
    await runtime.open()
    queue = Queue(
        DELIVERY_QUEUE, connection=SyncRedis.from_url(settings.redis_url or "")
    )
    scheduler = Scheduler(runtime, queue)
    return Pipeline(runtime, scheduler, Deliverer(runtime), queue)


@pytest_asyncio.fixture
async def pipeline_factory() -> AsyncIterator[object]:
    opened: list[Pipeline] = []

    async def make(settings: Settings) -> Pipeline:
        p = await open_pipeline(settings)
        opened.append(p)
        return p

    yield make
    for p in opened:
        await p.deliverer.close()
        await p.runtime.close()


def rows(settings: Settings, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Run one query against the test database and return its rows."""
    with psycopg.connect(settings.database_url or "") as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


@pytest.fixture
def delivery_settings(
    settings: Settings, dns_server: object, delivery_port: int
) -> Settings:
    """Settings whose mail to dest.test reaches the sink on 127.0.0.2, fast retries."""
    dns_server.add("dest.test", "MX", "10 mx1.dest.test.")  # type: ignore[attr-defined]
    dns_server.add("mx1.dest.test", "A", "127.0.0.2")  # type: ignore[attr-defined]
    return settings.model_copy(
        update={
            "dns_nameservers": dns_server.nameservers,  # type: ignore[attr-defined]
            "delivery_port": delivery_port,
            "retry_base_seconds": 0.2,
            "retry_max_interval_seconds": 0.5,
            "dns_timeout_seconds": 1.0,
        }
    )
