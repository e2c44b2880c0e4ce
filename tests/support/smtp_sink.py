"""Loopback SMTP sinks (RFC 5321, STARTTLS per RFC 3207) that record or refuse mail.

Each sink is an aiosmtpd server in its own thread, so sync and async tests can use it.
"""

from __future__ import annotations

import asyncio
import functools
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["Received", "SmtpSink", "free_port"]

# Sinks for different MX hosts share one port on different loopback addresses
# (Linux routes all of 127.0.0.0/8 to lo), as Sesame uses one delivery port.
SINK_HOSTS = tuple(f"127.0.0.{last}" for last in range(2, 10))


@dataclass(frozen=True, slots=True)
class Received:
    """One message a sink accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: Any
    tls: bool


@functools.cache
def default_ca() -> trustme.CA:
    """Return the test CA that issues every sink certificate."""
    return trustme.CA()


def free_port(hosts: Sequence[str] = SINK_HOSTS, attempts: int = 200) -> int:
    """Return a TCP port that can be bound on every host given."""
    # Below Linux's default ephemeral range (32768-60999), so outgoing connections
    # and port-0 listeners elsewhere in the suite never take it while we use it.
    rng = random.Random()
    for _ in range(attempts):
        port = rng.randrange(20000, 32768)
        if all(_bindable(host, port) for host in hosts):
            return port
    raise RuntimeError(f"no TCP port free on all of {', '.join(hosts)}")


def _bindable(host: str, port: int) -> bool:
    """Tell whether host:port can be bound for listening right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class _SinkSMTP(SMTP):
    """aiosmtpd's server with a refusable, delayable greeting and connection counts."""

    def __init__(self, sink: SmtpSink, refuse: bool, counted: bool, **kwargs: Any):
        super().__init__(sink, **kwargs)
        self._sink = sink
        self._refuse = refuse
        self._counted = counted
        self._gone = False

    def data_received(self, data: bytes) -> None:
        """Record each read, so tests can see which commands came together."""
        if self._counted:
            self._sink._chunk_received(data)
        super().data_received(data)

    def connection_lost(self, error: Exception | None) -> None:
        """Count the connection as closed once, even after STARTTLS."""
        if not self._gone:
            self._gone = True
            if self._counted:
                self._sink._connection_closed()
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        """Delay or refuse the greeting, then run aiosmtpd's session."""
        if self._counted and self._sink.greeting_delay:
            await asyncio.sleep(self._sink.greeting_delay)
        if self._refuse:
            # RFC 5321 3.8: 421 and close, as a server that is going away.
            await self.push("421 4.3.2 Service not available, closing channel")
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()


class _Controller(Controller):
    """Builds one _SinkSMTP per connection with the sink's current knobs."""

    def __init__(self, sink: SmtpSink) -> None:
        super().__init__(sink, hostname=sink.host, port=sink.port)
        self._sink = sink

    def factory(self) -> SMTP:
        sink = self._sink
        counted, refuse = sink._connection_opened()
        return _SinkSMTP(
            sink,
            refuse=refuse,
            counted=counted,
            hostname=f"sink-{sink.host}",
            loop=self.loop,
            tls_context=sink.tls_context if sink.starttls else None,
            require_starttls=sink.starttls and sink.require_tls,
            enable_SMTPUTF8=True,
        )


