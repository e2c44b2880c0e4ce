"""The webhook relay: POST each due ``webhook_deliveries`` row, signed, with retries.

Rows are claimed under a lease and their outcome is written before the lease is
released, so a killed relay causes a resend, never a loss (at-least-once).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import logging
import random
import re
import secrets
import socket
import ssl
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import orjson
from cryptography.exceptions import InvalidTag
from psycopg import AsyncConnection

from mta import events
from mta.events import EventRow, MessageRow
from sesame import crypto
from sesame.log import event
from sesame.runtime import Runtime

__all__ = [
    "GIVE_UP_SECONDS",
    "RELAY_SECONDS",
    "SIGNATURE_HEADER",
    "Destination",
    "UrlRefused",
    "check_url",
    "create_destination",
    "new_signing_secret",
    "open_signing_secret",
    "payload",
    "refused_address",
    "relay_due",
    "retry_delay",
    "seal_signing_secret",
    "sign",
    "verify_signature",
]

log = logging.getLogger(__name__)

# How often the scheduler runs the relay.
RELAY_SECONDS = 1.0
# Connect, write, read and pool-wait each get this long; a consumer should
# answer quickly and do its work afterwards.
REQUEST_TIMEOUT_SECONDS = 10.0
# The whole request, name resolution included, however the time is spent.
REQUEST_DEADLINE_SECONDS = 15.0
# Requests in flight at once per relay call.
CONCURRENCY = 50
# Retries double from 10 s up to hourly and go on for at least a day, about
# 30 attempts in all, before a delivery is marked failed.
RETRY_BASE_SECONDS = 10.0
RETRY_MAX_SECONDS = 3600.0
GIVE_UP_SECONDS = 24 * 3600.0
# A consumer's Retry-After is honoured up to the longest retry interval.
_MAX_RETRY_AFTER_SECONDS = RETRY_MAX_SECONDS
# Kept in last_error; enough for an exception's message.
_MAX_ERROR = 500

# What a consumer checks: X-Sesame-Signature is "t=<unix seconds>,v1=<hex>" with
# hex = HMAC-SHA256(key = the secret's UTF-8 bytes, message = "<t>." + raw body);
# refuse it if t is more than 5 minutes away (see verify_signature). Delivery is
# at-least-once: dedupe on X-Sesame-Event-Id, the body's eventId (the SNS
# envelope's MessageId is as stable, per event and destination).
SIGNATURE_HEADER = "X-Sesame-Signature"
_SIGNATURE_VERSION = "v1"
_SECRET_PREFIX = "whsec_"
# Fixed namespace for the SNS MessageId: uuid5(namespace, "<event>:<destination>")
# is the same on every retry, so consumers can dedupe on it.
_SNS_NAMESPACE = uuid.UUID("5e5a0e4e-7b1d-4c59-9a52-0b5d7a1f0c42")
_USER_AGENT = "Sesame-Webhooks/1"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # SES's rule for destination names

# Never called, whatever DNS says: where cloud metadata services and other
# host-local things listen. Loopback and private ranges stay allowed, for local
# consumers and tests.
_REFUSED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"; Linux connects 0.0.0.0 to the local host
        "169.254.0.0/16",  # IPv4 link-local (RFC 3927): 169.254.169.254 metadata
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the limited broadcast address
        "::/128",  # unspecified
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "ff00::/8",  # multicast
    )
)
# IPv6 forms that carry an IPv4 address: NAT64 (RFC 6052).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


# -- signing --------------------------------------------------------------------


def new_signing_secret() -> str:
    """Return a new signing secret: ``whsec_`` and 256 random bits, URL-safe."""
    return _SECRET_PREFIX + secrets.token_urlsafe(32)


def _secret_associated(destination_id: int) -> bytes:
    """Bind a sealed secret to its row, so it cannot be moved to another."""
    return f"event_destinations:{destination_id}".encode()


def seal_signing_secret(
    box: crypto.SecretBox, destination_id: int, secret: str
) -> bytes:
    """Seal a signing secret for event_destinations.signing_secret_sealed."""
    return box.seal(secret.encode(), _secret_associated(destination_id))


def open_signing_secret(
    box: crypto.SecretBox, destination_id: int, sealed: bytes
) -> str:
    """Open a sealed signing secret; raises InvalidTag if it is not this row's."""
    return box.open(sealed, _secret_associated(destination_id)).decode()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """Return the X-Sesame-Signature value: ``t=<unix>,v1=<hex HMAC-SHA256>``.

    The HMAC key is the secret's UTF-8 bytes; the message is ``"<t>." + body``.
    """
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},{_SIGNATURE_VERSION}={mac.hexdigest()}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    tolerance: float = 300,
    now: float | None = None,
) -> bool:
    """Tell whether a signature header is valid for body and no older than tolerance."""
    timestamp: int | None = None
    macs: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == _SIGNATURE_VERSION:
            macs.append(value)
    if timestamp is None or not macs:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).rpartition("=")[2]
    return any(hmac.compare_digest(expected, mac) for mac in macs)


