"""The fault scenarios, one function each, shared by tests/faults and loadtest/faults.py.

Every scenario starts real ``sesame`` processes on a fresh :class:`Stack`, sends
messages to unique recipients, injects one kind of fault while mail is being
accepted and delivered, waits until nothing is left to do, and returns the
:class:`Figures`: accepted / delivered / lost / duplicated. The tests run them
small; ``loadtest/faults.py --scenario NAME --messages N`` runs them large.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from tests.faults.harness import (
    ApiLoad,
    Figures,
    Outcome,
    SmtpLoad,
    Stack,
    drain,
    tally,
)

# Deliveries left after the load has ended finish well within this on 2 cores.
DRAIN_SECONDS = 60.0


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll predicate until it holds or the deadline passes; say which."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _accepted(outcomes: list[Outcome]) -> set[str]:
    return {o.address for o in outcomes if o.kind == "accepted"}


def _drain_seconds(messages: int) -> float:
    return DRAIN_SECONDS + messages / 100


# -- processes killed ------------------------------------------------------------------


def _shares(count: int, first: float = 0.2, last: float = 0.7) -> list[float]:
    """Fractions of the run at which count faults are injected."""
    if count == 1:
        return [first]
    return [first + (last - first) * i / (count - 1) for i in range(count)]


def worker_kill(
    stack: Stack, messages: int = 600, rate: float = 200.0, kills: int = 2
) -> Figures:
    """SIGKILL a delivery worker while its batches are being sent, kills times.

    The killed worker's claims stay leased until SESAME_LEASE_SECONDS pass; the
    scheduler's sweep then hands them to the other worker (or the restarted one).
    Whatever the dead worker had already handed to the sink is sent again.
    """
    cluster = stack.cluster
    cluster.start_all(workers=2)
    cluster.wait_api()
    load = ApiLoad(stack.api_port, stack.creds, messages, rate=rate).start()

    in_flight = 0
    for k, share in enumerate(_shares(kills, 0.2, 0.5 if kills == 2 else 0.7)):
        name = f"worker-{k % 2 + 1}"
        wait_until(
            lambda share=share: (
                stack.sink.delivered() >= messages * share and stack.in_flight() > 0
            ),
            timeout=_drain_seconds(messages),
        )
        in_flight += stack.in_flight()
        cluster.kill(name)

    outcomes = load.join()
    drained = drain(stack, _accepted(outcomes), _drain_seconds(messages))
    return tally(
        "worker-kill",
        stack,
        outcomes,
        in_flight=in_flight,
        kills=kills,
        restarts=cluster.restarts(),
        drained=drained,
    )


def api_kill(
    stack: Stack, messages: int = 600, rate: float = 150.0, kills: int = 3
) -> Figures:
    """SIGKILL one of uvicorn's API worker processes, several times, under load.

    Every MessageId answered 200 must be delivered; requests whose connection
    died unanswered may or may not have been committed, and are counted apart.
    """
    cluster = stack.cluster
    cluster.start("api", SESAME_API_WORKERS="2")
    cluster.start("scheduler")
    cluster.start("worker-1", "worker")
    cluster.start("worker-2", "worker")
    cluster.wait_api()
    wait_until(lambda: len(cluster.children("api")) == 2, timeout=30)
    load = ApiLoad(stack.api_port, stack.creds, messages, rate=rate).start()

    killed = 0
    for k in range(kills):
        wait_until(
            lambda k=k: load.answered() >= messages * (k + 1) / (kills + 1),
            timeout=_drain_seconds(messages),
        )
        children = cluster.children("api")
        if children:
            os.kill(random.choice(children), signal.SIGKILL)
            killed += 1

    outcomes = load.join()
    drained = drain(stack, _accepted(outcomes), _drain_seconds(messages))
    return tally("api-kill", stack, outcomes, kills=killed, drained=drained)


def smtp_kill(
    stack: Stack, messages: int = 300, rate: float = 100.0, kills: int = 2
) -> Figures:
    """SIGKILL the SMTP submission process under load; `sesame up` restarts it.

    Every message answered 250 must be delivered; one cut off in DATA may or may
    not have been committed, and is counted apart.
    """
    cluster = stack.cluster
    cluster.start_all(workers=2, smtp=True)
    cluster.wait_api()
    cluster.wait_port(stack.smtp_port)
    load = SmtpLoad(stack.smtp_port, stack.creds, messages, rate=rate).start()

    for k in range(kills):
        wait_until(
            lambda k=k: load.answered() >= messages * (k + 1) / (kills + 1),
            timeout=_drain_seconds(messages),
        )
        cluster.kill("smtp")

    outcomes = load.join()
    drained = drain(stack, _accepted(outcomes), _drain_seconds(messages))
    return tally(
        "smtp-kill",
        stack,
        outcomes,
        kills=kills,
        failed_sessions=load.failed_sessions,
        drained=drained,
    )


# -- Redis wiped -------------------------------------------------------------------------


def redis_flushall(
    stack: Stack, messages: int = 600, rate: float = 200.0, flushes: int = 2
) -> Figures:
    """FLUSHALL (twice by default) while mail is accepted and delivered.

    Queued jobs, quota counters and the scheduler's epoch key vanish; the
    scheduler notices the missing epoch, releases every claim and dispatches
    again from PostgreSQL.
    """
    cluster = stack.cluster
    cluster.start_all(workers=2)
    cluster.wait_api()
    load = ApiLoad(stack.api_port, stack.creds, messages, rate=rate).start()

    in_flight = 0
    for share in _shares(flushes, 0.25, 0.6 if flushes == 2 else 0.8):
        wait_until(
            lambda share=share: (
                stack.sink.delivered() >= messages * share and stack.in_flight() > 0
            ),
            timeout=_drain_seconds(messages),
        )
        in_flight += stack.in_flight()
        stack.redis.flushall()

    outcomes = load.join()
    drained = drain(stack, _accepted(outcomes), _drain_seconds(messages))
    return tally(
        "redis-flushall",
        stack,
        outcomes,
        in_flight=in_flight,
        flushes=flushes,
        drained=drained,
    )


def redis_restart(
    stack: Stack, messages: int = 600, rate: float = 200.0, down_seconds: float = 1.5
) -> Figures:
    """Kill Redis under load and start it again empty on the same port.

    While it is away the API refuses (ServiceUnavailable: quotas live there);
    once back, everything is rebuilt from PostgreSQL.
    """
    cluster = stack.cluster
    cluster.start_all(workers=2)
    cluster.wait_api()
    load = ApiLoad(stack.api_port, stack.creds, messages, rate=rate).start()

    wait_until(
        lambda: stack.sink.delivered() >= messages * 0.3 and stack.in_flight() > 0,
        timeout=_drain_seconds(messages),
    )
    in_flight = stack.in_flight()
    stack.redis.kill()
    down_at = time.monotonic()
    refused_before = _count(load.outcomes, "refused")
    # An outage of a second or two, long enough for every component to notice
    # (the scheduler polls Redis at least once a second) and for sends to be
    # refused.
    wait_until(
        lambda: (
            time.monotonic() - down_at >= down_seconds
            and _count(load.outcomes, "refused") >= refused_before + 5
        ),
        down_seconds + 3.0,
    )
    stack.redis.start()
    down_for = time.monotonic() - down_at

    outcomes = load.join()
    drained = drain(stack, _accepted(outcomes), _drain_seconds(messages))
    return tally(
        "redis-restart",
        stack,
        outcomes,
        in_flight=in_flight,
        redis_down_seconds=down_for,
        restarts=cluster.restarts(),
        drained=drained,
    )


def _count(outcomes: list[Outcome], kind: str) -> int:
    return sum(1 for o in outcomes if o.kind == kind)


# -- PostgreSQL restarted ----------------------------------------------------------------


def postgres_restart(
    stack: Stack, messages: int = 400, rate: float = 100.0, smtp: bool = True
) -> Figures:
    """Stop PostgreSQL (fast shutdown) under API and SMTP load, then start it again.

    While it is down nothing may be answered 200 or 250: the API answers
    ServiceUnavailable (503), SMTP 451 (or 454 at AUTH). Everything accepted
    before or after is delivered.
    """
    assert stack.postgres is not None, "needs open_stack(own_postgres=True)"
    cluster = stack.cluster
    cluster.start_all(workers=2, smtp=smtp)
    cluster.wait_api()
    loads: list[ApiLoad | SmtpLoad] = [
        ApiLoad(stack.api_port, stack.creds, messages, rate=rate)
    ]
    if smtp:
        cluster.wait_port(stack.smtp_port)
        loads.append(
            SmtpLoad(stack.smtp_port, stack.creds, messages // 2, rate=rate / 2)
        )
    for load in loads:
        load.start()

    wait_until(
        lambda: loads[0].answered() >= messages * 0.3 and stack.in_flight() > 0,
        timeout=_drain_seconds(messages),
    )
    in_flight = stack.in_flight()
    stack.postgres.stop("fast")
    down_from = time.time()
    refused_before = sum(_count(load.outcomes, "refused") for load in loads)
    # Stay down until clients have visibly been refused (or 4 s passed).
    wait_until(
        lambda: (
            sum(_count(load.outcomes, "refused") for load in loads)
            >= refused_before + 10
        ),
        4.0,
    )
    up_from = time.time()
    stack.postgres.start()

    outcomes = [o for load in loads for o in load.join()]
    drained = drain(stack, _accepted(outcomes), _drain_seconds(messages))
    # Answered 200/250 for a request sent once the server was down, before it
    # was started again: a promise made without PostgreSQL.
    accepted_while_down = sum(
        1
        for o in outcomes
        if o.kind == "accepted"
        and o.sent_at > down_from
        and o.answered_at is not None
        and o.answered_at < up_from
    )
    refusals: dict[Any, int] = defaultdict(int)
    for o in outcomes:
        if o.kind == "refused":
            refusals[o.code if o.status in (400, 503) else o.status] += 1
    return tally(
        "postgres-restart",
        stack,
        outcomes,
        in_flight=in_flight,
        accepted_while_down=accepted_while_down,
        postgres_down_seconds=up_from - down_from,
        refusals=dict(refusals),
        drained=drained,
    )


# -- a destination that never takes the mail ---------------------------------------------

TEMPFAIL_SETTINGS = {
    "SESAME_RETRY_BASE_SECONDS": "0.2",
    "SESAME_RETRY_MAX_INTERVAL_SECONDS": "1",
    "SESAME_MAX_DELIVERY_SECONDS": "5",
    "SESAME_SWEEP_SECONDS": "0.2",
}
SLOW_DOMAIN = "slow.test"


def tempfail_window(stack: Stack, messages: int = 20) -> Figures:
    """A destination answers 451 for the whole retry window (5 s here).

    Half the messages go to it, half to a healthy domain. Each tempfailed
    recipient is retried with growing intervals and bounces exactly once when
    SESAME_MAX_DELIVERY_SECONDS have passed. (Open with TEMPFAIL_SETTINGS and
    tempfail=(SLOW_DOMAIN,).)
    """
    cluster = stack.cluster
    cluster.start_all(workers=2)
    cluster.wait_api()
    half = messages // 2
    slow = ApiLoad(
        stack.api_port, stack.creds, half, prefix="slow", domain=SLOW_DOMAIN
    ).start()
    healthy = ApiLoad(stack.api_port, stack.creds, messages - half).start()
    outcomes = slow.join() + healthy.join()
    accepted = _accepted(outcomes)
    slow_accepted = {a for a in accepted if a.endswith("@" + SLOW_DOMAIN)}
    window = float(stack.env["SESAME_MAX_DELIVERY_SECONDS"])

    finished = wait_until(
        lambda: (
            stack.scalar("select count(*) from recipients where state = 'bounced'")
            >= len(slow_accepted)
        ),
        timeout=window * 3 + 10,
    )
    drained = drain(stack, accepted - slow_accepted, DRAIN_SECONDS)

    bounces = dict(
        stack.query(
            "select lower(recipient), count(*) from events where event_type = 'bounce'"
            " group by 1"
        )
    )
    attempts = _attempt_times(stack)
    delays = _scheduled_delays(stack)
    scheduled_shrinks = sum(_shrinks(d, tolerance=0.03) for d in delays.values())
    observed = {
        address: [b - a for a, b in zip(times, times[1:], strict=False)]
        for address, times in attempts.items()
    }
    early = sum(
        1
        for address, intervals in observed.items()
        for interval, delay in zip(intervals, delays.get(address, []), strict=False)
        if interval < delay - 0.05
    )
    give_up = stack.query(
        "select max(extract(epoch from e.created_at - m.created_at))"
        " from events e join messages m on m.id = e.message_id"
        " where e.event_type = 'bounce'"
    )[0][0]

    figures = tally(
        "tempfail-window", stack, outcomes, settled=set(bounces), drained=drained
    )
    per_recipient = [bounces.get(a, 0) for a in slow_accepted]
    counts = [len(attempts.get(a, [])) for a in slow_accepted]
    all_intervals = [i for a in slow_accepted for i in observed.get(a, [])]
    figures.extra.update(
        bounced=sum(1 for n in per_recipient if n),
        bounces_per_recipient=f"{min(per_recipient, default=0)}"
        f"-{max(per_recipient, default=0)}",
        attempts_per_recipient=f"{min(counts, default=0)}-{max(counts, default=0)}",
        scheduled_interval_shrinks=scheduled_shrinks,
        retried_early=early,
        intervals_s=f"{min(all_intervals, default=0):.2f}"
        f"-{max(all_intervals, default=0):.2f}",
        give_up_after_s=float(give_up or 0.0),
        all_bounced=finished,
    )
    figures.extra["_bounces"] = per_recipient
    figures.extra["_observed"] = {a: observed.get(a, []) for a in slow_accepted}
    figures.extra["_delays"] = {a: delays.get(a, []) for a in slow_accepted}
    return figures


def _attempt_times(stack: Stack) -> dict[str, list[float]]:
    rows = stack.query(
        "select lower(r.address), extract(epoch from a.started_at)"
        " from delivery_attempts a join recipients r on r.id = a.recipient_id"
        " order by a.id"
    )
    times: dict[str, list[float]] = defaultdict(list)
    for address, started in rows:
        times[address].append(float(started))
    return times


def _scheduled_delays(stack: Stack) -> dict[str, list[float]]:
    """Each deferral's chosen delay, without the last one cut short by expiry."""
    rows = stack.query(
        "select lower(recipient), created_at, detail->>'nextAttemptAt',"
        " detail->>'expirationTime' from events"
        " where event_type = 'delivery_delay' order by id"
    )
    delays: dict[str, list[float]] = defaultdict(list)
    for address, created, next_at, expires in rows:
        if not next_at or next_at == expires:
            continue
        delay = datetime.fromisoformat(next_at) - created
        delays[address].append(delay.total_seconds())
    return delays


