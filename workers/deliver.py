"""The delivery worker: an RQ worker whose jobs are batches of claimed recipients.

RQ runs one job at a time; the job hands its batch to an asyncio loop that lives
as long as the process, so SMTP sessions, DNS answers and DKIM keys are reused
across jobs. The job returns only after every outcome is written.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future

import redis.exceptions
import uvloop
from redis import Redis as SyncRedis
from rq import Queue, SimpleWorker

from mta.accept import WAKE_KEY
from mta.delivery.deliverer import Deliverer
from sesame.runtime import Runtime
from sesame.settings import Settings, get_settings
from workers import DELIVERY_QUEUE

log = logging.getLogger(__name__)

_settings: Settings | None = None
_wake: SyncRedis | None = None
_loop: asyncio.AbstractEventLoop | None = None
_deliverer: Deliverer | None = None
_lock = threading.Lock()


def deliver_batch(recipient_ids: list[int], lease_token: str) -> int:
    """RQ job: deliver one batch; return the recipients attempted."""
    loop, deliverer = _process_state()
    future: Future[int] = asyncio.run_coroutine_threadsafe(
        deliverer.deliver(recipient_ids, lease_token), loop
    )
    try:
        attempted = future.result()
    except BaseException:
        # RQ's job timeout interrupts this wait: stop the batch as well, so it
        # does not go on sending after RQ has given up on it.
        future.cancel()
        raise
    if _wake is not None:
        # A slot in the queue is free: let the scheduler dispatch the next batch
        # now rather than at its next periodic look.
        try:
            _wake.lpush(WAKE_KEY, b"1")
        except redis.exceptions.RedisError:
            pass  # the scheduler's periodic look finds the free slot anyway
    return attempted


def _process_state() -> tuple[asyncio.AbstractEventLoop, Deliverer]:
    global _loop, _deliverer
    with _lock:
        if _loop is None or _deliverer is None:
            loop = uvloop.new_event_loop()
            threading.Thread(
                target=loop.run_forever, name="delivery-loop", daemon=True
            ).start()
            runtime = Runtime.create(_settings or get_settings())

            async def start() -> Deliverer:
                await runtime.open()
                return Deliverer(runtime)

            _deliverer = asyncio.run_coroutine_threadsafe(start(), loop).result()
            _loop = loop
        return _loop, _deliverer


def run_worker(settings: Settings) -> int:
    global _settings, _wake
    assert settings.redis_url
    _settings = settings
    connection = SyncRedis.from_url(settings.redis_url)
    _wake = connection
    queue = Queue(DELIVERY_QUEUE, connection=connection)
    worker = SimpleWorker([queue], connection=connection)
    _process_state()
    worker.work(logging_level="WARNING", with_scheduler=False)
    return 0