# -- destinations ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Destination:
    """An event_destinations row, with its signing secret opened."""

    id: int
    account_id: str
    configuration_set: str | None
    name: str
    url: str
    envelope: str
    enabled: bool
    secret: str | None  # None: unsigned; sealed but unreadable is an error
    # Set for SetIdentityNotificationTopic destinations: SES notification JSON.
    identity: str | None = None


class UrlRefused(ValueError):
    """A destination URL Sesame will not call; permanent unless DNS could change it."""

    def __init__(self, reason: str, permanent: bool = True) -> None:
        super().__init__(reason)
        self.permanent = permanent


def refused_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Tell whether an address is one the relay never connects to."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return refused_address(ip.ipv4_mapped)
        if ip in _NAT64:
            return refused_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return any(ip in network for network in _REFUSED_NETWORKS)


def check_url(url: str) -> httpx.URL:
    """Return the URL if the relay may call it; raise UrlRefused saying why not."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise UrlRefused("not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise UrlRefused("only http and https URLs are allowed")
    if not parsed.host:
        raise UrlRefused("the URL has no host")
    literal = _ip_literal(parsed.host)
    if literal is not None and refused_address(literal):
        raise UrlRefused(f"the address {literal} is link-local or reserved")
    return parsed


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def create_destination(
    conn: AsyncConnection[Any],
    box: crypto.SecretBox,
    *,
    account_id: str,
    name: str,
    url: str,
    event_types: Sequence[str],
    configuration_set: str | None = None,
    envelope: str = "none",
) -> tuple[int, str]:
    """Insert an event destination with a new signing secret; return (id, secret).

    Raises ValueError for a bad name, URL, event type or envelope.
    """
    if not _NAME.fullmatch(name):
        raise ValueError("names are 1-64 letters, digits, '_' or '-'")
    check_url(url)
    unknown = sorted(set(event_types) - set(events.EVENT_TYPES))
    if unknown or not event_types:
        raise ValueError(f"event types must be some of {', '.join(events.EVENT_TYPES)}")
    if envelope not in ("none", "sns"):
        raise ValueError("envelope must be none or sns")
    secret = new_signing_secret()
    async with conn.transaction():
        cur = await conn.execute(
            "select nextval(pg_get_serial_sequence('event_destinations', 'id'))"
        )
        row = await cur.fetchone()
        assert row is not None
        destination_id = int(row[0])
        await conn.execute(
            "insert into event_destinations (id, account_id, configuration_set,"
            " name, matching_event_types, url, envelope, signing_secret_sealed)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                destination_id,
                account_id,
                configuration_set,
                name,
                sorted(set(event_types), key=events.EVENT_TYPES.index),
                url,
                envelope,
                seal_signing_secret(box, destination_id, secret),
            ),
        )
    return destination_id, secret


# -- payloads -------------------------------------------------------------------


def payload(
    record: dict[str, Any],
    destination: Destination,
    event_id: int,
    created_at: datetime,
    region: str,
) -> tuple[bytes, dict[str, str]]:
    """Return the body and the envelope's own headers for one destination."""
    body = orjson.dumps(record)
    if destination.envelope != "sns":
        return body, {"Content-Type": "application/json"}
    message_id = str(uuid.uuid5(_SNS_NAMESPACE, f"{event_id}:{destination.id}"))
    topic = f"arn:aws:sns:{region}:{destination.account_id}:{destination.name}"
    notification = {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": topic,
        "Message": body.decode(),
        "Timestamp": events.iso(created_at),
    }
    # The headers SNS's own HTTP deliveries carry, for code written against SNS.
    return orjson.dumps(notification), {
        "Content-Type": "text/plain; charset=UTF-8",
        "x-amz-sns-message-type": "Notification",
        "x-amz-sns-message-id": message_id,
        "x-amz-sns-topic-arn": topic,
    }


# -- the relay ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Claim:
    id: int
    event_id: int
    destination_id: int
    attempt: int


