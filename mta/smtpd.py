"""aiosmtpd sessions with the limits every Sesame listener needs.

GuardedSMTP is aiosmtpd's SMTP protocol plus what the inbound MX
(mta.inbound.server) and the submission ports (mta.submission.server) share:
connection caps per Listener, an idle timeout and a session deadline, a shutdown
that lets DATA finish, and aiosmtpd's stock replies translated into the
listener's own. BaseHandler holds the handler hooks both answer alike;
close_servers and run_forever stop and run a listening process.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any, AnyStr, ClassVar, Generic, Protocol, TypeVar, cast

from aiosmtpd.smtp import SMTP, Envelope, Session
from prometheus_client import Counter

from sesame.log import bound, event

__all__ = [
    "BaseHandler",
    "GuardedSMTP",
    "Listener",
    "Replies",
    "SHUTDOWN_GRACE_SECONDS",
    "SessionLimits",
    "client_key",
    "close_servers",
    "loop_factory",
    "run_forever",
]

# One IPv6 customer usually holds a whole /64 (RFC 6177), so that is one client.
_IPV6_CLIENT_PREFIX = 64
# How long a server's close() lets transactions in DATA finish before dropping them.
SHUTDOWN_GRACE_SECONDS = 10.0


class Replies(Protocol):
    """A listener's replies module: mta.inbound.replies or mta.submission.replies."""

    @property
    def GREETING_IDENT(self) -> str: ...  # after "220 <hostname>"
    @property
    def HELP(self) -> str: ...
    @property
    def OK(self) -> str: ...
    @property
    def CLOSING(self) -> str: ...
    @property
    def NOT_IMPLEMENTED(self) -> str: ...
    @property
    def IDLE_TIMEOUT(self) -> str: ...
    @property
    def SESSION_TIMEOUT(self) -> str: ...
    @property
    def TOO_MANY_CONNECTIONS(self) -> str: ...
    @property
    def SHUTTING_DOWN(self) -> str: ...
    @property
    def TEMPORARY_FAILURE(self) -> str: ...
    @property
    def SENDER_INVALID(self) -> str: ...
    @property
    def RECIPIENT_INVALID(self) -> str: ...
    @property
    def SIZE_EXCEEDED(self) -> str: ...
    @property
    def MESSAGE_TOO_LONG(self) -> str: ...
    @property
    def SENDER_OK(self) -> str: ...
    @property
    def RECIPIENT_OK(self) -> str: ...
    @property
    def TOO_MANY_RECIPIENTS(self) -> str: ...

    def translate(self, reply: str) -> tuple[str, bool]:
        """Return the reply to send for one aiosmtpd or Sesame reply, and if known."""
        ...


class SessionLimits(Protocol):
    """What GuardedSMTP reads of a listener's Limits."""

    @property
    def max_message_bytes(self) -> int: ...
    @property
    def max_recipients(self) -> int: ...
    @property
    def idle_seconds(self) -> float: ...
    @property
    def session_seconds(self) -> float: ...
    @property
    def commands_per_session(self) -> int: ...
    @property
    def greetings_per_session(self) -> int: ...


S = TypeVar("S", bound="GuardedSMTP")


class Listener(Generic[S]):
    """The sessions open on one port, in total and per client."""

    def __init__(
        self, max_connections: int, max_per_client: int | None = None, name: str = ""
    ) -> None:
        self.name = name  # logged with each connection when set
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.sessions: set[S] = set()
        self.per_client: dict[str, int] = {}

    def has_room(self, client: str) -> bool:
        """Tell whether one more session from this client stays within the caps."""
        if len(self.sessions) >= self.max_connections:
            return False
        cap = self.max_per_client
        return cap is None or self.per_client.get(client, 0) < cap

    def add(self, session: S, client: str) -> None:
        """Register an admitted session."""
        self.sessions.add(session)
        self.per_client[client] = self.per_client.get(client, 0) + 1

    def release(self, session: S, client: str) -> bool:
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


