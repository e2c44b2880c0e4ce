"""Fixtures shared by the whole suite: a fresh PostgreSQL database and Redis db."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis

from sesame import db
from sesame.settings import Settings
from tests import hypothesis_profiles

hypothesis_profiles.load()

ADMIN_URL = os.environ.get(
    "SESAME_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("SESAME_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's SESAME_* variables out of the tests."""
    for key in list(os.environ):
        if key.startswith("SESAME_") and not key.startswith("SESAME_TEST_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A new database with every migration applied, dropped after the run."""
    name = f"sesame_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    db.migrate(url)
    yield url
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def settings(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        data_dir=tmp_path_factory.mktemp("data"),
        dns_nameservers="127.0.0.1:1",
        # Tests change accounts and identities behind the API's back.
        account_cache_seconds=0.0,
    )


pytest_plugins = [
    "tests.support.dns_server",
    "tests.support.smtp_sink",
    "tests.support.api_server",
    "tests.support.pipeline",
]
