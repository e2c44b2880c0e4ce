"""MX routing (RFC 5321 §5.1, null MX RFC 7505) and TXT/address lookups.

Answers are cached for their TTL; NXDOMAIN/NODATA per RFC 2308, capped at 300 s.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, cast

import dns.asyncresolver
import dns.exception
import dns.inet
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.TXT
import dns.resolver
import dns.rrset

# RFC 2308 §5 lets negative answers live for the SOA MINIMUM; we cap that (and
# dnspython's 300 s default when the SOA is missing) so new domains show up soon.
NEGATIVE_TTL_CAP = 300
# A day bounds how long a mistaken huge TTL (up to 2^31-1, RFC 2181 §8) can pin
# a stale route in a long-running worker.
POSITIVE_TTL_CAP = 86_400
# DNS Flag Day 2020: a 1232-octet EDNS buffer avoids IP fragmentation.
EDNS_PAYLOAD = 1232
# Enough for the distinct names a busy worker resolves between TTL expiries;
# each entry is a few hundred bytes.
CACHE_SIZE = 50_000
# LDH labels (RFC 5890 §2.3.1) plus "_" for service names like _dmarc.
_LABEL = re.compile(rb"[a-z0-9_-]+")


class DnsTemporaryError(Exception):
    """A lookup failed in a way that may succeed later (SERVFAIL, timeout)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class MxHost:
    """One host to connect to, with the addresses our resolver found for it."""

    name: str
    preference: int
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Route:
    """Where mail for domain goes: hosts in the order to try them."""

    domain: str
    hosts: tuple[MxHost, ...]
    implicit: bool


@dataclass(frozen=True, slots=True)
class RouteFailure:
    """Why mail for domain cannot be routed now (or ever, when permanent)."""

    domain: str
    permanent: bool
    enhanced_status: str
    reason: str


class _Exchange(NamedTuple):
    """One MX RDATA, its exchange as canonical text ("." for a null MX)."""

    preference: int
    host: str


@dataclass(frozen=True, slots=True)
class _Answer:
    """One cached RRset: exists is False for NXDOMAIN; no values means NODATA."""

    exists: bool
    values: tuple[str, ...] = ()
    exchanges: tuple[_Exchange, ...] = ()


# Qnames are kept as canonical text: str caches its hash, dns.name.Name does not.
_Key = tuple[str, dns.rdatatype.RdataType]
_NXDOMAIN = _Answer(exists=False)


