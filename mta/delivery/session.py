"""Outbound SMTP sessions (RFC 5321) reused across messages, with STARTTLS (RFC 3207).

A transaction is pipelined (RFC 2920) when the server offers it: RSET on a kept
connection, MAIL, every RCPT and DATA go out in one write, the content in a
second. Each recipient gets an attempt result classified by RFC 3463 status
(see outcome).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mta.delivery.client import ConnectionLost, Reply, SmtpClientError, SmtpConnection
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


class _StaleConnection(Exception):
    """A reused connection turned out closed before the transaction began."""


@dataclass(eq=False, slots=True)
class _Connection:
    """One open SMTP session to one MX host address."""

    client: SmtpConnection
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
        """Let the longest-waiting task look again: one slot or connection is free.

        Waking one, not all, keeps a checkin O(1) with dozens of sends queued
        behind a site's connection limit.
        """
        while self.waiters:
            waiter = self.waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

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
        self._pipelined_transactions = 0
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
        CRLF-normalised message (dot-stuffed on the way out).
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
            "pipelined_transactions": self._pipelined_transactions,
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
                if conn.client.is_connected:
                    # A connection the server dropped while idle shows at the
                    # transaction's RSET, before anything is sent.
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
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    site.wake()  # pass on a wake-up this task can no longer use
                raise
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

    async def _checkin(self, conn: _Connection) -> None:
        """Return a connection after a transaction: keep it idle or quit it."""
        site = conn.site
        if self._closed or not conn.client.is_connected:
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
            if conn.client.is_connected:
                await conn.client.quit(min(self._command_timeout, _QUIT_TIMEOUT))
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
        conn.client.close()
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
        client, tls = opened
        conn = _Connection(client=client, site=site, mx_host=mx_host, ip=ip, tls=tls)
        self._live.add(conn)
        self._new_connections += 1
        return conn

    async def _open(
        self, mx_host: str, ip: str, tls_required: bool, *, try_starttls: bool
    ) -> tuple[SmtpConnection, bool] | AttemptResult | None:
        """Connect, EHLO and maybe STARTTLS; None means the TLS handshake failed."""
        where = f"{mx_host}[{ip}]:{self._port}"
        try:
            client, greeting = await SmtpConnection.open(
                ip,
                self._port,
                local_hostname=self._local_hostname,
                connect_timeout=self._connect_timeout,
                timeout=self._command_timeout,
            )
        except (SmtpClientError, OSError) as exc:
            return connection_failure(f"{where}: {exc or type(exc).__name__}", mx_host)
        try:
            if greeting.code != 220:
                client.close()
                return session_refused(greeting.code, greeting.text, mx_host)
            refused = await self._hello(client, mx_host, where)
            if refused is not None:
                client.close()
                return refused
            if not (try_starttls and client.supports("STARTTLS")):
                if tls_required:
                    client.close()
                    # RFC 3463 X.7.4: security features not supported.
                    return connection_failure(
                        f"{where} does not offer STARTTLS and TLS is required",
                        mx_host,
                        enhanced_status="4.7.4",
                    )
                return client, False
            try:
                reply = await client.starttls(
                    self._tls_context(mx_host),
                    server_hostname=mx_host.rstrip(".") or None,
                )
            except (SmtpClientError, OSError) as exc:
                client.close()
                if not tls_required:
                    return None
                # RFC 3463 X.7.5: cryptographic failure.
                return connection_failure(
                    f"{where}: TLS handshake failed: {exc or type(exc).__name__}",
                    mx_host,
                    enhanced_status="4.7.5",
                )
            if reply.code != 220:
                # A refused STARTTLS (e.g. 454) leaves the session usable in clear.
                if not tls_required:
                    return client, False
                client.close()
                return connection_failure(
                    f"{where} refused STARTTLS: {reply.code} {reply.text}",
                    mx_host,
                    enhanced_status="4.7.4",
                )
            # RFC 3207 4.2: forget what was said in clear and EHLO again.
            refused = await self._hello(client, mx_host, where)
            if refused is not None:
                client.close()
                return refused
            return client, True
        except BaseException:
            client.close()
            raise

    async def _hello(
        self, client: SmtpConnection, mx_host: str, where: str
    ) -> AttemptResult | None:
        """Send EHLO, falling back to HELO; return a failure if neither works."""
        try:
            reply = await client.ehlo()
            if reply.code != 250 and reply.code != 421:
                # RFC 5321 4.1.1.1: a server that does not know EHLO may know HELO.
                reply = await client.helo()
        except SmtpClientError as exc:
            return connection_failure(f"{where}: {exc}", mx_host)
        if reply.code != 250:
            return session_refused(reply.code, reply.text, mx_host)
        return None

    async def _transaction(
        self,
        conn: _Connection,
        mail_from: str,
        recipients: list[str],
        data: bytes,
    ) -> list[AttemptResult]:
        """Run MAIL, one RCPT per recipient and DATA; classify every reply."""
        client, mx_host = conn.client, conn.mx_host
        where = f"{mx_host}[{conn.ip}]:{self._port}"
        count = len(recipients)
        reused = conn.transactions > 0
        conn.transactions += 1
        self._transactions += 1

        envelope = _envelope(client, mail_from, recipients, data, mx_host)
        if isinstance(envelope, AttemptResult):
            return [envelope] * count
        # RFC 5321 4.1.1.5: RSET clears whatever the last transaction left on a
        # kept connection; pipelined, it costs no round trip of its own.
        group = [b"RSET"] if reused else []
        group += [*envelope, b"DATA"]

        replies, lost = await self._exchange(client, group)
        if reused:
            if not replies or replies[0].code != 250:
                # The server dropped the connection while it sat idle (or will
                # not reset it): nothing was delivered, so take another one.
                raise _StaleConnection from lost
            replies = replies[1:]

        mail_reply, rcpt_replies, data_reply = _split(replies, count)
        if mail_reply is None:
            lost_at = _lost(f"{where}: connection lost at MAIL FROM: {lost}", mx_host)
            return [lost_at] * count
        if mail_reply.code != 250:
            await _end_empty(client, data_reply)
            return [classify_reply(mail_reply.code, mail_reply.text, mx_host)] * count

        results: list[AttemptResult | None] = [None] * count
        accepted: list[int] = []
        for index, reply in enumerate(rcpt_replies):
            if reply.code in (250, 251):
                accepted.append(index)
            else:
                results[index] = classify_reply(reply.code, reply.text, mx_host)
        answered = len(rcpt_replies) == count
        if answered and not accepted:
            await _end_empty(client, data_reply)
            return _done(results)
        if not answered or data_reply is None:
            # The session ended early: the server closed it with 421 (RFC 5321
            # 3.8) or the connection broke. Whoever has no answer yet waits.
            closing = next((r for r in rcpt_replies if r.code == 421), None)
            if closing is not None:
                reason = classify_reply(closing.code, closing.text, mx_host)
            else:
                stage = "DATA" if answered else "RCPT TO"
                reason = _lost(f"{where}: connection lost at {stage}: {lost}", mx_host)
            return _fill(results, accepted, reason)

        if data_reply.code != 354:
            refused = classify_reply(data_reply.code, data_reply.text, mx_host)
            return _fill(results, accepted, refused)
        try:
            reply = await client.content(data)
        except SmtpClientError as exc:
            # The server may have taken the message before the connection broke;
            # retrying risks a duplicate, which at-least-once delivery accepts.
            outcome = _lost(
                f"{where}: connection lost after DATA, the message may have been "
                f"delivered: {exc}",
                mx_host,
            )
        else:
            outcome = classify_reply(reply.code, reply.text, mx_host)
        return _fill(results, accepted, outcome)

    async def _exchange(
        self, client: SmtpConnection, group: list[bytes]
    ) -> tuple[list[Reply], ConnectionLost | None]:
        """Send a transaction's commands up to DATA; return the replies read.

        With PIPELINING (RFC 2920) the group goes out in one write; otherwise one
        command at a time. A lost connection ends the list early and is returned.
        """
        try:
            if client.supports("PIPELINING"):
                self._pipelined_transactions += 1
                return await client.pipeline(group), None
            return await _lockstep(client, group), None
        except ConnectionLost as exc:
            return exc.replies, exc


async def _lockstep(client: SmtpConnection, group: list[bytes]) -> list[Reply]:
    """Send a transaction's commands one at a time, to a server without PIPELINING.

    Stops where the rest could not succeed: after a refused RSET or MAIL, at a
    421, and before DATA when no recipient was accepted.
    """
    replies: list[Reply] = []
    accepted = False
    try:
        for line in group:
            if line == b"DATA" and not accepted:
                break
            reply = await client.command(line)
            replies.append(reply)
            if reply.code == 421:
                break
            if line.startswith(b"RCPT"):
                accepted = accepted or reply.code in (250, 251)
            elif reply.code != 250:
                break
    except ConnectionLost as exc:
        raise ConnectionLost(str(exc), [*replies, *exc.replies]) from None
    return replies


def _split(
    replies: list[Reply], count: int
) -> tuple[Reply | None, list[Reply], Reply | None]:
    """Split the replies to MAIL, count RCPTs and DATA; missing ones are absent."""
    mail = replies[0] if replies else None
    rcpts = replies[1 : 1 + count]
    data = replies[1 + count] if len(replies) > 1 + count else None
    return mail, rcpts, data


async def _end_empty(client: SmtpConnection, data_reply: Reply | None) -> None:
    """End a DATA the server should have refused: send just the final dot.

    In a pipelined group DATA goes out before the RCPT replies are known; a
    server that answers 354 with no valid recipient gets an empty content
    (RFC 2920 3.1), and the transaction ends there.
    """
    if data_reply is not None and data_reply.code == 354:
        try:
            await client.content(b"")
        except SmtpClientError:
            pass


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


def _envelope(
    client: SmtpConnection,
    mail_from: str,
    recipients: list[str],
    data: bytes,
    mx_host: str,
) -> list[bytes] | AttemptResult:
    """Return the MAIL and RCPT command lines for this server.

    Addresses were checked at accept; the client still refuses any control
    character in a command line.
    """
    options: list[bytes] = []
    if client.supports("SIZE"):
        # RFC 1870: lets the server refuse an oversized message before DATA.
        options.append(b"SIZE=%d" % len(data))
    if client.supports("8BITMIME") and not data.isascii():
        # RFC 6152. Without 8BITMIME we still send: downgrading MIME is not our job
        # here and nearly every server takes 8-bit data anyway.
        options.append(b"BODY=8BITMIME")
    encoding = "ascii"
    if not all(address.isascii() for address in (mail_from, *recipients)):
        if not client.supports("SMTPUTF8"):
            # RFC 6531 3.2: no SMTPUTF8, no UTF-8 addresses; X.6.7 says so.
            return AttemptResult(
                outcome=AttemptOutcome.FAILED,
                smtp_code=None,
                enhanced_status="5.6.7",
                response=(
                    f"{mx_host} does not support SMTPUTF8, "
                    "needed for a non-ASCII address"
                ),
                mx_host=mx_host,
                bounce_type="Permanent",
                bounce_subtype="General",
            )
        # RFC 6531 3.4: SMTPUTF8 on MAIL allows UTF-8 addresses.
        options.append(b"SMTPUTF8")
        encoding = "utf-8"
    mail = b" ".join([b"MAIL FROM:<" + mail_from.encode(encoding) + b">", *options])
    rcpts = [b"RCPT TO:<" + rcpt.encode(encoding) + b">" for rcpt in recipients]
    return [mail, *rcpts]
