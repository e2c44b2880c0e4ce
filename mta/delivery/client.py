"""One outbound SMTP connection (RFC 5321) with PIPELINING (RFC 2920) and STARTTLS.

The delivery session needs what a general-purpose client library does not
offer: several commands written at once and their replies read back in order,
so a transaction costs two round trips instead of one per command. Replies are
parsed as they arrive and queued, so none is lost however the server's bytes
are split into segments.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple, cast

__all__ = [
    "ConnectionLost",
    "MalformedReply",
    "Reply",
    "SmtpClientError",
    "SmtpConnection",
]

# RFC 5321 4.5.3.1.5 allows 512 octets per reply line; servers exceed it in
# the wild, so be generous, but bound what one reply may hold.
_MAX_LINE = 4096
_MAX_REPLY = 65536

_BARE_LINE_END = re.compile(rb"\r\n|\r|\n")
# Control characters never belong in a command line (CR and LF would let an
# argument smuggle in a command of its own).
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


class Reply(NamedTuple):
    """A server reply: its code and its text, lines joined by newlines."""

    code: int
    text: str


class SmtpClientError(Exception):
    """The connection cannot be used any more; it has been closed."""


class ConnectionLost(SmtpClientError):
    """The server closed the connection or stopped answering.

    replies holds what the server said to the commands written before it went,
    in order, so a pipelined group tells how far it got.
    """

    def __init__(self, reason: str, replies: Sequence[Reply] = ()) -> None:
        super().__init__(reason)
        self.replies = list(replies)


class MalformedReply(SmtpClientError):
    """The server sent something that is not an SMTP reply."""


class _ReplyReader(asyncio.Protocol):
    """Turn the bytes of a connection into a queue of replies."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.replies: deque[Reply] = deque()
        self.lost: SmtpClientError | None = None
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.lost is not None:
            return
        self._buffer += data
        try:
            self._parse()
            if len(self._buffer) > _MAX_LINE:  # a line without its end, too long
                raise MalformedReply("reply line too long")
        except MalformedReply as exc:
            self._fail(exc)
            assert self.transport is not None
            self.transport.abort()
            return
        if self.replies:
            self._wake()

    def eof_received(self) -> bool:
        self._fail(ConnectionLost("the server closed the connection"))
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost: {exc}" if exc else "connection closed"
        self._fail(ConnectionLost(reason))
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport's write buffer has room again."""
        if self._writable is not None and not self._writable.done():
            await self._writable
        if self.lost is not None:
            raise self.lost

    async def next_reply(self, timeout: float) -> Reply:
        """Return the next reply, waiting for it at most timeout seconds."""
        if not self.replies:
            loop = asyncio.get_running_loop()
            # A timer on the waiter itself: asyncio.wait_for would wrap every
            # read in a task of its own.
            timer = loop.call_later(timeout, self._time_out, timeout)
            try:
                while not self.replies:
                    if self.lost is not None:
                        raise self.lost
                    self._waiter = loop.create_future()
                    await self._waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self.replies.popleft()

    def discard_buffered(self) -> None:
        """Forget bytes already received: none may be taken as said inside TLS."""
        self._buffer.clear()
        self._lines.clear()
        self._size = 0
        self.replies.clear()

    def _parse(self) -> None:
        """Move every complete reply from the buffer to the queue."""
        start = 0
        buffer = self._buffer
        while (end := buffer.find(b"\n", start)) != -1:
            line = bytes(buffer[start:end]).rstrip(b"\r")
            start = end + 1
            if len(line) > _MAX_LINE:
                raise MalformedReply("reply line too long")
            code = line[:3]
            separator = line[3:4]
            well_formed = len(code) == 3 and code.isdigit() and code[:1] in b"2345"
            if not well_formed or separator not in (b"", b" ", b"-"):
                shown = line[:40].decode("ascii", "replace")
                raise MalformedReply(f"not an SMTP reply line: {shown!r}")
            self._size += len(line)
            if self._size > _MAX_REPLY:
                raise MalformedReply("reply too long")
            self._lines.append(
                line[4:].strip(b" \t").decode("utf-8", "surrogateescape")
            )
            if separator != b"-":
                self.replies.append(Reply(int(code), "\n".join(self._lines)))
                self._lines.clear()
                self._size = 0
        del buffer[:start]

    def _time_out(self, timeout: float) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionLost(f"no reply within {timeout:g} s"))

    def _fail(self, exc: SmtpClientError) -> None:
        if self.lost is None:
            self.lost = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class SmtpConnection:
    """A client session with one SMTP server, command by command or pipelined."""

    def __init__(
        self,
        transport: asyncio.Transport,
        reader: _ReplyReader,
        *,
        local_hostname: str,
        timeout: float,
    ) -> None:
        """Wrap a connected transport; use open() to make one."""
        self._transport = transport
        self._reader = reader
        self._local_hostname = local_hostname
        self._timeout = timeout
        self.extensions: dict[str, str] = {}
        self.tls = False

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        local_hostname: str,
        connect_timeout: float,
        timeout: float,
    ) -> tuple[SmtpConnection, Reply]:
        """Connect and read the greeting; return the connection and the greeting.

        Raises OSError or TimeoutError when no connection could be made, and
        SmtpClientError when the server said nothing sensible.
        """
        loop = asyncio.get_running_loop()
        reader = _ReplyReader()
        transport, _ = await asyncio.wait_for(
            loop.create_connection(lambda: reader, host, port), connect_timeout
        )
        connection = cls(
            transport, reader, local_hostname=local_hostname, timeout=timeout
        )
        try:
            greeting = await reader.next_reply(connect_timeout)
        except BaseException:
            connection.close()
            raise
        return connection, greeting

    @property
    def is_connected(self) -> bool:
        """Tell whether the connection is still open."""
        return self._reader.lost is None and not self._transport.is_closing()

    def supports(self, extension: str) -> bool:
        """Tell whether the last EHLO reply named an extension (any case)."""
        return extension.upper() in self.extensions

    async def ehlo(self) -> Reply:
        """Say EHLO and remember the extensions the server lists (RFC 5321 4.1.1.1)."""
        reply = await self.command(b"EHLO " + self._local_hostname.encode("ascii"))
        self.extensions = {}
        if reply.code == 250:
            for line in reply.text.split("\n")[1:]:
                keyword, _, parameters = line.partition(" ")
                self.extensions[keyword.upper()] = parameters
        return reply

    async def helo(self) -> Reply:
        """Say HELO, for servers that do not know EHLO."""
        self.extensions = {}
        return await self.command(b"HELO " + self._local_hostname.encode("ascii"))

    async def starttls(
        self, context: ssl.SSLContext, server_hostname: str | None
    ) -> Reply:
        """Ask for STARTTLS; on 220 run the handshake. Return the server's reply.

        After a handshake the caller must say EHLO again (RFC 3207 4.2).
        """
        reply = await self.command(b"STARTTLS")
        if reply.code != 220:
            return reply
        # RFC 3207 4.2 starts the session afresh after the handshake; bytes
        # that came after the 220 and before it could have been injected by a
        # man in the middle, so drop them.
        self._reader.discard_buffered()
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self._transport,
                self._reader,
                context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=self._timeout,
            )
        except BaseException:
            self.close()
            raise
        self._transport = self._reader.transport = cast(asyncio.Transport, transport)
        self.extensions = {}
        self.tls = True
        return reply

    async def command(self, line: bytes) -> Reply:
        """Send one command line and return its reply."""
        [reply] = await self.pipeline([line])
        return reply

    async def pipeline(self, lines: Sequence[bytes]) -> list[Reply]:
        """Write command lines in one go, then read one reply per line, in order.

        Raises ConnectionLost carrying the replies read before the loss.
        """
        for line in lines:
            if _CONTROL.search(line):
                raise ValueError(
                    "an SMTP command line must not hold control characters"
                )
        self._write(b"".join(line + b"\r\n" for line in lines))
        replies: list[Reply] = []
        try:
            for _ in lines:
                replies.append(await self._reader.next_reply(self._timeout))
        except SmtpClientError as exc:
            self.close()
            raise ConnectionLost(str(exc), replies) from None
        return replies

    async def content(self, data: bytes) -> Reply:
        """Send message content after a 354 reply; return the final reply.

        data should already use CRLF line ends; stray CR or LF are turned into
        CRLF so that nothing else reaches the wire (RFC 5321 2.3.8).
        """
        crlf = data.count(b"\r\n")
        if data.count(b"\r") != crlf or data.count(b"\n") != crlf:
            data = _BARE_LINE_END.sub(b"\r\n", data)
        if data and not data.endswith(b"\r\n"):
            data += b"\r\n"
        # RFC 5321 4.5.2: a period that starts a line gets another one.
        stuffed = data.replace(b"\n.", b"\n..")
        if stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        self._write(stuffed + b".\r\n")
        try:
            await self._reader.drain()
            return await self._reader.next_reply(self._timeout)
        except SmtpClientError:
            self.close()
            raise

    async def quit(self, timeout: float) -> None:
        """Say QUIT, wait briefly for the reply, and close."""
        try:
            self._write(b"QUIT\r\n")
            await self._reader.next_reply(timeout)
        except (SmtpClientError, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Close the connection at once; safe to call more than once."""
        if self._reader.lost is None:
            self._reader.lost = ConnectionLost("connection closed by us")
        self._transport.close()

    def _write(self, data: bytes) -> None:
        if not self.is_connected:
            raise ConnectionLost(str(self._reader.lost or "connection closed"))
        self._transport.write(data)
