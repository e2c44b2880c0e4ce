"""A scriptable authoritative DNS server on 127.0.0.1 (UDP and TCP) for tests.

Speaks RFC 1035 over both transports, truncates oversized UDP answers (TC, RFC
1035 §4.2.1, EDNS payload per RFC 6891) and answers negatives with an SOA (RFC 2308).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.TXT
import dns.rrset
import pytest

# RFC 1035 §4.2.1: without EDNS a UDP message carries at most 512 octets.
UDP_PLAIN_LIMIT = 512
# RFC 1035 §4.2.2: a TCP message is prefixed by a two-octet length.
TCP_LIMIT = 65535
# RFC 1035 §3.3.14: a TXT character-string holds at most 255 octets.
TXT_CHUNK = 255
# Longest CNAME chain followed inside the zone; beyond it the answer stops.
CNAME_HOPS = 8

_Node = dict[dns.rdatatype.RdataType, dns.rrset.RRset]


class DnsServer:
    """Serve a small in-memory zone, rooted at ".", on one loopback port."""

    host = "127.0.0.1"

    def __init__(self) -> None:
        self.port = 0
        self.queries: list[tuple[str, str]] = []
        self.tcp_queries: list[tuple[str, str]] = []
        # SOA TTL and MINIMUM sent with NXDOMAIN/NODATA answers (RFC 2308 §5).
        self.negative_ttl = 300
        self._lock = threading.Lock()
        self._zone: dict[dns.name.Name, _Node] = {}
        self._failing: dict[dns.name.Name, str] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Future[None] | None = None

    @property
    def nameservers(self) -> str:
        """Return the server in SESAME_DNS_NAMESERVERS form."""
        return f"{self.host}:{self.port}"

    # Scripting the zone.

    def add(self, name: str, rdtype: str, value: str, ttl: int = 300) -> None:
        """Add one record; records of the same name and type form one RRset."""
        owner = dns.name.from_text(name)
        kind = dns.rdatatype.from_text(rdtype)
        rdata: dns.rdata.Rdata
        if kind == dns.rdatatype.TXT:
            raw = value.encode()
            chunks = [raw[i : i + TXT_CHUNK] for i in range(0, len(raw), TXT_CHUNK)]
            rdata = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, kind, chunks or [b""])
        else:
            rdata = dns.rdata.from_text(
                dns.rdataclass.IN, kind, value, origin=dns.name.root, relativize=False
            )
        with self._lock:
            node = self._zone.setdefault(owner, {})
            rrset = node.get(kind)
            if rrset is None:
                rrset = node[kind] = dns.rrset.RRset(owner, dns.rdataclass.IN, kind)
            rrset.add(rdata, ttl)

    def null_mx(self, name: str, ttl: int = 300) -> None:
        """Publish the RFC 7505 null MX ("0 .") for name."""
        self.add(name, "MX", "0 .", ttl)

    def servfail(self, name: str) -> None:
        """Answer every query for name with SERVFAIL."""
        with self._lock:
            self._failing[dns.name.from_text(name)] = "servfail"

    def timeout(self, name: str) -> None:
        """Never answer queries for name, on either transport."""
        with self._lock:
            self._failing[dns.name.from_text(name)] = "timeout"

    def clear(self) -> None:
        """Forget every record, failure and recorded query."""
        with self._lock:
            self._zone.clear()
            self._failing.clear()
            self.queries.clear()
            self.tcp_queries.clear()

    # Answering.

    def respond(self, wire: bytes, tcp: bool) -> bytes | None:
        """Return the wire answer to one query, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        asked = (question.name.to_text(omit_final_dot=True), question.rdtype.name)
        self.queries.append(asked)
        if tcp:
            self.tcp_queries.append(asked)
        with self._lock:
            if not self._answer(question.name, question.rdtype, response):
                return None
        if tcp:
            limit = TCP_LIMIT
        elif query.edns >= 0:
            limit = max(UDP_PLAIN_LIMIT, query.payload)
        else:
            limit = UDP_PLAIN_LIMIT
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire()

    def _answer(
        self,
        qname: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        response: dns.message.Message,
    ) -> bool:
        """Fill response for qname/rdtype; False means drop the query."""
        name = qname
        for _ in range(CNAME_HOPS):
            failure = self._failing.get(name)
            if failure == "timeout":
                return False
            if failure == "servfail":
                response.set_rcode(dns.rcode.SERVFAIL)
                return True
            node = self._zone.get(name)
            if node is None and not any(n.is_subdomain(name) for n in self._zone):
                response.set_rcode(dns.rcode.NXDOMAIN)
                response.authority.append(self._soa())
                return True
            node = node or {}
            rrset = node.get(rdtype)
            if rrset is not None:
                response.answer.append(rrset)
                return True
            cname = node.get(dns.rdatatype.CNAME)
            if cname is None or rdtype == dns.rdatatype.CNAME:
                break
            response.answer.append(cname)
            target = next(iter(cname))
            assert isinstance(target, dns.rdtypes.ANY.CNAME.CNAME)
            name = target.target
        response.authority.append(self._soa())
        return True

    def _soa(self) -> dns.rrset.RRset:
        """Build the root SOA whose MINIMUM sets the negative TTL (RFC 2308 §4)."""
        return dns.rrset.from_text(
            dns.name.root,
            self.negative_ttl,
            dns.rdataclass.IN,
            dns.rdatatype.SOA,
            f"ns.test. hostmaster.test. 1 3600 600 86400 {self.negative_ttl}",
        )

    # Running.

    def start(self) -> None:
        """Bind UDP and TCP on one free port and serve them from a thread."""
        tcp_sock, udp_sock = _bind_pair(self.host)
        self.port = tcp_sock.getsockname()[1]
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(tcp_sock, udp_sock, ready), daemon=True
        )
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("DNS test server did not start")

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(_finish, self._stopping)
        if self._thread is not None:
            self._thread.join(5)

    def _run(
        self, tcp_sock: socket.socket, udp_sock: socket.socket, ready: threading.Event
    ) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(tcp_sock, udp_sock, ready))
        finally:
            loop.close()

    async def _serve(
        self, tcp_sock: socket.socket, udp_sock: socket.socket, ready: threading.Event
    ) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = loop.create_future()
        handlers: set[asyncio.Task[None]] = set()

        async def on_connect(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                await self._serve_tcp(reader, writer)
            finally:
                handlers.discard(task)
                writer.close()

        udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), sock=udp_sock
        )
        server = await asyncio.start_server(on_connect, sock=tcp_sock)
        ready.set()
        try:
            await self._stopping
        finally:
            udp.close()
            server.close()
            for task in list(handlers):
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await server.wait_closed()

    async def _serve_tcp(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                size = int.from_bytes(await reader.readexactly(2), "big")
                wire = await reader.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            answer = self.respond(wire, tcp=True)
            if answer is not None:
                writer.write(len(answer).to_bytes(2, "big") + answer)
                await writer.drain()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport does not subclass the ABC.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        answer = self._server.respond(data, tcp=False)
        if answer is not None and self._transport is not None:
            self._transport.sendto(answer, addr)


def _finish(future: asyncio.Future[None]) -> None:
    """Resolve future unless it already is (stop() may run twice)."""
    if not future.done():
        future.set_result(None)


def _bind_pair(host: str) -> tuple[socket.socket, socket.socket]:
    """Bind a TCP and a UDP socket to the same free port."""
    # The kernel picks a free TCP port; the same UDP port is almost always free,
    # and a few retries cover the rare clash.
    for _ in range(20):
        tcp_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp_sock.bind((host, 0))
        udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp_sock.bind((host, tcp_sock.getsockname()[1]))
        except OSError:
            tcp_sock.close()
            udp_sock.close()
            continue
        tcp_sock.listen(16)
        tcp_sock.setblocking(False)
        udp_sock.setblocking(False)
        return tcp_sock, udp_sock
    raise RuntimeError("no free port for the DNS test server")


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """Run a fresh loopback DNS server for one test."""
    server = DnsServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
