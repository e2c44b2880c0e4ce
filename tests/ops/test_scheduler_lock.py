"""One active scheduler: a scheduler whose lock vanished with its connection
stands by instead of carrying on beside the standby that took the lock."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psycopg

from tests.ops.conftest import Processes, sesame_env

# workers.scheduler._SCHEDULER_LOCK, as pg_locks shows a bigint advisory key.
LOCK_KEY = 0x5E5A_0002
T = TypeVar("T")


def lock_holder(database_url: str) -> int | None:
    """The backend pid holding the scheduler lock in this database, if any."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "select pid from pg_locks where locktype = 'advisory' and granted"
            " and database = (select oid from pg_database"
            " where datname = current_database())"
            " and (classid::bigint << 32 | objid::bigint) = %s",
            (LOCK_KEY,),
        ).fetchone()
    return None if row is None else int(row[0])


def wait_for(
    predicate: Callable[[], T], processes: Processes, timeout: float = 30.0
) -> T:
    """Poll predicate until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processes.check_alive()
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out\n" + processes.logs())


def test_scheduler_that_lost_its_lock_stands_by(
    ops_database: str, ops_redis: str, processes: Processes, tmp_path: Path
) -> None:
    def env(name: str) -> dict[str, str]:
        settings = sesame_env(ops_database, ops_redis, tmp_path / name, sweep_seconds=1)
        settings["SESAME_LOG_LEVEL"] = "INFO"
        return settings

    first = processes.start("scheduler-a", env("a"), "scheduler")
    holder = wait_for(lambda: lock_holder(ops_database), processes)
    second = processes.start("scheduler-b", env("b"), "scheduler")
    time.sleep(2)  # the second waits as a standby
    assert lock_holder(ops_database) == holder
    assert "scheduler active" not in second.log.read_text()

    # The lock's connection dies, as in a PostgreSQL restart.
    with psycopg.connect(ops_database, autocommit=True) as conn:
        conn.execute("select pg_terminate_backend(%s)", (holder,))

    wait_for(lambda: "scheduler lock lost" in first.log.read_text(), processes)
    new_holder = wait_for(lambda: lock_holder(ops_database), processes)
    assert new_holder != holder
    # Whichever took the lock, exactly one of the two says it is active now.
    time.sleep(2)
    actives = first.log.read_text().count("scheduler active") - 1
    actives += second.log.read_text().count("scheduler active")
    assert actives == 1, processes.logs()