class GuardedSMTP(SMTP):
    """One client connection: aiosmtpd's SMTP with the limits around it."""

    # Each listener's subclass sets these. Its events are "<event_prefix>
    # connected", "... connection refused", "... session closed", "... disconnected".
    REPLIES: ClassVar[Replies]
    logger: ClassVar[logging.Logger]
    event_prefix: ClassVar[str]
    # Refusals are counted in rejections when it has a label for their reason.
    rejections: ClassVar[Counter]
    rejection_reasons: ClassVar[Collection[str]]

    def __init__(
        self,
        handler: Any,
        listener: Listener[Any],
        *,
        limits: SessionLimits,
        hostname: str,
        loop: asyncio.AbstractEventLoop,
        once: Iterable[str],
        **options: Any,
    ) -> None:
        """Start a session; `once` commands get greetings_per_session calls."""
        self.session_id = uuid.uuid4().hex[:16]
        self._listener = listener
        self._limits = limits
        self._refused = False
        self._busy = False
        self._closing = False
        self._verb = ""
        self._started = time.monotonic()
        self._last_activity = loop.time()
        self._deadline = self._last_activity + limits.session_seconds
        self._watch_handle: asyncio.TimerHandle | None = None
        self._peer = ""
        self._client = ""
        super().__init__(
            handler,
            data_size_limit=limits.max_message_bytes,
            hostname=hostname,
            ident=self.REPLIES.GREETING_IDENT,
            # aiosmtpd's own timer restarts on every command; the watchdog
            # below enforces idle and session limits, this is only a backstop.
            timeout=limits.session_seconds,
            command_call_limit={
                "*": limits.commands_per_session,
                "RCPT": limits.commands_per_session * limits.max_recipients,
                **dict.fromkeys(once, limits.greetings_per_session),
            },
            loop=loop,
            **options,
        )
        self._verbatim = {
            f"220 {self.hostname} {self.REPLIES.GREETING_IDENT}",
            f"250 {self.hostname}",
            "250 ENHANCEDSTATUSCODES",
        }

    # -- connection lifecycle --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:  # STARTTLS: the same client, now in TLS
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._client = client_key(peer)
        with self._logging():
            if not self._listener.has_room(self._client):
                self._count_rejection("too_many_connections")
                self._event("connection refused", reason="too many connections")
                self._refuse(transport, self.REPLIES.TOO_MANY_CONNECTIONS)
                return
            refusal = self._refusal(transport)
            if refusal is not None:
                self._refuse(transport, refusal)
                return
            self._listener.add(self, self._client)
            self._connected()
            name = self._listener.name
            self._event("connected", **({"listener": name} if name else {}))
            self._watch_handle = self.loop.call_at(self._next_check(), self._watch)
            # The client task created here copies the bound log fields.
            super().connection_made(transport)

    def _refusal(self, transport: asyncio.BaseTransport) -> str | None:
        """Return the reply refusing a connection the caps let in, if any (a hook)."""
        return None

    def _connected(self) -> None:
        """Note a connection the listener has admitted (a hook)."""

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._watch_handle is not None:
            self._watch_handle.cancel()
            self._watch_handle = None
        if self._listener.release(self, self._client):
            with self._logging():
                seconds = round(time.monotonic() - self._started, 3)
                self._event("disconnected", seconds=seconds)
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

    def _event(self, what: str, **fields: Any) -> None:
        """Log "<event_prefix> <what>" with these fields."""
        event(self.logger, f"{self.event_prefix} {what}", **fields)

    def _count_rejection(self, reason: str) -> None:
        """Count one refusal, if the listener's metric has a label for the reason."""
        if reason in self.rejection_reasons:
            self.rejections.labels(reason).inc()

    # -- idle timeout, session deadline, shutdown --------------------------------

    def _next_check(self) -> float:
        return min(self._last_activity + self._limits.idle_seconds, self._deadline)

    def _watch(self) -> None:
        now = self.loop.time()
        if now >= self._deadline:
            self._drop(self.REPLIES.SESSION_TIMEOUT, "session deadline")
        elif now >= self._last_activity + self._limits.idle_seconds:
            self._drop(self.REPLIES.IDLE_TIMEOUT, "idle timeout")
        else:
            self._watch_handle = self.loop.call_at(self._next_check(), self._watch)

    def _drop(self, reply: str, reason: str) -> None:
        """Send a 421 and close; the client task ends with the connection."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        with self._logging():
            self._event("session closed", reason=reason)
        _send_and_close(transport, reply)

    def shutdown(self) -> None:
        """Close now, or right after the transaction in DATA is answered."""
        self._closing = True
        if not self._busy:
            self._drop(self.REPLIES.SHUTTING_DOWN, "shutdown")

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
        if self.transport is None or self.transport.is_closing():
            # The client is gone; commands it pipelined are still being run.
            # (asyncio's TLS transport raises AttributeError on such a write.)
            return
        if isinstance(status, str) and not (
            status in self._verbatim or status.startswith("250-")
        ):
            status = self._translate(status)
        self._last_activity = self.loop.time()
        await super().push(status)

    def _translate(self, status: str) -> str:
        """Return the listener's reply for one of aiosmtpd's (or Sesame's own)."""
        replies = self.REPLIES
        reply, known = replies.translate(status)
        if self._verb == "MAIL" and reply == replies.RECIPIENT_INVALID:
            reply = replies.SENDER_INVALID
        if reply in (replies.SIZE_EXCEEDED, replies.MESSAGE_TOO_LONG) and (
            reply != status
        ):
            self._count_rejection("too_large")
        if not known:
            event(
                self.logger, "untranslated smtp reply", logging.WARNING, code=reply[:3]
            )
        return reply

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
                self._drop(self.REPLIES.SHUTTING_DOWN, "shutdown")

    async def smtp_HELP(self, arg: str) -> None:
        await self.push(self.REPLIES.HELP)

    async def smtp_VRFY(self, arg: str) -> None:
        await self.push(self.REPLIES.NOT_IMPLEMENTED)

    async def smtp_EXPN(self, arg: str) -> None:
        await self.push(self.REPLIES.NOT_IMPLEMENTED)


def _send_and_close(transport: asyncio.BaseTransport, reply: str) -> None:
    """Write a last reply and close (uvloop's transports are not asyncio's classes)."""
    cast(asyncio.WriteTransport, transport).write(reply.encode() + b"\r\n")
    transport.close()


class BaseHandler:
    """aiosmtpd handler hooks that every Sesame listener answers alike."""

    # Each listener's subclass sets these; errors log as "<event_prefix> session error".
    REPLIES: ClassVar[Replies]
    logger: ClassVar[logging.Logger]
    event_prefix: ClassVar[str]
    rejections: ClassVar[Counter]

    def __init__(self, max_recipients: int) -> None:
        self._max_recipients = max_recipients

    # -- what each listener decides --------------------------------------------

    def advertises(self, line: str) -> bool:
        """Tell whether EHLO passes on one of aiosmtpd's extension lines."""
        return line != "250 HELP"

    async def check_sender(
        self, session: Session, envelope: Envelope, address: str
    ) -> str | None:
        """Return the reply refusing a reverse-path, or None to take it."""
        return None

    async def check_recipient(
        self, session: Session, envelope: Envelope, address: str
    ) -> str | None:
        """Return the reply refusing a forward-path, or None to take it."""
        return None

    # -- hooks -----------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """Advertise aiosmtpd's extensions plus ENHANCEDSTATUSCODES (RFC 2034)."""
        session.host_name = hostname
        lines = [r for r in responses if self.advertises(r)]
        lines.append("250 ENHANCEDSTATUSCODES")
        return [line.replace("250 ", "250-", 1) for line in lines[:-1]] + lines[-1:]

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        return self.REPLIES.OK

    async def handle_RSET(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        return self.REPLIES.OK

    async def handle_QUIT(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        return self.REPLIES.CLOSING

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        """Record the reverse-path on the envelope unless check_sender refuses it."""
        refusal = await self.check_sender(session, envelope, address)
        if refusal is not None:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return self.REPLIES.SENDER_OK

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Record a recipient unless there are enough or check_recipient refuses it."""
        if len(envelope.rcpt_tos) >= self._max_recipients:
            self.rejections.labels("too_many_recipients").inc()
            return self.REPLIES.TOO_MANY_RECIPIENTS
        refusal = await self.check_recipient(session, envelope, address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return self.REPLIES.RECIPIENT_OK

    async def handle_exception(self, error: Exception) -> str:
        """Answer an unexpected error without showing its text to the client."""
        self.logger.error(
            f"{self.event_prefix} session error",
            exc_info=error,
            extra={"fields": {"error": type(error).__name__}},
        )
        return self.REPLIES.TEMPORARY_FAILURE


def client_key(peer: Any) -> str:
    """Return the rate-limit identity of a peer: its IPv4 address or IPv6 /64."""
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    try:
        address = ipaddress.ip_address(str(host))
    except ValueError:
        return str(host)[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        network = ipaddress.IPv6Network((address, _IPV6_CLIENT_PREFIX), strict=False)
        return str(network)
    return str(address)


# -- running a listening process ---------------------------------------------------


async def close_servers(
    servers: Sequence[asyncio.Server],
    sessions: Callable[[], Sequence[GuardedSMTP]],
    grace: float,
    *,
    until_disconnected: bool = False,
) -> None:
    """Stop listening; 421 idle sessions, let DATA finish, then abort the rest.

    The wait lasts until every session is closing (with until_disconnected: gone,
    so a TLS close waits on its client), or for grace seconds at most.
    """
    for server in servers:
        server.close()
    for session in sessions():
        session.shutdown()

    def waiting() -> bool:
        left = sessions()
        return bool(left) if until_disconnected else any(s.open for s in left)

    deadline = time.monotonic() + grace
    while waiting() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    # What is left is closing (a TLS close waiting for the client) or stuck.
    for session in sessions():
        session.abort()
    for server in servers:
        await server.wait_closed()


class _Closable(Protocol):
    """A listening server, as serve() returns it."""

    async def close(self) -> None: ...


def run_forever(
    serving: Callable[[], AbstractAsyncContextManager[_Closable]],
    *,
    logger: logging.Logger,
    stopping: str,
    uvloop: bool = True,
) -> int:
    """Serve until SIGTERM or SIGINT, log `stopping`, close; return the exit status.

    serving() opens what the server needs and yields it listening; uvloop runs
    the loop when installed and asked for, else asyncio's own loop does.
    """

    async def main() -> int:
        async with serving() as server:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            event(logger, stopping)
            await server.close()
        return 0

    with asyncio.Runner(loop_factory=loop_factory() if uvloop else None) as runner:
        return runner.run(main())


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return uvloop's loop when installed (uvicorn[standard] brings it), else None."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
