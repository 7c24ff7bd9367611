"""The Redis result cache: key = model version (encoder + heads) + text hash, with a TTL.

Redis being down never stops the stream: lookups miss, writes are skipped, and the cache
reports itself degraded until a call succeeds again (redis-py reconnects by itself).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

KEY_PREFIX = "bertstream:v1"


def cache_key(model_version: str, tasks: list[str], text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return f"{KEY_PREFIX}:{model_version}:{','.join(sorted(tasks))}:{digest}"


class ResultCache:
    def __init__(
        self,
        client: aioredis.Redis | None,
        ttl_s: int,
        on_degraded: Callable[[bool, str], None] = lambda degraded, reason: None,
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.degraded = False
        self._on_degraded = on_degraded

    @property
    def enabled(self) -> bool:
        return self.client is not None and self.ttl_s > 0

    def _set_degraded(self, degraded: bool, reason: str = "") -> None:
        if degraded != self.degraded:
            self.degraded = degraded
            self._on_degraded(degraded, reason)

    async def get_many(self, keys: list[str]) -> list[dict[str, Any] | None]:
        if not self.enabled or not keys:
            return [None] * len(keys)
        try:
            values = await self.client.mget(keys)
        except (RedisError, OSError) as exc:
            self._set_degraded(True, f"{type(exc).__name__}: {exc}")
            return [None] * len(keys)
        self._set_degraded(False)
        return [json.loads(v) if v is not None else None for v in values]

    async def set_many(self, items: dict[str, dict[str, Any]]) -> None:
        if not self.enabled or not items:
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(key, json.dumps(value, separators=(",", ":")), ex=self.ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._set_degraded(True, f"{type(exc).__name__}: {exc}")
            return
        self._set_degraded(False)

    async def ping(self) -> bool:
        if self.client is None:
            return False
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False
