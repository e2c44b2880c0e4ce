"""The submission listeners: STARTTLS (RFC 3207) and implicit TLS (RFC 8314) ports.

aiosmtpd's SMTP protocol (RFC 5321, SIZE per RFC 1870) with AUTH (RFC 4954)
required, session deadlines and replies from mta.submission.replies.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, AnyStr, cast

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mta.accept import Acceptor
from mta.submission import Limits, replies, tls
from mta.submission.handler import (
    CONNECTIONS,
    REJECTIONS,
    SubmissionEnvelope,
    SubmissionHandler,
    SubmissionSession,
)
from sesame.log import bound, event
from sesame.runtime import Runtime
from sesame.settings import Settings

__all__ = ["Servers", "SubmissionProtocol", "run", "serve"]

log = logging.getLogger(__name__)

# A client must finish the TLS handshake of the implicit-TLS port within this
# (asyncio's own default is 60 s; a handshake takes milliseconds).
_TLS_HANDSHAKE_SECONDS = 30.0
# How long close() lets transactions in DATA finish before dropping them.
_SHUTDOWN_GRACE_SECONDS = 10.0


def _credentials_only(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    """Pass parsed credentials on, as a failure unless SubmissionProtocol checks them.

    aiosmtpd's authenticator is synchronous; the check needs PostgreSQL and Redis,
    so it happens in the async auth_PLAIN/auth_LOGIN below. Any other mechanism
    that reached here would fail closed.
    """
    return AuthResult(success=False, handled=False, auth_data=data)


class _Listener:
    """The sessions open on one port, bounded by max_connections."""

    def __init__(self, name: str, max_connections: int) -> None:
        self.name = name
        self.max_connections = max_connections
        self.sessions: set[SubmissionProtocol] = set()


class SubmissionProtocol(SMTP):
    """One client connection: aiosmtpd's SMTP with Sesame's policy around it."""

    # What SES and most servers send (RFC 4954 leaves the text free).
    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"

    def __init__(
        self,
        handler: SubmissionHandler,
        listener: _Listener,
        *,
        limits: Limits,
        tls_context: ssl.SSLContext,
        implicit_tls: bool,
        hostname: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.session_id = uuid.uuid4().hex[:16]
        self._listener = listener
        self._limits = limits
        self._implicit_tls = implicit_tls
        self._refused = False
        self._busy = False
        self._closing = False
        self._verb = ""
        self._started = time.monotonic()
        self._last_activity = loop.time()
        self._deadline = self._last_activity + limits.session_seconds
        self._watch_handle: asyncio.TimerHandle | None = None
        self._peer = ""
        # aiosmtpd keeps these in a class attribute that every session's EHLO grows;
        # a dict per connection keeps sessions from changing each other's limits.
        self.command_size_limits = collections.defaultdict(
            lambda: SMTP.command_size_limit
        )
        once = limits.greetings_per_session
        super().__init__(
            handler,
            data_size_limit=limits.max_message_bytes,
            hostname=hostname,
            ident=replies.GREETING_IDENT,
            tls_context=None if implicit_tls else tls_context,
            require_starttls=not implicit_tls,
            # aiosmtpd's own timer restarts on every command; Sesame's watchdog
            # below enforces idle and session limits, this is only a backstop.
            timeout=limits.session_seconds,
            # AUTH is required by check_auth_needed below. On the implicit-TLS port
            # every byte is already encrypted, which aiosmtpd cannot see.
            auth_required=False,
            auth_require_tls=not implicit_tls,
            authenticator=_credentials_only,
            command_call_limit={
                "*": limits.commands_per_session,
                "RCPT": limits.commands_per_session * limits.max_recipients,
                "HELO": once,
                "EHLO": once,
                "AUTH": once,
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
        return SubmissionSession(self.loop, self.session_id)

    def _create_envelope(self) -> Envelope:
        return SubmissionEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:  # STARTTLS: the same client, now in TLS
            super().connection_made(transport)
            return
        CONNECTIONS.inc()
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        with self._logging():
            if len(self._listener.sessions) >= self._listener.max_connections:
                event(log, "smtp connection refused", reason="too many connections")
                self._refuse(transport, replies.TOO_MANY_CONNECTIONS)
                return
            if self._implicit_tls and transport.get_extra_info("ssl_object") is None:
                self._refuse(transport, replies.LACK_OF_SECURITY)
                return
            self._listener.sessions.add(self)
            event(log, "smtp connected", listener=self._listener.name)
            self._watch_handle = self.loop.call_at(self._next_check(), self._watch)
            # The client task created here copies the bound log fields.
            super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._watch_handle is not None:
            self._watch_handle.cancel()
            self._watch_handle = None
        if self in self._listener.sessions:
            self._listener.sessions.discard(self)
            with self._logging():
                event(
                    log,
                    "smtp disconnected",
                    seconds=round(time.monotonic() - self._started, 3),
                )
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        self._last_activity = self.loop.time()
        super().data_received(data)

    def _refuse(self, transport: asyncio.BaseTransport, reply: str) -> None:
        self._refused = True
        _send_and_close(transport, reply)

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
            event(log, "smtp session closed", reason=reason)
        _send_and_close(transport, reply)

    def shutdown(self) -> None:
        """Close now, or right after the transaction in DATA is answered."""
        self._closing = True
        if not self._busy:
            self._drop(replies.SHUTTING_DOWN, "shutdown")

    @property
    def open(self) -> bool:
        """Whether the session may still send or receive (not yet closing)."""
        return self.transport is not None and not self.transport.is_closing()

    def abort(self) -> None:
        if self.transport is not None:
            cast(asyncio.Transport, self.transport).abort()

    # -- replies ---------------------------------------------------------------

    async def push(self, status: AnyStr) -> None:
        """Send a reply, as Sesame's constant when it is one of aiosmtpd's own."""
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
            if not known:
                event(log, "untranslated smtp reply", logging.WARNING, code=reply[:3])
            status = reply
        self._last_activity = self.loop.time()
        await super().push(status)

    # -- commands ----------------------------------------------------------------

    async def check_auth_needed(self, caller_method: str) -> bool:
        """Refuse MAIL, RCPT and DATA before AUTH: never an open relay."""
        assert self.session is not None
        if self.session.authenticated:
            return False
        REJECTIONS.labels("auth_required").inc()
        await self.push(replies.AUTH_REQUIRED)
        return True

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

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._implicit_tls or self._tls_protocol is not None:
            await self.push(replies.TLS_ALREADY_ACTIVE)
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_HELP(self, arg: str) -> None:
        await self.push(replies.HELP)

    async def smtp_VRFY(self, arg: str) -> None:
        await self.push(replies.NOT_IMPLEMENTED)

    # -- AUTH PLAIN and LOGIN (RFC 4616, draft-murchison-sasl-login) --------------

    async def auth_PLAIN(self, _: SMTP, args: list[str]) -> AuthResult:
        return await self._check_credentials(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: SMTP, args: list[str]) -> AuthResult:
        return await self._check_credentials(await super().auth_LOGIN(_, args))

    async def _check_credentials(self, parsed: AuthResult) -> AuthResult:
        credentials = parsed.auth_data
        if not isinstance(credentials, LoginPassword):
            return parsed  # aiosmtpd has answered (aborted, bad base64)
        session = self.session
        assert isinstance(session, SubmissionSession)
        handler = self.event_handler
        assert isinstance(handler, SubmissionHandler)
        reply = await handler.authenticate(
            session, credentials.login, credentials.password
        )
        if session.account_id is not None:
            return AuthResult(success=True, message=reply)
        return AuthResult(success=False, handled=False, message=reply)


def _send_and_close(transport: asyncio.BaseTransport, reply: str) -> None:
    """Write a last reply and close (uvloop's transports are not asyncio's classes)."""
    cast(asyncio.WriteTransport, transport).write(reply.encode() + b"\r\n")
    transport.close()


@dataclass
class Servers:
    """The two listening submission servers of one process."""

    starttls: asyncio.Server
    implicit_tls: asyncio.Server
    listeners: list[_Listener] = field(default_factory=list)

    @property
    def starttls_port(self) -> int:
        return int(self.starttls.sockets[0].getsockname()[1])

    @property
    def tls_port(self) -> int:
        return int(self.implicit_tls.sockets[0].getsockname()[1])

    def sessions(self) -> list[SubmissionProtocol]:
        return [s for listener in self.listeners for s in listener.sessions]

    async def close(self, grace: float = _SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop listening; let messages in DATA finish, then close every session."""
        self.starttls.close()
        self.implicit_tls.close()
        for session in self.sessions():
            session.shutdown()
        deadline = time.monotonic() + grace
        while any(s.open for s in self.sessions()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # What is left is closing (a TLS close waiting for the client) or stuck.
        for session in self.sessions():
            session.abort()
        await self.starttls.wait_closed()
        await self.implicit_tls.wait_closed()


async def serve(
    settings: Settings,
    runtime: Runtime,
    acceptor: Acceptor,
    limits: Limits | None = None,
) -> Servers:
    """Start both submission listeners on settings.smtp_host."""
    limits = limits or Limits.from_settings(settings)
    # aiosmtpd logs DATA lines at DEBUG on "mail.log"; message bodies stay out.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    context = await asyncio.to_thread(tls.server_context, settings)
    handler = SubmissionHandler(settings, runtime.pool, runtime.redis, acceptor, limits)
    loop = asyncio.get_running_loop()
    listeners = [
        _Listener("starttls", limits.max_connections),
        _Listener("tls", limits.max_connections),
    ]

    def factory(listener: _Listener, implicit_tls: bool) -> SubmissionProtocol:
        return SubmissionProtocol(
            handler,
            listener,
            limits=limits,
            tls_context=context,
            implicit_tls=implicit_tls,
            hostname=settings.hostname,
            loop=loop,
        )

    starttls = await loop.create_server(
        lambda: factory(listeners[0], False),
        host=settings.smtp_host,
        port=settings.smtp_port,
        reuse_address=True,
    )
    try:
        implicit = await loop.create_server(
            lambda: factory(listeners[1], True),
            host=settings.smtp_host,
            port=settings.smtps_port,
            reuse_address=True,
            ssl=context,
            ssl_handshake_timeout=_TLS_HANDSHAKE_SECONDS,
        )
    except BaseException:
        starttls.close()
        raise
    servers = Servers(starttls, implicit, listeners)
    event(
        log,
        "smtp listening",
        host=settings.smtp_host,
        starttls_port=servers.starttls_port,
        tls_port=servers.tls_port,
    )
    return servers


def run(settings: Settings) -> int:
    """Serve SMTP submission until SIGTERM or SIGINT; return the exit status."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_run(settings))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return uvloop's loop when installed (uvicorn[standard] brings it), else None."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def _run(settings: Settings) -> int:
    runtime = Runtime.create(settings)
    await runtime.open()
    acceptor = Acceptor(runtime.pool, runtime.redis, settings)
    await acceptor.start()
    try:
        servers = await serve(settings, runtime, acceptor)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        event(log, "smtp stopping")
        await servers.close()
    finally:
        await acceptor.stop()
        await runtime.close()
    return 0
