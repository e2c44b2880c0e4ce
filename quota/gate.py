"""SES sending quotas per account: a token bucket and a rolling 24-hour count.

Both live in Redis and are checked and updated by one Lua script per send.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

# Recipients per unix-epoch minute over the last 24 hours, from PostgreSQL.
Rebuild = Callable[[], Awaitable[list[tuple[int, int]]]]

# A wipe racing a rebuild makes the next call find the key gone again; more
# than this many in a row means Redis is being wiped faster than we can load.
_REBUILD_ATTEMPTS = 3


def _source(name: str) -> str:
    """Return a script's text with the shared helpers of window.lua before it."""
    here = Path(__file__).resolve().parent
    return (here / "window.lua").read_text() + (here / name).read_text()


_ADMIT = _source("admit.lua")
_LOAD = _source("load.lua")
_USAGE = _source("usage.lua")
_REFUND = _source("refund.lua")


class Admission(StrEnum):
    """The verdict on one send; the API turns refusals into SES Throttling errors."""

    ADMITTED = "admitted"
    RATE_EXCEEDED = "rate_exceeded"
    DAILY_EXCEEDED = "daily_exceeded"


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict with the account's count and bucket after it."""

    admission: Admission
    sent_last_24_hours: float
    tokens: float


class QuotaUnavailable(RuntimeError):
    """Redis lost an account's count each time it was rebuilt."""


class QuotaKeys(NamedTuple):
    """An account's two Redis keys."""

    day: str
    rate: str


def quota_keys(account_id: str) -> QuotaKeys:
    """Return an account's Redis keys, hash-tagged by its id into one slot."""
    tag = f"sesame:{{{account_id}}}"
    return QuotaKeys(day=f"{tag}:day", rate=f"{tag}:rate")


def _text(value: bytes | str) -> str:
    """Return a reply as text, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value


def _clock(now: float | None) -> float | str:
    """Return the script's time argument: '' lets the script use Redis's TIME."""
    return "" if now is None else now


class QuotaGate:
    """Admit sends against per-account quotas kept in Redis."""

    def __init__(self, redis: Redis) -> None:
        self._admit = redis.register_script(_ADMIT)
        self._load = redis.register_script(_LOAD)
        self._usage = redis.register_script(_USAGE)
        self._refund = redis.register_script(_REFUND)
        # One rebuild per account at a time in this process; the others wait
        # for it rather than each querying PostgreSQL after a wipe.
        self._rebuilds: dict[str, asyncio.Task[None]] = {}
        self._redis = redis
        # Admits issued in the same event-loop turn share one pipeline: one
        # write and one read for all of them instead of a round trip each.
        self._pending: list[tuple[QuotaKeys, tuple[Any, ...], asyncio.Future[Any]]] = []

    async def admit(
        self,
        account_id: str,
        recipients: int,
        *,
        max_24_hour_send: float,
        max_send_rate: float,
        rebuild: Rebuild,
        now: float | None = None,
    ) -> Decision:
        """Count a send of `recipients` if both quotas allow it, else count nothing."""
        if recipients < 1:
            raise ValueError(f"a send has at least one recipient, not {recipients}")
        if max_send_rate <= 0:
            raise ValueError(f"max_send_rate must be positive, not {max_send_rate}")
        keys = quota_keys(account_id)
        args = (recipients, max_24_hour_send, max_send_rate, _clock(now))
        for _ in range(_REBUILD_ATTEMPTS):
            status, sent, tokens = await self._admit_batched(keys, args)
            if _text(status) != "rebuild":
                return Decision(Admission(_text(status)), float(sent), float(tokens))
            await self._rebuild(keys.day, rebuild, now)
        raise QuotaUnavailable(f"account {account_id}: day count lost while loading")

    def _admit_batched(
        self, keys: QuotaKeys, args: tuple[Any, ...]
    ) -> asyncio.Future[Any]:
        """Queue one admit for the pipeline flushed at the end of this loop turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._start_flush)
        self._pending.append((keys, args, future))
        return future

    def _start_flush(self) -> None:
        batch, self._pending = self._pending, []
        asyncio.ensure_future(self._flush(batch))

    async def _flush(
        self, batch: list[tuple[QuotaKeys, tuple[Any, ...], asyncio.Future[Any]]]
    ) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for keys, args, _ in batch:
                    pipe.evalsha(self._admit.sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (keys, args, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, NoScriptError):
                # Redis lost its script cache; the Script object reloads it.
                try:
                    reply = await self._admit(keys=keys, args=args)
                except Exception as exc:
                    future.set_exception(exc)
                    continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def sent_last_24_hours(
        self, account_id: str, *, rebuild: Rebuild, now: float | None = None
    ) -> int:
        """Return the recipients an account sent in the rolling 24 hours."""
        day = quota_keys(account_id).day
        for _ in range(_REBUILD_ATTEMPTS):
            sent: int = await self._usage(keys=[day], args=[_clock(now)])
            if sent >= 0:
                return sent
            await self._rebuild(day, rebuild, now)
        raise QuotaUnavailable(f"account {account_id}: day count lost while loading")

    async def refund(
        self, account_id: str, recipients: int, now: float | None = None
    ) -> None:
        """Give back the count and tokens of an admitted send whose commit failed."""
        if recipients < 1:
            raise ValueError(f"a send has at least one recipient, not {recipients}")
        await self._refund(keys=quota_keys(account_id), args=[recipients, _clock(now)])

    async def _rebuild(self, day: str, rebuild: Rebuild, now: float | None) -> None:
        """Load a wiped day hash, or wait for this process's load already under way."""
        task = self._rebuilds.get(day)
        if task is None:
            task = asyncio.create_task(self._load_history(day, rebuild, now))
            self._rebuilds[day] = task
            task.add_done_callback(functools.partial(self._forget_rebuild, day))
        # Shielded: one caller giving up must not cancel the load for the rest.
        await asyncio.shield(task)

    def _forget_rebuild(self, day: str, task: asyncio.Task[None]) -> None:
        """Drop a finished load so the next wipe starts a fresh one."""
        if self._rebuilds.get(day) is task:
            del self._rebuilds[day]
        if not task.cancelled():
            # Every waiter may have been cancelled; mark the error as seen.
            task.exception()

    async def _load_history(
        self, day: str, rebuild: Rebuild, now: float | None
    ) -> None:
        """Fetch the account's last 24 hours and write them unless already there."""
        history = await rebuild()
        args: list[Any] = [_clock(now)]
        for minute, sent in history:
            args += (minute, sent)
        await self._load(keys=[day], args=args)
