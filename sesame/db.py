"""PostgreSQL access: connections, pools and forward-only migrations."""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
from psycopg_pool import AsyncConnectionPool

from sesame.log import event

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

# Any constant shared by every Sesame process works; it only has to differ
# from other users of the same database.
_MIGRATION_LOCK = 0x5E5A_0001


def connect(url: str, autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=autocommit)


def async_pool(url: str, size: int, name: str = "sesame") -> AsyncConnectionPool:
    """Return an unopened pool; open it with ``await pool.open()``."""
    return AsyncConnectionPool(
        url,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True},
        name=name,
        open=False,
        timeout=10.0,
    )


def migrate(url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every migration not yet applied, in name order; return their names."""
    applied: list[str] = []
    with connect(url) as conn:
        conn.execute("select pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                "create table if not exists schema_migrations ("
                " version text primary key,"
                " applied_at timestamptz not null default now())"
            )
            done = {r[0] for r in conn.execute("select version from schema_migrations")}
            for path in sorted(directory.glob("*.sql")):
                if path.stem in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute(
                        "insert into schema_migrations (version) values (%s)",
                        (path.stem,),
                    )
                applied.append(path.stem)
                event(log, "migration applied", version=path.stem)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied
