"""The inbound MX listener: aiosmtpd's SMTP (RFC 5321, SIZE per RFC 1870) with limits.

Opportunistic STARTTLS (RFC 3207), no AUTH, connection caps, Redis rate windows,
idle and session deadlines; replies come from mta.inbound.replies.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import AnyStr

from aiosmtpd.smtp import SMTP, Session

from mta import verp
from mta.feedback.record import FeedbackRecorder
from mta.inbound import Limits, replies
from mta.inbound.handler import (
    CONNECTIONS,
    REJECTIONS,
    MxHandler,
    MxSession,
    client_key,
)
from mta.submission import tls
from sesame.log import bound, event
from sesame.runtime import Runtime
from sesame.settings import Settings

__all__ = ["MxProtocol", "MxServer", "run", "serve"]

log = logging.getLogger(__name__)

# How long close() lets transactions in DATA finish before dropping them.
_SHUTDOWN_GRACE_SECONDS = 10.0


class _Listener:
    """The sessions open on the MX port, in total and per client."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.sessions: set[MxProtocol] = set()
        self.per_client: dict[str, int] = {}

    def admit(self, session: MxProtocol, client: str) -> str | None:
        """Register a session, or return the reply refusing it."""
        if len(self.sessions) >= self.limits.max_connections:
            return replies.TOO_MANY_CONNECTIONS
        if self.per_client.get(client, 0) >= self.limits.max_connections_per_ip:
            return replies.TOO_MANY_CONNECTIONS
        self.sessions.add(session)
        self.per_client[client] = self.per_client.get(client, 0) + 1
        return None

    def release(self, session: MxProtocol, client: str) -> bool:
        """Forget a session; tell whether it was registered."""
        if session not in self.sessions:
            return False
        self.sessions.discard(session)
        left = self.per_client.get(client, 1) - 1
        if left > 0:
            self.per_client[client] = left
        else:
            self.per_client.pop(client, None)
        return True


