"""The aiosmtpd hooks of SMTP submission (RFC 6409): AUTH (RFC 4954) and the accept path.

Every refusal is a reply from mta.submission.replies with its RFC 3463 code.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from typing import Any, ClassVar

import psycopg
import psycopg_pool
import redis.exceptions
from aiosmtpd.smtp import SMTP, Envelope, Session
from prometheus_client import Counter
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from mta import configuration_sets, message
from mta.accept import AcceptError, Acceptor, StoreUnavailable, Submission
from mta.smtpd import BaseHandler, Replies
from mta.submission import Limits, build_raw_submission, replies
from sesame import accounts, metrics
from sesame.ids import AccountId
from sesame.log import bound, event
from sesame.settings import Settings

log = logging.getLogger(__name__)

# Defined in sesame.metrics with the rest (bounded labels listed there).
CONNECTIONS = metrics.SMTP_CONNECTIONS
AUTH_ATTEMPTS = metrics.SMTP_AUTH
ACCEPTED = metrics.SMTP_ACCEPTED
REJECTIONS = metrics.SMTP_REJECTIONS
ACCEPT_SECONDS = metrics.SMTP_ACCEPT_SECONDS

AUTH_FAIL_IP_KEY = "sesame:authfail:ip:{}"
AUTH_FAIL_USER_KEY = "sesame:authfail:user:{}"
_PLAIN_USERNAME = re.compile(r"[A-Za-z0-9._@+-]{1,128}\Z")

# Parsing and rewriting a big message holds the event loop; above this size it
# runs in a thread so other sessions keep being served.
_THREAD_PARSE_BYTES = 1024 * 1024

_STORE_ERRORS = (
    StoreUnavailable,
    psycopg.Error,
    psycopg_pool.PoolTimeout,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


class SubmissionSession(Session):
    """aiosmtpd's session plus who authenticated, for one TLS session."""

    def __init__(self, loop: asyncio.AbstractEventLoop, session_id: str) -> None:
        super().__init__(loop)
        self.session_id = session_id
        self.account_id: AccountId | None = None

    # aiosmtpd warns on every use of login_data; Sesame keeps account_id instead.
    @property
    def login_data(self) -> Any:
        return None

    @login_data.setter
    def login_data(self, value: Any) -> None:
        pass


class SubmissionEnvelope(Envelope):
    """aiosmtpd's envelope plus the addresses as parsed once at MAIL and RCPT."""

    def __init__(self) -> None:
        super().__init__()
        self.sender: message.Address | None = None
        self.recipients: list[message.Address] = []


