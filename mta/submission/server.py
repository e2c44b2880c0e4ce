"""The submission listeners: STARTTLS (RFC 3207) and implicit TLS (RFC 8314) ports.

aiosmtpd's RFC 5321 protocol with SIZE (RFC 1870), AUTH (RFC 4954) required, deadlines.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from prometheus_client import Counter

from mta import smtpd
from mta.accept import Acceptor
from mta.submission import Limits, replies, tls
from mta.submission.handler import (
    CONNECTIONS,
    REJECTIONS,
    SubmissionEnvelope,
    SubmissionHandler,
    SubmissionSession,
)
from sesame import metrics
from sesame.log import event
from sesame.runtime import Runtime
from sesame.settings import Settings

__all__ = ["Servers", "SubmissionProtocol", "run", "serve"]

log = logging.getLogger(__name__)

# A client must finish the TLS handshake of the implicit-TLS port within this
# (asyncio's own default is 60 s; a handshake takes milliseconds).
_TLS_HANDSHAKE_SECONDS = 30.0

# The usual MAIL/RCPT path: <dot-atom@domain> then optional parameters (RFC 5321
# 4.1.2). Anything else (quotes, comments, literals) goes to aiosmtpd's parser.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_PLAIN_PATH = re.compile(
    rf"<(?P<addr>{_ATEXT}+(?:\.{_ATEXT}+)*@{_LABEL}(?:\.{_LABEL})*)>"
    r"(?:[ \t]+(?P<rest>[^\s(][^(]*))?\Z"
)


def _credentials_only(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    """Pass parsed credentials on, as a failure unless SubmissionProtocol checks them.

    aiosmtpd's authenticator is synchronous; the check needs PostgreSQL and Redis,
    so it happens in the async auth_PLAIN/auth_LOGIN below. Any other mechanism
    that reached here would fail closed.
    """
    return AuthResult(success=False, handled=False, auth_data=data)


class SubmissionProtocol(smtpd.GuardedSMTP):
    """One client connection: aiosmtpd's SMTP with Sesame's policy around it."""

    REPLIES: ClassVar[smtpd.Replies] = replies
    logger: ClassVar[logging.Logger] = log
    event_prefix: ClassVar[str] = "smtp"
    # Its labels have no too_many_connections: refusals at the cap are only logged.
    rejections: ClassVar[Counter] = REJECTIONS
    rejection_reasons: ClassVar[tuple[str, ...]] = metrics.SMTP_REJECTION_REASONS

    # What SES and most servers send (RFC 4954 leaves the text free).
    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"

    def __init__(
        self,
        handler: SubmissionHandler,
        listener: smtpd.Listener[SubmissionProtocol],
        *,
        limits: Limits,
        tls_context: ssl.SSLContext,
        implicit_tls: bool,
        hostname: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._implicit_tls = implicit_tls
        # aiosmtpd keeps these in a class attribute that every session's EHLO grows;
        # a dict per connection keeps sessions from changing each other's limits.
        self.command_size_limits = collections.defaultdict(
            lambda: SMTP.command_size_limit
        )
        super().__init__(
            handler,
            listener,
            limits=limits,
            hostname=hostname,
            loop=loop,
            once=("HELO", "EHLO", "AUTH", "STARTTLS"),
            tls_context=None if implicit_tls else tls_context,
            require_starttls=not implicit_tls,
            # AUTH is required by check_auth_needed below. On the implicit-TLS port
            # every byte is already encrypted, which aiosmtpd cannot see.
            auth_required=False,
            auth_require_tls=not implicit_tls,
            authenticator=_credentials_only,
        )

    # -- connection lifecycle --------------------------------------------------

    def _create_session(self) -> Session:
        return SubmissionSession(self.loop, self.session_id)

    def _create_envelope(self) -> Envelope:
        return SubmissionEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:
            CONNECTIONS.inc()  # every connection, those refused at the cap too
        super().connection_made(transport)

    def _refusal(self, transport: asyncio.BaseTransport) -> str | None:
        """Refuse a connection on the implicit-TLS port that is not in TLS."""
        if self._implicit_tls and transport.get_extra_info("ssl_object") is None:
            return replies.LACK_OF_SECURITY
        return None

    # -- commands ----------------------------------------------------------------

    async def check_auth_needed(self, caller_method: str) -> bool:
        """Refuse MAIL, RCPT and DATA before AUTH: never an open relay."""
        assert self.session is not None
        if self.session.authenticated:
            return False
        REJECTIONS.labels("auth_required").inc()
        await self.push(replies.AUTH_REQUIRED)
        return True

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._implicit_tls or self._tls_protocol is not None:
            await self.push(replies.TLS_ALREADY_ACTIVE)
            return
        await super().smtp_STARTTLS(arg)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Split a plain <local@domain> path without the email package.

        aiosmtpd's parser costs about 100 us a call (twice per message); for these
        paths it returns the same address and parameters.
        """
        match = _PLAIN_PATH.match(arg)
        if match is None:
            return super()._getaddr(arg)
        return match.group("addr"), match.group("rest") or ""

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


@dataclass
class Servers:
    """The two listening submission servers of one process."""

    starttls: asyncio.Server
    implicit_tls: asyncio.Server
    listeners: list[smtpd.Listener[SubmissionProtocol]] = field(default_factory=list)

    @property
    def starttls_port(self) -> int:
        return int(self.starttls.sockets[0].getsockname()[1])

    @property
    def tls_port(self) -> int:
        return int(self.implicit_tls.sockets[0].getsockname()[1])

    def sessions(self) -> list[SubmissionProtocol]:
        return [s for listener in self.listeners for s in listener.sessions]

    async def close(self, grace: float = smtpd.SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop listening; let messages in DATA finish, then close every session."""
        await smtpd.close_servers(
            [self.starttls, self.implicit_tls], self.sessions, grace
        )


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
    listeners: list[smtpd.Listener[SubmissionProtocol]] = [
        smtpd.Listener(limits.max_connections, name="starttls"),
        smtpd.Listener(limits.max_connections, name="tls"),
    ]

    def factory(
        listener: smtpd.Listener[SubmissionProtocol], implicit_tls: bool
    ) -> SubmissionProtocol:
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
    return smtpd.run_forever(
        functools.partial(_serving, settings), logger=log, stopping="smtp stopping"
    )


@asynccontextmanager
async def _serving(settings: Settings) -> AsyncIterator[Servers]:
    """Open the stores and the Acceptor, serve, and close them after the servers."""
    runtime = Runtime.create(settings)
    await runtime.open()
    acceptor = Acceptor(runtime.pool, runtime.redis, settings)
    await acceptor.start()
    try:
        yield await serve(settings, runtime, acceptor)
    finally:
        await acceptor.stop()
        await runtime.close()