class Resolver:
    """Resolve mail routes and TXT records through configured nameservers."""

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]],
        timeout: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self._timeout = timeout
        self._clock = clock
        self._rng = rng or random.Random()
        self._cache_size = cache_size
        self._cache: dict[_Key, tuple[float, _Answer]] = {}
        self._inflight: dict[_Key, asyncio.Task[_Answer]] = {}
        self._stub = _stub_resolver(nameservers, timeout)

    async def route(self, domain: str) -> Route | RouteFailure:
        """Return the MX hosts to try for domain, in order, or why there are none."""
        if domain.startswith("["):
            return RouteFailure(
                domain, True, "5.1.2", "address literals are not accepted"
            )
        try:
            name = _qname(domain)
        except ValueError as exc:
            return RouteFailure(domain, True, "5.1.2", str(exc))
        try:
            mx = await self._lookup((name, dns.rdatatype.MX))
        except DnsTemporaryError as exc:
            return RouteFailure(name, False, "4.4.3", exc.reason)
        if not mx.exists:
            return RouteFailure(name, True, "5.1.2", "domain does not exist")
        if not mx.exchanges:
            return await self._implicit_route(name)
        if len(mx.exchanges) == 1 and mx.exchanges[0].host == _ROOT:
            return RouteFailure(
                name, True, "5.1.10", "domain publishes a null MX (RFC 7505)"
            )
        best: dict[str, _Exchange] = {}
        for exchange in mx.exchanges:
            # A "." among real exchanges is a misconfiguration; it has no address.
            seen = best.get(exchange.host)
            if exchange.host != _ROOT and (
                seen is None or exchange.preference < seen.preference
            ):
                best[exchange.host] = exchange
        # RFC 5321 §5.1: lowest preference first, random order among equals.
        ordered = sorted(
            best.values(), key=lambda item: (item.preference, self._rng.random())
        )
        answers = await self._lookup_many(
            [(item.host, rdtype) for item in ordered for rdtype in _ADDRESS_TYPES]
        )
        hosts: list[MxHost] = []
        failures: list[DnsTemporaryError] = []
        for index, item in enumerate(ordered):
            try:
                found = _addresses(answers[2 * index], answers[2 * index + 1])
            except DnsTemporaryError as exc:
                failures.append(exc)
                continue
            if found:
                hosts.append(MxHost(item.host, item.preference, tuple(found)))
        if not hosts:
            reason = "no MX host has an address"
            if failures:
                reason += f" ({failures[0].reason})"
            return RouteFailure(name, False, "4.4.3", reason)
        return Route(name, tuple(hosts), implicit=False)

    async def txt(self, name: str) -> list[str] | None:
        """Return name's TXT strings (chunks joined), or None if there are none."""
        answer = await self._lookup((_qname(name), dns.rdatatype.TXT))
        return list(answer.values) if answer.values else None

    async def addresses(self, host: str) -> list[str]:
        """Return host's IPv4 then IPv6 addresses; an IP address is returned as is."""
        if dns.inet.is_address(host):
            return [host]
        qname = _qname(host)
        a, aaaa = await self._lookup_many([(qname, t) for t in _ADDRESS_TYPES])
        return _addresses(a, aaaa)

    async def _implicit_route(self, name: str) -> Route | RouteFailure:
        """Route to the domain's own addresses (RFC 5321 §5.1 implicit MX)."""
        a, aaaa = await self._lookup_many([(name, t) for t in _ADDRESS_TYPES])
        try:
            found = _addresses(a, aaaa)
        except DnsTemporaryError as exc:
            return RouteFailure(name, False, "4.4.3", exc.reason)
        if not found:
            return RouteFailure(
                name, True, "5.4.4", "domain has no MX and no address records"
            )
        return Route(name, (MxHost(name, 0, tuple(found)),), implicit=True)

    def _cached(self, key: _Key) -> _Answer | None:
        """Return the unexpired cached answer for key, if any."""
        hit = self._cache.get(key)
        if hit is None:
            return None
        if hit[0] > self._clock():
            return hit[1]
        del self._cache[key]
        return None

    async def _lookup_many(self, keys: list[_Key]) -> list[_Answer | DnsTemporaryError]:
        """Look keys up concurrently; cache hits start no task."""
        results: list[_Answer | DnsTemporaryError | None] = [
            self._cached(key) for key in keys
        ]
        missing = [index for index, result in enumerate(results) if result is None]
        if missing:
            fetched = await asyncio.gather(
                *(self._lookup_or_error(keys[index]) for index in missing)
            )
            for index, result in zip(missing, fetched, strict=True):
                results[index] = result
        return cast(list[_Answer | DnsTemporaryError], results)

    async def _lookup_or_error(self, key: _Key) -> _Answer | DnsTemporaryError:
        """Look key up, returning a temporary failure instead of raising it."""
        try:
            return await self._lookup(key)
        except DnsTemporaryError as exc:
            return exc

    async def _lookup(self, key: _Key) -> _Answer:
        """Answer key from the cache or one shared query to the nameservers."""
        hit = self._cached(key)
        if hit is not None:
            return hit
        task = self._inflight.get(key)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.create_task(self._fetch(key))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._settled, key))
        # Shielded so that one cancelled caller leaves the others' query running.
        return await asyncio.shield(task)

    def _settled(self, key: _Key, task: asyncio.Task[_Answer]) -> None:
        """Forget a finished query; mark its error seen in case nobody waits."""
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()

    async def _fetch(self, key: _Key) -> _Answer:
        """Query the nameservers for key and cache what they say."""
        if self._stub is None:
            raise DnsTemporaryError("DNS lookup failed: no nameservers configured")
        qname, rdtype = key
        try:
            answer = await self._stub.resolve(
                dns.name.from_text(qname), rdtype, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN as exc:
            self._store(key, _NXDOMAIN, _nxdomain_ttl(exc))
            return _NXDOMAIN
        except dns.resolver.LifetimeTimeout as exc:
            raise DnsTemporaryError(
                f"DNS lookup failed: no answer within {self._timeout:g} s"
            ) from exc
        except dns.resolver.NoNameservers as exc:
            raise DnsTemporaryError(f"DNS lookup failed: {_last_error(exc)}") from exc
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsTemporaryError(f"DNS lookup failed: {exc}") from exc
        result = _convert(rdtype, answer.rrset)
        cap = POSITIVE_TTL_CAP if answer.rrset is not None else NEGATIVE_TTL_CAP
        self._store(key, result, min(answer.chaining_result.minimum_ttl, cap))
        return result

    def _store(self, key: _Key, answer: _Answer, ttl: int) -> None:
        """Cache answer for ttl seconds, evicting when the cache is full."""
        if ttl <= 0:
            return
        if len(self._cache) >= self._cache_size:
            now = self._clock()
            for stale in [k for k, (exp, _) in self._cache.items() if exp <= now]:
                del self._cache[stale]
            # Still full: drop the oldest tenth, so the scan above stays rare.
            if len(self._cache) >= self._cache_size:
                for old in list(self._cache)[: max(1, self._cache_size // 10)]:
                    del self._cache[old]
        self._cache[key] = (self._clock() + ttl, answer)


_ROOT = "."
_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)


def _stub_resolver(
    nameservers: Sequence[tuple[str, int]], timeout: float
) -> dns.asyncresolver.Resolver | None:
    """Build dnspython's resolver; None when the system lists no nameservers."""
    if nameservers:
        for host, _ in nameservers:
            if not dns.inet.is_address(host):
                raise ValueError(f"DNS nameserver must be an IP address: {host!r}")
        stub = dns.asyncresolver.Resolver(configure=False)
        stub.nameservers = [
            dns.nameserver.Do53Nameserver(host, port) for host, port in nameservers
        ]
    else:
        try:
            stub = dns.asyncresolver.Resolver(configure=True)
        except dns.resolver.NoResolverConfiguration:
            return None
    stub.cache = None
    stub.lifetime = timeout
    stub.use_edns(0, 0, EDNS_PAYLOAD)
    return stub


# Hot recipient domains are parsed once; IDNA processing costs tens of µs.
@functools.lru_cache(maxsize=8192)
def _qname(text: str) -> str:
    """Turn a domain (U-labels allowed, final dot optional) into a canonical qname."""
    bare = text[:-1] if text.endswith(".") else text
    if not bare:
        raise ValueError("invalid domain name: empty")
    try:
        name = dns.name.from_unicode(
            bare, origin=dns.name.root, idna_codec=dns.name.IDNA_2008_Practical
        )
    except (dns.exception.DNSException, UnicodeError) as exc:
        raise ValueError(f"invalid domain name {text!r}: {exc}") from exc
    labels = [label.lower() for label in name.labels]
    if not all(_LABEL.fullmatch(label) for label in labels[:-1]):
        raise ValueError(f"invalid domain name {text!r}")
    return _text(dns.name.Name(labels))


def _text(name: dns.name.Name) -> str:
    """Render a name lower-case without its final dot; the root stays "."."""
    if name == dns.name.root:
        return _ROOT
    return name.to_text(omit_final_dot=True).lower()


def _convert(rdtype: dns.rdatatype.RdataType, rrset: dns.rrset.RRset | None) -> _Answer:
    """Keep only what routing needs from an RRset (None means NODATA)."""
    if rrset is None:
        return _Answer(exists=True)
    if rdtype == dns.rdatatype.MX:
        exchanges = tuple(
            _Exchange(rdata.preference, _text(rdata.exchange))
            for rdata in rrset
            if isinstance(rdata, dns.rdtypes.ANY.MX.MX)
        )
        return _Answer(exists=True, exchanges=exchanges)
    if rdtype == dns.rdatatype.TXT:
        values = tuple(
            b"".join(rdata.strings).decode("utf-8", "replace")
            for rdata in rrset
            if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
        )
        return _Answer(exists=True, values=values)
    return _Answer(exists=True, values=tuple(rdata.to_text() for rdata in rrset))


def _addresses(
    a: _Answer | DnsTemporaryError, aaaa: _Answer | DnsTemporaryError
) -> list[str]:
    """Merge A then AAAA; one family failing is fine if the other has addresses."""
    found = [
        address
        for answer in (a, aaaa)
        if isinstance(answer, _Answer)
        for address in answer.values
    ]
    if not found:
        for answer in (a, aaaa):
            if isinstance(answer, DnsTemporaryError):
                raise answer
    return found


def _nxdomain_ttl(exc: dns.resolver.NXDOMAIN) -> int:
    """Return the RFC 2308 negative TTL of an NXDOMAIN, capped."""
    responses: dict[dns.name.Name, dns.message.Message] = exc.kwargs.get(
        "responses", {}
    )
    for response in responses.values():
        if isinstance(response, dns.message.QueryMessage):
            try:
                ttl = response.resolve_chaining().minimum_ttl
            except dns.exception.DNSException:
                continue
            return min(ttl, NEGATIVE_TTL_CAP)
    return NEGATIVE_TTL_CAP


def _last_error(exc: dns.resolver.NoNameservers) -> str:
    """Describe the last nameserver error, e.g. "SERVFAIL"."""
    errors: list[dns.resolver.ErrorTuple] = exc.kwargs.get("errors", [])
    if not errors:
        return "no nameserver answered"
    error = errors[-1][3]
    return error if isinstance(error, str) else f"{type(error).__name__}: {error}"
