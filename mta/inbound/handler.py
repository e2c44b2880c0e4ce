"""The aiosmtpd hooks of the inbound MX: envelope policy, rate limits and reports.

Mail is taken for the return-path domain only (never relayed, RFC 5321 3.6);
its content goes to mta.feedback.record as an RFC 3464 or RFC 5965 report.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, ClassVar

import psycopg
import psycopg_pool
import redis.exceptions
from aiosmtpd.smtp import SMTP, Envelope, Session
from prometheus_client import Counter
from redis.asyncio import Redis

from mta.feedback.record import FeedbackRecorder, ReportKind, Result
from mta.inbound import Limits, replies
from mta.smtpd import BaseHandler, Replies, client_key
from sesame import metrics
from sesame.log import event

__all__ = [
    "CONNECTIONS",
    "REJECTIONS",
    "REPORTS",
    "MxHandler",
    "MxSession",
    "client_key",
]

log = logging.getLogger(__name__)

# Defined in sesame.metrics with the rest; the names stay importable from here.
REPORTS = metrics.MX_REPORTS
CONNECTIONS = metrics.MX_CONNECTIONS
REJECTIONS = metrics.MX_REJECTIONS
REJECTION_REASONS = metrics.MX_REJECTION_REASONS
for _kind in ReportKind:
    for _result in Result:
        REPORTS.labels(_kind.value, _result.value)
for _reason in REJECTION_REASONS:
    REJECTIONS.labels(_reason)

# sesame:mx:rate:<what>:<client> holds one fixed window's count (INCR + EXPIRE).
RATE_KEY = "sesame:mx:rate:{}:{}"
# Local parts we take: dot-atom text without "%", "!" or quotes, which older
# MTAs read as routing ("user%host@relay"); VERP tokens and role names fit.
_LOCAL_PART = re.compile(r"[A-Za-z0-9_+=-]+(?:\.[A-Za-z0-9_+=-]+)*", re.ASCII)
_MAX_LOCAL = 64  # RFC 5321 4.5.3.1.1
# A local Redis answers in well under a millisecond; past this the client's
# retries are not waited for and the check fails open.
_RATE_CHECK_SECONDS = 1.0

_STORE_ERRORS = (psycopg.Error, psycopg_pool.PoolTimeout)


class MxSession(Session):
    """aiosmtpd's session plus the id that ties its log lines together."""

    def __init__(self, loop: asyncio.AbstractEventLoop, session_id: str) -> None:
        super().__init__(loop)
        self.session_id = session_id


class MxHandler(BaseHandler):
    """aiosmtpd handler: checks envelopes and rates, records reports at DATA."""

    REPLIES: ClassVar[Replies] = replies
    logger: ClassVar[logging.Logger] = log
    event_prefix: ClassVar[str] = "mx"
    rejections: ClassVar[Counter] = REJECTIONS

    def __init__(
        self,
        return_path_domain: str,
        recorder: FeedbackRecorder,
        redis: Redis,
        limits: Limits,
    ) -> None:
        super().__init__(limits.max_recipients)
        self._domain = return_path_domain.rstrip(".").lower()
        self._recorder = recorder
        self._redis = redis
        self._limits = limits

    # -- rates -----------------------------------------------------------------

    async def admit_connection(self, peer: Any) -> str | None:
        """Count a new connection; return the refusal if its client is over rate."""
        limit = self._limits.connections_per_window
        if await self._over_rate("conn", peer, limit):
            REJECTIONS.labels("connection_rate").inc()
            event(log, "mx connection refused", reason="connection rate")
            return replies.CONNECTION_RATE
        return None

    async def _over_rate(self, what: str, peer: Any, limit: int) -> bool:
        """Count one event in the client's current window; tell if over the limit."""
        key = RATE_KEY.format(what, client_key(peer))
        try:
            async with asyncio.timeout(_RATE_CHECK_SECONDS):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.incr(key)
                    pipe.expire(key, self._limits.rate_window_seconds, nx=True)
                    count, _ = await pipe.execute()
        except (redis.exceptions.RedisError, TimeoutError) as exc:
            # Fail open: reports keep arriving while Redis is away; the
            # connection caps and timeouts still bound what a client can do.
            event(log, "mx rate unavailable", logging.WARNING, error=type(exc).__name__)
            return False
        return int(count) > limit

    # -- hooks -----------------------------------------------------------------

    def advertises(self, line: str) -> bool:
        """Pass on aiosmtpd's EHLO lines except HELP and AUTH (none here)."""
        return super().advertises(line) and not line[4:].startswith("AUTH")

    async def check_sender(
        self, session: Session, envelope: Envelope, address: str
    ) -> str | None:
        """Take any reverse-path, "<>" included: DSNs come with a null one."""
        if await self._over_rate("msg", session.peer, self._limits.messages_per_window):
            REJECTIONS.labels("message_rate").inc()
            event(log, "mx message refused", reason="message rate")
            return replies.MESSAGE_RATE
        return None

    async def check_recipient(
        self, session: Session, envelope: Envelope, address: str
    ) -> str | None:
        """Take recipients at the return-path domain only; never relay."""
        local, at, domain = address.rpartition("@")
        if not at or domain.rstrip(".").lower() != self._domain:
            REJECTIONS.labels("relay_denied").inc()
            event(log, "mx recipient refused", reason="relay denied")
            return replies.RELAY_DENIED
        if len(local) > _MAX_LOCAL or not _LOCAL_PART.fullmatch(local):
            # "%", "!" and quoted local parts are how relaying was once asked for.
            REJECTIONS.labels("relay_denied").inc()
            event(log, "mx recipient refused", reason="routing syntax")
            return replies.RELAY_DENIED
        return None

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        """Record the report, or drop it; the reply is the same either way."""
        raw = envelope.original_content or b""
        try:
            # Shielded: a client hanging up must not cut a transaction in half;
            # it retries without a 250 and the duplicate is recognised.
            recorded = await asyncio.shield(
                self._recorder.process(raw, list(envelope.rcpt_tos))
            )
        except _STORE_ERRORS as exc:
            REJECTIONS.labels("unavailable").inc()
            event(
                log, "mx store unavailable", logging.WARNING, error=type(exc).__name__
            )
            return replies.TEMPORARY_FAILURE
        REPORTS.labels(recorded.kind.value, recorded.result.value).inc()
        metrics.feedback_recorded(recorded.recipients)
        if recorded.result is not Result.ATTRIBUTED:
            event(
                log,
                "mx report dropped",
                kind=recorded.kind.value,
                result=recorded.result.value,
                reason=recorded.reason,
                feedback_id=recorded.feedback_id,
                bytes=len(raw),
            )
        return replies.ACCEPTED
