"""What a long-running Sesame process holds open: pools, clients and keys."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from sesame import crypto, db
from sesame.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    pool: AsyncConnectionPool
    redis: Redis
    box: crypto.SecretBox
    key: bytes

    @classmethod
    def create(cls, settings: Settings, pool_size: int | None = None) -> Runtime:
        if not settings.database_url or not settings.redis_url:
            raise RuntimeError("database_url and redis_url must be resolved first")
        key = crypto.load_or_create_key(settings.secret_key, settings.data_dir)
        pool = db.async_pool(
            settings.database_url, pool_size or settings.database_pool_size
        )
        redis = Redis.from_url(settings.redis_url)
        return cls(settings, pool, redis, crypto.SecretBox(key), key)

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self.pool.close()
        await self.redis.aclose()