def _shrinks(values: list[float], tolerance: float) -> int:
    return sum(1 for a, b in zip(values, values[1:], strict=False) if b < a - tolerance)


# -- everything restarted with a backlog --------------------------------------------------


def backlog(stack: Stack, messages: int = 3000, workers: int = 2) -> Figures:
    """Queue a backlog, start delivering it, SIGKILL every component, start them all.

    Reports how long after the restart the first delivery came and when the
    backlog was done; claims held by the killed workers wait for their lease.
    """
    cluster = stack.cluster
    cluster.start("api", SESAME_API_WORKERS="2")
    cluster.wait_api()
    started = time.monotonic()
    outcomes = (
        ApiLoad(stack.api_port, stack.creds, messages, rate=None, connections=16)
        .start()
        .join(timeout=600 + messages / 50)
    )
    accept_seconds = time.monotonic() - started
    accepted = _accepted(outcomes)

    cluster.start("scheduler")
    for i in range(workers):
        cluster.start(f"worker-{i + 1}", "worker")
    wait_until(
        lambda: (
            stack.sink.delivered() >= max(1, len(accepted) // 10)
            and stack.in_flight() > 0
        ),
        timeout=_drain_seconds(messages),
    )
    in_flight = stack.in_flight()
    cluster.kill_everything()
    delivered_before = stack.sink.delivered()
    queued = stack.scalar(
        "select count(*) from recipients where state in ('queued', 'sending',"
        " 'deferred')"
    )

    restarted_at = time.time()
    cluster.start("api", SESAME_API_WORKERS="2")
    cluster.start("scheduler")
    for i in range(workers):
        cluster.start(f"worker-{i + 1}", "worker")
    drained = drain(stack, accepted, _drain_seconds(messages) + messages / 50)

    after = [t for t, _ in stack.sink.entries() if t >= restarted_at]
    first = min(after, default=restarted_at) - restarted_at
    done = max(after, default=restarted_at) - restarted_at
    return tally(
        "backlog",
        stack,
        outcomes,
        in_flight=in_flight,
        accepted_per_s=len(accepted) / accept_seconds,
        delivered_before_kill=delivered_before,
        left_at_restart=queued,
        first_delivery_after_restart_s=first,
        backlog_done_after_restart_s=done,
        delivered_per_s_after_restart=len(after) / done if done else 0.0,
        drained=drained,
    )


SCENARIOS: dict[str, Callable[..., Figures]] = {
    "worker-kill": worker_kill,
    "api-kill": api_kill,
    "smtp-kill": smtp_kill,
    "redis-flushall": redis_flushall,
    "redis-restart": redis_restart,
    "postgres-restart": postgres_restart,
    "tempfail": tempfail_window,
    "backlog": backlog,
}
