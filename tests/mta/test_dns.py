"""MX routing and TXT lookups against the loopback DNS server (RFC 5321 §5.1)."""

from __future__ import annotations

import asyncio
import random
import socket

import dns.asyncresolver
import dns.resolver
import pytest

from mta.dns import DnsTemporaryError, MxHost, Resolver, Route, RouteFailure
from tests.support.dns_server import DnsServer


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def resolver(dns_server: DnsServer, clock: Clock) -> Resolver:
    return Resolver([(dns_server.host, dns_server.port)], timeout=2.0, clock=clock)


def mx_queries(server: DnsServer, name: str) -> int:
    return server.queries.count((name, "MX"))


async def test_mx_hosts_sorted_by_preference(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    dns_server.add("example.test", "MX", "20 mx2.example.test.")
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "127.0.0.1")
    dns_server.add("mx1.example.test", "AAAA", "::1")
    dns_server.add("mx2.example.test", "A", "127.0.0.2")

    route = await resolver.route("example.test")

    assert route == Route(
        domain="example.test",
        hosts=(
            MxHost("mx1.example.test", 10, ("127.0.0.1", "::1")),
            MxHost("mx2.example.test", 20, ("127.0.0.2",)),
        ),
        implicit=False,
    )


async def test_equal_preferences_come_in_random_order(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    dns_server.add("example.test", "MX", "10 a.example.test.")
    dns_server.add("example.test", "MX", "10 b.example.test.")
    dns_server.add("example.test", "MX", "5 first.example.test.")
    for host in ("a", "b", "first"):
        dns_server.add(f"{host}.example.test", "A", "127.0.0.1")

    orders = set()
    for _ in range(60):
        route = await resolver.route("example.test")
        assert isinstance(route, Route)
        orders.add(tuple(host.name for host in route.hosts))

    assert orders == {
        ("first.example.test", "a.example.test", "b.example.test"),
        ("first.example.test", "b.example.test", "a.example.test"),
    }
    assert mx_queries(dns_server, "example.test") == 1


async def test_implicit_mx_from_address_records(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    dns_server.add("example.test", "A", "127.0.0.1")
    dns_server.add("example.test", "AAAA", "::1")

    route = await resolver.route("example.test")

    assert route == Route(
        "example.test", (MxHost("example.test", 0, ("127.0.0.1", "::1")),), True
    )


async def test_existing_domain_without_mx_or_address_is_permanent(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    dns_server.add("example.test", "TXT", "v=spf1 -all")

    route = await resolver.route("example.test")

    assert route == RouteFailure(
        "example.test", True, "5.4.4", "domain has no MX and no address records"
    )


async def test_nxdomain_is_permanent_without_implicit_mx(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    route = await resolver.route("missing.example.test")

    assert route == RouteFailure(
        "missing.example.test", True, "5.1.2", "domain does not exist"
    )
    assert dns_server.queries == [("missing.example.test", "MX")]


async def test_null_mx_is_permanent_and_resolves_nothing(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    dns_server.null_mx("example.test")
    dns_server.add("example.test", "A", "127.0.0.1")

    route = await resolver.route("example.test")

    assert route == RouteFailure(
        "example.test", True, "5.1.10", "domain publishes a null MX (RFC 7505)"
    )
    assert dns_server.queries == [("example.test", "MX")]


async def test_servfail_is_temporary_without_address_fallback(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    dns_server.servfail("example.test")
    dns_server.add("example.test", "A", "127.0.0.1")

    route = await resolver.route("example.test")

    assert route == RouteFailure(
        "example.test", False, "4.4.3", "DNS lookup failed: SERVFAIL"
    )
    assert ("example.test", "A") not in dns_server.queries


async def test_timeout_is_temporary(dns_server: DnsServer) -> None:
    resolver = Resolver([(dns_server.host, dns_server.port)], timeout=0.5)
    dns_server.timeout("example.test")
    dns_server.add("example.test", "A", "127.0.0.1")

    route = await resolver.route("example.test")

    assert isinstance(route, RouteFailure)
    assert (route.permanent, route.enhanced_status) == (False, "4.4.3")
    assert "0.5 s" in route.reason
    assert ("example.test", "A") not in dns_server.queries


async def test_unreachable_nameserver_is_temporary() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    resolver = Resolver([("127.0.0.1", port)], timeout=0.5)

    route = await resolver.route("example.test")

    assert isinstance(route, RouteFailure)
    assert (route.permanent, route.enhanced_status) == (False, "4.4.3")


async def test_no_system_nameservers_is_temporary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unconfigured(configure: bool = True) -> None:
        raise dns.resolver.NoResolverConfiguration

    monkeypatch.setattr(dns.asyncresolver, "Resolver", unconfigured)
    resolver = Resolver([])

    route = await resolver.route("example.test")

    assert route == RouteFailure(
        "example.test", False, "4.4.3", "DNS lookup failed: no nameservers configured"
    )
    with pytest.raises(DnsTemporaryError):
        await resolver.txt("example.test")


async def test_mx_host_without_address_is_skipped(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    dns_server.add("example.test", "MX", "10 gone.example.test.")
    dns_server.add("example.test", "MX", "20 empty.example.test.")
    dns_server.add("example.test", "MX", "30 mx.example.test.")
    dns_server.add("empty.example.test", "TXT", "no addresses here")
    dns_server.add("mx.example.test", "A", "127.0.0.1")

    route = await resolver.route("example.test")

    assert route == Route(
        "example.test", (MxHost("mx.example.test", 30, ("127.0.0.1",)),), False
    )


async def test_mx_hosts_without_addresses_are_temporary(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    dns_server.add("example.test", "MX", "10 gone.example.test.")
    dns_server.add("example.test", "MX", "20 broken.example.test.")
    dns_server.add("example.test", "A", "127.0.0.1")
    dns_server.servfail("broken.example.test")

    route = await resolver.route("example.test")

    assert route == RouteFailure(
        "example.test",
        False,
        "4.4.3",
        "no MX host has an address (DNS lookup failed: SERVFAIL)",
    )
    assert ("example.test", "A") not in dns_server.queries


async def test_one_address_family_failing_is_tolerated(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    dns_server.add("mx.example.test", "A", "127.0.0.1")

    assert await resolver.addresses("mx.example.test") == ["127.0.0.1"]
    assert await resolver.addresses("gone.example.test") == []
    assert await resolver.addresses("192.0.2.7") == ["192.0.2.7"]


async def test_mx_host_behind_cname_resolves(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    dns_server.add("example.test", "MX", "10 mail.example.test.")
    dns_server.add("mail.example.test", "CNAME", "real.example.test.")
    dns_server.add("real.example.test", "A", "127.0.0.3")

    route = await resolver.route("example.test")

    assert route == Route(
        "example.test", (MxHost("mail.example.test", 10, ("127.0.0.3",)),), False
    )


async def test_cache_serves_repeat_lookups_until_ttl_expires(
    dns_server: DnsServer, resolver: Resolver, clock: Clock
) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.", ttl=1)
    dns_server.add("mx.example.test", "A", "127.0.0.1", ttl=60)

    first = await resolver.route("example.test")
    asked = len(dns_server.queries)
    assert await resolver.route("example.test") == first
    assert len(dns_server.queries) == asked

    clock.advance(1.5)
    assert await resolver.route("example.test") == first
    assert mx_queries(dns_server, "example.test") == 2
    assert dns_server.queries.count(("mx.example.test", "A")) == 1


async def test_nxdomain_is_cached_for_the_soa_minimum(
    dns_server: DnsServer, resolver: Resolver, clock: Clock
) -> None:
    dns_server.negative_ttl = 30

    await resolver.route("missing.example.test")
    clock.advance(29)
    await resolver.route("missing.example.test")
    assert mx_queries(dns_server, "missing.example.test") == 1

    clock.advance(2)
    dns_server.add("missing.example.test", "MX", "10 mx.example.test.")
    dns_server.add("mx.example.test", "A", "127.0.0.1")
    assert isinstance(await resolver.route("missing.example.test"), Route)


async def test_negative_ttl_is_capped(
    dns_server: DnsServer, resolver: Resolver, clock: Clock
) -> None:
    dns_server.negative_ttl = 86_400

    assert await resolver.txt("missing.example.test") is None
    clock.advance(301)
    assert await resolver.txt("missing.example.test") is None
    assert dns_server.queries.count(("missing.example.test", "TXT")) == 2


async def test_temporary_failures_are_not_cached(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    dns_server.servfail("example.test")

    assert isinstance(await resolver.route("example.test"), RouteFailure)
    assert isinstance(await resolver.route("example.test"), RouteFailure)

    assert mx_queries(dns_server, "example.test") == 2


async def test_concurrent_lookups_share_one_query(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    dns_server.add("mx.example.test", "A", "127.0.0.1")

    routes = await asyncio.gather(*(resolver.route("example.test") for _ in range(20)))

    assert len(set(routes)) == 1
    assert mx_queries(dns_server, "example.test") == 1


async def test_idn_domain_is_queried_as_a_label(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    dns_server.add("xn--bcher-kva.example", "MX", "10 mx.xn--bcher-kva.example.")
    dns_server.add("mx.xn--bcher-kva.example", "A", "127.0.0.1")

    route = await resolver.route("Bücher.Example.")

    assert isinstance(route, Route)
    assert route.domain == "xn--bcher-kva.example"
    assert route.hosts[0].name == "mx.xn--bcher-kva.example"
    assert dns_server.queries[0] == ("xn--bcher-kva.example", "MX")


async def test_case_and_trailing_dot_are_normalised(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    dns_server.add("example.test", "A", "127.0.0.1")

    route = await resolver.route("EXAMPLE.Test.")

    assert isinstance(route, Route)
    assert route.domain == "example.test"
    assert dns_server.queries[0] == ("example.test", "MX")


@pytest.mark.parametrize(
    "domain", ["[127.0.0.1]", "", ".", "a..example.test", "exa mple.test", "x" * 64]
)
async def test_unusable_domains_are_permanent_without_queries(
    dns_server: DnsServer, resolver: Resolver, domain: str
) -> None:
    route = await resolver.route(domain)

    assert isinstance(route, RouteFailure)
    assert (route.permanent, route.enhanced_status) == (True, "5.1.2")
    assert dns_server.queries == []


async def test_txt_records(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("_dmarc.example.test", "TXT", "v=DMARC1; p=reject")
    dns_server.add("example.test", "A", "127.0.0.1")

    assert await resolver.txt("_dmarc.example.test") == ["v=DMARC1; p=reject"]
    assert await resolver.txt("example.test") is None
    assert await resolver.txt("missing.example.test") is None


async def test_long_txt_is_joined_from_its_chunks(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    key = "v=DKIM1; k=rsa; p=" + "A" * 400
    dns_server.add("s1._domainkey.example.test", "TXT", key)
    dns_server.add("s1._domainkey.example.test", "TXT", "second record")

    found = await resolver.txt("s1._domainkey.example.test")

    assert found is not None
    assert sorted(found) == sorted([key, "second record"])


async def test_oversized_answer_falls_back_to_tcp(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    big = "".join(random.choice("abcdef0123456789") for _ in range(3000))
    dns_server.add("big.example.test", "TXT", big)

    assert await resolver.txt("big.example.test") == [big]
    assert dns_server.tcp_queries == [("big.example.test", "TXT")]


async def test_txt_temporary_failures_raise(dns_server: DnsServer) -> None:
    resolver = Resolver([(dns_server.host, dns_server.port)], timeout=0.5)
    dns_server.servfail("broken.example.test")
    dns_server.timeout("slow.example.test")

    with pytest.raises(DnsTemporaryError, match="SERVFAIL"):
        await resolver.txt("broken.example.test")
    with pytest.raises(DnsTemporaryError, match="no answer within 0.5 s"):
        await resolver.txt("slow.example.test")


async def test_txt_rejects_malformed_names(resolver: Resolver) -> None:
    with pytest.raises(ValueError, match="invalid domain name"):
        await resolver.txt("a..example.test")


def test_nameservers_must_be_addresses() -> None:
    with pytest.raises(ValueError, match="IP address"):
        Resolver([("ns.example.test", 53)])
