"""The inbound MX listener: aiosmtpd's SMTP (RFC 5321, SIZE per RFC 1870) with limits.

Opportunistic STARTTLS (RFC 3207), no AUTH, connection caps, Redis rate windows,
idle and session deadlines (mta.smtpd); replies come from mta.inbound.replies.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AnyStr, ClassVar

from aiosmtpd.smtp import Session
from prometheus_client import Counter

from mta import smtpd, verp
from mta.feedback.record import FeedbackRecorder
from mta.inbound import Limits, replies
from mta.inbound.handler import (
    CONNECTIONS,
    REJECTION_REASONS,
    REJECTIONS,
    MxHandler,
    MxSession,
)
from mta.submission import tls
from sesame.log import event
from sesame.runtime import Runtime
from sesame.settings import Settings

__all__ = ["MxProtocol", "MxServer", "run", "serve"]

log = logging.getLogger(__name__)


class MxProtocol(smtpd.GuardedSMTP):
    """One client connection: aiosmtpd's SMTP with the MX's policy around it."""

    REPLIES: ClassVar[smtpd.Replies] = replies
    logger: ClassVar[logging.Logger] = log
    event_prefix: ClassVar[str] = "mx"
    rejections: ClassVar[Counter] = REJECTIONS
    rejection_reasons: ClassVar[tuple[str, ...]] = REJECTION_REASONS

    def __init__(
        self,
        handler: MxHandler,
        listener: smtpd.Listener[MxProtocol],
        *,
        limits: Limits,
        tls_context: ssl.SSLContext | None,
        hostname: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._greeted = False
        super().__init__(
            handler,
            listener,
            limits=limits,
            hostname=hostname,
            loop=loop,
            once=("HELO", "EHLO", "STARTTLS"),
            tls_context=tls_context,
            require_starttls=False,
            auth_required=False,
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
        )

    def _create_session(self) -> Session:
        return MxSession(self.loop, self.session_id)

    def _connected(self) -> None:
        """Count the connection: the MX counts those it admits."""
        CONNECTIONS.inc()

    # -- replies ---------------------------------------------------------------

    async def push(self, status: AnyStr) -> None:
        """Send a reply, after the connection rate check when it is the greeting."""
        if not self.open:
            return  # dropped (rate, timeout, shutdown): nothing more is said
        if not self._greeted:
            # The first reply is the greeting: the connection rate is checked
            # here because it needs Redis, which connection_made cannot await.
            self._greeted = True
            handler = self.event_handler
            assert isinstance(handler, MxHandler) and self.session is not None
            refusal = await handler.admit_connection(self.session.peer)
            if refusal is not None:
                self._drop(refusal, "connection rate")
                return
        await super().push(status)

    def _translate(self, status: str) -> str:
        """Translate, counting the bad addresses that aiosmtpd's parser refused."""
        reply = super()._translate(status)
        if reply in (replies.SENDER_INVALID, replies.RECIPIENT_INVALID):
            REJECTIONS.labels("bad_address").inc()
        return reply

    # -- commands ----------------------------------------------------------------

    async def smtp_AUTH(self, arg: str) -> None:
        await self.push(replies.AUTH_NOT_SUPPORTED)


@dataclass
class MxServer:
    """The listening inbound MX of one process."""

    server: asyncio.Server
    listener: smtpd.Listener[MxProtocol]
    tls: bool = False
    _closed: bool = field(default=False, repr=False)

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    def sessions(self) -> list[MxProtocol]:
        return list(self.listener.sessions)

    async def close(self, grace: float = smtpd.SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop listening; let reports in DATA finish, then close every session."""
        if self._closed:
            return
        self._closed = True
        await smtpd.close_servers(
            [self.server], self.sessions, grace, until_disconnected=True
        )


async def serve(
    settings: Settings, runtime: Runtime, limits: Limits | None = None
) -> MxServer:
    """Start the inbound MX on settings.mx_host:settings.mx_port."""
    limits = limits or Limits.from_settings(settings)
    # aiosmtpd logs commands and DATA lines on "mail.log"; reports stay out.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    context = await asyncio.to_thread(_tls_context, settings)
    recorder = FeedbackRecorder(
        runtime.pool, settings.return_path_domain, verp.verp_key(runtime.key)
    )
    handler = MxHandler(settings.return_path_domain, recorder, runtime.redis, limits)
    listener: smtpd.Listener[MxProtocol] = smtpd.Listener(
        limits.max_connections, limits.max_connections_per_ip
    )
    loop = asyncio.get_running_loop()

    def factory() -> MxProtocol:
        return MxProtocol(
            handler,
            listener,
            limits=limits,
            tls_context=context,
            hostname=settings.hostname,
            loop=loop,
        )

    server = await loop.create_server(
        factory, host=settings.mx_host, port=settings.mx_port, reuse_address=True
    )
    mx = MxServer(server, listener, tls=context is not None)
    event(
        log,
        "mx listening",
        host=settings.mx_host,
        port=mx.port,
        domain=settings.return_path_domain,
        starttls=mx.tls,
    )
    return mx


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    """Return the STARTTLS context, or None to serve in plain text only."""
    try:
        return tls.server_context(settings)
    except (OSError, ssl.SSLError, ValueError) as exc:
        # STARTTLS is opportunistic on an MX (RFC 3207 4): reports still arrive.
        event(log, "mx starttls unavailable", logging.WARNING, error=type(exc).__name__)
        return None


def run(settings: Settings) -> int:
    """Serve the inbound MX until SIGTERM or SIGINT; return the exit status."""
    # asyncio's own loop, as the MX has always run (submission runs on uvloop).
    return smtpd.run_forever(
        functools.partial(_serving, settings),
        logger=log,
        stopping="mx stopping",
        uvloop=False,
    )


@asynccontextmanager
async def _serving(settings: Settings) -> AsyncIterator[MxServer]:
    """Open the stores, serve the MX, and close the stores after it."""
    runtime = Runtime.create(settings)
    await runtime.open()
    try:
        yield await serve(settings, runtime)
    finally:
        await runtime.close()
