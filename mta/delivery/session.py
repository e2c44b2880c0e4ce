"""Outbound SMTP sessions (RFC 5321) reused across messages, with STARTTLS (RFC 3207).

Each recipient gets an attempt result classified by RFC 3463 status (see outcome).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib import (
    SMTPConnectResponseError,
    SMTPException,
    SMTPHeloError,
    SMTPRecipientRefused,
    SMTPResponseException,
    SMTPSenderRefused,
)

from mta.delivery.outcome import (
    AttemptOutcome,
    AttemptResult,
    classify_reply,
    connection_failure,
    session_refused,
)
from mta.delivery.shaping import RatePacer, SiteLimits, limits_for, site_key

__all__ = ["SessionPool"]

# QUIT is a courtesy to the server; never hold a connection slot for long on it.
_QUIT_TIMEOUT = 5.0


# An idle connection older than this gets an RSET before reuse, to find out
# whether the server has dropped it meanwhile.
_PROBE_AFTER_IDLE_SECONDS = 2.0


class _StaleConnection(Exception):
    """A reused connection turned out closed before the transaction began."""


@dataclass(eq=False, slots=True)
class _Connection:
    """One open SMTP session to one MX host address."""

    smtp: aiosmtplib.SMTP
    site: _Site
    mx_host: str
    ip: str
    tls: bool
    transactions: int = 0
    last_used: float = 0.0
    idle_timer: asyncio.TimerHandle | None = None
    closed: bool = False


@dataclass(eq=False, slots=True)
class _Site:
    """Connection slots, idle connections and pacing for one destination site."""

    key: str
    limits: SiteLimits
    pacer: RatePacer | None
    # Connections open or being opened; idle ones keep their slot.
    slots: int = 0
    sends: int = 0
    idle: dict[str, list[_Connection]] = field(default_factory=dict)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def take_idle(self, ip: str, tls_required: bool) -> _Connection | None:
        """Take the most recently used idle connection to ip, if one fits."""
        pool = self.idle.get(ip, [])
        for index in range(len(pool) - 1, -1, -1):
            if pool[index].tls or not tls_required:
                return self._unidle(pool.pop(index))
        return None

    def take_oldest_idle(self) -> _Connection | None:
        """Take the idle connection unused for longest, to any address."""
        pools = [pool for pool in self.idle.values() if pool]
        if not pools:
            return None
        pool = min(pools, key=lambda p: p[0].last_used)
        return self._unidle(pool.pop(0))

    def remove_idle(self, conn: _Connection) -> bool:
        """Take a given connection out of the idle set; tell if it was there."""
        pool = self.idle.get(conn.ip, [])
        if conn not in pool:
            return False
        pool.remove(conn)
        self._unidle(conn)
        return True

    def all_idle(self) -> list[_Connection]:
        """Take every idle connection."""
        conns = [conn for pool in self.idle.values() for conn in pool]
        self.idle.clear()
        for conn in conns:
            self._unidle(conn)
        return conns

    def idle_count(self) -> int:
        """Count idle connections."""
        return sum(len(pool) for pool in self.idle.values())

    def wake(self) -> None:
        """Let every task waiting for a slot or an idle connection look again."""
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()

    def _unidle(self, conn: _Connection) -> _Connection:
        """Stop the idle timer of a connection leaving the idle set."""
        if not self.idle.get(conn.ip, True):
            del self.idle[conn.ip]
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
            conn.idle_timer = None
        return conn


class SessionPool:
    """Deliver messages over SMTP sessions kept open and shared per destination site."""

    def __init__(
        self,
        *,
        local_hostname: str,
        port: int,
        connect_timeout: float,
        command_timeout: float,
        limits: Callable[[str], SiteLimits] = limits_for,
        tls_context_factory: Callable[[str], ssl.SSLContext] | None = None,
    ) -> None:
        """Configure the pool; connections open lazily on the first send."""
        self._local_hostname = local_hostname
        self._port = port
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._limits = limits
        self._tls_context_factory = tls_context_factory
        self._opportunistic_tls: ssl.SSLContext | None = None
        self._sites: dict[str, _Site] = {}
        self._live: set[_Connection] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        self._new_connections = 0
        self._reused_transactions = 0
        self._transactions = 0

    async def send(
        self,
        *,
        hosts: Sequence[tuple[str, str]],
        mail_from: str,
        rcpt_to: Sequence[str],
        data: bytes,
        tls_required: bool = False,
    ) -> list[AttemptResult]:
        """Make one delivery attempt; return one result per recipient, in order.

        hosts are (MX host name, IP address) pairs in preference order; data is the
        CRLF-normalised message (aiosmtplib dot-stuffs it).
        """
        if self._closed:
            raise RuntimeError("SessionPool.send() after close()")
        recipients = list(rcpt_to)
        if not recipients:
            return []
        if not hosts:
            return [connection_failure("no MX host to try", None)] * len(recipients)
        site = self._site(hosts)
        site.sends += 1
        try:
            if site.pacer is not None:
                await site.pacer.wait()
            failure: AttemptResult | None = None
            for mx_host, ip in hosts:
                attempt = await self._send_via(
                    site, mx_host, ip, mail_from, recipients, data, tls_required
                )
                if isinstance(attempt, list):
                    return attempt
                # RFC 5321 5.1: a host we could not talk to means try the next one.
                failure = attempt
            assert failure is not None
            return [failure] * len(recipients)
        finally:
            site.sends -= 1
            self._maybe_forget(site)

    async def close(self) -> None:
        """Quit every idle connection; connections in use quit when their send ends."""
        self._closed = True
        idle = [conn for site in self._sites.values() for conn in site.all_idle()]
        await asyncio.gather(*(self._retire(conn) for conn in idle))
        while self._background:
            await asyncio.gather(*self._background)

    def stats(self) -> dict[str, int]:
        """Return connection counters for metrics and tests."""
        return {
            "open_connections": len(self._live),
            "idle_connections": sum(s.idle_count() for s in self._sites.values()),
            "new_connections": self._new_connections,
            "reused_transactions": self._reused_transactions,
            "transactions": self._transactions,
        }

    def _site(self, hosts: Sequence[tuple[str, str]]) -> _Site:
        """Return the site state for an MX host list, creating it on first use."""
        key = site_key(name for name, _ in hosts)
        site = self._sites.get(key)
        if site is None:
            limits = self._limits(hosts[0][0])
            rate = limits.max_message_rate
            pacer = RatePacer(rate) if rate is not None else None
            site = _Site(key=key, limits=limits, pacer=pacer)
            self._sites[key] = site
        return site

    def _maybe_forget(self, site: _Site) -> None:
        """Drop a site nobody is using so the table does not grow without bound."""
        if site.sends or site.slots or site.waiters:
            return
        if site.pacer is not None and not site.pacer.idle:
            return
        if self._sites.get(site.key) is site:
            del self._sites[site.key]

    async def _send_via(
        self,
        site: _Site,
        mx_host: str,
        ip: str,
        mail_from: str,
        recipients: list[str],
        data: bytes,
        tls_required: bool,
    ) -> list[AttemptResult] | AttemptResult:
        """Run one transaction on one host; a single result means try the next host."""
        while True:
            conn = await self._checkout(site, mx_host, ip, tls_required)
            if isinstance(conn, AttemptResult):
                return conn
            try:
                results = await self._transaction(conn, mail_from, recipients, data)
            except _StaleConnection:
                # The server dropped a connection we kept; nothing was sent on
                # it, so take another one.
                self._discard(conn)
                continue
            except BaseException:
                # A bug or a cancellation: the session state is unknown, drop it.
                self._discard(conn)
                raise
            await self._checkin(conn)
            return results

    async def _checkout(
        self, site: _Site, mx_host: str, ip: str, tls_required: bool
    ) -> _Connection | AttemptResult:
        """Return a ready connection to ip, reusing an idle one when possible."""
        while True:
            conn = site.take_idle(ip, tls_required)
            if conn is not None:
                try:
                    usable = await self._reset(conn)
                except BaseException:
                    self._discard(conn)
                    raise
                if usable:
                    self._reused_transactions += 1
                    return conn
                self._discard(conn)
                continue
            if site.slots < site.limits.max_connections:
                site.slots += 1
                break
            victim = site.take_oldest_idle()
            if victim is not None:
                # At the limit but a connection to another address sits idle:
                # close it and use its slot.
                await self._retire(victim)
                continue
            waiter = asyncio.get_running_loop().create_future()
            site.waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in site.waiters:
                    site.waiters.remove(waiter)
        try:
            opened = await self._connect(site, mx_host, ip, tls_required)
        except BaseException:
            self._release_slot(site)
            raise
        if isinstance(opened, AttemptResult):
            self._release_slot(site)
        return opened

    async def _reset(self, conn: _Connection) -> bool:
        """Probe an idle connection with RSET; tell whether it is still usable.

        A finished transaction leaves the session ready for the next MAIL
        (RFC 5321 3.3), so a connection used moments ago is reused as it is;
        only one that sat idle, which the server may have closed, is probed.
        """
        idle = asyncio.get_running_loop().time() - conn.last_used
        if idle < _PROBE_AFTER_IDLE_SECONDS and conn.smtp.is_connected:
            return True  # a dead one shows at MAIL FROM as _StaleConnection
        try:
            await conn.smtp.rset()
        except (SMTPException, OSError):
            return False
        return conn.smtp.is_connected

    async def _checkin(self, conn: _Connection) -> None:
        """Return a connection after a transaction: keep it idle or quit it."""
        site = conn.site
        if self._closed or not conn.smtp.is_connected:
            await self._retire(conn)
            return
        if conn.transactions >= site.limits.max_messages_per_connection:
            await self._retire(conn)
            return
        loop = asyncio.get_running_loop()
        conn.last_used = loop.time()
        conn.idle_timer = loop.call_later(site.limits.idle_timeout, self._expire, conn)
        site.idle.setdefault(conn.ip, []).append(conn)
        site.wake()

    def _expire(self, conn: _Connection) -> None:
        """Quit a connection that stayed idle for the site's idle timeout."""
        conn.idle_timer = None
        if conn.site.remove_idle(conn):
            task = asyncio.get_running_loop().create_task(self._retire(conn))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _retire(self, conn: _Connection) -> None:
        """Say QUIT (politely, briefly), then close and free the slot."""
        try:
            if conn.smtp.is_connected:
                await conn.smtp.quit(timeout=min(self._command_timeout, _QUIT_TIMEOUT))
        except (SMTPException, OSError):
            pass
        finally:
            self._discard(conn)

    def _discard(self, conn: _Connection) -> None:
        """Close a connection at once and free its slot; safe to call twice."""
        if conn.closed:
            return
        conn.closed = True
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
            conn.idle_timer = None
        conn.smtp.close()
        self._live.discard(conn)
        self._release_slot(conn.site)

    def _release_slot(self, site: _Site) -> None:
        """Give back one connection slot and wake waiters."""
        site.slots -= 1
        site.wake()
        self._maybe_forget(site)

    def _tls_context(self, mx_host: str) -> ssl.SSLContext:
        """Return the TLS context for STARTTLS with an MX host."""
        if self._tls_context_factory is not None:
            return self._tls_context_factory(mx_host)
        if self._opportunistic_tls is None:
            # RFC 7435 opportunistic security: encrypt, but without MTA-STS or DANE
            # there is nothing to check an MX host's certificate against.
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            self._opportunistic_tls = context
        return self._opportunistic_tls

    async def _connect(
        self, site: _Site, mx_host: str, ip: str, tls_required: bool
    ) -> _Connection | AttemptResult:
        """Open a session to one host, with STARTTLS when the host offers it."""
        opened = await self._open(mx_host, ip, tls_required, try_starttls=True)
        if opened is None:
            # RFC 3207 4.1 leaves a failed handshake to the client; in clear is
            # no worse than a host without STARTTLS, so try once more without it.
            opened = await self._open(mx_host, ip, tls_required, try_starttls=False)
        if isinstance(opened, AttemptResult):
            return opened
        assert opened is not None
        smtp, tls = opened
        conn = _Connection(smtp=smtp, site=site, mx_host=mx_host, ip=ip, tls=tls)
        self._live.add(conn)
        self._new_connections += 1
        return conn

    async def _open(
        self, mx_host: str, ip: str, tls_required: bool, *, try_starttls: bool
    ) -> tuple[aiosmtplib.SMTP, bool] | AttemptResult | None:
        """Connect, EHLO and maybe STARTTLS; None means the TLS handshake failed."""
        where = f"{mx_host}[{ip}]:{self._port}"
        smtp = aiosmtplib.SMTP(
            hostname=ip,
            port=self._port,
            local_hostname=self._local_hostname,
            timeout=self._command_timeout,
            use_tls=False,
            start_tls=False,
        )
        try:
            try:
                await smtp.connect(timeout=self._connect_timeout)
            except SMTPConnectResponseError as exc:
                return session_refused(exc.code, exc.message, mx_host)
            except (SMTPException, OSError) as exc:
                return connection_failure(f"{where}: {exc}", mx_host)
            refused = await self._hello(smtp, mx_host, where)
            if refused is not None:
                smtp.close()
                return refused
            if not (try_starttls and smtp.supports_extension("starttls")):
                if tls_required:
                    smtp.close()
                    # RFC 3463 X.7.4: security features not supported.
                    return connection_failure(
                        f"{where} does not offer STARTTLS and TLS is required",
                        mx_host,
                        enhanced_status="4.7.4",
                    )
                return smtp, False
            try:
                await smtp.starttls(
                    server_hostname=mx_host.rstrip(".") or None,
                    tls_context=self._tls_context(mx_host),
                )
            except SMTPResponseException as exc:
                # A refused STARTTLS (e.g. 454) leaves the session usable in clear.
                if not tls_required:
                    return smtp, False
                smtp.close()
                return connection_failure(
                    f"{where} refused STARTTLS: {exc.code} {exc.message}",
                    mx_host,
                    enhanced_status="4.7.4",
                )
            except (SMTPException, OSError) as exc:
                smtp.close()
                if not tls_required:
                    return None
                # RFC 3463 X.7.5: cryptographic failure.
                return connection_failure(
                    f"{where}: TLS handshake failed: {exc}",
                    mx_host,
                    enhanced_status="4.7.5",
                )
            # RFC 3207 4.2: forget what was said in clear and EHLO again.
            refused = await self._hello(smtp, mx_host, where)
            if refused is not None:
                smtp.close()
                return refused
            return smtp, True
        except BaseException:
            smtp.close()
            raise

    async def _hello(
        self, smtp: aiosmtplib.SMTP, mx_host: str, where: str
    ) -> AttemptResult | None:
        """Send EHLO, falling back to HELO; return a failure if neither works."""
        try:
            try:
                await smtp.ehlo()
            except SMTPHeloError:
                if not smtp.is_connected:
                    raise
                await smtp.helo()
        except SMTPResponseException as exc:
            return session_refused(exc.code, exc.message, mx_host)
        except (SMTPException, OSError) as exc:
            return connection_failure(f"{where}: {exc}", mx_host)
        return None

    async def _transaction(
        self,
        conn: _Connection,
        mail_from: str,
        recipients: list[str],
        data: bytes,
    ) -> list[AttemptResult]:
        """Run MAIL, one RCPT per recipient and DATA; classify every reply."""
        smtp, mx_host = conn.smtp, conn.mx_host
        where = f"{mx_host}[{conn.ip}]:{self._port}"
        count = len(recipients)
        reused = conn.transactions > 0
        conn.transactions += 1
        self._transactions += 1

        prepared = _mail_parameters(smtp, mail_from, recipients, data, mx_host)
        if isinstance(prepared, AttemptResult):
            return [prepared] * count
        options, encoding = prepared

        try:
            await _command(smtp, b"MAIL FROM:", mail_from, options, encoding)
        except SMTPResponseException as exc:
            if reused and exc.code == 421:
                raise _StaleConnection from exc
            return [classify_reply(exc.code, exc.message, mx_host)] * count
        except (SMTPException, OSError) as exc:
            if reused:
                raise _StaleConnection from exc
            lost = _lost(f"{where}: connection lost at MAIL FROM: {exc}", mx_host)
            return [lost] * count

        results: list[AttemptResult | None] = [None] * count
        accepted: list[int] = []
        for index, recipient in enumerate(recipients):
            try:
                await _command(smtp, b"RCPT TO:", recipient, (), encoding)
            except SMTPResponseException as exc:
                results[index] = classify_reply(exc.code, exc.message, mx_host)
                if smtp.is_connected:
                    continue
                # A 421 closes the session (RFC 5321 3.8): the rest wait too.
                reason = results[index]
                assert reason is not None
                if reason.outcome is not AttemptOutcome.DEFERRED:
                    reason = _lost(f"{where}: connection lost at RCPT TO", mx_host)
                return _fill(results, accepted, reason)
            except (SMTPException, OSError) as exc:
                lost = _lost(f"{where}: connection lost at RCPT TO: {exc}", mx_host)
                return _fill(results, accepted, lost)
            else:
                accepted.append(index)

        if not accepted:
            try:
                await smtp.rset()
            except (SMTPException, OSError):
                smtp.close()
            return _done(results)

        try:
            reply = await smtp.data(data)
        except SMTPResponseException as exc:
            outcome = classify_reply(exc.code, exc.message, mx_host)
        except (SMTPException, OSError) as exc:
            # The server may have taken the message before the connection broke;
            # retrying risks a duplicate, which at-least-once delivery accepts.
            outcome = _lost(
                f"{where}: connection lost after DATA, the message may have been "
                f"delivered: {exc}",
                mx_host,
            )
        else:
            outcome = classify_reply(reply.code, reply.message, mx_host)
        for index in accepted:
            results[index] = outcome
        return _done(results)


