"""Shaping: how fast Sesame sends to one destination site over SMTP (RFC 5321).

A site is the set of MX hosts behind a destination; big providers are one site each.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "DEFAULT_LIMITS",
    "RatePacer",
    "SiteLimits",
    "limits_for",
    "parse_overrides",
    "site_key",
]


@dataclass(frozen=True, slots=True)
class SiteLimits:
    """Per-site connection and rate limits for outbound sessions."""

    max_connections: int
    max_messages_per_connection: int
    max_message_rate: float | None  # messages per second to the site; None = no cap
    idle_timeout: float  # seconds an unused connection is kept open

    def share(self, processes: int) -> SiteLimits:
        """Return one process's part when processes send to the site side by side.

        Connections and rate are split evenly (never below one connection), so
        together the processes stay within the site's limits without talking to
        each other; a process does not borrow an idle one's part.
        """
        if processes <= 1:
            return self
        rate = self.max_message_rate
        return dataclasses.replace(
            self,
            max_connections=max(1, self.max_connections // processes),
            max_message_rate=None if rate is None else rate / processes,
        )


# Close idle connections well before the 5-minute server timeout of
# RFC 5321 4.5.3.2.7, so we rarely find a connection the server has dropped.
_IDLE_SECONDS = 30.0

# Twenty connections per destination is also Postfix's default
# (default_destination_concurrency_limit).
DEFAULT_LIMITS = SiteLimits(
    max_connections=20,
    max_messages_per_connection=100,
    max_message_rate=None,
    idle_timeout=_IDLE_SECONDS,
)

# Providers whose MX hosts and mailbox domains are one site. The numbers are
# conservative starting points in line with what these providers tolerate from a
# new sending IP; tune per deployment through overrides.
_PROVIDERS: dict[str, tuple[tuple[str, ...], SiteLimits]] = {
    "google": (
        ("gmail.com", "googlemail.com", "google.com"),
        SiteLimits(20, 100, None, _IDLE_SECONDS),
    ),
    "microsoft": (
        ("outlook.com", "hotmail.com", "live.com", "msn.com"),
        SiteLimits(10, 50, None, _IDLE_SECONDS),
    ),
    "yahoo": (
        ("yahoo.com", "aol.com", "yahoodns.net"),
        SiteLimits(10, 20, None, _IDLE_SECONDS),
    ),
}


def _normalise(name: str) -> str:
    """Lower-case a host or domain name and drop the root dot."""
    return name.strip().rstrip(".").lower()


def _matches(name: str, suffix: str) -> bool:
    """Tell whether a name is the suffix domain or inside it."""
    return name == suffix or name.endswith("." + suffix)


def _provider(name: str) -> str | None:
    """Return the provider whose domains contain this name, if any."""
    for provider, (suffixes, _) in _PROVIDERS.items():
        if any(_matches(name, suffix) for suffix in suffixes):
            return provider
    return None


def limits_for(
    domain_or_mx: str, overrides: Mapping[str, SiteLimits] | None = None
) -> SiteLimits:
    """Return the limits for a recipient domain or MX host name.

    Overrides are keyed by domain suffix; the longest matching suffix wins.
    """
    name = _normalise(domain_or_mx)
    if overrides:
        best: tuple[int, SiteLimits] | None = None
        for suffix, limits in overrides.items():
            key = _normalise(suffix)
            if _matches(name, key) and (best is None or len(key) > best[0]):
                best = (len(key), limits)
        if best is not None:
            return best[1]
    provider = _provider(name)
    if provider is not None:
        return _PROVIDERS[provider][1]
    return DEFAULT_LIMITS


def parse_overrides(text: str | None) -> dict[str, SiteLimits]:
    """Read per-site limits from JSON: ``{"suffix": {"max_connections": 5, ...}}``.

    Fields left out keep the defaults; an unknown field is an error, so a typo
    in an operator's setting does not pass silently.
    """
    if not text:
        return {}
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("site limits must be a JSON object keyed by domain suffix")
    overrides = {}
    for suffix, fields in raw.items():
        if not isinstance(fields, dict):
            raise ValueError(f"site limits for {suffix!r} must be an object")
        overrides[suffix] = dataclasses.replace(DEFAULT_LIMITS, **fields)
    return overrides


def site_key(mx_names: Iterable[str]) -> str:
    """Return the site that a set of MX hosts belongs to.

    Known providers are one site whatever MX a domain lists; any other site is its
    sorted MX host set, so domains hosted on the same MX hosts share limits.
    """
    names = sorted({_normalise(name) for name in mx_names})
    for name in names:
        provider = _provider(name)
        if provider is not None:
            return provider
    return ",".join(names)


class RatePacer:
    """Space messages to one site evenly at a fixed rate (no bursts)."""

    def __init__(self, rate: float) -> None:
        """Pace to ``rate`` messages per second."""
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self._interval = 1.0 / rate
        self._next = 0.0

    @property
    def idle(self) -> bool:
        """Tell whether no future slot is booked, so forgetting the pacer is safe."""
        return self._next <= asyncio.get_running_loop().time()

    async def wait(self) -> None:
        """Sleep until the next message may start, and book that slot."""
        now = asyncio.get_running_loop().time()
        start = max(now, self._next)
        self._next = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)