class MxProtocol(SMTP):
    """One client connection: aiosmtpd's SMTP with the MX's policy around it."""

    def __init__(
        self,
        handler: MxHandler,
        listener: _Listener,
        *,
        limits: Limits,
        tls_context: ssl.SSLContext | None,
        hostname: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.session_id = uuid.uuid4().hex[:16]
        self._listener = listener
        self._limits = limits
        self._refused = False
        self._greeted = False
        self._busy = False
        self._closing = False
        self._verb = ""
        self._started = time.monotonic()
        self._last_activity = loop.time()
        self._deadline = self._last_activity + limits.session_seconds
        self._watch_handle: asyncio.TimerHandle | None = None
        self._peer = ""
        self._client = ""
        once = limits.greetings_per_session
        super().__init__(
            handler,
            data_size_limit=limits.max_message_bytes,
            hostname=hostname,
            ident=replies.GREETING_IDENT,
            tls_context=tls_context,
            require_starttls=False,
            # aiosmtpd's timer restarts on every command; the watchdog below
            # enforces idle and session limits, this is only a backstop.
            timeout=limits.session_seconds,
            auth_required=False,
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
            command_call_limit={
                "*": limits.commands_per_session,
                "RCPT": limits.commands_per_session * limits.max_recipients,
                "HELO": once,
                "EHLO": once,
                "STARTTLS": once,
            },
            loop=loop,
        )
        self._verbatim = {
            f"220 {self.hostname} {replies.GREETING_IDENT}",
            f"250 {self.hostname}",
            "250 ENHANCEDSTATUSCODES",
        }

    # -- connection lifecycle --------------------------------------------------

    def _create_session(self) -> Session:
        return MxSession(self.loop, self.session_id)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:  # STARTTLS: the same client, now in TLS
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._client = client_key(peer)
        with self._logging():
            refusal = self._listener.admit(self, self._client)
            if refusal is not None:
                REJECTIONS.labels("too_many_connections").inc()
                event(log, "mx connection refused", reason="too many connections")
                self._refuse(transport, refusal)
                return
            CONNECTIONS.inc()
            event(log, "mx connected")
            self._watch_handle = self.loop.call_at(self._next_check(), self._watch)
            # The client task created here copies the bound log fields.
            super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._watch_handle is not None:
            self._watch_handle.cancel()
            self._watch_handle = None
        if self._listener.release(self, self._client):
            with self._logging():
                event(
                    log,
                    "mx disconnected",
                    seconds=round(time.monotonic() - self._started, 3),
                )
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        self._last_activity = self.loop.time()
        super().data_received(data)

    def _refuse(self, transport: asyncio.BaseTransport, reply: str) -> None:
        self._refused = True
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(reply.encode() + b"\r\n")
        transport.close()

    @contextmanager
    def _logging(self) -> Iterator[None]:
        with bound(session_id=self.session_id, peer=self._peer):
            yield

    # -- idle timeout, session deadline, shutdown --------------------------------

    def _next_check(self) -> float:
        return min(self._last_activity + self._limits.idle_seconds, self._deadline)

    def _watch(self) -> None:
        now = self.loop.time()
        if now >= self._deadline:
            self._drop(replies.SESSION_TIMEOUT, "session deadline")
        elif now >= self._last_activity + self._limits.idle_seconds:
            self._drop(replies.IDLE_TIMEOUT, "idle timeout")
        else:
            self._watch_handle = self.loop.call_at(self._next_check(), self._watch)

    def _drop(self, reply: str, reason: str) -> None:
        """Send a 421 and close; the client task ends with the connection."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        with self._logging():
            event(log, "mx session closed", reason=reason)
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(reply.encode() + b"\r\n")
        transport.close()

    def shutdown(self) -> None:
        """Close now, or right after the transaction in DATA is answered."""
        self._closing = True
        if not self._busy:
            self._drop(replies.SHUTTING_DOWN, "shutdown")

    def abort(self) -> None:
        if self.transport is not None:
            assert isinstance(self.transport, asyncio.Transport)
            self.transport.abort()

    # -- replies ---------------------------------------------------------------

    async def push(self, status: AnyStr) -> None:
        """Send a reply, as Sesame's constant when it is one of aiosmtpd's own."""
        if self.transport is None or self.transport.is_closing():
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
        if isinstance(status, str) and not (
            status in self._verbatim or status.startswith("250-")
        ):
            reply, known = replies.translate(status)
            if self._verb == "MAIL" and reply == replies.RECIPIENT_INVALID:
                reply = replies.SENDER_INVALID
            if reply in (replies.SIZE_EXCEEDED, replies.MESSAGE_TOO_LONG) and (
                reply != status
            ):
                REJECTIONS.labels("too_large").inc()
            if reply in (replies.SENDER_INVALID, replies.RECIPIENT_INVALID):
                REJECTIONS.labels("bad_address").inc()
            if not known:
                event(log, "untranslated smtp reply", logging.WARNING, code=reply[:3])
            status = reply
        self._last_activity = self.loop.time()
        await super().push(status)

    # -- commands ----------------------------------------------------------------

    async def smtp_MAIL(self, arg: str | None) -> None:
        self._verb = "MAIL"
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self._verb = "RCPT"
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        self._verb = "DATA"
        self._busy = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self._busy = False
            if self._closing:
                self._drop(replies.SHUTTING_DOWN, "shutdown")

    async def smtp_AUTH(self, arg: str) -> None:
        await self.push(replies.AUTH_NOT_SUPPORTED)

    async def smtp_HELP(self, arg: str) -> None:
        await self.push(replies.HELP)

    async def smtp_VRFY(self, arg: str) -> None:
        await self.push(replies.NOT_IMPLEMENTED)

    async def smtp_EXPN(self, arg: str) -> None:
        await self.push(replies.NOT_IMPLEMENTED)


@dataclass
class MxServer:
    """The listening inbound MX of one process."""

    server: asyncio.Server
    listener: _Listener
    tls: bool = False
    _closed: bool = field(default=False, repr=False)

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    def sessions(self) -> list[MxProtocol]:
        return list(self.listener.sessions)

    async def close(self, grace: float = _SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop listening; let reports in DATA finish, then close every session."""
        if self._closed:
            return
        self._closed = True
        self.server.close()
        for session in self.sessions():
            session.shutdown()
        deadline = time.monotonic() + grace
        while self.sessions() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for session in self.sessions():
            session.abort()
        await self.server.wait_closed()


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
    listener = _Listener(limits)
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
    return asyncio.run(_run(settings))


async def _run(settings: Settings) -> int:
    runtime = Runtime.create(settings)
    await runtime.open()
    try:
        mx = await serve(settings, runtime)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        event(log, "mx stopping")
        await mx.close()
    finally:
        await runtime.close()
    return 0