async def _command(
    smtp: aiosmtplib.SMTP,
    verb: bytes,
    address: str,
    options: Iterable[str],
    encoding: str,
) -> None:
    """Send MAIL or RCPT for an address Sesame already validated.

    aiosmtplib's ``mail()``/``rcpt()`` re-parse every address with the email
    package, which costs more than the rest of the transaction; the address
    was checked at accept, and ``execute_command`` still refuses CR, LF and
    other control characters.
    """
    argument = verb + b"<" + address.encode(encoding) + b">"
    extra = [option.encode("ascii") for option in options]
    reply = await smtp.execute_command(argument, *extra)
    if verb == b"MAIL FROM:":
        if reply.code != 250:
            raise SMTPSenderRefused(reply.code, reply.message, address)
    elif reply.code not in (250, 251):
        raise SMTPRecipientRefused(reply.code, reply.message, address)


def _lost(reason: str, mx_host: str) -> AttemptResult:
    """Return a deferral for a session that broke mid-transaction."""
    # RFC 3463 X.4.2: bad connection.
    return connection_failure(reason, mx_host, enhanced_status="4.4.2")


def _done(results: list[AttemptResult | None]) -> list[AttemptResult]:
    """Return results that every recipient already has."""
    done = [result for result in results if result is not None]
    assert len(done) == len(results), "a recipient was left without a result"
    return done