@dataclass(frozen=True, slots=True)
class _Outcome:
    delivered: bool
    status: int | None = None
    error: str | None = None  # kept in last_error
    kind: str | None = None  # logged instead of error, which may quote the URL
    retry_after: float | None = None
    permanent: bool = False  # fail now: retrying cannot help


@dataclass(frozen=True, slots=True)
class _Job:
    claim: _Claim
    destination: Destination
    body: bytes
    headers: dict[str, str]


def retry_delay(attempt: int, retry_after: float | None = None) -> float:
    """Seconds before retrying after failed attempt ``attempt`` (1-based).

    Doubling from RETRY_BASE_SECONDS to RETRY_MAX_SECONDS, lengthened by up to
    10 % so consumers that failed together are not retried together.
    """
    delay = RETRY_BASE_SECONDS * float(2 ** min(max(attempt - 1, 0), 20))
    delay *= 1 + random.random() * 0.1
    if retry_after:
        delay = max(delay, min(retry_after, _MAX_RETRY_AFTER_SECONDS))
    return min(delay, RETRY_MAX_SECONDS)


def _lease_seconds(limit: int) -> float:
    """Cover every request of a batch in the worst case, plus a margin."""
    waves = -(-limit // CONCURRENCY)
    return waves * REQUEST_DEADLINE_SECONDS + 60.0


async def relay_due(runtime: Runtime, *, limit: int = 200) -> int:
    """Deliver up to ``limit`` due webhook deliveries; return how many were tried."""
    claims = await _claim(runtime, limit)
    if not claims:
        return 0
    jobs, refused = await _prepare(runtime, claims)
    for claim, outcome in refused:
        await _record(runtime, claim, outcome)
    if not jobs:
        return len(claims)
    slots = asyncio.Semaphore(CONCURRENCY)
    # One client per origin as written: connections are pooled by the address
    # connected to, and a TLS connection checked for one name must never carry
    # another name's request.
    clients: dict[tuple[str, bytes], httpx.AsyncClient] = {}

    async def run(job: _Job) -> None:
        async with slots:
            origin = _origin(job.destination.url)
            client = clients.get(origin)
            if client is None:
                client = clients[origin] = _client()
            outcome = await _post(client, job)
        try:
            await _record(runtime, job.claim, outcome)
        except Exception as exc:  # the lease runs out and the row is resent
            event(
                log,
                "webhook outcome not recorded",
                logging.WARNING,
                delivery_id=job.claim.id,
                error=type(exc).__name__,
            )

    try:
        await asyncio.gather(*(run(job) for job in jobs))
    finally:
        for client in clients.values():
            await client.aclose()
    return len(claims)


def _origin(url: str) -> tuple[str, bytes]:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return "", b""  # _post refuses it
    return parsed.scheme, parsed.netloc


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        verify=_tls_context(),
        timeout=httpx.Timeout(REQUEST_TIMEOUT_SECONDS),
        follow_redirects=False,
        trust_env=False,  # a proxy from the environment would bypass the checks
        limits=httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=8),
    )


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Build the certificate store once: loading it costs ~0.2 s per client."""
    return httpx.create_ssl_context()


async def _claim(runtime: Runtime, limit: int) -> list[_Claim]:
    """Lease due rows; the lease also moves next_attempt_at, so expiry re-dues them."""
    lease = _lease_seconds(limit)
    async with runtime.pool.connection() as conn:
        cur = await conn.execute(
            "with due as ("
            " select id from webhook_deliveries"
            " where state = 'pending' and next_attempt_at <= now()"
            " order by next_attempt_at limit %s for update skip locked)"
            " update webhook_deliveries w set attempts = w.attempts + 1,"
            " lease_until = now() + make_interval(secs => %s),"
            " next_attempt_at = now() + make_interval(secs => %s)"
            " from due where w.id = due.id"
            " returning w.id, w.event_id, w.destination_id, w.attempts",
            (limit, lease, lease),
        )
        return [_Claim(*row) for row in await cur.fetchall()]


async def _prepare(
    runtime: Runtime, claims: list[_Claim]
) -> tuple[list[_Job], list[tuple[_Claim, _Outcome]]]:
    """Build each claim's request; return the jobs and the claims that cannot go."""
    async with runtime.pool.connection() as conn:
        destinations = await _destinations(
            conn, runtime.box, {c.destination_id for c in claims}
        )
        rows = await _events(conn, {c.event_id for c in claims})
        messages = await _messages(
            conn, {e.message_id for e in rows.values() if e.message_id}
        )
    settings = runtime.settings
    jobs: list[_Job] = []
    refused: list[tuple[_Claim, _Outcome]] = []
    records: dict[int, dict[str, Any]] = {}  # one event, many destinations
    for claim in claims:
        destination = destinations.get(claim.destination_id)
        row = rows.get(claim.event_id)
        problem = _problem(destination, row)
        if problem is not None or destination is None or row is None:
            refused.append(
                (
                    claim,
                    _Outcome(False, error=problem, kind="unsendable", permanent=True),
                )
            )
            continue
        try:
            record = records.get(row.id)
            if record is None:
                record = records[row.id] = events.render(
                    row,
                    messages.get(row.message_id or ""),
                    reporting_mta=settings.hostname,
                )
            if destination.identity is not None:
                record = events.as_notification(record)
            body, headers = payload(
                record, destination, row.id, row.created_at, settings.region
            )
        except Exception as exc:  # one odd row must not stop the relay
            log.exception(
                "webhook payload failed", extra={"fields": {"event_id": row.id}}
            )
            error = f"payload failed: {type(exc).__name__}"
            refused.append(
                (claim, _Outcome(False, error=error, kind="payload", permanent=True))
            )
            continue
        headers.update(
            {
                "User-Agent": _USER_AGENT,
                "X-Sesame-Event-Id": str(row.id),
                "X-Sesame-Event-Type": events.event_type_name(row.event_type),
                "X-Sesame-Delivery-Attempt": str(claim.attempt),
            }
        )
        jobs.append(_Job(claim, destination, body, headers))
    return jobs, refused


