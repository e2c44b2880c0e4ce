"""Every Prometheus metric Sesame exports, and how each process exposes them.

All metrics are defined here, once, so names, labels and buckets are read in one
place and no two modules can register the same name.

How they reach Prometheus:

- ``sesame up``: the supervisor gives its children one fresh directory in
  ``PROMETHEUS_MULTIPROC_DIR``. prometheus_client then keeps every value in
  per-process files there, and ``/metrics`` on the API port sums them
  (:func:`render`), so one scrape covers every process ``sesame up`` started.
- ``sesame api`` alone serves ``/metrics`` on its own port; with more than one
  uvicorn worker it gets a private directory (:func:`share_between_workers`).
- ``sesame smtp|mx|worker|scheduler`` alone serve their own registry on
  ``SESAME_METRICS_HOST:SESAME_METRICS_PORT`` when that port is set
  (:func:`expose`).

Every label is bounded: actions, outcomes, reasons and states are fixed sets in
the code, and ``account_id`` is bounded by the number of accounts. Message ids
and addresses are never labels. Hot paths use children created once and kept in
dicts, so counting costs a dict lookup and an increment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

from sesame.log import event

if TYPE_CHECKING:
    from mta.delivery.outcome import AttemptResult
    from mta.feedback.record import RecipientOutcome
    from sesame.runtime import Runtime

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
HEARTBEAT_SECONDS = 10.0

# Latency of one API call: a SendEmail takes a few milliseconds, a slow store
# seconds; finer buckets below 100 ms where the answers live.
_API_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Accept to remote 250: sub-second when the queue is empty, then retries that
# take minutes to hours, up to the 14-hour give-up age.
_DELIVERY_BUCKETS = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4 * 3600.0,
    14 * 3600.0,
)
# One DKIM signature: ~0.1 ms for Ed25519, ~1 ms for RSA-2048, more for big bodies.
_DKIM_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)

# -- HTTP API ---------------------------------------------------------------------

API_REQUESTS = Counter(
    "sesame_api_requests_total",
    "SES v1 Query API requests by action and outcome (Success or the SES error code)",
    ["action", "outcome"],
)
API_REQUEST_SECONDS = Histogram(
    "sesame_api_request_seconds",
    "Time to answer one SES v1 Query API request",
    ["action"],
    buckets=_API_BUCKETS,
)
# Outcomes every known action starts with at zero, so error-rate expressions
# have a series to divide before the first error happens.
API_OUTCOMES = ("Success", "Throttling", "InternalFailure", "ServiceUnavailable")
# An action the client made up is counted under this one label value.
UNKNOWN_ACTION = "-"

# -- the accept path --------------------------------------------------------------

MESSAGES_ACCEPTED = Counter(
    "sesame_messages_accepted_total",
    "Messages committed by the accept path, by interface (api, smtp, system)",
    ["interface"],
)
MESSAGES_REJECTED = Counter(
    "sesame_messages_rejected_total",
    "Messages the accept path refused, by interface and reason",
    ["interface", "reason"],
)
INTERFACES = ("api", "smtp", "system")
REJECT_REASONS = (
    "paused",
    "not_verified",
    "rate_exceeded",
    "daily_quota_exceeded",
    "unavailable",
)

# -- delivery ---------------------------------------------------------------------

DELIVERY_ATTEMPTS = Counter(
    "sesame_delivery_attempts_total",
    "Delivery attempts by outcome and class of the enhanced status (2, 4, 5, none)",
    ["outcome", "status_class"],
)
ATTEMPT_OUTCOMES = ("delivered", "deferred", "failed")
STATUS_CLASSES = ("2", "4", "5", "none")
RECIPIENTS = Counter(
    "sesame_recipients_total",
    "Recipients that reached a final state: delivered, bounced, suppressed, expired",
    ["outcome"],
)
FINAL_OUTCOMES = ("delivered", "bounced", "suppressed", "expired")
DELIVERY_SECONDS = Histogram(
    "sesame_delivery_latency_seconds",
    "Time from accepting a message to the remote 250 for one recipient",
    buckets=_DELIVERY_BUCKETS,
)
DKIM_SIGN_SECONDS = Histogram(
    "sesame_dkim_sign_seconds",
    "Time to compute the DKIM signatures of one message",
    buckets=_DKIM_BUCKETS,
)

# -- per account ------------------------------------------------------------------

EVENTS = Counter(
    "sesame_events_total",
    "Events per account: send (recipients accepted), delivery, delivery_delay,"
    " bounce_permanent (counted in the bounce rate), bounce_transient (transient,"
    " undetermined, expired), suppressed, complaint",
    ["account_id", "type"],
)
EVENT_TYPES = (
    "send",
    "delivery",
    "delivery_delay",
    "bounce_permanent",
    "bounce_transient",
    "suppressed",
    "complaint",
)
# Gauges the scheduler sets: one active scheduler writes them, so across the
# files of a multiprocess directory the most recent value is the true one.
ACCOUNT_SENT = Gauge(
    "sesame_account_quota_sent_recipients",
    "Recipients an account sent in the rolling 24 hours",
    ["account_id"],
    multiprocess_mode="mostrecent",
)
ACCOUNT_MAX = Gauge(
    "sesame_account_quota_max_recipients",
    "An account's Max24HourSend",
    ["account_id"],
    multiprocess_mode="mostrecent",
)
ACCOUNT_UTILISATION = Gauge(
    "sesame_account_quota_utilisation_ratio",
    "Rolling 24-hour recipients divided by Max24HourSend",
    ["account_id"],
    multiprocess_mode="mostrecent",
)
ACCOUNT_RATE = Gauge(
    "sesame_account_max_send_rate_per_second",
    "An account's MaxSendRate (recipients per second)",
    ["account_id"],
    multiprocess_mode="mostrecent",
)
ACCOUNT_STATUS = Gauge(
    "sesame_account_enforcement_status",
    "1 for an account's enforcement status (healthy, probation, shutdown), else 0",
    ["account_id", "status"],
    multiprocess_mode="mostrecent",
)
ENFORCEMENT_STATUSES = ("healthy", "probation", "shutdown")
ACCOUNT_SENDING = Gauge(
    "sesame_account_sending_enabled",
    "1 when the account, the operator and enforcement all allow sending",
    ["account_id"],
    multiprocess_mode="mostrecent",
)
REPUTATION_RECIPIENTS = Gauge(
    "sesame_account_reputation_recipients",
    "Recipients in the account's representative window (quota/policy.py)",
    ["account_id"],
    multiprocess_mode="mostrecent",
)
REPUTATION_BOUNCES = Gauge(
    "sesame_account_reputation_bounces",
    "Counted bounces in the account's representative window",
    ["account_id"],
    multiprocess_mode="mostrecent",
)
REPUTATION_COMPLAINTS = Gauge(
    "sesame_account_reputation_complaints",
    "Complaints in the account's representative window",
    ["account_id"],
    multiprocess_mode="mostrecent",
)
BOUNCE_RATE = Gauge(
    "sesame_account_bounce_rate_ratio",
    "Bounces / recipients over the representative window (judged from 500"
    " recipients on)",
    ["account_id"],
    multiprocess_mode="mostrecent",
)
COMPLAINT_RATE = Gauge(
    "sesame_account_complaint_rate_ratio",
    "Complaints / recipients over the representative window (judged from 2,000"
    " recipients on)",
    ["account_id"],
    multiprocess_mode="mostrecent",
)

# -- the queue --------------------------------------------------------------------

QUEUE_RECIPIENTS = Gauge(
    "sesame_queue_recipients",
    "Recipients not yet final, by state (queued, deferred, sending)",
    ["state"],
    multiprocess_mode="mostrecent",
)
QUEUE_STATES = ("queued", "deferred", "sending")
QUEUE_DUE = Gauge(
    "sesame_queue_due_recipients",
    "Queued or deferred recipients whose next attempt is due now",
    multiprocess_mode="mostrecent",
)
QUEUE_OLDEST_DUE = Gauge(
    "sesame_queue_oldest_due_age_seconds",
    "How long the longest-waiting due recipient has been due (0 when none is)",
    multiprocess_mode="mostrecent",
)
QUEUE_JOBS = Gauge(
    "sesame_queue_jobs",
    "Delivery jobs waiting in Redis for a worker",
    multiprocess_mode="mostrecent",
)
SCHEDULER_TICK = Gauge(
    "sesame_scheduler_tick_timestamp_seconds",
    "Unix time of the active scheduler's last tick",
    multiprocess_mode="max",
)

# -- SMTP submission and inbound MX -----------------------------------------------

SMTP_CONNECTIONS = Counter(
    "sesame_smtp_connections_total", "SMTP submission connections accepted"
)
SMTP_AUTH = Counter(
    "sesame_smtp_auth_total",
    "SMTP AUTH attempts by result (success, invalid, throttled, error)",
    ["result"],
)
SMTP_AUTH_RESULTS = ("success", "invalid", "throttled", "error")
SMTP_ACCEPTED = Counter(
    "sesame_smtp_messages_accepted_total", "Messages accepted over SMTP submission"
)
SMTP_REJECTIONS = Counter(
    "sesame_smtp_rejections_total",
    "SMTP transactions or commands refused, by reason",
    ["reason"],
)
# Bounded label values for sesame_smtp_rejections_total.
SMTP_REJECTION_REASONS = (
    "auth_required",
    "bad_address",
    "too_many_recipients",
    "too_large",
    "invalid",
    "not_verified",
    "throttled",
    "paused",
    "unavailable",
)
SMTP_ACCEPT_SECONDS = Histogram(
    "sesame_smtp_accept_seconds",
    "Time from the end of DATA to the final reply",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

MX_REPORTS = Counter(
    "sesame_mx_reports_total",
    "Inbound MX messages by report kind and what became of them",
    ["kind", "result"],
)
MX_CONNECTIONS = Counter(
    "sesame_mx_connections_total", "Inbound MX connections accepted"
)
MX_REJECTIONS = Counter(
    "sesame_mx_rejections_total",
    "Inbound MX connections, commands or messages refused, by reason",
    ["reason"],
)
# Bounded label values for sesame_mx_rejections_total.
MX_REJECTION_REASONS = (
    "relay_denied",
    "bad_address",
    "too_many_recipients",
    "too_large",
    "too_many_connections",
    "connection_rate",
    "message_rate",
    "unavailable",
)

# -- processes --------------------------------------------------------------------

HEARTBEAT = Gauge(
    "sesame_component_heartbeat_timestamp_seconds",
    "Unix time a process of the component last said it was alive",
    ["component"],
    multiprocess_mode="max",
)


# Children of the fixed label sets, made once so series exist at zero from the
# start (rate() and ratios need them) and hot paths skip labels().
_REJECTED = {
    (i, r): MESSAGES_REJECTED.labels(i, r) for i in INTERFACES for r in REJECT_REASONS
}
_ACCEPTED = {i: MESSAGES_ACCEPTED.labels(i) for i in INTERFACES}
_ATTEMPTS = {
    (o, c): DELIVERY_ATTEMPTS.labels(o, c)
    for o in ATTEMPT_OUTCOMES
    for c in STATUS_CLASSES
}
_FINAL = {o: RECIPIENTS.labels(o) for o in FINAL_OUTCOMES}
for _result in SMTP_AUTH_RESULTS:
    SMTP_AUTH.labels(_result)
for _reason in SMTP_REJECTION_REASONS:
    SMTP_REJECTIONS.labels(_reason)
_api: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
_events: dict[str, dict[str, Counter]] = {}


# -- counting on hot paths --------------------------------------------------------


def known_api_actions(actions: Iterable[str]) -> None:
    """Create the series of every API action at zero (called once at start)."""
    for action in actions:
        for outcome in API_OUTCOMES:
            _api_child(action, outcome)


def api_request(action: str, outcome: str, seconds: float) -> None:
    """Count one API request; ``action`` must already be a known action or "-"."""
    counter, histogram = _api.get((action, outcome)) or _api_child(action, outcome)
    counter.inc()
    histogram.observe(seconds)


def _api_child(action: str, outcome: str) -> tuple[Counter, Histogram]:
    child = (
        API_REQUESTS.labels(action, outcome),
        API_REQUEST_SECONDS.labels(action),
    )
    _api[(action, outcome)] = child
    return child


def account_events(account_id: str) -> dict[str, Counter]:
    """Return an account's event counters, creating all of its types at zero.

    All types at once, so a bounce-rate ratio has a denominator and a numerator
    series from the account's first send on.
    """
    children = _events.get(account_id)
    if children is None:
        children = {t: EVENTS.labels(account_id, t) for t in EVENT_TYPES}
        _events[account_id] = children
    return children


def message_accepted(account_id: str, interface: str, recipients: int) -> None:
    """Count a committed message and its recipients (the account's send events)."""
    accepted = _ACCEPTED.get(interface)
    if accepted is not None:
        accepted.inc()
    if interface != "system":  # Sesame's own mail is no account's sending
        account_events(account_id)["send"].inc(recipients)


def message_rejected(interface: str, reason: str) -> None:
    """Count a message the accept path refused."""
    child = _REJECTED.get((interface, reason))
    if child is not None:
        child.inc()


class _Row(Protocol):
    """What :func:`deliveries_recorded` reads of a claimed recipient row."""

    @property
    def account_id(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...


def deliveries_recorded(
    finished: Sequence[tuple[_Row, AttemptResult, str, str]], now: datetime
) -> None:
    """Count a batch's attempts and outcomes after they were committed.

    Each item is (row, result, new state, event kind) as the deliverer decided:
    kinds are delivery, delay, bounce and expired.
    """
    try:
        for row, result, state, kind in finished:
            _count_delivery(row, result, state, kind, now)
    except Exception as exc:  # the outcomes are committed: counting must not fail
        event(log, "metrics count failed", logging.ERROR, error=type(exc).__name__)


def _count_delivery(
    row: _Row, result: AttemptResult, state: str, kind: str, now: datetime
) -> None:
    if state != "suppressed":  # a suppressed recipient is never attempted
        key = (result.outcome.value, status_class(result))
        attempts = _ATTEMPTS.get(key)
        if attempts is None:  # an outcome added since: still a fixed set
            attempts = _ATTEMPTS[key] = DELIVERY_ATTEMPTS.labels(*key)
        attempts.inc()
    if state == "delivered":
        _FINAL["delivered"].inc()
        DELIVERY_SECONDS.observe((now - row.created_at).total_seconds())
        account_events(row.account_id)["delivery"].inc()
    elif state == "deferred":
        account_events(row.account_id)["delivery_delay"].inc()
    elif state == "suppressed":
        _FINAL["suppressed"].inc()
        account_events(row.account_id)["suppressed"].inc()
    elif state == "bounced":
        _FINAL["expired" if kind == "expired" else "bounced"].inc()
        permanent = kind == "bounce" and result.bounce_type == "Permanent"
        account_events(row.account_id)[
            "bounce_permanent" if permanent else "bounce_transient"
        ].inc()


def status_class(result: AttemptResult) -> str:
    """Return the class of an attempt's enhanced status, else of its reply code."""
    if result.enhanced_status:
        first = result.enhanced_status[0]
    elif result.smtp_code:
        first = str(result.smtp_code)[0]
    else:
        return "none"
    return first if first in ("2", "4", "5") else "none"


def feedback_recorded(outcomes: Iterable[RecipientOutcome]) -> None:
    """Count the events an inbound DSN or ARF report wrote, per account."""
    try:
        for outcome in outcomes:
            kind = _feedback_type(outcome)
            if kind is not None and outcome.account_id is not None:
                account_events(outcome.account_id)[kind].inc()
    except Exception as exc:  # the report is recorded: counting must not fail it
        event(log, "metrics count failed", logging.ERROR, error=type(exc).__name__)


def _feedback_type(outcome: RecipientOutcome) -> str | None:
    """Return the sesame_events_total type of a recorded outcome, if it is one."""
    if outcome.reason != "recorded":
        return None
    if outcome.event_type in ("complaint", "delivery_delay"):
        return outcome.event_type
    if outcome.event_type == "bounce":
        counted = (
            outcome.bounce_type == "Permanent"
            and outcome.bounce_subtype != "OnAccountSuppressionList"
        )
        return "bounce_permanent" if counted else "bounce_transient"
    return None


# -- gauges the scheduler samples -------------------------------------------------

# One statement, each branch on a partial index of recipients (recipients_due,
# recipients_leased), so its cost follows the queue, not the table's history.
_QUEUE_SQL = """
select state, count(*)::bigint,
       count(*) filter (where next_attempt_at <= now())::bigint,
       extract(epoch from now() - min(next_attempt_at))::float8
from recipients where state in ('queued', 'deferred') group by state
union all
select 'sending', count(*)::bigint, 0::bigint, null::float8
from recipients where state = 'sending'
"""
_ACCOUNTS_SQL = (
    "select id, max_24_hour_send, max_send_rate, enforcement_status,"
    " sending_enabled and not paused_by_operator and enforcement_status <> 'shutdown'"
    " from accounts"
)
# Quota lookups in flight at once: each is one Redis round trip.
_QUOTA_CONCURRENCY = 32


class GaugeSampler:
    """Set the queue and per-account gauges from the scheduler's tick.

    The queue is sampled every ``queue_seconds`` (one query); accounts every
    ``account_seconds`` (one query for the accounts, one Redis script each for
    the rolling count, and the reputation history query of quota/reputation.py).
    """

    def __init__(
        self, runtime: Runtime, queue_seconds: float, account_seconds: float
    ) -> None:
        from mta.accept import Acceptor

        self._runtime = runtime
        self._queue_seconds = queue_seconds
        self._account_seconds = account_seconds
        # Its quota gate reads (and after a Redis wipe rebuilds) the same
        # rolling count the accept path admits against.
        self._acceptor = Acceptor(runtime.pool, runtime.redis, runtime.settings)
        self._last_queue = float("-inf")
        # The account sample is the costly one: the first waits one period, so
        # a scheduler (or a test) that starts and stops quickly never pays it.
        self._last_accounts = time.monotonic()

    async def tick(self) -> None:
        """Sample what is due; a failure is logged and never stops the scheduler."""
        SCHEDULER_TICK.set(time.time())
        now = time.monotonic()
        try:
            if now - self._last_queue >= self._queue_seconds:
                self._last_queue = now
                await self.sample_queue()
            if now - self._last_accounts >= self._account_seconds:
                self._last_accounts = now
                await self.sample_accounts()
        except Exception as exc:  # gauges are advisory; dispatch must go on
            event(
                log, "metrics sample failed", logging.WARNING, error=type(exc).__name__
            )

    async def sample_queue(self) -> None:
        """Set queue depth by state, due recipients and the oldest due age."""
        async with self._runtime.pool.connection() as conn:
            cur = await conn.execute(_QUEUE_SQL)
            rows = await cur.fetchall()
        counts = dict.fromkeys(QUEUE_STATES, 0)
        due = 0
        oldest = 0.0
        for state, count, due_count, age in rows:
            counts[state] = int(count)
            due += int(due_count)
            if age is not None and due_count:
                oldest = max(oldest, float(age))
        for state, count in counts.items():
            QUEUE_RECIPIENTS.labels(state).set(count)
        QUEUE_DUE.set(due)
        QUEUE_OLDEST_DUE.set(oldest)

    async def sample_accounts(self) -> None:
        """Set every account's quota use, limits, status and reputation."""
        from quota import policy, reputation

        async with self._runtime.pool.connection() as conn:
            cur = await conn.execute(_ACCOUNTS_SQL)
            accounts = await cur.fetchall()
            histories = await reputation.load_histories(conn)
        semaphore = asyncio.Semaphore(_QUOTA_CONCURRENCY)

        async def sent(account_id: str) -> int:
            async with semaphore:
                return await self._acceptor.sent_last_24_hours(account_id)

        counts = await asyncio.gather(*(sent(row[0]) for row in accounts))
        for (account_id, max_day, max_rate, status, can_send), count in zip(
            accounts, counts, strict=True
        ):
            ACCOUNT_SENT.labels(account_id).set(count)
            ACCOUNT_MAX.labels(account_id).set(max_day)
            ACCOUNT_UTILISATION.labels(account_id).set(
                count / max_day if max_day > 0 else 0.0
            )
            ACCOUNT_RATE.labels(account_id).set(max_rate)
            for name in ENFORCEMENT_STATUSES:
                ACCOUNT_STATUS.labels(account_id, name).set(int(status == name))
            ACCOUNT_SENDING.labels(account_id).set(int(bool(can_send)))
            rep = policy.reputation(histories.get(account_id) or policy.UsageHistory())
            _set_reputation(account_id, rep.recipients, rep.bounces, rep.complaints)


def _set_reputation(
    account_id: str, recipients: int, bounces: int, complaints: int
) -> None:
    REPUTATION_RECIPIENTS.labels(account_id).set(recipients)
    REPUTATION_BOUNCES.labels(account_id).set(bounces)
    REPUTATION_COMPLAINTS.labels(account_id).set(complaints)
    # The raw ratio, judged or not: the alerts add the policy's minimum volume,
    # and a dashboard shows how an account approaches it.
    BOUNCE_RATE.labels(account_id).set(bounces / recipients if recipients else 0.0)
    COMPLAINT_RATE.labels(account_id).set(
        complaints / recipients if recipients else 0.0
    )


# -- exposition -------------------------------------------------------------------


def multiprocess_directory() -> str | None:
    """Return the multiprocess directory this process writes to, if any."""
    return os.environ.get(MULTIPROC_ENV) or None


def render() -> tuple[bytes, str]:
    """Return the exposition text and its content type for ``/metrics``.

    With a multiprocess directory, every process's files are summed; the
    collector is built per scrape, as prometheus_client requires, because
    processes come and go between scrapes.
    """
    directory = multiprocess_directory()
    if directory is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST


def fresh_directory(path: Path) -> Path:
    """Empty (or create) a multiprocess directory and return its absolute path.

    Files of processes from an earlier run would otherwise be summed into the
    new run's counters.
    """
    path = path.resolve()
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def supervisor_environment(data_dir: Path) -> dict[str, str]:
    """Environment that makes ``sesame up``'s children share one directory."""
    return {MULTIPROC_ENV: str(fresh_directory(data_dir / "metrics" / "up"))}


def share_between_workers(data_dir: Path, port: int, workers: int) -> None:
    """Give ``sesame api``'s uvicorn workers one directory, so /metrics sums them.

    Only when there are several workers and no directory was given (``sesame
    up`` gives one). Set before uvicorn spawns the workers, which inherit it;
    named by port because two APIs on one host never share one.
    """
    if workers <= 1 or multiprocess_directory() is not None:
        return
    directory = fresh_directory(data_dir / "metrics" / f"api-{port}")
    os.environ[MULTIPROC_ENV] = str(directory)


def expose(component: str, host: str, port: int) -> None:
    """Start a component's heartbeat and, when it runs alone, its endpoint.

    Under ``sesame up`` (a multiprocess directory is set) the API's /metrics
    already serves this process's values, so no port is opened.
    """
    start_heartbeat(component)
    if multiprocess_directory() is not None or port == 0:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        # Mail keeps flowing without metrics; the scrape target shows as down.
        event(
            log,
            "metrics endpoint not started",
            logging.ERROR,
            component=component,
            port=port,
            error=str(exc),
        )
        return
    event(log, "metrics endpoint started", component=component, port=port)


_heartbeats: set[str] = set()


def start_heartbeat(component: str) -> None:
    """Set the component's heartbeat now and every few seconds from a thread.

    A thread beats whatever the component's event loop is doing: it tells that
    the process lives; the scheduler-tick and queue-age alerts tell that work moves.
    """
    if component in _heartbeats:
        return
    _heartbeats.add(component)
    gauge = HEARTBEAT.labels(component)
    gauge.set(time.time())

    def beat() -> None:
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            gauge.set(time.time())

    threading.Thread(target=beat, name=f"heartbeat-{component}", daemon=True).start()
