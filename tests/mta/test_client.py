"""The outbound SMTP connection against scripted loopback servers.

Each server here is a few lines of asyncio that answer exactly as a test needs,
down to how the bytes are split, which no off-the-shelf sink lets a test choose.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme
import uvloop

from mta.delivery.client import ConnectionLost, Reply, SmtpConnection
from mta.delivery.outcome import AttemptOutcome, AttemptResult
from mta.delivery.session import SessionPool

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[int]:
    """Serve script on 127.0.0.1 for every connection; yield the port."""
    done: list[asyncio.Task[None]] = []

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        done.append(asyncio.current_task())  # type: ignore[arg-type]
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for task in done:
            task.cancel()
        await asyncio.gather(*done, return_exceptions=True)


async def connect(port: int, timeout: float = 2.0) -> SmtpConnection:
    client, greeting = await SmtpConnection.open(
        "127.0.0.1",
        port,
        local_hostname="sesame.test",
        connect_timeout=2.0,
        timeout=timeout,
    )
    assert greeting.code == 220
    return client


async def send_once(port: int, rcpt_to: list[str]) -> list[AttemptResult]:
    """Deliver one small message through a fresh SessionPool to 127.0.0.1:port."""
    pool = SessionPool(
        local_hostname="sesame.test",
        port=port,
        connect_timeout=2.0,
        command_timeout=2.0,
    )
    try:
        return await pool.send(
            hosts=[("mx.example.test", "127.0.0.1")],
            mail_from="bounce@sesame.test",
            rcpt_to=rcpt_to,
            data=b"Subject: x\r\n\r\nbody\r\n",
        )
    finally:
        await pool.close()


async def dribble(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write data a byte at a time, each in its own segment."""
    for byte in data:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.001)


async def test_replies_split_anywhere_are_read_whole() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await dribble(writer, b"220 mx.example.test ESMTP\r\n")
        await reader.readline()
        await dribble(
            writer, b"250-mx.example.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n"
        )
        for _ in range(3):
            await reader.readline()
        # Three replies in one segment, the last one split across two.
        writer.write(b"250 2.1.0 a\r\n250 2.1.5 b\r\n354 go")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b" ahead\r\n")
        await reader.readline()

    async with scripted_server(script) as port:
        client = await connect(port)
        reply = await client.ehlo()
        assert reply == Reply(250, "mx.example.test\nPIPELINING\nSIZE 100")
        assert client.supports("pipelining") and client.extensions["SIZE"] == "100"
        replies = await client.pipeline(
            [b"MAIL FROM:<>", b"RCPT TO:<a@x.test>", b"DATA"]
        )
        assert replies == [
            Reply(250, "2.1.0 a"),
            Reply(250, "2.1.5 b"),
            Reply(354, "go ahead"),
        ]
        client.close()


async def test_connection_lost_mid_group_keeps_the_replies_read() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        writer.write(b"220 ready\r\n")
        await reader.readline()
        writer.write(b"250 2.1.0 ok\r\n421 4.3.2 going away\r\n")
        await writer.drain()

    async with scripted_server(script) as port:
        client = await connect(port)
        with pytest.raises(ConnectionLost) as lost:
            await client.pipeline([b"MAIL FROM:<>", b"RCPT TO:<a@x.test>", b"DATA"])
        assert lost.value.replies == [
            Reply(250, "2.1.0 ok"),
            Reply(421, "4.3.2 going away"),
        ]
        assert not client.is_connected