class SubmissionHandler(BaseHandler):
    """aiosmtpd handler: checks envelopes, then hands DATA to the Acceptor."""

    REPLIES: ClassVar[Replies] = replies
    logger: ClassVar[logging.Logger] = log
    event_prefix: ClassVar[str] = "smtp"
    rejections: ClassVar[Counter] = REJECTIONS

    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool,
        redis: Redis,
        acceptor: Acceptor,
        limits: Limits,
    ) -> None:
        super().__init__(limits.max_recipients)
        self._settings = settings
        self._pool = pool
        self._redis = redis
        self._acceptor = acceptor
        self._limits = limits

    # -- AUTH ------------------------------------------------------------------

    async def authenticate(
        self, session: SubmissionSession, login: bytes, password: bytes
    ) -> str:
        """Check SES SMTP credentials; set session.account_id; return the reply."""
        username = login.decode("utf-8", "replace")
        keys = [
            AUTH_FAIL_IP_KEY.format(_peer_ip(session)),
            AUTH_FAIL_USER_KEY.format(_username_key(username)),
        ]
        try:
            counts = await self._redis.mget(keys)
        except _STORE_ERRORS as exc:
            return self._auth_result("error", replies.AUTH_TEMPORARY_FAILURE, exc)
        if any(int(c or 0) >= self._limits.auth_failures for c in counts):
            # Refused without looking at the password, so guessing gains nothing.
            return self._auth_result("throttled", replies.AUTH_THROTTLED)
        try:
            async with self._pool.connection() as conn:
                account_id = await accounts.smtp_login(
                    conn, username, password.decode("utf-8", "replace")
                )
        except _STORE_ERRORS as exc:
            return self._auth_result("error", replies.AUTH_TEMPORARY_FAILURE, exc)
        if account_id is None:
            await self._count_failure(keys)
            return self._auth_result("invalid", replies.AUTH_INVALID)
        session.account_id = account_id
        event(log, "smtp authenticated", account_id=account_id)
        return self._auth_result("success", replies.AUTH_SUCCESSFUL)

    def _auth_result(
        self, result: str, reply: str, error: BaseException | None = None
    ) -> str:
        AUTH_ATTEMPTS.labels(result).inc()
        if result != "success":
            level = logging.WARNING if error is not None else logging.INFO
            event(
                log,
                "smtp auth refused",
                level,
                result=result,
                error=type(error).__name__ if error else None,
            )
        return reply

    async def _count_failure(self, keys: list[str]) -> None:
        window = self._limits.auth_failure_window_seconds
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.incr(key)
                    pipe.expire(key, window)
                await pipe.execute()
        except _STORE_ERRORS:
            pass  # the failure is still refused; only the throttle misses one

    # -- hooks -----------------------------------------------------------------

    async def check_sender(
        self, session: Session, envelope: Envelope, address: str
    ) -> str | None:
        """Take a parseable address; keep it parsed on the envelope for DATA."""
        try:
            parsed = message.parse_address(address)
        except message.MessageError:
            REJECTIONS.labels("bad_address").inc()
            return replies.SENDER_INVALID
        if isinstance(envelope, SubmissionEnvelope):
            envelope.sender = parsed
        return None

    async def check_recipient(
        self, session: Session, envelope: Envelope, address: str
    ) -> str | None:
        """Take a parseable address; keep it parsed on the envelope for DATA."""
        try:
            parsed = message.parse_address(address)
        except message.MessageError:
            REJECTIONS.labels("bad_address").inc()
            return replies.RECIPIENT_INVALID
        if isinstance(envelope, SubmissionEnvelope):
            envelope.recipients.append(parsed)
        return None

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        assert isinstance(session, SubmissionSession)
        started = time.perf_counter()
        with bound(account_id=session.account_id):
            reply = await self._data(session, envelope)
        ACCEPT_SECONDS.observe(time.perf_counter() - started)
        return reply

    # -- the accept path -------------------------------------------------------

    async def _data(self, session: SubmissionSession, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        account_id = session.account_id
        if account_id is None or envelope.mail_from is None:
            return self._rejected("auth_required", replies.AUTH_REQUIRED)
        try:
            account = await self._acceptor.account(account_id)
        except _STORE_ERRORS as exc:
            return self._unavailable(exc)
        if account is None:  # deleted since AUTH
            return self._rejected("auth_required", replies.AUTH_REQUIRED)
        try:
            if len(raw) > _THREAD_PARSE_BYTES:
                submission = await asyncio.to_thread(
                    self._build, raw, envelope, account
                )
            else:
                submission = self._build(raw, envelope, account)
        except message.MessageError as exc:
            return self._refused(exc.code, exc.message)
        except AcceptError as exc:
            return self._refused(exc.code, exc.message)
        try:
            await self._apply_configuration_set(submission)
        except AcceptError as exc:
            return self._refused(exc.code, exc.message)
        except _STORE_ERRORS as exc:
            return self._unavailable(exc)
        try:
            # Shielded: once checks and the quota have begun, a client that hangs up
            # must not leave the quota counted for a message that was not committed.
            message_id = await asyncio.shield(self._acceptor.accept(submission))
        except AcceptError as exc:
            return self._refused(exc.code, exc.message)
        except _STORE_ERRORS as exc:
            return self._unavailable(exc)
        ACCEPTED.inc()
        return replies.render(replies.ACCEPTED, message_id=message_id)

    async def _apply_configuration_set(self, submission: Submission) -> None:
        """Check the set X-SES-CONFIGURATION-SET names; apply its MaxDeliverySeconds."""
        if submission.configuration_set is None:
            return
        async with self._pool.connection() as conn:
            found = await configuration_sets.resolve(
                conn, submission.account.id, submission.configuration_set
            )
        submission.max_delivery_seconds = found.max_delivery_seconds

    def _build(
        self, raw: bytes, envelope: Envelope, account: accounts.Account
    ) -> Submission:
        limit = self._limits.max_message_bytes
        parsed = message.parse_raw(raw, max_bytes=limit)
        assert envelope.mail_from is not None
        if isinstance(envelope, SubmissionEnvelope) and envelope.sender is not None:
            source, recipients = envelope.sender, envelope.recipients
        else:
            source = message.parse_address(envelope.mail_from)
            recipients = [message.parse_address(a) for a in envelope.rcpt_tos]
        return build_raw_submission(
            parsed,
            account=account,
            settings=self._settings,
            interface="smtp",
            source=source,
            source_text=source.address,
            recipients=recipients,
            max_recipients=self._limits.max_recipients,
            max_bytes=limit,
            keep_date=True,
        )

    def _refused(self, code: str, text: str) -> str:
        if code == "MessageRejected":
            return self._rejected(
                "not_verified", replies.render(replies.MESSAGE_REJECTED, message=text)
            )
        if code == "Throttling":
            return self._rejected(
                "throttled", replies.render(replies.THROTTLED, message=text)
            )
        if code == "AccountSendingPausedException":
            return self._rejected(
                "paused", replies.render(replies.ACCOUNT_PAUSED, message=text)
            )
        if code == "MessageTooLong" or text.startswith("Message length is more"):
            return self._rejected("too_large", replies.MESSAGE_TOO_LONG)
        return self._rejected(
            "invalid", replies.render(replies.TRANSACTION_FAILED, message=text)
        )

    def _rejected(self, reason: str, reply: str) -> str:
        REJECTIONS.labels(reason).inc()
        event(log, "smtp message refused", reason=reason, reply=reply[:3])
        return reply

    def _unavailable(self, error: BaseException) -> str:
        REJECTIONS.labels("unavailable").inc()
        event(
            log,
            "smtp store unavailable",
            logging.WARNING,
            error=type(error).__name__,
        )
        return replies.TEMPORARY_FAILURE


def _peer_ip(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


def _username_key(username: str) -> str:
    """Return a short key part for a username; odd ones are hashed, never stored."""
    if _PLAIN_USERNAME.match(username):
        return username
    return "h" + hashlib.sha256(username.encode("utf-8", "replace")).hexdigest()[:32]