class SmtpSink:
    """A loopback SMTP server that records messages and misbehaves on request."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        rcpt_replies: dict[str, str] | None = None,
        mail_reply: str | None = None,
        data_reply: str | None = None,
        rset_reply: str | None = None,
        disconnect_in_data: bool = False,
        starttls: bool = False,
        require_tls: bool = False,
        pipelining: bool = True,
        greeting_delay: float = 0.0,
        fail_next_connections: int = 0,
        ca: trustme.CA | None = None,
        tls_names: Sequence[str] = (),
    ) -> None:
        """Configure the sink; every knob may also be changed while it runs."""
        self.host = host
        self.port = port
        self.rcpt_replies: dict[str, str] = dict(rcpt_replies or {})
        self.mail_reply = mail_reply
        self.data_reply = data_reply
        self.rset_reply = rset_reply
        # DATA for these recipients is answered only once `release` is set.
        self.hold_data_for: set[str] = set()
        self.release = threading.Event()
        self.disconnect_in_data = disconnect_in_data
        self.starttls = starttls
        self.require_tls = require_tls
        self.pipelining = pipelining
        self.greeting_delay = greeting_delay
        self.fail_next_connections = fail_next_connections
        self.ca = ca or default_ca()
        names = [host, "localhost", "*.example.test", *tls_names]
        self.tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*names).configure_cert(self.tls_context)

        self.messages: list[Received] = []
        self.connections = 0  # accepted TCP connections, refused ones included
        self.refused_connections = 0
        self.active_connections = 0
        self.max_active_connections = 0
        self.rsets = 0
        # Every read of every connection, in order: bytes as they arrived.
        self.chunks: list[bytes] = []
        self._changed = threading.Condition()
        self._armed = False
        self._controller = _Controller(self)

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Listen on host:port in a background thread."""
        # aiosmtpd connects once to check the server is up; that probe is not a
        # test's connection, so counting starts only afterwards.
        self._controller.start()
        with self._changed:
            self._armed = True

    def stop(self) -> None:
        """Stop listening and drop every open connection."""
        self._controller.stop()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Block until at least count messages arrived; return them all."""
        return self.wait_until(lambda: len(self.messages) >= count, timeout)

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 5.0
    ) -> list[Received]:
        """Block until predicate() holds (checked on every change), or fail."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"sink {self.host}:{self.port} timed out after {timeout}s: "
                        f"{len(self.messages)} messages, "
                        f"{self.active_connections} connections open"
                    )
                self._changed.wait(remaining)
            return list(self.messages)

    async def wait_for_async(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Await at least count messages without blocking the event loop."""
        return await self.wait_until_async(lambda: len(self.messages) >= count, timeout)

    async def wait_until_async(
        self, predicate: Callable[[], bool], timeout: float = 5.0
    ) -> list[Received]:
        """Await predicate() by polling until a deadline, for async tests."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"sink {self.host}:{self.port} timed out after {timeout}s"
                )
            # Poll often: the sink thread changes state within milliseconds.
            await asyncio.sleep(0.005)
        return list(self.messages)

    def _connection_opened(self) -> tuple[bool, bool]:
        """Count a new connection; return (counted, refuse its greeting)."""
        with self._changed:
            if not self._armed:
                return False, False
            self.connections += 1
            self.active_connections += 1
            self.max_active_connections = max(
                self.max_active_connections, self.active_connections
            )
            refuse = self.fail_next_connections > 0
            if refuse:
                self.fail_next_connections -= 1
                self.refused_connections += 1
            self._changed.notify_all()
            return True, refuse

    def _chunk_received(self, data: bytes) -> None:
        with self._changed:
            self.chunks.append(bytes(data))

    def _connection_closed(self) -> None:
        with self._changed:
            self.active_connections -= 1
            self._changed.notify_all()

    # aiosmtpd handler hooks.

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            # aiosmtpd reads commands line by line, so it takes pipelined
            # groups (RFC 2920) as they come; it just does not say so.
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.mail_reply is not None:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.rcpt_replies.get(address) or self.rcpt_replies.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self.disconnect_in_data:
            # Drop the connection where the final DATA reply belongs; closing
            # cancels this handler, so nothing is ever sent.
            assert server.transport is not None
            server.transport.close()
            await asyncio.get_running_loop().create_future()
        while self.hold_data_for.intersection(envelope.rcpt_tos):
            if self.release.is_set():
                break
            await asyncio.sleep(0.01)
        if self.data_reply is not None:
            return self.data_reply
        received = Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            peer=session.peer,
            tls=session.ssl is not None,
        )
        with self._changed:
            self.messages.append(received)
            self._changed.notify_all()
        return "250 2.0.0 OK queued"

    async def handle_RSET(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        with self._changed:
            self.rsets += 1
        return self.rset_reply or "250 2.0.0 OK"


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """The CA that issued every sink's certificate."""
    return default_ca()


@pytest.fixture(scope="session")
def delivery_port() -> int:
    """One TCP port free on 127.0.0.2-127.0.0.9, shared by every sink."""
    return free_port()


@pytest.fixture
def sink_knobs() -> dict[str, Any]:
    """Knobs every sink of a test starts with; a module may override this."""
    return {}


@pytest.fixture
def smtp_sink(
    delivery_port: int, tls_ca: trustme.CA, sink_knobs: dict[str, Any]
) -> Iterator[SmtpSink]:
    """A recording sink on 127.0.0.2:delivery_port."""
    with SmtpSink("127.0.0.2", delivery_port, ca=tls_ca, **sink_knobs) as sink:
        yield sink


@pytest.fixture
def smtp_sinks(
    delivery_port: int, tls_ca: trustme.CA, sink_knobs: dict[str, Any]
) -> Iterator[Callable[..., SmtpSink]]:
    """A factory: smtp_sinks("127.0.0.3", **knobs) starts another sink."""
    started: list[SmtpSink] = []

    def start(host: str, **knobs: Any) -> SmtpSink:
        sink = SmtpSink(host, delivery_port, ca=tls_ca, **{**sink_knobs, **knobs})
        sink.start()
        started.append(sink)
        return sink

    yield start
    for sink in reversed(started):
        sink.stop()