@pytest.mark.parametrize(
    "garbage",
    [
        b"HTTP/1.1 400 Bad Request\r\n",
        b"2500 too many digits\r\n",
        b"25\r\n",
        b"x" * 5000,
    ],
)
async def test_malformed_reply_closes_the_connection(garbage: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        writer.write(b"220 ready\r\n")
        await reader.readline()
        writer.write(garbage)
        await reader.read()

    async with scripted_server(script) as port:
        client = await connect(port)
        with pytest.raises(ConnectionLost):
            await client.command(b"NOOP")
        assert not client.is_connected


async def test_silent_server_times_out() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        writer.write(b"220 ready\r\n")
        await reader.read()

    async with scripted_server(script) as port:
        client = await connect(port, timeout=0.2)
        with pytest.raises(ConnectionLost, match="no reply within 0.2 s"):
            await client.command(b"NOOP")
        assert not client.is_connected


async def test_control_characters_never_reach_the_wire() -> None:
    received = bytearray()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        writer.write(b"220 ready\r\n")
        received.extend(await reader.readline())
        writer.write(b"250 ok\r\n")

    async with scripted_server(script) as port:
        client = await connect(port)
        for line in (b"RCPT TO:<a@x.test>\r\nRSET", b"MAIL FROM:<a\x00@x.test>"):
            with pytest.raises(ValueError):
                await client.pipeline([b"NOOP", line])
        assert await client.command(b"NOOP") == Reply(250, "ok")
        assert bytes(received) == b"NOOP\r\n"
        client.close()


async def test_content_is_dot_stuffed_with_crlf_only() -> None:
    received: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        writer.write(b"220 ready\r\n")
        received.append(await reader.readuntil(b"\r\n.\r\n"))
        writer.write(b"250 2.0.0 queued\r\n")

    async with scripted_server(script) as port:
        client = await connect(port)
        reply = await client.content(b".top\nbare LF\rbare CR\r\n..two\r\nend")
        assert reply == Reply(250, "2.0.0 queued")
        assert received == [b"..top\r\nbare LF\r\nbare CR\r\n...two\r\nend\r\n.\r\n"]
        client.close()


async def test_starttls_drops_what_was_injected_before_the_handshake(
    tls_ca: trustme.CA,
) -> None:
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("mx.example.test").configure_cert(server_tls)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        writer.write(b"220 ready\r\n")
        await reader.readline()
        # A man in the middle appends a reply after the 220 (CVE-2011-0411 style).
        writer.write(b"220 go ahead\r\n250 injected\r\n")
        await writer.drain()
        await writer.start_tls(server_tls)
        line = await reader.readline()
        assert line.startswith(b"EHLO ")
        writer.write(b"250-mx.example.test\r\n250 PIPELINING\r\n")
        await writer.drain()
        await reader.read()

    client_tls = ssl.create_default_context()
    tls_ca.configure_trust(client_tls)
    async with scripted_server(script) as port:
        client = await connect(port)
        assert await client.starttls(client_tls, "mx.example.test") == Reply(
            220, "go ahead"
        )
        assert client.tls
        assert await client.ehlo() == Reply(250, "mx.example.test\nPIPELINING")
        client.close()


async def test_server_answering_354_with_no_recipient_gets_a_lone_dot() -> None:
    """RFC 2920 3.1: the pipelined DATA went out before RCPT's refusal was known."""
    received = bytearray()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        writer.write(b"220 ready\r\n")
        await reader.readline()
        writer.write(b"250-mx.example.test\r\n250 PIPELINING\r\n")
        for _ in range(3):
            received.extend(await reader.readline())
        writer.write(b"250 ok\r\n550 5.1.1 no such user\r\n354 go ahead\r\n")
        received.extend(await reader.readline())
        writer.write(b"554 5.5.1 no valid recipients\r\n")
        received.extend(await reader.readline())
        writer.write(b"221 bye\r\n")

    async with scripted_server(script) as port:
        [result] = await send_once(port, ["nobody@example.test"])
    assert result.outcome is AttemptOutcome.FAILED
    assert result.bounce_subtype == "NoEmail"
    assert bytes(received) == (
        b"MAIL FROM:<bounce@sesame.test>\r\n"
        b"RCPT TO:<nobody@example.test>\r\n"
        b"DATA\r\n"
        b".\r\n"
        b"QUIT\r\n"
    )


async def test_421_mid_group_defers_every_recipient() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        writer.write(b"220 ready\r\n")
        await reader.readline()
        writer.write(b"250-mx.example.test\r\n250 PIPELINING\r\n")
        for _ in range(5):
            await reader.readline()
        # RFC 5321 3.8: a server shutting down says 421 and closes.
        writer.write(b"250 ok\r\n250 ok\r\n421 4.3.2 shutting down\r\n")
        await writer.drain()

    async with scripted_server(script) as port:
        rcpt_to = ["a@example.test", "b@example.test", "c@example.test"]
        results = await send_once(port, rcpt_to)
    assert [r.outcome for r in results] == [AttemptOutcome.DEFERRED] * 3
    assert {(r.smtp_code, r.response) for r in results} == {
        (421, "4.3.2 shutting down")
    }


def test_uvloop_runs_the_same_scenarios(tls_ca: trustme.CA) -> None:
    """Workers run on uvloop, whose transports and start_tls are its own."""

    async def scenarios() -> None:
        await test_replies_split_anywhere_are_read_whole()
        await test_starttls_drops_what_was_injected_before_the_handshake(tls_ca)
        await test_421_mid_group_defers_every_recipient()

    uvloop.run(scenarios())