def _fill(
    results: list[AttemptResult | None], accepted: list[int], reason: AttemptResult
) -> list[AttemptResult]:
    """Set accepted and not yet answered recipients to reason; return all results."""
    for index in accepted:
        results[index] = reason
    return [reason if result is None else result for result in results]


def _mail_parameters(
    smtp: aiosmtplib.SMTP,
    mail_from: str,
    recipients: list[str],
    data: bytes,
    mx_host: str,
) -> tuple[list[str], str] | AttemptResult:
    """Return MAIL FROM parameters and address encoding for this server."""
    options: list[str] = []
    if smtp.supports_extension("size"):
        # RFC 1870: lets the server refuse an oversized message before DATA.
        options.append(f"SIZE={len(data)}")
    if smtp.supports_extension("8bitmime") and not data.isascii():
        # RFC 6152. Without 8BITMIME we still send: downgrading MIME is not our job
        # here and nearly every server takes 8-bit data anyway.
        options.append("BODY=8BITMIME")
    if all(address.isascii() for address in (mail_from, *recipients)):
        return options, "ascii"
    if smtp.supports_extension("smtputf8"):
        # RFC 6531 3.4: SMTPUTF8 on MAIL allows UTF-8 addresses.
        options.append("SMTPUTF8")
        return options, "utf-8"
    # RFC 6531 3.2: no SMTPUTF8, no UTF-8 addresses; X.6.7 is its status for that.
    return AttemptResult(
        outcome=AttemptOutcome.FAILED,
        smtp_code=None,
        enhanced_status="5.6.7",
        response=f"{mx_host} does not support SMTPUTF8, needed for a non-ASCII address",
        mx_host=mx_host,
        bounce_type="Permanent",
        bounce_subtype="General",
    )