def _problem(destination: Destination | None, row: EventRow | None) -> str | None:
    """Say why a claim cannot be sent at all, or return None."""
    if destination is None:
        return "destination unreadable: its signing secret does not open"
    if not destination.enabled:
        return "destination disabled"
    if row is None:
        return "event not found"
    if row.event_type not in events.EVENT_TYPES:
        return f"unknown event type {row.event_type}"
    return None


async def _destinations(
    conn: AsyncConnection[Any], box: crypto.SecretBox, ids: Iterable[int]
) -> dict[int, Destination]:
    """Load destinations by id; one whose secret does not open is left out."""
    cur = await conn.execute(
        "select id, account_id, configuration_set, name, url, envelope, enabled,"
        " signing_secret_sealed, identity from event_destinations"
        " where id = any(%s)",
        (list(ids),),
    )
    found: dict[int, Destination] = {}
    for row in await cur.fetchall():
        sealed = row[7]
        secret: str | None = None
        if sealed is not None:
            try:
                secret = open_signing_secret(box, row[0], bytes(sealed))
            except (InvalidTag, ValueError):
                event(
                    log,
                    "signing secret unreadable",
                    logging.ERROR,
                    destination_id=row[0],
                )
                continue
        found[row[0]] = Destination(
            id=row[0],
            account_id=row[1],
            configuration_set=row[2],
            name=row[3],
            url=row[4],
            envelope=row[5],
            enabled=row[6],
            secret=secret,
            identity=row[8],
        )
    return found


async def _events(
    conn: AsyncConnection[Any], ids: Iterable[int]
) -> dict[int, EventRow]:
    cur = await conn.execute(
        "select e.id, e.account_id, e.message_id, e.recipient_id, e.event_type,"
        " e.recipient, e.bounce_type, e.bounce_subtype, e.detail, e.created_at,"
        " e.feedback_id, r.expires_at from events e"
        " left join recipients r on r.id = e.recipient_id where e.id = any(%s)",
        (list(ids),),
    )
    return {row[0]: EventRow(*row) for row in await cur.fetchall()}


async def _messages(
    conn: AsyncConnection[Any], ids: Iterable[str]
) -> dict[str, MessageRow]:
    wanted = list(ids)
    if not wanted:
        return {}
    cur = await conn.execute(
        "select m.id, m.account_id, m.source, m.from_domain,"
        " substring(m.raw from 1 for %s), octet_length(m.raw), m.configuration_set,"
        " m.tags, m.created_at,"
        " array(select r.address from recipients r where r.message_id = m.id"
        " order by r.id)"
        " from messages m where m.id = any(%s)",
        (events.HEADER_FETCH_BYTES, wanted),
    )
    found: dict[str, MessageRow] = {}
    for row in await cur.fetchall():
        tags = row[7] if isinstance(row[7], dict) else None
        found[row[0]] = MessageRow(
            id=row[0],
            account_id=row[1],
            source=row[2],
            from_domain=row[3],
            head=bytes(row[4]),
            raw_size=row[5],
            configuration_set=row[6],
            tags=tags,
            created_at=row[8],
            destination=tuple(row[9]),
        )
    return found


async def _post(client: httpx.AsyncClient, job: _Job) -> _Outcome:
    """Send one request; never raise for anything the network or consumer does."""
    headers = dict(job.headers)
    if job.destination.secret is not None:
        headers[SIGNATURE_HEADER] = sign(
            job.destination.secret, job.body, int(time.time())
        )
    try:
        async with asyncio.timeout(REQUEST_DEADLINE_SECONDS):
            url, host, extensions = await _pinned(check_url(job.destination.url))
            if host is not None:
                headers["Host"] = host
            request = client.build_request(
                "POST", url, content=job.body, headers=headers, extensions=extensions
            )
            # Only the status matters: the body is never read, however large.
            response = await client.send(request, stream=True)
            await response.aclose()
    except UrlRefused as exc:
        return _Outcome(
            False, error=f"refused: {exc}", kind="refused", permanent=exc.permanent
        )
    except (httpx.HTTPError, OSError, TimeoutError, UnicodeError) as exc:
        return _Outcome(False, error=_describe(exc), kind=type(exc).__name__)
    status = response.status_code
    if 200 <= status < 300:
        return _Outcome(True, status=status)
    return _Outcome(
        False,
        status=status,
        error=f"HTTP {status}",
        kind="http_status",
        retry_after=_retry_after(response.headers.get("Retry-After")),
    )


async def _pinned(url: httpx.URL) -> tuple[httpx.URL, str | None, dict[str, Any]]:
    """Resolve the host once, check every address, and connect to a checked one.

    Returns the URL to connect to, the Host header to send if it changed, and
    httpx extensions. Connecting to the checked address (with Host and TLS SNI
    still the name) leaves no gap for the name to be re-resolved elsewhere.
    """
    if _ip_literal(url.host) is not None:
        return url, None, {}
    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = await _resolve(host, port)
    if not addresses:
        raise OSError(f"no addresses for {host}")
    for address in addresses:
        if refused_address(ipaddress.ip_address(address)):
            raise UrlRefused(
                f"{host} resolves to {address}, link-local or reserved",
                permanent=False,
            )
    extensions: dict[str, Any] = {}
    if url.scheme == "https":
        extensions["sni_hostname"] = host
    return url.copy_with(host=addresses[0]), url.netloc.decode("ascii"), extensions


async def _resolve(host: str, port: int) -> list[str]:
    """Return the addresses of a host name, in the resolver's order."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    )
    seen: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0]).partition("%")[0]  # drop an IPv6 zone
        if address not in seen:
            seen.append(address)
    return seen


def _retry_after(value: str | None) -> float | None:
    """Return a Retry-After in seconds (RFC 9110 10.2.3); HTTP dates are ignored."""
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return (f"{name}: {text}" if text else name)[:_MAX_ERROR]


_RECORD_SQL = (
    "update webhook_deliveries set"
    " state = case when %(delivered)s then 'delivered'"
    " when %(permanent)s or created_at <= now() - make_interval(secs => %(give_up)s)"
    " then 'failed' else 'pending' end,"
    " next_attempt_at = case when %(delivered)s then next_attempt_at"
    " else now() + make_interval(secs => %(delay)s) end,"
    " last_status = %(status)s, last_error = %(error)s, lease_until = null"
    # attempts fences a relay whose lease ran out and whose row was re-claimed.
    " where id = %(id)s and attempts = %(attempt)s and state = 'pending'"
    " returning state"
)


async def _record(runtime: Runtime, claim: _Claim, outcome: _Outcome) -> None:
    """Write the outcome and release the lease in one statement."""
    async with runtime.pool.connection() as conn:
        cur = await conn.execute(
            _RECORD_SQL,
            {
                "delivered": outcome.delivered,
                "permanent": outcome.permanent,
                "give_up": GIVE_UP_SECONDS,
                "delay": retry_delay(claim.attempt, outcome.retry_after),
                "status": outcome.status,
                "error": outcome.error[:_MAX_ERROR] if outcome.error else None,
                "id": claim.id,
                "attempt": claim.attempt,
            },
        )
        row = await cur.fetchone()
    state = row[0] if row else "lease_lost"
    event(
        log,
        "webhook attempt",
        logging.DEBUG if outcome.delivered else logging.INFO,
        delivery_id=claim.id,
        event_id=claim.event_id,
        destination_id=claim.destination_id,
        attempt=claim.attempt,
        status=outcome.status,
        error=outcome.kind,
        state=state,
    )
